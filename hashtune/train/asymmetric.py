"""He & Wei's asymmetric strategy (after ADSH, Jiang & Li AAAI 2018): learned database codes.

The training set's codes `B` in {-1, +1} are variables. One outer iteration (one trainer "epoch"):
1. sample `train.asym_sample_size` training images (a generator seeded by (seed, epoch));
2. train the network `train.asym_inner_epochs` passes over the sample with `B` fixed, on
   `asymmetric_loss(u, B, S, B_sample) + cls_weight * classification_loss`, keeping each sampled
   image's latest network code `u` (ADSH keeps the codes of its last pass, not a fresh encoding);
3. update every column of `B` with ADSH's closed-form discrete rule (`update_database_codes`).

Retrieval: queries are always encoded by the network. Database items that are training images can be
retrieved by their learned `B` rows, as ADSH evaluates (`eval.database_codes=learned`), or by the network
like every other item (`encoder`, the default); the trainer logs both (`test/mAP_encoder`,
`test/mAP_learned`) for this strategy.

Choices where the papers are vague: `s_ij` is +1/-1 (ADSH); the loss is divided by `n * m * bits^2`, so its
scale (and the classification weight's meaning) does not depend on set sizes or code length; `B` starts as random signs
(seeded).
Under DDP, `B` is replicated on every rank: the sampled codes are all-gathered and every rank runs
the same deterministic update, so `B` needs no broadcast and stays identical.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from hashtune.config import Config
from hashtune.data import RetrievalData
from hashtune.train.losses import asymmetric_loss, classification_loss, similarity_matrix, update_database_codes
from hashtune.train.runtime import LocalRuntime
from hashtune.train.steps import EpochResult, autocast, check_finite, mean_terms, optimizer_step

__all__ = ["init_database_codes", "sample_indices", "AsymmetricStrategy"]


def init_database_codes(size: int, bits: int, seed: int) -> torch.Tensor:
    """Random {-1, +1} codes for the training set, the same for a seed on every machine and rank."""
    generator = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(size, bits, generator=generator) > 0.5, 1.0, -1.0)


def sample_indices(size: int, sample_size: int, seed: int, epoch: int) -> np.ndarray:
    """The training images of outer iteration `epoch`, sorted; a pure function of its arguments."""
    rng = np.random.default_rng([seed, epoch])
    return np.sort(rng.choice(size, size=min(sample_size, size), replace=False))


class AsymmetricStrategy:
    """Learned database codes `B` of the training set, trained alternately with the network (He & Wei, ADSH).

    Args: as `SymmetricStrategy`'s.
    """

    def __init__(self, *, config: Config, data: RetrievalData, runtime: LocalRuntime, per_worker_batch: int) -> None:
        self.config, self.runtime, self.per_worker_batch = config, runtime, per_worker_batch
        self.train_set, self.multi_label = data.train, data.multi_label
        self.database_codes = init_database_codes(len(data.train), config.model.bits, config.train.seed)

    def steps_per_epoch(self) -> int:
        t = self.config.train
        sample = min(t.asym_sample_size, len(self.train_set))
        return t.asym_inner_epochs * math.ceil(math.ceil(sample / self.runtime.world_size) / self.per_worker_batch)

    def _loader(self, sample: np.ndarray) -> DataLoader:
        t, runtime = self.config.train, self.runtime
        subset = Subset(self.train_set, sample)
        sampler = DistributedSampler(
            subset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=True, seed=t.seed
        )
        return DataLoader(
            subset, batch_size=self.per_worker_batch, sampler=sampler, num_workers=self.config.data.num_workers
        )

    def train_one_epoch(self, model: nn.Module, optimizer, scheduler, epoch: int) -> EpochResult:
        """One outer iteration: inner passes over a sample with `B` fixed, then the discrete update of `B`."""
        t, config, device = self.config.train, self.config, self.runtime.device
        sample = sample_indices(len(self.train_set), t.asym_sample_size, t.seed, epoch)
        loader = self._loader(sample)
        codes_b, train_labels = self.database_codes.to(device), self.train_set.labels.to(device)
        model.train()
        sums, steps, images_seen = {"loss": 0.0, "asym": 0.0, "cls": 0.0}, 0, 0
        for inner in range(t.asym_inner_epochs):
            loader.sampler.set_epoch(epoch * t.asym_inner_epochs + inner)
            last_codes, last_positions = [], []
            for images, labels, positions in loader:
                images, labels, positions = images.to(device), labels.to(device), positions.to(device)
                with autocast(config, device):
                    out = model(images)
                codes = out.codes.float()
                asym = asymmetric_loss(
                    codes,
                    codes_b,
                    similarity_matrix(labels, train_labels),
                    codes_b[positions],
                    gamma_a=config.loss.gamma_a,
                )
                cls = classification_loss(out.logits.float(), labels, multi_label=self.multi_label)
                loss = asym + config.loss.cls_weight * cls
                check_finite(loss, epoch, steps, scheduler.get_last_lr()[0])
                optimizer_step(loss, model, optimizer, scheduler, t.grad_clip)
                last_codes.append(codes.detach())
                last_positions.append(positions)
                for name, value in (("loss", loss), ("asym", asym), ("cls", cls)):
                    sums[name] += value.item()
                steps += 1
                images_seen += len(images)
        self.database_codes = self._update_codes(sample, codes_b, train_labels, last_codes, last_positions)
        return EpochResult(mean_terms(sums, steps, self.runtime), images_seen * self.runtime.world_size)

    def _update_codes(self, sample, codes_b, train_labels, last_codes, last_positions) -> torch.Tensor:
        """ADSH's closed-form update of every column of `B` from the sample's last network codes (CPU result)."""
        runtime, device = self.runtime, self.runtime.device
        sampled_codes = torch.zeros(len(self.train_set), codes_b.shape[1], device=device)
        sampled_codes[runtime.all_gather(torch.cat(last_positions))] = runtime.all_gather(torch.cat(last_codes))
        sample_index = torch.from_numpy(sample).to(device)
        sim = similarity_matrix(train_labels[sample_index], train_labels)
        new_codes = update_database_codes(
            sampled_codes[sample_index], codes_b, sim, sample_index, gamma_a=self.config.loss.gamma_a
        )
        return new_codes.cpu()

    def database_codes_for(self, data: RetrievalData, encoder_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the encoder's database codes, the same with training images' rows replaced by their learned B)."""
        learned = encoder_codes.clone()
        train, database = data.splits.train, np.asarray(data.splits.database)
        position = np.searchsorted(train, database).clip(max=len(train) - 1)  # train is sorted
        is_train = train[position] == database
        learned[torch.from_numpy(np.flatnonzero(is_train))] = self.database_codes[torch.from_numpy(position[is_train])]
        return encoder_codes, learned

    def state_dict(self) -> dict:
        return {"database_codes": self.database_codes}

    def load_state_dict(self, state: dict) -> None:
        self.database_codes = state["database_codes"]
