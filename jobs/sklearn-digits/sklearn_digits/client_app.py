"""sklearn-digits: a Flower ClientApp (Message API)."""

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from sklearn_digits import task

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
    """Fit the received model on local data for a few L-BFGS iterations."""
    partition_id, num_partitions = _partition(context)
    cfg = context.run_config
    x_train, y_train, _, _ = task.load_data(partition_id, num_partitions, int(cfg["seed"]))
    params = msg.content["arrays"].to_numpy_ndarrays()
    new_params, loss, accuracy = task.train(
        params,
        x_train,
        y_train,
        int(cfg["local-iterations"]),
        float(cfg["inverse-regularization"]),
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(new_params),
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
    _, _, x_test, y_test = task.load_data(partition_id, num_partitions, int(cfg["seed"]))
    params = msg.content["arrays"].to_numpy_ndarrays()
    model = task.make_model(
        params, int(cfg["local-iterations"]), float(cfg["inverse-regularization"])
    )
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
