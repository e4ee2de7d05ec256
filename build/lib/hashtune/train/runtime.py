"""Where the trainer runs: one process (`LocalRuntime`) or one rank of a DDP group.

The trainer talks to its process group only through `LocalRuntime`'s interface, so the same epoch loop runs
alone, inside a Ray Tune trial, or as a Ray Train worker (`hashtune.train.distributed.RayTrainRuntime`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from hashtune.config import ConfigError

__all__ = ["LocalRuntime", "resolve_device"]

ReportFn = Callable[[dict[str, float], Path | None], None]


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; asking for CUDA without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


class LocalRuntime:
    """The plain single-process trainer: rank 0 of a world of 1 (`python -m hashtune.train`, or a
    Tune trial with `workers: 0`). Distributed runtimes override the collective parts."""

    rank: int = 0
    world_size: int = 1

    def __init__(self, device: torch.device, report_fn: ReportFn | None = None) -> None:
        self.device = device
        self._report_fn = report_fn

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and talks to MLflow."""
        return self.rank == 0

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move the model to the device (and wrap it for DDP in distributed runtimes)."""
        return model.to(self.device)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equally shaped tensors of every rank along dim 0, in rank order."""
        return tensor

    def mean(self, value: float) -> float:
        """Mean of a scalar over ranks."""
        return value

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """Hand metrics (and the run folder holding the latest checkpoint) to whoever drives the run."""
        if self._report_fn is not None:
            self._report_fn(metrics, checkpoint_dir)
