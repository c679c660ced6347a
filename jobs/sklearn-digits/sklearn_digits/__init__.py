"""sklearn-digits: a deterministic Flower app (scikit-learn logistic regression on digits)."""
