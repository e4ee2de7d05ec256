"""`SweepOptions`: what a sweep is run with besides its space and base config, typed once at the CLI boundary."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from hashtune.paths import RESULTS_DIR
from hashtune.tracking import STORE_RETRY_S

__all__ = ["SweepOptions"]


@dataclass(frozen=True)
class SweepOptions:
    """The flags of `python -m hashtune.sweep` that the driver reads (the space, the base and the budget reach it
    resolved, as `SearchSpace` and `Config`)."""

    space: str
    """As given (a shipped name or a YAML path): the resume line repeats it."""
    name: str | None = None
    """The experiment's name; None: the space's."""
    resume: str = "never"
    """`never` (refuse an existing sweep), `always` (continue one) or `auto` (continue one if it exists)."""
    results_dir: Path = RESULTS_DIR
    mlflow_uri: str | None = None
    """None: a SQLite store under `results_dir`."""
    storage: str | None = None
    """Tune's storage path or s3:// URI; None: `results_dir/ray`."""
    address: str | None = None
    """A Ray cluster to join; None: a local Ray this sweep starts and stops."""
    max_concurrent: int | None = None
    """None: the space's `max_concurrent`."""
    base: str | None = None
    """A finished tuning experiment every arm starts from (the resume line repeats it)."""
    overrides: tuple[str, ...] = ()
    """`key=value` config overrides as given (a resume compares them with the sweep's record)."""
    store_retry_s: float = STORE_RETRY_S
    """How long MLflow calls wait out a store that does not answer before the sweep stops for --resume."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SweepOptions:
        """The options of parsed `hashtune.sweep` arguments (flags the driver does not read are left out)."""
        values = {field.name: getattr(args, field.name) for field in fields(cls) if hasattr(args, field.name)}
        return cls(
            **values | {"overrides": tuple(values.get("overrides") or ()), "results_dir": Path(args.results_dir)}
        )
