"""What both training strategies share: the lr schedule, sharded loaders, autocast, the finite check and
the optimizer step, and what an epoch returns."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from hashtune.config import Config
from hashtune.errors import HashtuneError
from hashtune.train.runtime import LocalRuntime

__all__ = [
    "NonFiniteLossError",
    "EpochResult",
    "warmup_cosine",
    "sharded_loader",
    "autocast",
    "check_finite",
    "optimizer_step",
    "mean_terms",
]


class NonFiniteLossError(HashtuneError, RuntimeError):
    """The training loss became NaN or infinite: the run fails instead of reporting a silent 0 mAP."""


@dataclass(frozen=True)
class EpochResult:
    """One epoch of a strategy: mean loss terms (`train/loss`, ...) and the training images forwarded."""

    metrics: dict[str, float]
    images: int
    """Forward passes over training images on every rank together (what makes strategies comparable)."""


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor: linear warm-up from 0, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def sharded_loader(
    dataset, runtime: LocalRuntime, *, batch_size: int, shuffle: bool, seed: int, num_workers: int
) -> DataLoader:
    """This rank's share of `dataset`; the order is a pure function of (seed, epoch) via `set_epoch`.

    Evaluation shards (`shuffle=False`) are padded by the sampler; `encode` removes the duplicates.
    """
    sampler = DistributedSampler(
        dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=shuffle, seed=seed
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=False)


def autocast(config: Config, device: torch.device):
    """bf16 autocast when `train.precision=bf16`, else nothing."""
    if config.train.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_finite(loss: torch.Tensor, epoch: int, step: int, lr: float) -> None:
    """Raise `NonFiniteLossError` (with what to change) when `loss` is NaN or infinite."""
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"train/loss became {loss.item()} at epoch {epoch} step {step} (lr {lr:.3g}); "
            "lower train.lr or loss.gamma, or use train.precision=fp32"
        )


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer, scheduler, grad_clip: float) -> None:
    """Backward, optional gradient clipping, optimizer and schedule step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()


def mean_terms(sums: dict[str, float], steps: int, runtime: LocalRuntime) -> dict[str, float]:
    """`{"train/<term>": mean over steps, averaged over ranks}` from per-step sums."""
    return {f"train/{name}": runtime.mean(total / max(steps, 1)) for name, total in sums.items()}
