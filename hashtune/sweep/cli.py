"""`python -m hashtune.sweep`: a Ray Tune + Optuna search over the trainer's config, tracked in MLflow.

    python -m hashtune.sweep --space NAME|FILE [--name EXP] [--resume [auto]] [--address auto]
                             [--mlflow-uri URI] [--storage PATH_OR_S3_URI] [--max-concurrent N]
                             [--budget '{cpu_hours: H}'] [key=value ...]

Each trial runs the plain trainer inside the trial process (`workers: 0`, the default on one
machine: no per-trial Ray Train start-up) or builds a Ray Train `TorchTrainer` (`workers: N`, for
clusters); both report the same metrics and checkpoints to Tune. The sweep ends with its study
(`hashtune.report`). Imports run one way: cli -> driver -> tuner -> trial.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from hashtune.config import Config, load_config, parse_overrides
from hashtune.console import show_logs
from hashtune.errors import HashtuneError
from hashtune.paths import RESULTS_DIR, no_world_write
from hashtune.sweep.driver import SweepHooks, SweepInterrupted, run_sweep
from hashtune.sweep.options import SweepOptions
from hashtune.sweep.space import SearchSpace, SpaceError, load_space
from hashtune.sweep.space_settings import Budget
from hashtune.sweep.tuned_base import tuned_base
from hashtune.tracking import STORE_RETRY_S, StoreClient, StoreUnavailable, resolve_tracking

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hashtune.sweep", description="Search hashing configs with Ray Tune + Optuna."
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every trial")
    parser.add_argument("--space", required=True, help="a shipped space name (search_spaces/NAME.yaml) or a YAML file")
    parser.add_argument("--name", help="experiment name (default: the space's name)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="always",
        default="never",
        choices=("never", "always", "auto"),
        help="continue an interrupted sweep of this name (`--resume`); `--resume auto` continues one if it exists, "
        "else starts it (what `make sweep` does); default: refuse to touch an existing sweep",
    )
    parser.add_argument("--address", help="Ray cluster address, e.g. auto (default: start a local Ray on 127.0.0.1)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: sqlite results/mlflow.db)")
    parser.add_argument("--storage", help="Tune storage path or s3:// URI (default: results/ray)")
    parser.add_argument("--max-concurrent", type=int, help="concurrent trials (default: the space's max_concurrent)")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where the default stores and the study go"
    )
    parser.add_argument(
        "--base", help="a finished tuning experiment: every arm starts from its best trial by the space's metric"
    )
    parser.add_argument(
        "--budget",
        help="cap the sweep's cost, as a space's `budget:` (and replacing it), e.g. '{cpu_hours: 2}' or "
        "'{gpu_hours: 8, hard: true, usd_per_gpu_hour: 3.06}'; a resumed sweep keeps the budget it started with",
    )
    parser.add_argument(
        "--store-retry-s",
        type=float,
        default=STORE_RETRY_S,
        help=f"how long MLflow calls wait out a store that does not answer before the sweep stops for --resume "
        f"(exit 75; default {STORE_RETRY_S:g})",
    )
    return parser


def main(argv: list[str] | None = None, *, hooks: SweepHooks | None = None) -> int:
    """`python -m hashtune.sweep`; `hooks` (tests, benchmarks) put a trial function or Tune callbacks into the sweep."""
    args = build_parser().parse_args(argv)
    no_world_write()
    show_logs()

    try:
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise SpaceError(
                f"--max-concurrent must be at least 1, got {args.max_concurrent} (leave it out for the space's "
                "max_concurrent)"
            )
        if not args.store_retry_s >= 0:
            raise SpaceError(f"--store-retry-s must be a number of seconds >= 0, got {args.store_retry_s}")
        base = load_config(overrides=args.overrides)
        space = load_space(args.space, base)
        base, space, provenance = _tuned(args, base, space)
        space = _with_budget(space, args.budget)
        summary = run_sweep(SweepOptions.from_args(args), base, space, provenance, hooks=hooks)
    except SweepInterrupted as stopped:
        print(f"hashtune.sweep: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except HashtuneError as error:
        print(f"hashtune.sweep: error: {error}", file=sys.stderr)
        return error.exit_code
    print(json.dumps(summary, indent=2, default=str))
    print(
        f"hashtune.sweep: {summary['experiment']}: {summary['ended_by']}; cost "
        + ", ".join(f"{key.removeprefix('cost/')} {value:,.1f}" for key, value in summary["cost"].items()),
        file=sys.stderr,
    )
    if summary.get("best"):
        _report(summary, Path(args.results_dir), args.store_retry_s)
    return 0 if summary.get("best") else 1


def _tuned(args, base: Config, space: SearchSpace) -> tuple[Config, SearchSpace, dict | None]:
    """With `--base` (or the space's `base:`): the tuned configuration, then the CLI's overrides, and the space
    re-validated on it with its `fixed` values given way to the tuned ones."""
    name = args.base or space.base
    if name is None:
        return base, space, None
    uri, _ = resolve_tracking(args.mlflow_uri, Path(args.results_dir), create=False)
    tuned, provenance = tuned_base(StoreClient(uri, args.store_retry_s), name, space.metric)
    tuned = tuned.replace(parse_overrides(args.overrides))
    return tuned, dataclasses.replace(load_space(args.space, tuned), fixed={}, base=name), provenance


def _with_budget(space: SearchSpace, text: str | None) -> SearchSpace:
    """The space with `--budget`'s mapping as its budget (checked as a space's `budget:` is)."""
    if text is None:
        return space
    from hashtune.strict_yaml import YamlError, read_yaml

    try:
        mapping = read_yaml(text)  # as a space file is read: `1e-3` is a number, a key given twice is refused
    except YamlError as error:
        raise SpaceError(f"--budget: {error}") from None
    if not isinstance(mapping, dict):
        raise SpaceError(
            f"--budget must be a mapping like '{{cpu_hours: 2}}' or '{{gpu_hours: 8, hard: true}}', got {text!r}"
        )
    return dataclasses.replace(space, budget=Budget.parse("--budget", mapping))


def _report(summary: dict, results_dir: Path, store_retry_s: float) -> None:
    """The study of the sweep's experiment into `results/<experiment>/` (and onto its parent run)."""
    from hashtune.report import ReportError, build_report

    out = results_dir / summary["experiment"].replace("/", "_")
    try:
        build_report(StoreClient(summary["mlflow_uri"], store_retry_s), summary["experiment"], out)
    except (
        ReportError,
        StoreUnavailable,
    ) as error:  # the sweep's runs are safe in MLflow; the report can be rebuilt later
        print(f"hashtune.sweep: report not built: {error}", file=sys.stderr)
        return
    print(f"study written to {out} (python -m hashtune.report --experiment {summary['experiment']} rebuilds it)")
