"""tracking-numpy: a Flower ServerApp (Message API) running FedAvg."""

import hashlib
import json
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from tracking_numpy import task

app = ServerApp()


def _order_key(msg: Message) -> tuple[int, int]:
    if msg.has_error():
        return (1, 0)
    meta = msg.content.config_records.get("meta")
    pid = meta.get("partition-id", 0) if meta is not None else 0
    return (0, int(pid))  # type: ignore[arg-type]


class OrderedFedAvg(FedAvg):
    """FedAvg that aggregates replies in partition-id order.

    Replies arrive in a nondeterministic order and floating-point sums are not
    associative; sorting makes the aggregate bit-identical across runs for any
    number of SuperNodes.
    """

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round, sorted(replies, key=_order_key))

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return super().aggregate_evaluate(
            server_round, sorted(replies, key=_order_key)
        )


def _params_sha256(arrays: ArrayRecord) -> str:
    digest = hashlib.sha256()
    for arr in arrays.to_numpy_ndarrays():
        digest.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _metrics(history: dict[int, MetricRecord]) -> dict[str, dict]:
    return {str(rnd): dict(history[rnd]) for rnd in sorted(history)}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedAvg for `num-server-rounds` and report one FLGATE-RESULT line."""
    cfg = context.run_config
    num_rounds = int(cfg["num-server-rounds"])
    min_nodes = int(cfg.get("min-nodes", 2))

    strategy = OrderedFedAvg(
        fraction_train=float(cfg["fraction-train"]),
        fraction_evaluate=float(cfg.get("fraction-evaluate", 1.0)),
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(task.initial_params(float(cfg.get("model-mib", 0)))),
        num_rounds=num_rounds,
        train_config=ConfigRecord({"lr": float(cfg["learning-rate"])}),
    )

    summary = {
        "rounds": num_rounds,
        "final_params_sha256": _params_sha256(result.arrays),
        "train_metrics": _metrics(result.train_metrics_clientapp),
        "evaluate_metrics": _metrics(result.evaluate_metrics_clientapp),
    }
    line = json.dumps(summary, sort_keys=True, separators=(",", ":"))
    print(f"FLGATE-RESULT {line}", flush=True)
