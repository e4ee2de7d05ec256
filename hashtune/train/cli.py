"""`python -m hashtune.train`: train one hashing model, alone or as Ray Train DDP workers.

    python -m hashtune.train [--config FILE.yaml] [key=value ...] --out DIR [--resume DIR]
                             [--workers N] [--gpus-per-worker G] [--address ADDR] [--storage PATH_OR_URI]

The run folder gets config.yaml, splits.npz, checkpoint.pt, history.csv, metrics.json, pr_curve.png.
`--resume DIR` continues the run in DIR from its checkpoint with the config it was started with.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hashtune.config import Config, ConfigError, check_schedule, load_config
from hashtune.errors import HashtuneError
from hashtune.paths import no_world_write, report_disk_full
from hashtune.train.checkpoint import CheckpointError
from hashtune.train.steps import NonFiniteLossError
from hashtune.train.trainer import fit

__all__ = ["main", "resolve_cli_config"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hashtune.train", description="Train a TransHash model.")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. model.bits=64")
    parser.add_argument("--config", type=Path, help="YAML file of config values")
    parser.add_argument("--out", type=Path, help="run folder (default: the --resume folder)")
    parser.add_argument("--resume", type=Path, help="continue the run in this folder from its checkpoint")
    parser.add_argument(
        "--workers", type=int, default=0, help="Ray Train DDP workers (0: the plain single-process loop)"
    )
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray Train worker (NCCL when > 0)")
    parser.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="CPUs (and torch threads) per worker; a GPU worker wants several "
        "(results/gpu.md: 1 CPU fed an H200 0.70x)",
    )
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--storage", help="Ray Train storage path or s3:// URI (default: <out>/ray)")
    parser.add_argument("--max-failures", type=int, default=2, help="worker-group restarts Ray Train may make")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def resolve_cli_config(args: argparse.Namespace) -> Config:
    """Defaults -> --config -> overrides; with --resume, the run's own config.yaml replaces the defaults."""
    if args.resume is not None:
        saved = args.resume / "config.yaml"
        if not saved.is_file():
            raise CheckpointError(f"--resume {args.resume}: no config.yaml there; expected a hashtune run folder")
        config = load_config(saved, args.overrides)
        if args.config is not None:
            raise ConfigError("--config cannot be combined with --resume: the run keeps the config it was started with")
        return config
    config = load_config(args.config, args.overrides)
    check_schedule(config)
    return config


def _check_out(out: Path, resume: Path | None) -> None:
    """`--out` is a new or empty folder, or the run being resumed: never a file, never another run overwritten."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the run")
    holds_run = out.is_dir() and any((out / name).exists() for name in ("config.yaml", "checkpoint.pt", "metrics.json"))
    if holds_run and (resume is None or resume.absolute() != out.absolute()):
        raise ConfigError(f"--out {out} already holds a run; continue it with --resume {out}, or pick a new --out")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    no_world_write()
    out = args.out or args.resume
    if out is None:
        print("hashtune.train: error: give --out DIR (or --resume DIR)", file=sys.stderr)
        return 2
    if args.workers < 0:
        print(
            f"hashtune.train: error: --workers={args.workers}; expected 0 (plain loop) or a positive number",
            file=sys.stderr,
        )
        return 2
    try:
        _check_out(out, args.resume)
        config = resolve_cli_config(args)
        if args.workers > 0:
            from hashtune.train.distributed import fit_distributed

            metrics = fit_distributed(
                config,
                run_dir=out,
                resume_from=args.resume,
                workers=args.workers,
                gpus_per_worker=args.gpus_per_worker,
                cpus_per_worker=args.cpus_per_worker,
                address=args.address,
                storage=args.storage,
                max_failures=args.max_failures,
            )
        else:
            metrics = fit(config, run_dir=out, resume_from=args.resume, show_progress=not args.no_progress)
    except NonFiniteLossError as error:
        print(f"hashtune.train: failed: {error}", file=sys.stderr)
        return 1
    except HashtuneError as error:
        print(f"hashtune.train: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        return report_disk_full("hashtune.train", error, out)
    print(json.dumps({key: metrics[key] for key in sorted(metrics) if key.startswith("test/")}, indent=2))
    print(f"run folder: {out}")
    return 0
