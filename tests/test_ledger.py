"""The claims ledger: every verdict is recomputed from its evidence and must stay what the book says.

A verdict that changes means the evidence behind it crossed its rule's threshold (a measurement,
a count or the cost model moved): the chapter "What the post got right" would then say something
else, so the test fails and names the claim.
"""

import re
from pathlib import Path

import pytest
import torch

from invlib import ledger

ROOT = Path(__file__).resolve().parent.parent
SEED = Path("/work/shared/seed/000_5140ceac32b23fa8.txt")

EXPECTED = {
    "adjoint-memory": "confirmed",
    "adjoint-width": "confirmed",
    "accumulation-orders": "refuted",
    "accumulation-retraction": "confirmed",
    "invertible-network": "corrected",
    "memory-constant": "confirmed",
    "linear-compute": "confirmed",
    "double-compute": "corrected",
    "pseudocode": "corrected",
    "same-accumulation": "confirmed",
    "quadratic": "corrected",
    "mem-dense-64": "corrected",
    "mem-dense-256": "confirmed",
    "mem-conv1d": "confirmed",
    "mem-conv2d": "corrected",
    "scratch-dense-64": "refuted",
    "scratch-dense-256": "refuted",
    "scratch-conv1d": "confirmed",
    "scratch-conv2d": "corrected",
    "batch-linear": "confirmed",
    "larger-batch": "confirmed",
    "inverse-cost": "corrected",
    "flop-1": "corrected",
    "flop-2": "refuted",
    "flop-3": "corrected",
    "flop-dominates": "refuted",
    "lu": "corrected",
    "param-jacobian": "confirmed",
    "conv-flops": "confirmed",
    "conv-next": "confirmed",
    "adjoint-analogy": "corrected",
    "revnet": "confirmed",
}


@pytest.fixture(scope="module")
def rows():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: extra threads only add contention
    try:
        return {row.claim.key: row for row in ledger.evaluate()}
    finally:
        torch.set_num_threads(threads)


def test_every_claim_has_an_expected_verdict():
    keys = [c.key for c in ledger.claims()]
    assert len(keys) == len(set(keys)), "claim keys must be unique"
    assert set(keys) == set(EXPECTED)


@pytest.mark.parametrize("key", list(EXPECTED))
def test_verdict_follows_from_the_evidence(rows, key):
    row = rows[key]
    assert row.verdict == EXPECTED[key], (
        f"{key}: the evidence now gives {row.verdict!r} instead of {EXPECTED[key]!r} "
        f"({row.finding}; numbers {row.numbers}; rule: {row.claim.rule})")


def test_rules_are_not_constant():
    """Each rule must be able to give another verdict: a rule that ignores its evidence cannot fail."""
    for claim in ledger.claims():
        numbers, _ = claim.evidence()
        factors = (-1.0, 0.0, 0.25, 0.5, 1.5, 2.0, 4.0, 1e9)
        scaled = [{k: v * f for k, v in numbers.items()} for f in factors]
        constant = [{k: f for k in numbers} for f in factors]
        outcomes = {claim.decide(n) for n in [numbers, *scaled, *constant]}
        assert len(outcomes) > 1, f"{claim.key}: the rule gives {outcomes} whatever the evidence"


def test_a_rule_must_return_a_verdict():
    bad = ledger.Claim("bad", "t", "q", lambda: ({}, "x"), lambda n: "maybe", "r", "{doc}`envelope`")
    with pytest.raises(ValueError, match="expected one of"):
        ledger.evaluate((bad,))


def test_every_section_link_resolves():
    sources = "\n".join(p.read_text() for p in (ROOT / "book" / "src").glob("*.md"))
    labels = set(re.findall(r"^\(([\w-]+)\)=\s*$", sources, flags=re.M))
    for claim in ledger.claims():
        kind, target = re.fullmatch(r"\{(ref|doc)\}`([\w-]+)`", claim.section).groups()
        if kind == "ref":
            assert target in labels, f"{claim.key}: no label ({target})= in book/src"
        else:
            assert (ROOT / "book" / "src" / f"{target}.md").exists(), f"{claim.key}: no chapter {target}"


@pytest.mark.skipif(not SEED.exists(), reason="the seed post is not on this machine")
def test_quotes_are_verbatim():
    post = " ".join(SEED.read_text().split())
    for claim in ledger.claims():
        for piece in claim.quote.split(" ... "):
            assert piece in post, f"{claim.key}: {piece!r} is not in the post"
