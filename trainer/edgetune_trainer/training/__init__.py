"""Fine-tuning on Ray Train: the run's plan, the DDP loop every worker runs, data and checkpoints, the
driver (`train.run_training`) and what it reports (progress, metrics, the FineTuneJob's status).
`cli.py` is the RayJob entrypoint, `edgetune-train`."""
