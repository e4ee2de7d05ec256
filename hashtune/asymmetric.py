"""He & Wei's asymmetric strategy (after ADSH, Jiang & Li AAAI 2018): learned database codes.

The training set's codes `B` in {-1, +1} are variables. One outer iteration (one trainer "epoch"):
1. sample `train.asym_sample_size` training images (a generator seeded by (seed, epoch));
2. train the network `train.asym_inner_epochs` passes over the sample with `B` fixed, on
   `asymmetric_loss(u, B, S, B_sample) + cls_weight * classification_loss`, keeping each sampled
   image's latest network code `u` (ADSH keeps the codes of its last pass, not a fresh encoding);
3. update every column of `B` with ADSH's closed-form discrete rule (`update_database_codes`).
Retrieval codes for queries and database come from the network, as in He & Wei.

Choices where the papers are vague: `s_ij` is +1/-1 (ADSH); the loss is divided by `n * m * bits^2`, so its
scale (and the classification weight's meaning) does not depend on set sizes or code length; `B` starts as random signs (seeded).
Under DDP, `B` is replicated on every rank: the sampled codes are all-gathered and every rank runs
the same deterministic update, so `B` needs no broadcast and stays identical.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from hashtune.losses import asymmetric_loss, classification_loss, similarity_matrix, update_database_codes

__all__ = ["init_database_codes", "sample_indices", "train_one_epoch_asymmetric"]


def init_database_codes(size: int, bits: int, seed: int) -> torch.Tensor:
    """Random {-1, +1} codes for the training set, the same for a seed on every machine and rank."""
    generator = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(size, bits, generator=generator) > 0.5, 1.0, -1.0)


def sample_indices(size: int, sample_size: int, seed: int, epoch: int) -> np.ndarray:
    """The training images of outer iteration `epoch`, sorted; a pure function of its arguments."""
    rng = np.random.default_rng([seed, epoch])
    return np.sort(rng.choice(size, size=min(sample_size, size), replace=False))


def train_one_epoch_asymmetric(
    model, train_set, database_codes: torch.Tensor, optimizer, scheduler, *, per_worker_batch: int, config, multi_label: bool,
    runtime, epoch: int,
) -> tuple[dict[str, float], torch.Tensor]:
    """One outer iteration; returns the mean loss terms and the updated `B` (on the CPU)."""
    from hashtune.trainer import autocast, check_finite, optimizer_step

    t, device = config.train, runtime.device
    sample = sample_indices(len(train_set), t.asym_sample_size, t.seed, epoch)
    subset = Subset(train_set, sample)
    sampler = DistributedSampler(subset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=True, seed=t.seed)
    loader = DataLoader(subset, batch_size=per_worker_batch, sampler=sampler, num_workers=config.data.num_workers)
    codes_b = database_codes.to(device)
    train_labels = train_set.labels.to(device)
    model.train()
    sums, steps, images_seen = {"loss": 0.0, "asym": 0.0, "cls": 0.0}, 0, 0
    for inner in range(t.asym_inner_epochs):
        sampler.set_epoch(epoch * t.asym_inner_epochs + inner)
        last_codes, last_positions = [], []
        for images, labels, positions in loader:
            images, labels, positions = images.to(device), labels.to(device), positions.to(device)
            with autocast(config, device):
                out = model(images)
            codes = out.codes.float()
            asym = asymmetric_loss(codes, codes_b, similarity_matrix(labels, train_labels), codes_b[positions], gamma_a=config.loss.gamma_a)
            cls = classification_loss(out.logits.float(), labels, multi_label=multi_label)
            loss = asym + config.loss.cls_weight * cls
            check_finite(loss, epoch, steps, scheduler.get_last_lr()[0])
            optimizer_step(loss, model, optimizer, scheduler, t.grad_clip)
            last_codes.append(codes.detach())
            last_positions.append(positions)
            for name, value in (("loss", loss), ("asym", asym), ("cls", cls)):
                sums[name] += value.item()
            steps += 1
            images_seen += len(images)
    sampled_codes = torch.zeros(len(train_set), codes_b.shape[1], device=device)
    sampled_codes[runtime.all_gather(torch.cat(last_positions))] = runtime.all_gather(torch.cat(last_codes))
    sample_index = torch.from_numpy(sample).to(device)
    sim = similarity_matrix(train_labels[sample_index], train_labels)
    new_codes = update_database_codes(sampled_codes[sample_index], codes_b, sim, sample_index, gamma_a=config.loss.gamma_a)
    metrics = {f"train/{name}": runtime.mean(total / max(steps, 1)) for name, total in sums.items()}
    return metrics | {"_images": images_seen * runtime.world_size}, new_codes.cpu()
