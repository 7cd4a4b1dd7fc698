"""Weighted round robin over the three priorities: HIGH first, LOW never starved.

Each priority gets ``weight`` credits per round. A pick takes the most urgent priority that has
work and credits left; when no priority with work has credits, a new round starts. Under a
sustained flood of every priority, a round is ``weights[HIGH]`` HIGH jobs, then
``weights[MEDIUM]`` MEDIUM, then ``weights[LOW]`` LOW, so LOW waits at most one round
(``sum(weights)`` picks). A priority without work neither blocks the others nor banks credits
beyond one round.

The picker has no lock and no threads: its owner serialises calls (the queue calls it under the
queue's mutex), which keeps it unit-testable on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jobqueue._priority import Priority

__all__ = ["DEFAULT_WEIGHTS", "WeightedPicker"]

#: One LOW job per round of 8 HIGH and 3 MEDIUM: under a flood of HIGH alone, LOW runs once
#: every 9 picks; under a flood of everything, once every 12.
DEFAULT_WEIGHTS: Mapping[Priority, int] = {Priority.HIGH: 8, Priority.MEDIUM: 3, Priority.LOW: 1}

_PRIORITIES = tuple(Priority)


class WeightedPicker:
    """Chooses which priority a free worker serves next."""

    def __init__(self, weights: Mapping[Priority, int] = DEFAULT_WEIGHTS) -> None:
        self._weights = [weights[p] for p in _PRIORITIES]
        self._credits = list(self._weights)

    def pick(self, has_work: Sequence[object]) -> Priority | None:
        """Return the priority to serve, given which priorities have work; ``None`` if none do.

        ``has_work`` is indexed by priority value (HIGH, MEDIUM, LOW). Consumes one credit.
        """
        credits = self._credits
        for index in (0, 1, 2):
            if has_work[index] and credits[index]:
                credits[index] -= 1
                return _PRIORITIES[index]
        for index in (0, 1, 2):
            if has_work[index]:
                # Every priority with work has spent its credits: a new round starts.
                self._credits = credits = list(self._weights)
                credits[index] -= 1
                return _PRIORITIES[index]
        return None
