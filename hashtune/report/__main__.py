"""`python -m hashtune.report --experiment NAME [--mlflow-uri URI] [--out DIR]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hashtune.config import require_val_metric
from hashtune.errors import HashtuneError
from hashtune.metric_names import SELECTION_METRIC
from hashtune.paths import RESULTS_DIR, no_world_write, report_disk_full
from hashtune.report.build import build_report
from hashtune.report.pareto_study import parse_objectives
from hashtune.tracking import resolve_tracking


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hashtune.report", description="Tables and plots of a sweep, from its MLflow runs."
    )
    parser.add_argument(
        "--experiment", required=True, help="the sweep's MLflow experiment (its --name, default the space's name)"
    )
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: sqlite results/mlflow.db)")
    parser.add_argument("--out", type=Path, help="study folder (default: results/<experiment>)")
    parser.add_argument(
        "--metric",
        default=SELECTION_METRIC,
        help="selection metric for best runs and importance (default: val/best_mAP)",
    )
    parser.add_argument(
        "--reference",
        help="the variant ablation differences are taken against (default: the sweep's, the first its space lists)",
    )
    parser.add_argument(
        "--objectives",
        help="a Pareto study over these, e.g. val/best_mAP:max,code/bits:min (default: a multi-objective sweep's own)",
    )
    parser.add_argument("--no-log", action="store_true", help="do not log the study on the sweep's parent run")
    return parser


def main(argv: list[str] | None = None) -> int:
    from mlflow import MlflowClient

    args = build_parser().parse_args(argv)
    no_world_write()
    try:
        require_val_metric(args.metric)
        uri, _ = resolve_tracking(args.mlflow_uri, RESULTS_DIR, create=False)
        out = args.out or RESULTS_DIR / args.experiment.replace("/", "_")
        written = build_report(
            MlflowClient(uri),
            args.experiment,
            out,
            metric=args.metric,
            reference=args.reference,
            log_to_parent=not args.no_log,
            objectives=parse_objectives(args.objectives) if args.objectives else None,
        )
    except HashtuneError as error:
        print(f"hashtune.report: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        return report_disk_full("hashtune.report", error, args.out or RESULTS_DIR)
    print(f"study of {args.experiment!r} written to {out}:")
    for path in written:
        print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
