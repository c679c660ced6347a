"""tracking-numpy: a Flower ClientApp (Message API) that logs client-side scalars.

Each round it logs ``train_loss``, ``num_examples`` and ``eval_loss`` with flgate's
``SummaryWriter`` at step = the server's round. Through the gateway they reach the
relay as ``<site>/<tag>`` (``flgate job metrics``, the job's TensorBoard files); run
directly in plain Flower, they go to local TensorBoard files under
``runs/tracking-numpy/partition-<id>``.
"""

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from gateway.tracking.writer import SummaryWriter
from tracking_numpy import task

app = ClientApp()
_writers: dict[int, SummaryWriter] = {}


def _writer(partition_id: int) -> SummaryWriter:
    """One writer per process (and partition); the logdir is used outside the gateway only."""
    if partition_id not in _writers:
        _writers[partition_id] = SummaryWriter(f"runs/tracking-numpy/partition-{partition_id}")
    return _writers[partition_id]


def _partition(context: Context) -> tuple[int, int]:
    partition_id = int(context.node_config.get("partition-id", 0))
    num_partitions = int(context.node_config.get("num-partitions", 2))
    return partition_id, num_partitions


def _meta(partition_id: int) -> ConfigRecord:
    # Lets the ServerApp order replies deterministically before aggregating
    return ConfigRecord({"partition-id": partition_id})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on local data for a few gradient-descent steps."""
    partition_id, num_partitions = _partition(context)
    seed = int(context.run_config["seed"])
    epochs = int(context.run_config["local-epochs"])
    lr = float(msg.content["config"]["lr"])

    params = msg.content["arrays"].to_numpy_ndarrays()
    x_train, y_train, _, _ = task.load_data(partition_id, num_partitions, seed)
    new_params, train_loss = task.train(params, x_train, y_train, epochs, lr)

    server_round = int(msg.content["config"]["server-round"])
    writer = _writer(partition_id)
    writer.add_scalar("train_loss", train_loss, server_round)
    writer.add_scalar("num_examples", int(x_train.shape[0]), server_round)
    writer.flush()  # before the reply: the round's scalars travel ahead of it

    content = RecordDict(
        {
            "arrays": ArrayRecord(new_params),
            "metrics": MetricRecord(
                {"train_loss": train_loss, "num-examples": int(x_train.shape[0])}
            ),
            "meta": _meta(partition_id),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on local test data."""
    partition_id, num_partitions = _partition(context)
    seed = int(context.run_config["seed"])

    params = msg.content["arrays"].to_numpy_ndarrays()
    _, _, x_test, y_test = task.load_data(partition_id, num_partitions, seed)
    eval_loss = task.mse(params, x_test, y_test)

    server_round = int(msg.content["config"]["server-round"])
    writer = _writer(partition_id)
    writer.add_scalar("eval_loss", eval_loss, server_round)
    writer.flush()

    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    "eval_loss": eval_loss,
                    "eval_mae": task.mae(params, x_test, y_test),
                    "num-examples": int(x_test.shape[0]),
                }
            ),
            "meta": _meta(partition_id),
        }
    )
    return Message(content=content, reply_to=msg)
