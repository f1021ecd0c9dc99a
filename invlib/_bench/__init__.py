"""The pieces of ``python -m invlib.bench`` (see :mod:`invlib.bench`), one concept per module:
:mod:`.nets` (the layer stacks and their FLOP model), :mod:`.peers` (MemCNN and RevLib, when
installed), :mod:`.measure` (interleaved timing and peak memory), :mod:`.machine` (what ran it)."""
