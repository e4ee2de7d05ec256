"""Self-describing checkpoints: written atomically, read with `torch.load(weights_only=True)`.

A checkpoint holds the model, optimizer and scheduler states, the epoch, the resolved config, the RNG
states, the best-so-far model by `val/mAP`, the history, the split indices and, for the asymmetric
strategy, the learned database codes. One loader serves `--resume DIR` and Ray Train restores.
"""

from __future__ import annotations

import pickle
import random
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from hashtune.errors import InputError
from hashtune.paths import atomic_file

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "copy_run_folder",
]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "hashtune-checkpoint-v1"
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "epoch", "config", "rng", "history")


class CheckpointError(InputError):
    """A checkpoint that cannot be read; the message names the file and why."""


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop draws from (torch CPU and CUDA, Python's `random`)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` atomically: a temp file in the same folder, then a rename."""
    with atomic_file(path, "wb") as handle:
        torch.save({"format": FORMAT, **state}, handle)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, or a folder holding `checkpoint.pt`.

    Raises:
        CheckpointError: missing, truncated, corrupt, or not a hashtune checkpoint (one line).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; expected a run folder holding {CHECKPOINT_NAME}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's note on foreign pickle protocols; we fail below
            state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path} is not a readable hashtune checkpoint (truncated or corrupt: {reason[:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a hashtune checkpoint (expected format {FORMAT})")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; it was not written by hashtune's trainer")
    return state


def copy_run_folder(source: str | Path, target: Path) -> Path:
    """Copy the files of a run folder (a checkpoint directory) into `target`; returns `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for item in Path(source).iterdir():
        if item.is_file():
            shutil.copy2(item, target / item.name)
    return target
