"""TransHash's symmetric strategy (Chen et al. 2021): every in-batch image pair goes through the network.

One epoch is one pass over this rank's shard of the training set on `transhash_objective`: the weighted
pair likelihood (Cauchy or sigmoid), the Cauchy quantization term and He & Wei's classification term.
Under DDP each rank scores its rows against the whole batch of every rank, so W workers of b images
train on the (W b)^2 pairs that one process would, with the same weights and gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from hashtune.config import Config
from hashtune.data import RetrievalData
from hashtune.train.losses import WholeBatch, transhash_objective
from hashtune.train.model import HashOutput
from hashtune.train.runtime import LocalRuntime
from hashtune.train.steps import EpochResult, autocast, check_finite, mean_terms, optimizer_step, sharded_loader

__all__ = ["SymmetricStrategy", "symmetric_loss"]


def symmetric_loss(out: HashOutput, labels: torch.Tensor, *, config: Config, runtime: LocalRuntime, multi_label: bool):
    """`transhash_objective` of this rank's batch; under DDP over the whole batch of every rank (see `WholeBatch`)."""
    head_codes = [codes.float() for codes in out.head_codes]
    batch = None
    if runtime.world_size > 1:  # every rank's batch has the same size: DistributedSampler pads the shards
        batch = WholeBatch(
            head_codes=tuple(runtime.all_gather_with_grad(codes) for codes in head_codes),
            labels=runtime.all_gather(labels),
            row_offset=runtime.rank * len(labels),
            world_size=runtime.world_size,
        )
    return transhash_objective(
        head_codes,
        out.logits.float(),
        labels,
        gamma=config.loss.gamma,
        prob=config.loss.prob,
        quant_weight=config.loss.quant_weight,
        cls_weight=config.loss.cls_weight,
        multi_label=multi_label,
        batch=batch,
    )


class SymmetricStrategy:
    """In-batch pairs of the training set (TransHash).

    Args:
        config: the run's config.
        data: the protocol's datasets (its `train` split is used).
        runtime: this process's place in the worker group.
        per_worker_batch: images per step on this rank.
    """

    def __init__(self, *, config: Config, data: RetrievalData, runtime: LocalRuntime, per_worker_batch: int) -> None:
        self.config, self.runtime, self.multi_label = config, runtime, data.multi_label
        self.loader = sharded_loader(
            data.train,
            runtime,
            batch_size=per_worker_batch,
            shuffle=True,
            seed=config.train.seed,
            num_workers=config.data.num_workers,
        )

    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def train_one_epoch(self, model: nn.Module, optimizer, scheduler, epoch: int) -> EpochResult:
        """One pass over the shard; returns the mean loss terms and the images forwarded."""
        config, device = self.config, self.runtime.device
        model.train()
        self.loader.sampler.set_epoch(epoch)
        sums: dict[str, float] = {}
        images_seen, steps = 0, 0
        for step, (images, labels, _) in enumerate(self.loader):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast(config, device):
                out = model(images)
            loss, terms = symmetric_loss(out, labels, config=config, runtime=self.runtime, multi_label=self.multi_label)
            check_finite(loss, epoch, step, scheduler.get_last_lr()[0])
            optimizer_step(loss, model, optimizer, scheduler, config.train.grad_clip)
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + value.item()
            images_seen += len(images)
            steps += 1
        return EpochResult(mean_terms(sums, steps, self.runtime), images_seen * self.runtime.world_size)

    def database_codes_for(self, data, encoder_codes):
        """No learned codes: the database is always encoded by the network."""
        return None

    def state_dict(self) -> dict:
        """Nothing beyond the model and optimizer: the loader's order is a function of (seed, epoch)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state
