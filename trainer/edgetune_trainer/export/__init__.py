"""Edge export of a trained model: graph (ONNX / TorchScript) -> quantization (int8, fp16) -> checks and
budgets -> manifest, published to storage. `target.run_target` does one target; `cli.py` is the export
Job's entrypoint, `edgetune-export`; `predict.py` runs a published export (`edgetune predict`)."""
