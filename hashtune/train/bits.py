"""How TransHash splits a code over its hash heads: pure arithmetic, no torch (search spaces use it)."""

from __future__ import annotations

from hashtune.config import Config
from hashtune.errors import InputError

__all__ = ["MIN_LOCAL_BITS", "bit_allocation", "max_k_groups", "is_feasible"]

MIN_LOCAL_BITS = 4
"""TransHash reports that local heads under 4 bits fail to converge (its Tab. 3 leaves those cells `-`)."""


def max_k_groups(bits: int, min_local_bits: int = MIN_LOCAL_BITS) -> int:
    """The most local heads a `bits`-bit code holds at `min_local_bits` each (0: none, the global head only)."""
    return (bits - bits // 2) // min_local_bits


def bit_allocation(
    bits: int, k_groups: int, dual_stream: bool = True, min_local_bits: int = MIN_LOCAL_BITS
) -> list[int]:
    """Split `bits` over the hash heads, global head first.

    The global head takes `bits // 2`; the rest is split over the K local heads as evenly as possible,
    earlier heads taking the remainder (48 bits, K=5 -> [24, 5, 5, 5, 5, 4]). Without the dual stream
    (the w/o P ablation) the global head takes every bit.

    Raises:
        ValueError: for non-positive `bits` or `k_groups`, or a local head under `min_local_bits`.
    """
    if bits < 1:
        raise InputError(f"bits={bits} must be a positive number of bits, e.g. 16, 32, 48 or 64")
    if k_groups < 1:
        raise InputError(f"k_groups={k_groups} must be a positive number of local groups, e.g. 1..6")
    if not dual_stream:
        return [bits]
    global_bits = bits // 2
    base, remainder = divmod(bits - global_bits, k_groups)
    if base < min_local_bits:
        max_groups = max_k_groups(bits, min_local_bits)
        min_bits = 2 * min_local_bits * k_groups - 1
        fix = f"k_groups <= {max_groups}" if max_groups >= 1 else "dual_stream=False"
        raise InputError(
            f"bits={bits} with k_groups={k_groups} leaves local heads of {base} bits, under "
            f"min_local_bits={min_local_bits}; use {fix} or bits >= {min_bits}"
        )
    return [global_bits] + [base + 1] * remainder + [base] * (k_groups - remainder)


def is_feasible(config: Config) -> bool:
    """Whether the config's bit allocation works (the paper's '-' cells are the ones that do not)."""
    try:
        bit_allocation(config.model.bits, config.model.k_groups, config.model.dual_stream)
    except InputError:
        return False
    return True
