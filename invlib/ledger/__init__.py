"""The seed post's checkable statements, each with the book's evidence and a verdict rule.

A :class:`Claim` pairs a short verbatim quotation of the post with an ``evidence`` function (it
calls :mod:`invlib`: the cost model, the NumPy reference, FLOP counts, small allocator-level
measurements; each takes well under a second) and a :class:`Rule` (conditions on the evidence's
numbers, tried in order, each ordered one at least ``MIN_MARGIN`` = 10 % from its value) that
turns the evidence into one of four verdicts:

* ``confirmed``: the statement holds as the post means it (where its words say something else,
  the finding says so);
* ``corrected``: the idea holds, the statement as written does not (a number, a condition or a
  reading has to change);
* ``refuted``: the evidence contradicts it;
* ``open``: the evidence does not settle it yet.

:func:`claims` lists them in the post's order; :func:`evaluate` runs every evidence function and
rule. The book's chapter "What the post got right" renders the table, and ``tests/test_ledger.py``
fails when a verdict moves, i.e. when the evidence behind it crosses the rule's threshold, or
when a number comes within 10 % of a threshold. Every
printed number is an exact count or is rounded far from its rounding boundary, so the table does
not depend on the CPU.
"""

from ._claim import VERDICTS, Claim, Row, evaluate
from ._claims import claims
from ._measure import conv_inverse_flops
from ._rule import MIN_MARGIN, Condition, Rule, rule, when

__all__ = ["VERDICTS", "MIN_MARGIN", "Claim", "Condition", "Row", "Rule", "claims", "evaluate", "rule", "when",
           "conv_inverse_flops"]
