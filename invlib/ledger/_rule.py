"""A verdict rule as data: conditions on named numbers, tried in order, so that a rule can be
printed, evaluated and checked for how far its evidence sits from every threshold.

A :class:`Condition` compares one number of a claim's evidence with a threshold. An *ordered*
comparison (``<``, ``<=``, ``>``, ``>=``) has a margin, the distance of the value from the threshold
relative to the threshold,

    margin = |value - threshold| / |threshold|     (infinite for a threshold of 0 and a value not 0),

and the ledger requires every margin to be at least 10 %, so that no verdict hangs on a rounding.
An *exact* comparison (``==``) is for exact counts and yes/no facts (a refused input, equal FLOP
counts), which have no margin: they either hold or do not.

A :class:`Rule` is a sequence of ``(verdict, conditions)``: the first verdict whose conditions all
hold is the rule's verdict, ``otherwise`` if none does.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
MIN_MARGIN = 0.10


@dataclass(frozen=True)
class Condition:
    """``numbers[number] <op> threshold``; ``op`` one of ``<``, ``<=``, ``>``, ``>=``, ``==``."""

    number: str
    op: str
    threshold: float

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"Condition: op must be one of {list(_OPS)}, got {self.op!r}")

    @property
    def exact(self) -> bool:
        return self.op == "=="

    def holds(self, numbers: dict[str, float]) -> bool:
        return bool(_OPS[self.op](numbers[self.number], self.threshold))

    def margin(self, numbers: dict[str, float]) -> float | None:
        """Relative distance of the value from the threshold; ``None`` for an exact comparison."""
        if self.exact:
            return None
        value, t = float(numbers[self.number]), float(self.threshold)
        if t == 0:
            return math.inf if value != 0 else 0.0
        return abs(value - t) / abs(t)

    def __str__(self) -> str:
        return f"{self.number} {self.op} {self.threshold:g}"


def when(number: str, op: str, threshold: float) -> Condition:
    """Shorthand for :class:`Condition`."""
    return Condition(number, op, threshold)


@dataclass(frozen=True)
class Rule:
    """``branches``: ``(verdict, conditions)`` pairs tried in order; ``otherwise``: the verdict when
    no branch has all its conditions true."""

    branches: tuple[tuple[str, tuple[Condition, ...]], ...]
    otherwise: str

    def decide(self, numbers: dict[str, float]) -> str:
        for verdict, conditions in self.branches:
            if all(c.holds(numbers) for c in conditions):
                return verdict
        return self.otherwise

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return tuple(c for _, conditions in self.branches for c in conditions)

    def margins(self, numbers: dict[str, float]) -> dict[str, float]:
        """Each ordered condition (as text) with its margin for these numbers."""
        return {str(c): c.margin(numbers) for c in self.conditions if not c.exact}

    def __str__(self) -> str:
        parts = [f"{verdict} if " + " and ".join(str(c) for c in conditions)
                 for verdict, conditions in self.branches]
        return "; ".join(parts) + f"; otherwise {self.otherwise}"


def rule(*branches: tuple[str, list[Condition] | tuple[Condition, ...]], otherwise: str) -> Rule:
    """``rule(("confirmed", [when("x", ">", 1)]), otherwise="refuted")``."""
    return Rule(tuple((verdict, tuple(conditions)) for verdict, conditions in branches), otherwise)
