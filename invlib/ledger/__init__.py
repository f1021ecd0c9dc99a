"""The seed post's checkable statements, each with the book's evidence and a verdict rule.

A :class:`Claim` pairs a short verbatim quotation of the post with an ``evidence`` function (it
calls :mod:`invlib`: the cost model, the NumPy reference, FLOP counts, small allocator-level
measurements; each takes well under a second) and a ``decide`` rule that turns the evidence into
one of four verdicts:

* ``confirmed``: the statement holds as written;
* ``corrected``: the idea holds, the statement as written does not (a number, a condition or a
  reading has to change);
* ``refuted``: the evidence contradicts it;
* ``open``: the evidence does not settle it yet.

:func:`claims` lists them in the post's order; :func:`evaluate` runs every evidence function and
rule. The book's chapter "What the post got right" renders the table, and ``tests/test_ledger.py``
fails when a verdict moves, i.e. when the evidence behind it crosses the rule's threshold. Every
printed number is an exact count or is rounded far from its rounding boundary, so the table does
not depend on the CPU.
"""

from ._claim import VERDICTS, Claim, Row, evaluate
from ._claims import claims
from ._measure import conv_inverse_flops

__all__ = ["VERDICTS", "Claim", "Row", "claims", "evaluate", "conv_inverse_flops"]
