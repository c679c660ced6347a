"""torch-digits: a deterministic Flower app (a small PyTorch MLP on the digits data)."""
