"""The facts every layer shares: the Fleet API, the envelope, identities, configuration,
the exception tree, logging. Nothing here does network I/O or imports another layer.
"""
