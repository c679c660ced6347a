"""Model, synthetic data and training loop (NumPy only, fully deterministic)."""

import numpy as np
from numpy.typing import NDArray

NUM_FEATURES = 4
STEPS_PER_EPOCH = 5
BASE_EXAMPLES = 48
EXAMPLES_PER_PARTITION = 16
TEST_FRACTION = 0.25

# Ground truth shared by all partitions (fixed, independent of the run config)
TRUE_WEIGHTS = np.array([1.5, -2.0, 0.5, 3.0], dtype=np.float64)
TRUE_BIAS = 0.75
NOISE_STD = 0.1

Params = list[NDArray[np.float64]]


def initial_params(model_mib: float = 0) -> Params:
    """Return the initial model: [weights (NUM_FEATURES,), bias (1,)], all zeros.

    With ``model_mib`` > 0 a third, zero-valued ballast array of that size
    follows; training leaves it unchanged, so it only makes the model large.
    """
    params = [np.zeros(NUM_FEATURES, dtype=np.float64), np.zeros(1, dtype=np.float64)]
    ballast = int(model_mib * 1024 * 1024) // 8
    if ballast > 0:
        params.append(np.zeros(ballast, dtype=np.float64))
    return params


def load_data(
    partition_id: int, num_partitions: int, seed: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Generate this partition's synthetic data: (x_train, y_train, x_test, y_test).

    The data depends only on (seed, partition_id, num_partitions), so every run
    produces bit-identical data.
    """
    rng = np.random.default_rng(seed + partition_id)
    # Partitions differ in size so that FedAvg's weighting matters
    n = BASE_EXAMPLES + EXAMPLES_PER_PARTITION * (partition_id % max(num_partitions, 1))
    # Each partition sees a shifted feature distribution (non-IID)
    x = rng.normal(loc=0.25 * partition_id, scale=1.0, size=(n, NUM_FEATURES))
    y = x @ TRUE_WEIGHTS + TRUE_BIAS + rng.normal(0.0, NOISE_STD, size=n)
    n_test = int(n * TEST_FRACTION)
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def predict(params: Params, x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Linear model prediction (a ballast array, if any, takes no part)."""
    weights, bias = params[0], params[1]
    return x @ weights + bias[0]


def mse(params: Params, x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """Mean squared error."""
    err = predict(params, x) - y
    return float(np.mean(err * err))


def mae(params: Params, x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """Mean absolute error."""
    return float(np.mean(np.abs(predict(params, x) - y)))


def train(
    params: Params,
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    epochs: int,
    lr: float,
) -> tuple[Params, float]:
    """Full-batch gradient descent on the MSE; return (new params, final train loss).

    A ballast array (``params[2:]``) is returned as received.
    """
    weights = np.array(params[0], dtype=np.float64, copy=True)
    bias = np.array(params[1], dtype=np.float64, copy=True)
    n = x.shape[0]
    for _ in range(epochs * STEPS_PER_EPOCH):
        err = x @ weights + bias[0] - y
        grad_w = (2.0 / n) * (x.T @ err)
        grad_b = (2.0 / n) * np.sum(err)
        weights = weights - lr * grad_w
        bias = bias - lr * grad_b
    new_params = [weights, bias, *params[2:]]
    return new_params, mse(new_params, x, y)
