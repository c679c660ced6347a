"""Model, data and training (PyTorch on CPU, one thread, deterministic algorithms)."""

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.datasets import load_digits
from torch import nn

NUM_FEATURES = 64
NUM_CLASSES = 10
TEST_FRACTION = 0.2

Params = list[NDArray[np.float32]]
Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_deterministic(seed: int) -> None:
    """Seed torch and forbid every source of run-to-run variation on the CPU.

    One intra-op thread: a parallel reduction may sum in another order and
    change the last bits of a result.
    """
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(NUM_FEATURES, hidden),
        nn.ReLU(),
        nn.Linear(hidden, NUM_CLASSES),
    )


def initial_params(hidden: int, seed: int) -> Params:
    """The initial model's weights, drawn from torch's generator seeded with ``seed``."""
    make_deterministic(seed)
    return get_params(make_model(hidden))


def get_params(model: nn.Module) -> Params:
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_params(model: nn.Module, params: Params) -> None:
    keys = list(model.state_dict().keys())
    state = {
        key: torch.from_numpy(np.array(p, dtype=np.float32, copy=True))
        for key, p in zip(keys, params, strict=True)
    }
    model.load_state_dict(state, strict=True)


def load_data(partition_id: int, num_partitions: int, seed: int) -> Data:
    """This partition's share of the digits data: (x_train, y_train, x_test, y_test).

    The data ships with scikit-learn (no download); a permutation seeded by
    ``seed`` shuffles it before it is split into ``num_partitions`` parts.
    """
    digits = load_digits()
    x = np.asarray(digits.data, dtype=np.float32) / 16.0
    y = np.asarray(digits.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    part = np.array_split(order, max(num_partitions, 1))[partition_id]
    n_test = int(len(part) * TEST_FRACTION)
    test, train = part[:n_test], part[n_test:]
    return (
        torch.from_numpy(x[train]),
        torch.from_numpy(y[train]),
        torch.from_numpy(x[test]),
        torch.from_numpy(y[test]),
    )


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> None:
    """Mini-batch SGD; ``generator`` fixes the order of the batches."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(cross-entropy loss, accuracy) of ``model`` on (x, y)."""
    model.eval()
    logits = model(x)
    loss = float(nn.functional.cross_entropy(logits, y))
    accuracy = float((logits.argmax(dim=1) == y).double().mean())
    return loss, accuracy
