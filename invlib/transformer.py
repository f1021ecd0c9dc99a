"""Transformers in two forms with the same parameters: ordinary pre-LayerNorm and reversible.

An ordinary pre-LayerNorm block adds two residual branches to one stream ``x`` of width ``d``:

    x = x + A(x),   x = x + M(x),      A = attention(LayerNorm(.)),   M = MLP(LayerNorm(.)).

The reversible block (Reversible ViT, Mangalam et al., CVPR 2022; the idea of Gomez et al. 2017
and of Reformer, Kitaev et al. 2020) keeps two streams of width ``d`` and couples them:

    y1 = x1 + A(x2),   y2 = x2 + M(y1),

an :class:`~invlib.AdditiveCoupling` with ``F = A`` and ``G = M`` that splits the last dimension
(``dim=-1``) of a ``(batch, tokens, 2 d)`` tensor. ``A`` and ``M`` are the same modules, with the
same parameters, as the ordinary block's branches; only the wiring differs. ``A`` and ``M`` have
no residual path of their own: the coupling's two sums are the only ones (Reversible ViT found
that keeping the inner residuals trains badly from about 8 blocks). The stem duplicates the
embedding into both streams, ``[h, h]``, and the head reads their mean (Reversible ViT
concatenates them and normalises ``2 d`` features; the mean keeps the two forms' parameters
identical).

Models: :func:`vit` (patch embedding and a class token; an image classifier) and
:func:`causal_lm` (token embedding; a causal language model), each ``reversible`` or not.
:func:`run_blocks` differentiates the stack of blocks by ``"invertible"`` (reversible models
only: one :class:`~invlib.InvertibleSequential`), ``"plain"`` or ``"checkpoint"`` (one
checkpoint per block), so one model can be measured all three ways.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.nn import functional as F

from .coupling import AdditiveCoupling
from .sequential import InvertibleSequential

__all__ = ["Attention", "MLP", "Block", "blocks", "run_blocks", "Transformer", "vit", "causal_lm", "METHODS"]

METHODS = ("invertible", "plain", "checkpoint")


class Attention(nn.Module):
    """``A(x) = dropout(W_o SDPA(Q, K, V))`` with ``Q, K, V = W_qkv LayerNorm(x)`` split into
    ``heads`` heads; causal if ``causal``. Attention runs through
    ``torch.nn.functional.scaled_dot_product_attention``, which picks a fused kernel where torch
    has one (on the CPU: a flash-attention kernel that never forms the ``tokens x tokens``
    scores) or the math kernel, which forms and keeps them. ``dropout`` applies to the attention
    weights and to the output. Shapes: ``(batch, tokens, width)`` to itself."""

    def __init__(self, width: int, heads: int, *, causal: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"Attention: width ({width}) must be divisible by heads ({heads})")
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.heads, self.causal, self.dropout = heads, causal, dropout

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        return F.dropout(self.out(y.transpose(1, 2).reshape(b, t, d)), p, self.training)


class MLP(nn.Module):
    """``M(x) = dropout(W_2 GELU(W_1 LayerNorm(x)))``, hidden width ``ratio * width``."""

    def __init__(self, width: int, ratio: int = 4, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, ratio * width)
        self.fc2 = nn.Linear(ratio * width, width)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(self.fc2(F.gelu(self.fc1(self.norm(x)))), self.dropout, self.training)


class Block(nn.Module):
    """The ordinary pre-LayerNorm block: ``x + A(x)``, then ``+ M(.)``."""

    def __init__(self, attention: Attention, mlp: MLP) -> None:
        super().__init__()
        self.attention, self.mlp = attention, mlp

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(x)
        return x + self.mlp(x)


def blocks(width: int, depth: int, heads: int, *, reversible: bool, causal: bool = False,
           dropout: float = 0.0, ratio: int = 4) -> nn.Module:
    """``depth`` blocks of width ``width``: an :class:`~invlib.InvertibleSequential` of couplings
    ``AdditiveCoupling(A, M, dim=-1)`` on ``2 width`` features if ``reversible``, else an
    ``nn.Sequential`` of :class:`Block`. Parameters are created in the same order either way, so
    one seed gives both forms the same weights."""
    pairs = [(Attention(width, heads, causal=causal, dropout=dropout), MLP(width, ratio, dropout=dropout))
             for _ in range(depth)]
    if reversible:
        return InvertibleSequential(*(AdditiveCoupling(a, m, dim=-1) for a, m in pairs))
    return nn.Sequential(*(Block(a, m) for a, m in pairs))


def run_blocks(stack: nn.Module, h: Tensor, method: str = "invertible") -> Tensor:
    """``stack(h)`` differentiated by ``method``: ``"invertible"`` (as built), ``"plain"`` (its
    blocks in a loop, autograd keeping what each saves) or ``"checkpoint"`` (each block in
    ``torch.utils.checkpoint.checkpoint``, non-reentrant: keeps each block's input, re-runs the
    block in backward)."""
    if method not in METHODS:
        raise ValueError(f"run_blocks: method must be one of {METHODS}, got {method!r}")
    if method == "invertible":
        if not isinstance(stack, InvertibleSequential):
            raise ValueError("run_blocks: 'invertible' needs a reversible stack (blocks(..., reversible=True)); "
                             "use 'plain' or 'checkpoint' for an ordinary one")
        return stack(h)
    for block in stack:
        h = block(h) if method == "plain" else torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False)
    return h


class Transformer(nn.Module):
    """``head(LayerNorm(blocks(stem(x))))`` with the streams of a reversible stack duplicated after
    the stem and averaged before the final norm. ``method`` (one of ``METHODS``) says how the
    blocks are differentiated; ``"invertible"`` is the default of a reversible model, ``"plain"``
    of an ordinary one. ``pool``: ``"first"`` (a class token) or ``"none"`` (every token, for a
    language model)."""

    def __init__(self, stem: nn.Module, stack: nn.Module, width: int, classes: int, *, pool: str,
                 reversible: bool) -> None:
        super().__init__()
        self.stem, self.blocks = stem, stack
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, classes)
        self.pool, self.reversible = pool, reversible
        self.method = "invertible" if reversible else "plain"

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        if self.reversible:
            h = torch.cat([h, h], dim=-1)
        h = run_blocks(self.blocks, h, self.method)
        if self.reversible:
            h1, h2 = h.chunk(2, -1)
            h = (h1 + h2) / 2
        if self.pool == "first":
            h = h[:, 0]
        return self.head(self.norm(h))


class _PatchStem(nn.Module):
    """Patches of ``patch x patch`` pixels, linearly embedded; a class token; learned positions."""

    def __init__(self, channels: int, image: int, patch: int, width: int) -> None:
        super().__init__()
        if image % patch:
            raise ValueError(f"vit: image size {image} must be divisible by the patch size {patch}")
        self.embed = nn.Conv2d(channels, width, patch, stride=patch)
        self.token = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2 + 1, width))

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.token.expand(len(h), -1, -1), h], dim=1) + self.position


class _TokenStem(nn.Module):
    """Token embedding plus learned positions."""

    def __init__(self, vocabulary: int, length: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.position = nn.Parameter(0.02 * torch.randn(1, length, width))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.embed(tokens) + self.position[:, :tokens.shape[1]]


def vit(*, width: int = 384, depth: int = 12, heads: int = 6, image: int = 224, patch: int = 16,
        channels: int = 3, classes: int = 1000, reversible: bool = False, dropout: float = 0.0,
        seed: int = 0) -> Transformer:
    """A ViT classifier (Dosovitskiy et al. 2021): ViT-S is ``width=384, heads=6``, ViT-B
    ``width=768, heads=12``, both 12 blocks on 224-pixel images in 16-pixel patches (197 tokens)."""
    torch.manual_seed(seed)
    stem = _PatchStem(channels, image, patch, width)
    stack = blocks(width, depth, heads, reversible=reversible, dropout=dropout)
    return Transformer(stem, stack, width, classes, pool="first", reversible=reversible)


def causal_lm(*, vocabulary: int, length: int, width: int = 128, depth: int = 4, heads: int = 4,
              reversible: bool = False, dropout: float = 0.0, seed: int = 0) -> Transformer:
    """A causal language model: token embedding, causal blocks, a linear head over the vocabulary
    at every position (not tied to the embedding)."""
    torch.manual_seed(seed)
    stem = _TokenStem(vocabulary, length, width)
    stack = blocks(width, depth, heads, reversible=reversible, causal=True, dropout=dropout)
    return Transformer(stem, stack, width, vocabulary, pool="none", reversible=reversible)
