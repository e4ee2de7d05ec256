"""Hashing losses of TransHash (Chen et al. 2021) and He & Wei (2023), as pure tensor functions.

References:
    * TransHash, Chen et al. 2021, "TransHash: Transformer-based Hamming Hashing for Efficient Image
      Retrieval", Sec. 3.3: the weighted Bayesian pair likelihood (Eq. 4-6) with the Cauchy
      probability of the relaxed Hamming distance (Eq. 7-8) and the Cauchy quantization loss (Eq. 9),
      both taken from DCH (Cao et al. CVPR 2018, Eq. 5-9).
    * w/o C ablation: the sigmoid probability of the inner product (DHN, Zhu et al. AAAI 2016, Eq. 2-3).
    * He & Wei 2023: a classification loss on the hash codes plus the asymmetric strategy of ADSH
      (Jiang & Li, AAAI 2018, Eq. 3-4), whose closed-form discrete update of the database codes is
      `update_database_codes` below (ADSH Eq. 6-8).

Every function takes tensors and explicit hyper-parameters and returns tensors; nothing here knows
about models, optimizers or Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hashtune.errors import InputError

__all__ = [
    "similarity_matrix",
    "relaxed_hamming_distance",
    "pairwise_likelihood_loss",
    "cauchy_quantization_loss",
    "classification_loss",
    "transhash_objective",
    "WholeBatch",
    "asymmetric_loss",
    "asymmetric_objective",
    "update_database_codes",
]

PROBABILITIES = ("cauchy", "sigmoid")
_DISTANCE_EPS = 1e-6


def similarity_matrix(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """Pairwise relevance in {0, 1}: two items are similar iff their multi-hot labels share a class."""
    return (labels_a.float() @ labels_b.float().T > 0).float()


def relaxed_hamming_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`(bits / 2) * (1 - cos(a_i, b_j))` for every row pair (DCH Eq. 7), shape (len(a), len(b))."""
    bits = a.shape[1]
    cosine = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    return (bits / 2.0) * (1.0 - cosine)


def _off_diagonal(rows: int, columns: int, row_offset: int, device: torch.device) -> torch.Tensor:
    """False where row i meets its own column `row_offset + i`."""
    mask = torch.ones(rows, columns, dtype=torch.bool, device=device)
    own = torch.arange(rows, device=device)
    mask[own, own + row_offset] = False
    return mask


def _pair_counts(sim: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`|S|`, `|S1|`, `|S0|`: ordered pairs i != j of a square similarity matrix, similar and dissimilar."""
    pairs = _off_diagonal(sim.shape[0], sim.shape[1], 0, sim.device)
    return tuple(mask.sum().to(dtype) for mask in (pairs, (sim > 0) & pairs, (sim <= 0) & pairs))


def pairwise_likelihood_loss(
    codes: torch.Tensor,
    sim: torch.Tensor,
    *,
    gamma: float,
    prob: str = "cauchy",
    columns: torch.Tensor | None = None,
    row_offset: int = 0,
    column_sim: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted Bayesian pair loss over all ordered pairs i != j of a batch (TransHash Eq. 4-8).

    Args:
        codes: continuous codes `h` of the rows, shape (n, b).
        sim: similarity `s_ij` in {0, 1} of rows to columns, shape (n, N); pairs of an item with itself are ignored.
        gamma: scale of the Cauchy distribution (unused for `prob="sigmoid"`).
        prob: `"cauchy"` (TransHash, DCH) or `"sigmoid"` (the w/o C ablation, DHN).
        columns: codes of the whole batch (N, b) when the rows are one rank's share of it (row i is
            column `row_offset + i`); default: the rows themselves.
        column_sim: the whole batch's (N, N) similarity, whose pair counts give `|S|`, `|S1|`, `|S0|`;
            default: `sim`. Summing the rows' losses over the ranks then gives the whole batch's loss.

    Returns:
        `sum_ij w_ij * l_ij / |S|` with `w_ij = |S|/|S1|` for similar pairs and `|S|/|S0|` for
        dissimilar ones (a class with no pair gets weight 0), and
        `l_ij = s log(1 + d/gamma) + (1 - s) log(1 + gamma/d)` (Cauchy, `d` the relaxed Hamming
        distance clamped below at 1e-6) or `l_ij = log(1 + exp(<h_i,h_j>/2)) - s <h_i,h_j>/2` (sigmoid).
    """
    if prob not in PROBABILITIES:
        raise InputError(f"prob={prob!r} is not a pair probability; expected one of {PROBABILITIES}")
    columns = codes if columns is None else columns
    pairs = _off_diagonal(codes.shape[0], columns.shape[0], row_offset, codes.device)
    sim = sim.to(codes.dtype)
    if prob == "cauchy":
        distance = relaxed_hamming_distance(codes, columns).clamp_min(_DISTANCE_EPS)
        pair_loss = sim * torch.log1p(distance / gamma) + (1 - sim) * torch.log1p(gamma / distance)
    else:
        half_inner = (codes @ columns.T) / 2.0
        pair_loss = F.softplus(half_inner) - sim * half_inner
    similar, dissimilar = (sim > 0) & pairs, (sim <= 0) & pairs
    total_pairs, n_similar, n_dissimilar = _pair_counts(
        sim if column_sim is None else column_sim.to(codes.dtype), codes.dtype
    )
    weights = torch.zeros_like(pair_loss)
    if n_similar > 0:
        weights = torch.where(similar, total_pairs / n_similar, weights)
    if n_dissimilar > 0:
        weights = torch.where(dissimilar, total_pairs / n_dissimilar, weights)
    return (weights * pair_loss).sum() / total_pairs.clamp_min(1)


def cauchy_quantization_loss(codes: torch.Tensor, *, gamma: float) -> torch.Tensor:
    """Mean over rows of `log(1 + d(|h_i|, 1) / gamma)`, `d` the relaxed Hamming distance (TransHash Eq. 9)."""
    ones = torch.ones(1, codes.shape[1], dtype=codes.dtype, device=codes.device)
    distance = relaxed_hamming_distance(codes.abs(), ones).squeeze(1)
    return torch.log1p(distance / gamma).mean()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, *, multi_label: bool) -> torch.Tensor:
    """Cross-entropy for single-label data (one-hot `labels`), BCE-with-logits for multi-label data."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return F.cross_entropy(logits, labels.argmax(dim=1))


def transhash_objective(
    head_codes: list[torch.Tensor] | tuple[torch.Tensor, ...],
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    gamma: float,
    prob: str,
    quant_weight: float,
    cls_weight: float,
    multi_label: bool,
    batch: WholeBatch | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TransHash's objective with He & Wei's classification term.

    `pair` is the pair loss of the global head plus the mean pair loss of the local heads; `quant` is
    the same combination of Cauchy quantization losses; the total is
    `pair + quant_weight * quant + cls_weight * cls`.

    Args:
        head_codes: continuous codes per head, global first (a single entry for the w/o P ablation).
        logits: class logits of the batch.
        labels: multi-hot labels, shape (n, classes).
        gamma, prob: see `pairwise_likelihood_loss`.
        quant_weight: lambda of the papers (0 is the w/o Q ablation).
        cls_weight: weight of the classification loss (0 drops it).
        multi_label: whether `labels` may hold several classes per item.
        batch: under data parallelism, the whole batch this rank's rows belong to (`WholeBatch`): the
            pair term is then this rank's rows against every column, scaled by the world size, so that
            DDP's gradient averaging yields the gradient of the single-process objective on the whole batch.

    Returns:
        The total loss and its named terms `pair`, `quant`, `cls`.
    """
    batch = batch or WholeBatch(head_codes=tuple(head_codes), labels=labels)
    sim, column_sim = similarity_matrix(labels, batch.labels), similarity_matrix(batch.labels, batch.labels)

    def combine(per_head) -> torch.Tensor:
        """The global head's term plus the mean of the local heads' terms."""
        value = per_head(0)
        if len(head_codes) > 1:
            value = value + torch.stack([per_head(head) for head in range(1, len(head_codes))]).mean()
        return value

    pair = batch.world_size * combine(
        lambda head: pairwise_likelihood_loss(
            head_codes[head],
            sim,
            gamma=gamma,
            prob=prob,
            columns=batch.head_codes[head],
            row_offset=batch.row_offset,
            column_sim=column_sim,
        )
    )
    quant = combine(lambda head: cauchy_quantization_loss(head_codes[head], gamma=gamma))
    cls = classification_loss(logits, labels, multi_label=multi_label)
    total = pair + quant_weight * quant + cls_weight * cls
    return total, {"pair": pair, "quant": quant, "cls": cls}


@dataclass(frozen=True)
class WholeBatch:
    """The batch of every rank, as one rank sees it: all heads' codes (gathered with gradients), all labels,
    where this rank's rows start, and the number of ranks (1 for a single process)."""

    head_codes: tuple[torch.Tensor, ...]
    labels: torch.Tensor
    row_offset: int = 0
    world_size: int = 1


def _signed_similarity(sim: torch.Tensor) -> torch.Tensor:
    return 2.0 * sim - 1.0


def _asymmetric_terms(codes, database_codes, sim, own_database_codes, gamma_a: float) -> torch.Tensor:
    """`sum_ij (u_i . b_j - bits * s_ij)^2 + gamma_a * sum_i ||b_i - u_i||^2`, `s_ij` in {-1, +1}."""
    target = codes.shape[1] * _signed_similarity(sim.to(codes.dtype))
    square = (codes @ database_codes.T - target).pow(2).sum()
    return square + gamma_a * (own_database_codes - codes).pow(2).sum()


def asymmetric_loss(
    codes: torch.Tensor,
    database_codes: torch.Tensor,
    sim: torch.Tensor,
    own_database_codes: torch.Tensor,
    *,
    gamma_a: float,
) -> torch.Tensor:
    """ADSH's asymmetric loss (Eq. 3) for a batch, normalised by `n * m * bits^2`.

    `sum_ij (u_i . b_j - bits * s_ij)^2 + gamma_a * sum_i ||b_i - u_i||^2`, divided by `n * m * bits^2`,
    with `s_ij` in {-1, +1} (ADSH's convention; `sim` is given in {0, 1}). The normalisation makes each
    pair term `(u_i . b_j / bits - s_ij)^2`, of order 1 whatever the code length and set sizes, so the
    classification weight and the learning rate transfer across bits; it leaves the optimum in `B`
    (and so `update_database_codes`) unchanged.

    Args:
        codes: network codes `u` of the batch, shape (n, bits).
        database_codes: the learned codes `B` of the whole training set, shape (m, bits), fixed.
        sim: similarity of batch items to training items in {0, 1}, shape (n, m).
        own_database_codes: the rows of `B` that belong to the batch items, shape (n, bits).
        gamma_a: weight of the term tying each sampled image's code to its database code.
    """
    pairs = codes.shape[0] * database_codes.shape[0]
    return _asymmetric_terms(codes, database_codes, sim, own_database_codes, gamma_a) / (pairs * codes.shape[1] ** 2)


def asymmetric_objective(
    codes: torch.Tensor,
    database_codes: torch.Tensor,
    sim: torch.Tensor,
    sample_index: torch.Tensor,
    *,
    gamma_a: float,
) -> torch.Tensor:
    """ADSH's objective (Eq. 4) as a function of `B`, unnormalised; `update_database_codes` lowers it.

    Args:
        codes: network codes `U` of the sampled images, shape (n, bits).
        database_codes: `B`, shape (m, bits).
        sim: similarity of sampled images to all training images in {0, 1}, shape (n, m).
        sample_index: rows of `B` that the sampled images own, shape (n,).
        gamma_a: weight of the tie term.
    """
    return _asymmetric_terms(codes, database_codes, sim, database_codes[sample_index], gamma_a)


@torch.no_grad()
def update_database_codes(
    codes: torch.Tensor,
    database_codes: torch.Tensor,
    sim: torch.Tensor,
    sample_index: torch.Tensor,
    *,
    gamma_a: float,
) -> torch.Tensor:
    """One sweep of ADSH's discrete cyclic coordinate descent over the columns of `B` (Eq. 6-8).

    With `Q = -2 bits S^T U - 2 gamma_a U_bar` (`U_bar` holds `U` at the sampled rows, zeros elsewhere),
    column k becomes `-sign(2 B_k' U_k'^T U_k + Q_k)`, where `'` drops column k. Each column update
    minimises the objective exactly given the other columns, so the objective never increases. A zero
    argument of sign keeps the previous bit.

    Returns:
        The new `B` (a new tensor; the input is not modified).
    """
    codes = codes.to(database_codes.dtype)
    bits = codes.shape[1]
    signed_sim = _signed_similarity(sim.to(codes.dtype))
    scattered = torch.zeros_like(database_codes)
    scattered[sample_index] = codes
    q = -2.0 * bits * signed_sim.T @ codes - 2.0 * gamma_a * scattered
    new_codes = database_codes.clone()
    for k in range(bits):
        others = [j for j in range(bits) if j != k]
        argument = 2.0 * new_codes[:, others] @ (codes[:, others].T @ codes[:, k]) + q[:, k]
        new_codes[:, k] = torch.where(argument == 0, new_codes[:, k], -torch.sign(argument))
    return new_codes
