"""Search: spaces (`space`), the trial (`trial`), the Tuner (`tuner`), the driver (`driver`), MLflow per trial
(`mlflow_logger`) and the CLI (`cli`; `python -m hashtune.sweep`). Imports run cli -> driver -> tuner ->
trial -> space, never back; importing this package or `hashtune.sweep.space` loads neither Ray nor torch.
"""
