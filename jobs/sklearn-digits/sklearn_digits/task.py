"""Model, data and training (scikit-learn, single-threaded, fully deterministic)."""

import warnings

import numpy as np
from numpy.typing import NDArray
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from threadpoolctl import threadpool_limits

NUM_FEATURES = 64
NUM_CLASSES = 10
TEST_FRACTION = 0.2

Params = list[NDArray[np.float64]]
Data = tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64], NDArray[np.int64]]


def initial_params() -> Params:
    """Return the initial model: [coef (10, 64), intercept (10,)], all zeros."""
    return [
        np.zeros((NUM_CLASSES, NUM_FEATURES), dtype=np.float64),
        np.zeros(NUM_CLASSES, dtype=np.float64),
    ]


def load_data(partition_id: int, num_partitions: int, seed: int) -> Data:
    """This partition's share of the digits data: (x_train, y_train, x_test, y_test).

    The data ships with scikit-learn (no download); a permutation seeded by
    ``seed`` shuffles it before it is split into ``num_partitions`` parts, so the
    data depends only on (seed, partition_id, num_partitions).
    """
    digits = load_digits()
    x = np.asarray(digits.data, dtype=np.float64) / 16.0
    y = np.asarray(digits.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    part = np.array_split(order, max(num_partitions, 1))[partition_id]
    n_test = int(len(part) * TEST_FRACTION)
    test, train = part[:n_test], part[n_test:]
    return x[train], y[train], x[test], y[test]


def make_model(params: Params, iterations: int, c: float) -> LogisticRegression:
    """A logistic regression that starts from ``params`` (warm start)."""
    model = LogisticRegression(C=c, max_iter=iterations, warm_start=True, solver="lbfgs")
    model.classes_ = np.arange(NUM_CLASSES)
    model.n_features_in_ = NUM_FEATURES
    model.coef_ = np.array(params[0], dtype=np.float64, copy=True)
    model.intercept_ = np.array(params[1], dtype=np.float64, copy=True)
    return model


def get_params(model: LogisticRegression) -> Params:
    return [
        np.asarray(model.coef_, dtype=np.float64),
        np.asarray(model.intercept_, dtype=np.float64),
    ]


def evaluate(
    model: LogisticRegression, x: NDArray[np.float64], y: NDArray[np.int64]
) -> tuple[float, float]:
    """(log loss, accuracy) of ``model`` on (x, y)."""
    with threadpool_limits(limits=1):
        proba = model.predict_proba(x)
    loss = float(log_loss(y, proba, labels=np.arange(NUM_CLASSES)))
    accuracy = float(accuracy_score(y, np.argmax(proba, axis=1)))
    return loss, accuracy


def train(
    params: Params,
    x: NDArray[np.float64],
    y: NDArray[np.int64],
    iterations: int,
    c: float,
) -> tuple[Params, float, float]:
    """A few L-BFGS iterations from ``params``; return (new params, train loss, train accuracy).

    One BLAS thread: a multi-threaded reduction may sum in another order and
    change the last bits of the result.
    """
    model = make_model(params, iterations, c)
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # Few iterations per round on purpose: FedAvg does the rest.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    loss, accuracy = evaluate(model, x, y)
    return get_params(model), loss, accuracy
