"""Each loss against its formula computed by hand, element by element, in float64."""

import math

import numpy as np
import pytest
import torch

from hashtune.train import losses

GAMMA = 3.0


def _codes(n=6, bits=8, seed=0):
    return torch.tanh(torch.randn(n, bits, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))


def _labels():
    classes = [0, 0, 1, 2, 1, 0]
    return torch.nn.functional.one_hot(torch.tensor(classes), 3).double()


def _hand_distance(a, b):
    a, b = np.asarray(a), np.asarray(b)
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return len(a) / 2 * (1 - cos)


def _hand_pair_loss(h, s, gamma, prob):
    n = len(h)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    n_similar = sum(s[i][j] for i, j in pairs)
    n_dissimilar = len(pairs) - n_similar
    total = 0.0
    for i, j in pairs:
        if prob == "cauchy":
            d = max(_hand_distance(h[i], h[j]), 1e-6)
            loss = s[i][j] * math.log(1 + d / gamma) + (1 - s[i][j]) * math.log(1 + gamma / d)
        else:
            ip = float(np.dot(h[i], h[j])) / 2
            loss = math.log(1 + math.exp(ip)) - s[i][j] * ip
        weight = len(pairs) / n_similar if s[i][j] else len(pairs) / n_dissimilar
        total += weight * loss
    return total / len(pairs)


def test_similarity_is_shared_label():
    multi = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1]]).double()
    assert losses.similarity_matrix(multi, multi).tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]


@pytest.mark.parametrize("prob", ["cauchy", "sigmoid"])
def test_pairwise_likelihood_matches_formula(prob):
    h, labels = _codes(), _labels()
    sim = losses.similarity_matrix(labels, labels)
    got = losses.pairwise_likelihood_loss(h, sim, gamma=GAMMA, prob=prob)
    expected = _hand_pair_loss(h.numpy(), sim.numpy().astype(int), GAMMA, prob)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_pairwise_likelihood_with_one_class_only_weights_the_present_one():
    h = _codes(n=4)
    sim = torch.ones(4, 4, dtype=torch.float64)
    got = losses.pairwise_likelihood_loss(h, sim, gamma=GAMMA)
    pairs = [(i, j) for i in range(4) for j in range(4) if i != j]
    expected = sum(math.log(1 + max(_hand_distance(h[i], h[j]), 1e-6) / GAMMA) for i, j in pairs) / len(pairs)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert torch.isfinite(got)


def test_identical_codes_are_clamped_not_infinite():
    h = torch.ones(3, 4, dtype=torch.float64)
    sim = torch.zeros(3, 3, dtype=torch.float64)
    got = losses.pairwise_likelihood_loss(h, sim, gamma=GAMMA)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(math.log(1 + GAMMA / 1e-6), rel=1e-6)


def test_unknown_probability_is_rejected():
    with pytest.raises(ValueError, match="prob='gauss'.*cauchy"):
        losses.pairwise_likelihood_loss(_codes(), torch.eye(6), gamma=1.0, prob="gauss")


def test_cauchy_quantization_matches_formula():
    h = _codes()
    got = losses.cauchy_quantization_loss(h, gamma=GAMMA)
    ones = np.ones(h.shape[1])
    expected = np.mean([math.log(1 + _hand_distance(np.abs(row), ones) / GAMMA) for row in h.numpy()])
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert losses.cauchy_quantization_loss(torch.sign(h), gamma=GAMMA).item() == pytest.approx(0.0, abs=1e-12)


def test_classification_loss_single_and_multi_label():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    single = torch.tensor([[1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    ce = np.mean([-math.log(math.exp(r[c]) / sum(math.exp(v) for v in r)) for r, c in zip(logits.tolist(), [0, 2])])
    assert losses.classification_loss(logits, single, multi_label=False).item() == pytest.approx(ce, rel=1e-12)
    multi = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.float64)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    bce = -np.mean(
        [
            y * math.log(sig(x)) + (1 - y) * math.log(1 - sig(x))
            for r, t in zip(logits.tolist(), multi.tolist())
            for x, y in zip(r, t)
        ]
    )
    assert losses.classification_loss(logits, multi, multi_label=True).item() == pytest.approx(bce, rel=1e-12)


def test_objective_combines_global_and_mean_local_terms():
    h, labels = _codes(bits=16), _labels()
    heads = (h[:, :8], h[:, 8:12], h[:, 12:])
    logits = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    total, terms = losses.transhash_objective(
        heads, logits, labels, gamma=GAMMA, prob="cauchy", quant_weight=0.3, cls_weight=0.7, multi_label=False
    )
    sim = losses.similarity_matrix(labels, labels).numpy().astype(int)
    pair = _hand_pair_loss(heads[0].numpy(), sim, GAMMA, "cauchy") + np.mean(
        [_hand_pair_loss(c.numpy(), sim, GAMMA, "cauchy") for c in heads[1:]]
    )
    quant = losses.cauchy_quantization_loss(heads[0], gamma=GAMMA).item() + np.mean(
        [losses.cauchy_quantization_loss(c, gamma=GAMMA).item() for c in heads[1:]]
    )
    cls = losses.classification_loss(logits, labels, multi_label=False).item()
    assert terms["pair"].item() == pytest.approx(pair, rel=1e-12)
    assert terms["quant"].item() == pytest.approx(quant, rel=1e-12)
    assert total.item() == pytest.approx(pair + 0.3 * quant + 0.7 * cls, rel=1e-12)


def test_objective_global_only_is_the_global_term():
    h, labels = _codes(), _labels()
    logits = torch.zeros(6, 3, dtype=torch.float64)
    total, terms = losses.transhash_objective(
        (h,), logits, labels, gamma=GAMMA, prob="sigmoid", quant_weight=0.0, cls_weight=0.0, multi_label=False
    )
    sim = losses.similarity_matrix(labels, labels).numpy().astype(int)
    assert total.item() == pytest.approx(_hand_pair_loss(h.numpy(), sim, GAMMA, "sigmoid"), rel=1e-12)


def _asymmetric_setup(seed=0, n=5, m=12, bits=8):
    g = torch.Generator().manual_seed(seed)
    labels = torch.nn.functional.one_hot(torch.randint(0, 3, (m,), generator=g), 3).double()
    sample_index = torch.randperm(m, generator=g)[:n]
    codes = torch.tanh(torch.randn(n, bits, generator=g, dtype=torch.float64))
    database = torch.where(torch.rand(m, bits, generator=g) > 0.5, 1.0, -1.0).double()
    sim = losses.similarity_matrix(labels[sample_index], labels)
    return codes, database, sim, sample_index


def test_asymmetric_loss_matches_formula():
    codes, database, sim, sample_index = _asymmetric_setup()
    got = losses.asymmetric_loss(codes, database, sim, database[sample_index], gamma_a=2.0)
    n, bits = codes.shape
    total = 0.0
    for i in range(n):
        for j in range(len(database)):
            s = 1.0 if sim[i, j] > 0 else -1.0
            total += (float(codes[i] @ database[j]) - bits * s) ** 2
        total += 2.0 * float(((database[sample_index[i]] - codes[i]) ** 2).sum())
    assert got.item() == pytest.approx(total / (n * len(database) * bits**2), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_database_code_update_lowers_the_objective_and_stays_binary(seed):
    codes, database, sim, sample_index = _asymmetric_setup(seed=seed, n=20, m=60, bits=16)
    before = losses.asymmetric_objective(codes, database, sim, sample_index, gamma_a=200.0)
    updated = losses.update_database_codes(codes, database, sim, sample_index, gamma_a=200.0)
    after = losses.asymmetric_objective(codes, updated, sim, sample_index, gamma_a=200.0)
    assert after < before
    assert set(updated.unique().tolist()) <= {-1.0, 1.0}
    assert losses.asymmetric_objective(codes, database, sim, sample_index, gamma_a=200.0) == before  # input untouched
