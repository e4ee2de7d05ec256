"""Studies from a sweep's MLflow runs: ablation and sensitivity tables, parameter importance, plots.

`python -m hashtune.report --experiment NAME` reads every child run of the experiment through the
MLflow client API, writes the study folder (tables as Markdown and CSV, PNG plots, a README) and logs
it on the sweep's parent run under `report/`. `hashtune.sweep` runs it at the end of every sweep.
"""

from hashtune.report.build import build_report
from hashtune.report.runs import ReportError, Study, TrialRun, load_study

__all__ = ["build_report", "load_study", "ReportError", "Study", "TrialRun"]
