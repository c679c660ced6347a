"""Experiment tracking: a job's metric series and where they go.

The relay reads each job's ServerApp output into per-round series
(:mod:`.series`, pure), keeps them with the job, and hands them to exporters
(:mod:`.exporters`: TensorBoard event files per job, MLflow when configured),
whose failures are logged and never fail a job.
"""
