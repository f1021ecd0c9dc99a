"""invlib.guide: the reader's guide's three measured columns, on its small blocks."""

import math

import pytest

from invlib import guide


def test_memory_per_block_plain_grows_checkpointing_less_inversion_not_at_all():
    stored = {m: guide.stored_per_block(m) for m in ("plain autograd", "checkpointing", "invlib coupling",
                                                      "invlib dense, LU solve", "RevLib")}
    assert stored["plain autograd"] > 2 > stored["checkpointing"] > 0.5
    assert all(abs(stored[m]) < 0.05 for m in ("invlib coupling", "invlib dense, LU solve", "RevLib"))


def test_flop_ratios_coupling_four_thirds_checkpointing_below_it():
    assert guide.flop_ratio("plain autograd") == pytest.approx(1.0)
    assert guide.flop_ratio("invlib coupling") == pytest.approx(4 / 3, rel=1e-6)
    assert guide.flop_ratio("RevLib") == pytest.approx(4 / 3, rel=1e-6)
    assert 1.0 < guide.flop_ratio("checkpointing") < 4 / 3
    # dense by LU solve: 4/3 + w/(9B) of products and solves, plus a second factorisation (the check)
    w, b = guide.W, guide.B
    assert guide.flop_ratio("invlib dense, LU solve") == pytest.approx(4 / 3 + w / (9 * b) + 2 * w / (18 * b), rel=0.02)


def test_gradient_error_is_rounding_except_memcnn_input():
    errors = {m: guide.gradient_error(m) for m in guide.METHODS}
    eps32 = 2.0**-24
    assert all(errors[m] < 100 * math.sqrt(guide.DEPTHS[1]) * eps32 * guide.W for m in guide.METHODS if m != "MemCNN")
    assert errors["MemCNN"] > 1e-2


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        guide.build("adjoint", 4)
