"""tracking-numpy: a deterministic Flower app (linear regression, NumPy only)."""
