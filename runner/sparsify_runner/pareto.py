"""Pareto fronts over measured runs (torch-free: sweeps, compare and the dashboard use it).

A run is on the front when no other run is at least as good on both axes and strictly
better on one. Runs missing either value are never on the front (an unmeasured run is not
a trade-off anyone can pick).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def pareto_front(
    items: Sequence[T],
    *,
    cost: Callable[[T], float | None],
    quality: Callable[[T], float | None],
) -> list[T]:
    """The items not dominated by another: lower ``cost`` (latency, size) and higher
    ``quality`` (accuracy, fidelity) are better. Returned in increasing cost."""
    measured = [
        (c, q, item) for item in items if (c := cost(item)) is not None and (q := quality(item)) is not None
    ]
    front: list[T] = []
    best_quality = float("-inf")
    # Sorted by cost, then best quality first: an item is on the front exactly when it
    # beats the best quality of everything cheaper (ties in cost keep only the best).
    for _cost, q, item in sorted(measured, key=lambda t: (t[0], -t[1])):
        if q > best_quality:
            front.append(item)
            best_quality = q
    return front
