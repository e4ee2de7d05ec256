"""Retrieval metrics against a brute-force stable-argsort reference."""

import numpy as np
import pytest
import torch

from hashtune.metrics import (
    average_precisions,
    mean_average_precision,
    pack_codes,
    pack_labels,
    retrieval_metrics,
    unpack_codes,
)


def _brute_force_ap(query, database, query_labels, database_labels, topk=None):
    """Sort each query's database by (distance, index), then AP@K by its definition."""
    aps = []
    for q in range(len(query)):
        distance = (query[q] != database).sum(axis=1)
        order = np.argsort(distance, kind="stable")
        relevant = (database_labels[order] @ query_labels[q] > 0)[: topk or len(database)]
        ranks = np.flatnonzero(relevant) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks) if len(ranks) else 0.0)
    return np.asarray(aps)


def _random_problem(seed, n_query=40, n_db=300, bits=12, classes=4, multi=False):
    rng = np.random.default_rng(seed)
    query = np.where(rng.random((n_query, bits)) > 0.5, 1, -1)
    database = np.where(rng.random((n_db, bits)) > 0.5, 1, -1)
    if multi:
        query_labels = (rng.random((n_query, classes)) < 0.35).astype(float)
        db_labels = (rng.random((n_db, classes)) < 0.35).astype(float)
    else:
        query_labels = np.eye(classes)[rng.integers(0, classes, n_query)]
        db_labels = np.eye(classes)[rng.integers(0, classes, n_db)]
    return query, database, query_labels, db_labels


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("topk", [None, 1, 7, 100, 10_000])
@pytest.mark.parametrize("bits", [6, 64, 100])
def test_map_equals_brute_force(multi, topk, bits):
    # 6 bits over 300 items forces many ties; 100 bits spans two words
    problem = _random_problem(seed=bits, bits=bits, multi=multi)
    got = average_precisions(*problem, topk=topk)
    np.testing.assert_allclose(got, _brute_force_ap(*problem, topk=topk), rtol=0, atol=1e-12)


def test_ties_are_broken_by_database_index():
    query = np.array([[1, 1]])
    database = np.array([[1, 1], [1, 1], [-1, -1]])
    labels_query = np.array([0])
    # item 0 irrelevant, item 1 relevant, both at distance 0: index order puts the relevant one second
    assert mean_average_precision(query, database, labels_query, np.array([1, 0, 0])) == pytest.approx(
        (1 / 2 + 2 / 3) / 2
    )
    assert mean_average_precision(query, database, labels_query, np.array([0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)


def test_whole_database_counts_its_last_item():
    query = np.array([[1, 1]])
    database = np.array([[1, 1], [-1, -1]])
    # the only relevant item ranks last: AP = 1/2 (DeepHash-pytorch's gnd[0:-1] would drop it)
    assert mean_average_precision(query, database, np.array([0]), np.array([1, 0])) == pytest.approx(0.5)


def test_query_without_relevant_items_counts_zero():
    query = np.array([[1, 1], [1, -1]])
    database = np.array([[1, 1], [-1, -1]])
    assert mean_average_precision(query, database, np.array([0, 2]), np.array([0, 1])) == pytest.approx(0.5)


def test_torch_inputs_and_class_indices_equal_numpy_multi_hot():
    query, database, query_labels, db_labels = _random_problem(seed=3)
    from_numpy = mean_average_precision(query, database, query_labels, db_labels)
    from_torch = mean_average_precision(
        torch.from_numpy(query).float(),
        torch.from_numpy(database).float(),
        torch.from_numpy(query_labels.argmax(1)),
        torch.from_numpy(db_labels.argmax(1)),
    )
    assert from_torch == pytest.approx(from_numpy, abs=1e-15)


@pytest.mark.parametrize("multi", [True, False])
def test_precision_at_n_radius_and_pr_curve_against_brute_force(multi):
    # 41 queries: the single-label kernel ranks queries in pairs, and the odd one out must count once
    query, database, query_labels, db_labels = _random_problem(seed=5, n_query=41, bits=8, multi=multi)
    metrics = retrieval_metrics(query, database, query_labels, db_labels, precision_at=(1, 10, 50), radii=(0, 2))
    distance = (query[:, None, :] != database[None, :, :]).sum(axis=2)
    relevant = query_labels @ db_labels.T > 0
    for n in (1, 10, 50):
        expected = np.mean([relevant[q][np.argsort(distance[q], kind="stable")[:n]].mean() for q in range(len(query))])
        assert metrics.precision_at[n] == pytest.approx(expected, abs=1e-12)
    for r in (0, 2):
        within = distance <= r
        per_query = [relevant[q][within[q]].mean() if within[q].any() else 0.0 for q in range(len(query))]
        assert metrics.precision_within_radius[r] == pytest.approx(np.mean(per_query), abs=1e-12)
    recall_at_3 = np.mean(
        [relevant[q][distance[q] <= 3].sum() / relevant[q].sum() for q in range(len(query)) if relevant[q].any()]
    )
    assert metrics.pr_recall[3] == pytest.approx(recall_at_3, abs=1e-12)
    assert metrics.pr_recall[-1] == pytest.approx(1.0)
    assert metrics.as_dict("test").keys() == {
        "test/mAP",
        "test/mAP_at_all",
        "test/mAP_ties_index",
        "test/mAP_ties_average",
        "test/precision_at_1",
        "test/precision_at_10",
        "test/precision_at_50",
        "test/p_r0",
        "test/p_r2",
    }


def test_packing_round_trips_bits():
    codes = np.where(np.random.default_rng(0).random((5, 70)) > 0.5, 1, -1)
    packed = pack_codes(codes)
    assert packed.shape == (5, 9) and packed.dtype == np.uint8
    np.testing.assert_array_equal(np.unpackbits(packed, axis=1)[:, :70], codes > 0)
    np.testing.assert_array_equal(unpack_codes(packed, 70), codes)
    assert pack_labels(np.array([0, 3]), 4)[:, 0].tolist() == [0b10000000, 0b00010000]


def test_one_sign_rule_zero_is_a_one_bit():
    """A continuous code of exactly 0 binarises to +1 in the trainer, so it packs as bit 1 everywhere."""
    assert pack_codes(np.array([[0.0, -0.0, -1e-9, 0.3]]))[0, 0] == 0b11010000


def test_bad_shapes_and_topk_are_rejected():
    query, database, query_labels, db_labels = _random_problem(seed=0)
    with pytest.raises(ValueError, match="same bits"):
        mean_average_precision(query[:, :4], database, query_labels, db_labels)
    with pytest.raises(ValueError, match="topk=0"):
        mean_average_precision(query, database, query_labels, db_labels, topk=0)
    with pytest.raises(ValueError, match="3 query labels for 40"):
        mean_average_precision(query, database, query_labels[:3], db_labels)


def _all_tie_orders_mean_ap(query, database, query_labels, db_labels, topk):
    """Brute force: the mean AP over every database order, with index tie-breaking (each order equally likely,
    so orders within each tie group are uniform)."""
    import itertools

    values = [
        mean_average_precision(query, database[list(order)], query_labels, db_labels[list(order)], topk=topk)
        for order in itertools.permutations(range(len(database)))
    ]
    return float(np.mean(values))


@pytest.mark.parametrize("topk", [None, 1, 3, 5])
def test_tie_averaged_map_equals_the_mean_over_all_tie_orders(topk):
    rng = np.random.default_rng(topk or 0)
    query = np.where(rng.random((3, 3)) > 0.5, 1, -1)  # 3 bits: 4 distances for 7 items, ties everywhere
    database = np.where(rng.random((7, 3)) > 0.5, 1, -1)
    query_labels, db_labels = rng.integers(0, 2, 3), rng.integers(0, 2, 7)
    expected = _all_tie_orders_mean_ap(query, database, query_labels, db_labels, topk)
    averaged = mean_average_precision(query, database, query_labels, db_labels, topk=topk, ties="average")
    assert averaged == pytest.approx(expected, abs=1e-12)
    assert retrieval_metrics(query, database, query_labels, db_labels, topk=topk).map_by_ties[
        "average"
    ] == pytest.approx(expected, abs=1e-12)


def test_index_ties_favour_whatever_comes_first_and_average_does_not():
    query, labels = np.array([[1, 1]]), np.array([0])
    database = np.array([[1, 1], [1, 1]])  # one tie group: a relevant and an irrelevant item
    first, second = np.array([0, 1]), np.array([1, 0])
    assert mean_average_precision(query, database, labels, first) == 1.0
    assert mean_average_precision(query, database, labels, second) == 0.5
    assert mean_average_precision(query, database, labels, first, ties="average") == pytest.approx(0.75)
    with pytest.raises(ValueError, match="ties='random'; expected one of index, average"):
        mean_average_precision(query, database, labels, first, ties="random")


def test_codes_longer_than_the_kernels_pack_are_refused():
    codes, labels = np.ones((2, 256)), np.array([0, 1])
    with pytest.raises(ValueError, match="at most 255 bits .* got 256 bits"):
        mean_average_precision(codes, codes, labels, labels)
