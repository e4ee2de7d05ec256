"""Where the trainer runs: one process (`LocalRuntime`) or one rank of a DDP group.

The trainer talks to its process group only through `LocalRuntime`'s interface, so the same epoch loop runs
alone, inside a Ray Tune trial, or as a Ray Train worker (`hashtune.train.distributed.RayTrainRuntime`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as distributed_functional
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hashtune.config import ConfigError

__all__ = ["LocalRuntime", "DistributedRuntime", "resolve_device"]

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

    def all_gather_with_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        """`all_gather` whose backward sends each rank the gradient of every rank's loss w.r.t. its own part."""
        return tensor

    def mean(self, value: float) -> float:
        """Mean of a scalar over ranks."""
        return value

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """Hand metrics (and the run folder holding the latest checkpoint) to whoever drives the run."""
        if self._report_fn is not None:
            self._report_fn(metrics, checkpoint_dir)


class DistributedRuntime(LocalRuntime):
    """One rank of an initialised `torch.distributed` process group (gloo on CPU, NCCL on GPU): DDP and
    collectives. `hashtune.train.distributed.RayTrainRuntime` is this inside a Ray Train worker."""

    def __init__(self, device: torch.device, rank: int, world_size: int, report_fn: ReportFn | None = None) -> None:
        super().__init__(device, report_fn)
        self.rank, self.world_size = rank, world_size

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())  # gloo and NCCL both need the tensor on the backend's device
        return torch.cat(parts)

    def all_gather_with_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        with warnings.catch_warnings():  # torch suggests a private module instead; this public one is exact
            warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
            return torch.cat(distributed_functional.all_gather(tensor.contiguous()))

    def mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.item() / self.world_size
