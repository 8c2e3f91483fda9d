"""The dashboard's distinct-sensor estimate: HyperLogLog over registers filled the way the fleet
rollup fills them (low 10 bits of a 64-bit hash pick the register, the leading zeros of the
next 53 bits give the rank), checked against the true count of sets of many sizes."""

from __future__ import annotations

import random

import pytest

from iot_dashboard.queries import Count, sketch_estimate

REGISTERS = 1024


def sketch_of(distinct: int, seed: int) -> list[int]:
    """Registers of ``distinct`` different 64-bit hashes, as rollups.SKETCH_RANK_SQL ranks them."""
    rng = random.Random(seed)
    registers = [0] * REGISTERS
    for _ in range(distinct):
        hashed = rng.getrandbits(64)
        rest = (hashed >> 10) & ((1 << 53) - 1)
        rank = 54 if rest == 0 else 54 - rest.bit_length()
        register = hashed & (REGISTERS - 1)
        registers[register] = max(registers[register], rank)
    return registers


def estimate(registers: list[int]) -> int:
    zeros = sum(1 for r in registers if r == 0)
    return sketch_estimate(len(registers), zeros, sum(2.0**-r for r in registers))


@pytest.mark.parametrize("distinct", [1, 10, 300, 2_000, 20_000, 300_000])
def test_the_estimate_is_within_three_standard_errors_of_the_true_count(distinct: int) -> None:
    """Small sets (linear counting) and large ones (the harmonic mean) alike: within 3 × 3.25 %."""
    for seed in range(3):
        found = estimate(sketch_of(distinct, seed))
        assert abs(found - distinct) <= max(1, 0.0975 * distinct), (distinct, seed, found)


def test_the_union_of_two_sketches_estimates_the_union_of_their_sets() -> None:
    """Register-wise maximum (iot_sketch_union) of two halves counts the whole, not the sum:
    a sensor heard in both minutes is one sensor."""
    both = sketch_of(10_000, 7)
    again = sketch_of(10_000, 7)  # the same sensors heard in another minute
    union = [max(a, b) for a, b in zip(both, again, strict=True)]
    assert union == both
    assert abs(estimate(union) - 10_000) <= 975


def test_an_empty_sketch_counts_nobody() -> None:
    """No sensor heard: every register 0, the estimate 0."""
    assert estimate([0] * REGISTERS) == 0


def test_an_estimated_count_says_so_and_an_exact_one_does_not() -> None:
    """What the page prints: thousands separated, '≈' in front of an estimate."""
    assert str(Count(1000)) == "1,000"
    assert str(Count(998_412, exact=False)) == "≈998,412"
