"""What a training step of :mod:`invlib.transformer`'s models keeps for backward, per sample.

Counted in elements from the sizes alone, each saved tensor once (as :mod:`invlib.costs._image`
does for image models). An ordinary pre-LayerNorm block at width ``d`` with ``h`` heads keeps,
per token: the block input (LayerNorm's input, ``d``) and LayerNorm's mean and inverse deviation
(``2``); the normalised input (the QKV projection's input, ``d``); the projection's output
(``3 d``: scaled-dot-product attention keeps ``Q``, ``K`` and ``V``); attention's output (the
output projection's input, ``d``); and then, for the MLP, its input, the statistics, the
normalised input, the hidden pre-activation and the GELU output (``d + 2 + d + 4 d + 4 d``).
That is ``16 d + 4`` per token, plus what attention keeps of its own:

* the fused (flash) kernel: the log-sum-exp of each query row, ``h`` per token;
* the math kernel: the attention weights, ``h L`` per token for ``L`` tokens: the one term that
  grows with the square of the sequence.

Checkpointing each block keeps only the blocks' inputs, ``d`` per token per block; the
reversible stack keeps only its output, both streams, ``2 d`` per token at any depth. The head
keeps the final LayerNorm's input, statistics and output and the logits with their log-softmax:
per token for a language model, per sample (on the class token) for a classifier, where the
norm's input is a view that keeps the whole final activation alive (``d`` per token).
"""

from __future__ import annotations

__all__ = ["TRANSFORMER_METHODS", "block_elements", "transformer_memory"]

TRANSFORMER_METHODS = ("plain", "checkpoint", "invertible")


def block_elements(width: int, heads: int, tokens: int, kernel: str = "flash", ratio: int = 4) -> int:
    """Elements per token that plain autograd keeps for one ordinary block (module doc);
    ``ratio``: the MLP's hidden width over ``width``."""
    if kernel not in ("flash", "math"):
        raise ValueError(f"block_elements: kernel must be 'flash' or 'math', got {kernel!r}")
    attention = heads if kernel == "flash" else heads * tokens
    return (8 + 2 * ratio) * width + 4 + attention


def transformer_memory(width: int, heads: int, tokens: int, depth: int, *, method: str, kernel: str = "flash",
                       outputs: int, per_token_head: bool, ratio: int = 4) -> int:
    """Elements per sample a step keeps after its forward and loss.

    ``method``: ``"plain"`` (ordinary blocks, all kept), ``"checkpoint"`` (one checkpoint per
    block) or ``"invertible"`` (the reversible stack); ``outputs``: the head's width (vocabulary
    or classes); ``per_token_head``: a language model's head (every token) rather than a
    classifier's (the class token).
    """
    if method not in TRANSFORMER_METHODS:
        raise ValueError(f"transformer_memory: method must be one of {TRANSFORMER_METHODS}, got {method!r}")
    body = {"plain": depth * block_elements(width, heads, tokens, kernel, ratio),
            "checkpoint": depth * width, "invertible": 2 * width}[method]
    head = 2 * width + 2 + 2 * outputs
    if per_token_head:
        return tokens * (body + head)
    return tokens * (body + width) + head - width
