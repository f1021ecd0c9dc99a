"""A claim of the post, its evaluated row, and the four verdicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._rule import Rule

VERDICTS = ("confirmed", "corrected", "refuted", "open")


@dataclass(frozen=True)
class Claim:
    """One checkable statement of the post.

    ``quote``: the post's words, verbatim (pieces joined by ``" ... "``); ``topic``: the claim in
    the book's words (may hold MyST math); ``evidence()`` returns ``(numbers, text)``, the deciding
    numbers and a one-line summary of them; ``rule`` (a :class:`~invlib.ledger.Rule`) turns the
    numbers into a verdict; ``words`` states that rule and its reason in words; ``section``: a MyST
    cross-reference (``{ref}`` with a section label, or ``{doc}`` with a chapter) to where the book
    shows the evidence at length; ``pending``: what another chapter measures to settle it further,
    or ``""``.
    """

    key: str
    topic: str
    quote: str
    evidence: Callable[[], tuple[dict[str, float], str]]
    rule: Rule
    words: str
    section: str
    pending: str = ""

    def __post_init__(self) -> None:
        used = {v for v, _ in self.rule.branches} | {self.rule.otherwise}
        if not used <= set(VERDICTS):
            raise ValueError(f"claim {self.key!r}: the rule names {sorted(used - set(VERDICTS))}, "
                             f"expected verdicts among {VERDICTS}")

    def decide(self, numbers: dict[str, float]) -> str:
        return self.rule.decide(numbers)


@dataclass(frozen=True)
class Row:
    """A claim with its evidence evaluated: ``numbers``, ``finding`` (text) and ``verdict``."""

    claim: Claim
    numbers: dict[str, float]
    finding: str
    verdict: str

    @property
    def margins(self) -> dict[str, float]:
        """Every ordered condition of the rule with the relative distance of its number from the
        threshold (see :meth:`invlib.ledger.Condition.margin`)."""
        return self.claim.rule.margins(self.numbers)


def evaluate(selected: tuple[Claim, ...] | None = None) -> list[Row]:
    """Run each claim's evidence and rule."""
    from ._claims import claims

    rows = []
    for claim in claims() if selected is None else selected:
        numbers, finding = claim.evidence()
        missing = {c.number for c in claim.rule.conditions} - set(numbers)
        if missing:
            raise ValueError(f"claim {claim.key!r}: the rule reads {sorted(missing)}, which the evidence "
                             f"does not return (it returns {sorted(numbers)})")
        rows.append(Row(claim, numbers, finding, claim.decide(numbers)))
    return rows
