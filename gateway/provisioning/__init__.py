"""Provisioning: the federation's CA, participants' certificates and startup kits.

``project`` reads project.yml; ``certs`` issues certificates; ``kit`` writes and
verifies kits, whose ``manifest`` the CA signs; ``revocation`` is the CRL;
``workspace`` keeps the CA and the record of what it issued (``flgate provision``).
"""
