"""Provisioning: the federation's certificate authority and participants' certificates."""
