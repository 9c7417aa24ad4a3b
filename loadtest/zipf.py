"""Topic popularity: a few matches draw most of the audience.

Topic ``rank`` (1 = most popular) is drawn with probability proportional to
``1 / rank ** exponent``. Pure and seedable, so a run can be repeated.
"""

from __future__ import annotations

import bisect
import itertools
import random

__all__ = ["ZipfTopics"]


class ZipfTopics:
    """Draws distinct topics with Zipf popularity: rank r is
    ``{prefix}{first + r - 1}`` (``first`` 1000 names the simulator's matches)."""

    def __init__(
        self, count: int, exponent: float = 1.0, prefix: str = "match.", first: int = 1
    ) -> None:
        if count < 1:
            raise ValueError("the topic count must be at least 1")
        if exponent < 0:
            raise ValueError("the Zipf exponent must not be negative")
        self.count = count
        self.exponent = exponent
        self.prefix = prefix
        weights = [1.0 / rank**exponent for rank in range(1, count + 1)]
        self._cumulative = list(itertools.accumulate(weights))
        # one string per topic, shared by every client that draws it
        self._names = [f"{prefix}{first + rank - 1}" for rank in range(1, count + 1)]

    def name(self, rank: int) -> str:
        return self._names[rank - 1]

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def probability(self, rank: int) -> float:
        low = self._cumulative[rank - 2] if rank > 1 else 0.0
        return (self._cumulative[rank - 1] - low) / self._cumulative[-1]

    def draw_rank(self, rng: random.Random) -> int:
        point = rng.random() * self._cumulative[-1]
        return min(bisect.bisect_right(self._cumulative, point), self.count - 1) + 1

    def sample(self, k: int, rng: random.Random) -> list[str]:
        """``k`` distinct topics (all of them when ``k`` >= the topic count)."""
        if k >= self.count:
            return self.names
        ranks: dict[int, None] = {}
        while len(ranks) < k:
            ranks[self.draw_rank(rng)] = None
        return [self.name(rank) for rank in ranks]
