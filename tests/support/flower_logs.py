"""Flower ServerApp output as `flwr run --stream` prints it: one Message API run, the
summary of a legacy-workflow run."""

MESSAGE_API_LOG = """\
INFO :      [ROUND 1/2]
INFO :      configure_train: Sampled 2 nodes (out of 2)
INFO :      aggregate_train: Received 2 results and 0 failures
INFO :      \t└──> Aggregated MetricRecord: {'train_loss': 1.839837577587128}
INFO :      configure_evaluate: Sampled 2 nodes (out of 2)
INFO :      aggregate_evaluate: Received 2 results and 0 failures
INFO :      \t└──> Aggregated MetricRecord: {'eval_loss': 2.367820038909307, 'eval_mae': 1.27}
INFO :      [ROUND 2/2]
INFO :      aggregate_train: Received 2 results and 0 failures
INFO :      \t└──> Aggregated MetricRecord: {'train_loss': 0.265550035626243, 'hist': [1, 2.5]}
INFO :      aggregate_evaluate: Received 2 results and 0 failures
INFO :      \t└──> Aggregated MetricRecord: {'eval_loss': 0.36110381530368074, 'eval_mae': 0.5}
INFO :      Final results:
"""

LEGACY_LOG = """\
INFO :      [SUMMARY]
INFO :      Run finished 2 round(s) in 10.92s
INFO :      \tHistory (loss, distributed):
INFO :      \t\tround 1: 2.25
INFO :      \t\tround 2: 0.75
INFO :      \tHistory (metrics, distributed, fit):
INFO :      \t{'accuracy': [(1, 0.5),
INFO :      \t              (2, 0.875)]}
INFO :      \tHistory (metrics, distributed, evaluate):
INFO :      \t{'accuracy': [(1, 0.25), (2, 0.625)]}
INFO :
"""
