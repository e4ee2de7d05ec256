"""The adaptive seed schedule a space asks for (`replicates:`); the schedule itself is `hashtune.sweep.replicates`."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Replicates"]


@dataclass(frozen=True)
class Replicates:
    """The adaptive schedule of a space (`replicates:`)."""

    min: int = 3
    max: int = 20
    step: int = 3
    delta: float = 0.02
    alpha: float = 0.05

    @property
    def looks(self) -> int:
        """The planned looks: the first round and every round `step` can add before `max`."""
        return 1 + math.ceil((self.max - self.min) / self.step)

    @property
    def alpha_per_look(self) -> float:
        return self.alpha / self.looks

    @property
    def seeds(self) -> tuple[int, ...]:
        """Every seed an arm can run: 0 .. max-1, in the order they are added."""
        return tuple(range(self.max))
