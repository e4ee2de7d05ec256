"""The Pareto front against the non-dominated set a plain double loop finds, for 2 and 3 objectives, with ties."""

import itertools

import numpy as np
import pytest

from hashtune.errors import InputError
from hashtune.report.pareto import pareto_front


def _brute_force(values: list[list[float]], modes: list[str]) -> list[int]:
    signs = [1.0 if mode == "max" else -1.0 for mode in modes]

    def dominates(a, b) -> bool:
        better_or_equal = all(s * x >= s * y for s, x, y in zip(signs, a, b))
        return better_or_equal and any(s * x > s * y for s, x, y in zip(signs, a, b))

    return [i for i, row in enumerate(values) if not any(dominates(other, row) for other in values)]


@pytest.mark.parametrize("modes", [["max", "min"], ["max", "min", "min"], ["min", "min"], ["max", "max", "min"]])
@pytest.mark.parametrize("seed", range(5))
def test_the_front_is_the_non_dominated_set_of_a_double_loop(modes, seed):
    rng = np.random.default_rng(seed)
    # few distinct values per objective: many ties, and rows equal on every objective
    values = rng.integers(0, 4, size=(40, len(modes))).astype(float).tolist()
    assert pareto_front(values, modes) == _brute_force(values, modes)


def test_rows_equal_on_every_objective_are_all_on_the_front_and_a_dominated_one_is_not():
    values = [[0.9, 32.0], [0.9, 32.0], [0.8, 16.0], [0.8, 32.0], [0.95, 64.0]]
    assert pareto_front(values, ["max", "min"]) == [0, 1, 2, 4]


def test_known_three_objective_front():
    # (mAP, bits, encode ms): 16 bits at the same mAP and speed dominates 32 bits
    values = [[0.90, 32, 1.0], [0.90, 16, 1.0], [0.92, 64, 2.0], [0.85, 8, 0.5], [0.85, 8, 0.6]]
    assert pareto_front(values, ["max", "min", "min"]) == [1, 2, 3]


@pytest.mark.parametrize(
    ("values", "modes", "message"),
    [
        ([[1.0, 2.0]], ["max", "best"], "modes must each be one of max, min"),
        ([[1.0]], ["max", "min"], "every row needs 2 objective values"),
        ([[1.0]], ["max"], "a front needs at least two objectives"),
    ],
)
def test_bad_objectives_are_one_clear_error(values, modes, message):
    with pytest.raises(InputError, match=message):
        pareto_front(values, modes)


def test_every_row_of_a_front_is_undominated_and_every_other_is_dominated_exhaustively():
    values = [list(row) for row in itertools.product([0.0, 1.0, 2.0], repeat=2)]
    assert pareto_front(values, ["max", "max"]) == [8]
    assert pareto_front(values, ["max", "min"]) == [6]
