"""torch-digits: a Flower ClientApp (Message API)."""

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from torch_digits import task

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    partition_id = int(context.node_config.get("partition-id", 0))
    num_partitions = int(context.node_config.get("num-partitions", 2))
    return partition_id, num_partitions


def _meta(partition_id: int) -> ConfigRecord:
    # Lets the ServerApp order replies deterministically before aggregating
    return ConfigRecord({"partition-id": partition_id})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on local data for `local-epochs` epochs of SGD."""
    partition_id, num_partitions = _partition(context)
    cfg = context.run_config
    seed = int(cfg["seed"])
    server_round = int(msg.content["config"]["server-round"])
    task.make_deterministic(seed)
    # The batch order depends on the seed, the round and the partition only.
    generator = torch.Generator().manual_seed(
        seed * 1_000_003 + server_round * 1_009 + partition_id
    )

    x_train, y_train, _, _ = task.load_data(partition_id, num_partitions, seed)
    model = task.make_model(int(cfg["hidden-units"]))
    task.set_params(model, msg.content["arrays"].to_numpy_ndarrays())
    task.train(
        model,
        x_train,
        y_train,
        epochs=int(cfg["local-epochs"]),
        batch_size=int(cfg["batch-size"]),
        lr=float(msg.content["config"]["lr"]),
        generator=generator,
    )
    loss, accuracy = task.evaluate(model, x_train, y_train)
    content = RecordDict(
        {
            "arrays": ArrayRecord(task.get_params(model)),
            "metrics": MetricRecord(
                {
                    "train_loss": loss,
                    "train_accuracy": accuracy,
                    "num-examples": int(x_train.shape[0]),
                }
            ),
            "meta": _meta(partition_id),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on local test data."""
    partition_id, num_partitions = _partition(context)
    cfg = context.run_config
    task.make_deterministic(int(cfg["seed"]))
    _, _, x_test, y_test = task.load_data(partition_id, num_partitions, int(cfg["seed"]))
    model = task.make_model(int(cfg["hidden-units"]))
    task.set_params(model, msg.content["arrays"].to_numpy_ndarrays())
    loss, accuracy = task.evaluate(model, x_test, y_test)
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    "eval_loss": loss,
                    "eval_accuracy": accuracy,
                    "num-examples": int(x_test.shape[0]),
                }
            ),
            "meta": _meta(partition_id),
        }
    )
    return Message(content=content, reply_to=msg)
