"""A claim of the post, its evaluated row, and the four verdicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

VERDICTS = ("confirmed", "corrected", "refuted", "open")


@dataclass(frozen=True)
class Claim:
    """One checkable statement of the post.

    ``quote``: the post's words, verbatim (pieces joined by ``" ... "``); ``topic``: the claim in
    the book's words (may hold MyST math); ``evidence()`` returns ``(numbers, text)``, the deciding
    numbers and a one-line summary of them; ``decide(numbers)`` returns a verdict; ``rule`` states
    that rule in words; ``section``: a MyST cross-reference (the role ``{ref}`` with a section
    label, or ``{doc}`` with a chapter) to where the book shows the evidence at length; ``pending``: what a chapter still being
    written will measure to settle it further, or ``""``.
    """

    key: str
    topic: str
    quote: str
    evidence: Callable[[], tuple[dict[str, float], str]]
    decide: Callable[[dict[str, float]], str]
    rule: str
    section: str
    pending: str = ""


@dataclass(frozen=True)
class Row:
    """A claim with its evidence evaluated: ``numbers``, ``finding`` (text) and ``verdict``."""

    claim: Claim
    numbers: dict[str, float]
    finding: str
    verdict: str


def evaluate(selected: tuple[Claim, ...] | None = None) -> list[Row]:
    """Run each claim's evidence and rule; a rule returning anything but a verdict is an error."""
    from ._claims import claims

    rows = []
    for claim in claims() if selected is None else selected:
        numbers, finding = claim.evidence()
        verdict = claim.decide(numbers)
        if verdict not in VERDICTS:
            raise ValueError(f"claim {claim.key!r}: the rule returned {verdict!r}, expected one of {VERDICTS}")
        rows.append(Row(claim, numbers, finding, verdict))
    return rows
