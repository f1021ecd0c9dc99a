"""The cost of one stack of equal layers: parameter and activation counts, bytes, and FLOPs.

A stack is ``depth`` copies of one layer ``y = sigma(W * x)`` that keeps the shape of ``x``, run on a
batch of ``batch`` inputs. Every count is in *elements* (multiply by the dtype's size for bytes);
biases are excluded, as in the seed post's back-of-the-envelope section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from invlib._checks import check_positive_int

# What autograd keeps for the backward of each activation: its input, its output, or nothing.
# Measured with saved_tensors_hooks on torch 2.13 (see tests/test_costs.py).
ACTIVATION_SAVES = {"leaky_relu": "input", "tanh": "output", "sigmoid": "output", "relu": "output", "identity": None}
# Weight copies per parameter: the weights, their gradients, and the optimizer's state.
PARAM_COPIES = {None: 1, "sgd": 2, "sgd_momentum": 3, "adam": 4}
# Layer outputs alive at once while one layer is undone in a cache-free backward (see Cost.cache_elements).
INVERSION_WORKING_SET = 3
CACHES = ("post", "autograd", "none")


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype`` (4 for ``torch.float32``)."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    return torch.empty(0, dtype=dtype).element_size()


def copies(optimizer: str | None) -> int:
    """Copies of the weights kept in training: 1 (weights only), +1 for gradients, +1 or +2 of state."""
    if optimizer not in PARAM_COPIES:
        raise ValueError(f"optimizer must be one of {list(PARAM_COPIES)}, got {optimizer!r}")
    return PARAM_COPIES[optimizer]


@dataclass(frozen=True)
class Cost:
    """Memory (in elements) and FLOPs of ``depth`` equal shape-preserving layers on a batch.

    Memory, per the seed post's convention and per what autograd really keeps:

    * ``params``: weight elements of the whole stack, no bias;
    * ``activations``: the post's cache, one layer output per layer, ``depth * layer_output``;
    * ``layer_output``: elements of one layer's output for the whole batch;
    * ``saved_per_layer``: activation elements autograd saves per layer deep inside the stack;
    * ``saved``: activation elements autograd saves for the whole stack (parameters saved by
      reference are not counted: they cost nothing extra). Equal to what
      :func:`invlib.costs.autograd_saved` measures.

    FLOPs (one multiply-add = 2 FLOPs, leading order), for the whole stack and batch:

    * ``flops_forward``: the matmuls or convolutions of the forward pass;
    * ``flops_backward``: ``2 * flops_forward``: the input cotangent ``x_bar = W^T y_bar`` and the
      weight gradient ``W_bar = y_bar x^T`` each cost one forward;
    * ``flops_lu``: ``(2/3) w^3`` per dense layer, factorising ``W = P L U`` once per backward (zero if
      ``W`` is stored as its factors); ``None`` for convolutions, whose inverse is not modelled here;
    * ``flops_solve``: ``2 B w^2`` per dense layer, the forward and back substitutions that recover
      ``x = W^{-1} z`` for ``B`` samples; ``None`` for convolutions.
    """

    layer: str
    activation: str
    depth: int
    batch: int
    params: int
    activations: int
    layer_output: int
    saved_per_layer: int
    saved: int
    flops_forward: int
    flops_backward: int
    flops_lu: float | None
    flops_solve: int | None
    scratch: int = 0
    scratch_unchunked: int = 0

    def inversion_elements(self, chunked: bool = True) -> int:
        """Elements a cache-free backward holds at its peak: the working set of three layer outputs
        (:meth:`cache_elements` ``"none"``) plus the inverse's own scratch, constant in depth.

        ``scratch`` (and ``scratch_unchunked``, the same without chunking) per layer kind:

        * dense (``InvertibleLinear``): the LU copy of one ``w x w`` weight, ``w^2``; chunking does
          not apply. Not a model of ``LULinear``: it needs no copy to factorise, but its reverse
          step forms its factors' gradients as ``w x w`` matrices (the chapter "The post's
          networks, at the post's sizes" measures it);
        * circular convolution: the spectra of the batch, ``2 B C nfreq`` reals (``nfreq`` =
          ``rfftn``'s frequencies), plus the frequency responses and their LU factors of a chunk of
          frequencies, at most one layer output by default (``invlib.CircularConv2d``'s
          ``scratch_bytes``), or of all ``nfreq`` frequencies at once, ``2 * 2 nfreq C^2`` reals,
          without chunking (an upper bound: the measured peak of the chunked inverse at C = 64 on
          128 x 128 is 2.0 layer outputs, output included);
        * zero-padded convolution: no closed-form inverse here, 0.
        """
        return self.cache_elements("none") + (self.scratch if chunked else self.scratch_unchunked)

    def net_saving(self, chunked: bool = True) -> int:
        """Elements a cache-free backward saves against the post's cache: ``activations`` minus
        :meth:`inversion_elements`. Negative when the stack is too shallow for inversion to pay."""
        return self.activations - self.inversion_elements(chunked)

    def cache_elements(self, cache: str = "post") -> int:
        """Activation elements held for the backward pass under one of three accountings.

        * ``"post"``: the post's cache, ``activations`` (one output per layer);
        * ``"autograd"``: what autograd really saves, ``saved``;
        * ``"none"``: backward by inversion, constant in depth: ``3 * layer_output``. Undoing layer
          ``k`` needs the output ``y`` and its cotangent ``y_bar``; a schedule that frees each tensor
          as soon as it is used peaks at 3 of them: ``(z, z_bar, x)`` after ``z = sigma^{-1}(y)``,
          ``z_bar = y_bar * sigma'(z)`` and the solve ``x = W^{-1} z``. Scratch space of the solve
          itself (an LU copy of one ``w x w`` weight for a dense layer) is not included.
        """
        if cache not in CACHES:
            raise ValueError(f"cache must be one of {list(CACHES)}, got {cache!r}")
        return {"post": self.activations, "autograd": self.saved,
                "none": INVERSION_WORKING_SET * self.layer_output}[cache]

    def nbytes(self, dtype: torch.dtype = torch.float32) -> dict[str, int]:
        """Bytes of ``params``, ``activations`` and ``saved`` when every element has type ``dtype``."""
        size = element_size(dtype)
        return {"params": self.params * size, "activations": self.activations * size, "saved": self.saved * size}

    def training_bytes(self, optimizer: str | None = "sgd", cache: str = "post",
                       dtype: torch.dtype = torch.float32) -> int:
        """Bytes held during one training step: weights, gradients, optimizer state and the cache.

            bytes = (c * params + cache_elements(cache)) * element_size(dtype)

        with ``c`` = 1 for ``optimizer=None`` (weights only, the post's accounting), 2 for
        ``"sgd"`` (weights + gradients), 3 for ``"sgd_momentum"`` (+ one velocity buffer) and 4 for
        ``"adam"`` (+ first and second moments). Temporaries of the step are not counted.
        """
        return (copies(optimizer) * self.params + self.cache_elements(cache)) * element_size(dtype)


def _autograd_saved(depth: int, output: int, conv_input: int, activation: str) -> tuple[int, int]:
    """(per layer, whole stack) activation elements autograd saves; ``conv_input`` is what W saves.

    Each ``W`` saves its input (for ``W_bar``). Unpadded (``conv_input == output``), that input *is*
    the previous layer's output, so an activation that saves its output shares it: the stack keeps
    ``x_0 ... x_depth``. One that saves its input ``z = W x`` keeps ``z_k`` besides ``x_{k-1}``.
    A circularly padded convolution saves a new padded copy, which nothing shares.
    """
    if activation not in ACTIVATION_SAVES:
        raise ValueError(f"activation must be one of {list(ACTIVATION_SAVES)}, got {activation!r}")
    saves = ACTIVATION_SAVES[activation]
    own = 0 if saves is None else output
    if conv_input != output:
        return conv_input + own, depth * (conv_input + own)
    if saves == "output":
        return output, (depth + 1) * output
    return output + own, depth * (output + own)


def dense(width: int, depth: int = 1, batch: int = 1, activation: str = "leaky_relu") -> Cost:
    """Costs of ``depth`` layers ``y = sigma(W x)``, ``W`` of shape ``(width, width)``, no bias.

    With ``w = width``, ``d = depth``, ``B = batch``:
    ``params = w^2 d``, ``activations = w B d``, ``flops_forward = 2 B w^2 d``,
    ``flops_backward = 4 B w^2 d``, ``flops_lu = (2/3) w^3 d``, ``flops_solve = 2 B w^2 d``.
    ``activation`` names the nonlinearity (a key of ``ACTIVATION_SAVES``); it only changes ``saved``.
    """
    w = check_positive_int(width, name="width", owner="costs.dense")
    d = check_positive_int(depth, name="depth", owner="costs.dense")
    b = check_positive_int(batch, name="batch", owner="costs.dense")
    per, total = _autograd_saved(d, w * b, w * b, activation)
    return Cost("dense", activation, d, b, params=w * w * d, activations=w * b * d, layer_output=w * b,
                saved_per_layer=per, saved=total, flops_forward=2 * b * w * w * d,
                flops_backward=4 * b * w * w * d, flops_lu=2 * w**3 * d / 3, flops_solve=2 * b * w * w * d,
                scratch=w * w, scratch_unchunked=w * w)


def _conv(name: str, channels: int, spatial: tuple[int, ...], kernel_size: int, depth: int, batch: int,
          activation: str, padding: str) -> Cost:
    owner = f"costs.{name}"
    c = check_positive_int(channels, name="channels", owner=owner)
    k = check_positive_int(kernel_size, name="kernel_size", owner=owner)
    d = check_positive_int(depth, name="depth", owner=owner)
    b = check_positive_int(batch, name="batch", owner=owner)
    names = ("length",) if len(spatial) == 1 else ("height", "width")
    for n, s in zip(names, spatial):
        check_positive_int(s, name=n, owner=owner)
        if k > s:
            raise ValueError(f"{owner}: kernel_size={k} is larger than the input {n}={s}; "
                             f"use kernel_size <= {s} or a larger input")
    if padding not in ("zeros", "circular"):
        raise ValueError(f"{owner}: padding must be 'zeros' or 'circular', got {padding!r}")
    pixels, padded, taps = 1, 1, k ** len(spatial)
    for s in spatial:
        pixels, padded = pixels * s, padded * (s + k - 1)
    out = b * c * pixels
    per, total = _autograd_saved(d, out, out if padding == "zeros" else b * c * padded, activation)
    fwd = 2 * out * c * taps * d
    scratch = unchunked = 0
    if padding == "circular":  # the Fourier-domain inverse of invlib's circular convolutions
        nfreq = math.prod(spatial[:-1]) * (spatial[-1] // 2 + 1)
        spectra, factors = 2 * b * c * nfreq, 2 * 2 * nfreq * c * c
        scratch, unchunked = spectra + min(factors, out), spectra + factors
    return Cost(name, activation, d, b, params=taps * c * c * d, activations=out * d, layer_output=out,
                saved_per_layer=per, saved=total, flops_forward=fwd, flops_backward=2 * fwd,
                flops_lu=None, flops_solve=None, scratch=scratch, scratch_unchunked=unchunked)


def conv1d(channels: int, length: int, kernel_size: int, depth: int = 1, batch: int = 1,
           activation: str = "leaky_relu", padding: str = "zeros") -> Cost:
    """Costs of ``depth`` layers ``y = sigma(conv1d(x, W))``, ``W`` of shape ``(C, C, k)``, no bias.

    Input and output ``(batch, C, L)`` (stride 1, padded to keep the length). With ``d = depth``,
    ``B = batch``: ``params = k C^2 d``, ``activations = C L B d``,
    ``flops_forward = 2 B C^2 L k d``, ``flops_backward = 2 flops_forward``.
    ``padding="zeros"`` is PyTorch's ``padding=k // 2`` inside the convolution (exact for odd ``k``;
    ``padding="same"`` with an even ``k`` makes PyTorch save a copy padded by one). With
    ``padding="circular"`` the convolution saves its padded input, ``B C (L + k - 1)`` per layer.
    """
    return _conv("conv1d", channels, (length,), kernel_size, depth, batch, activation, padding)


def conv2d(channels: int, height: int, width: int, kernel_size: int, depth: int = 1, batch: int = 1,
           activation: str = "leaky_relu", padding: str = "zeros") -> Cost:
    """Costs of ``depth`` layers ``y = sigma(conv2d(x, W))``, ``W`` of shape ``(C, C, k, k)``, no bias.

    Input and output ``(batch, C, H, W)`` (stride 1, padded to keep the size):
    ``params = k^2 C^2 d``, ``activations = C H W B d``, ``flops_forward = 2 B C^2 H W k^2 d``,
    ``flops_backward = 2 flops_forward``. ``padding`` as in :func:`conv1d`; a circular convolution saves
    ``B C (H + k - 1)(W + k - 1)`` per layer for its padded input.
    """
    return _conv("conv2d", channels, (height, width), kernel_size, depth, batch, activation, padding)
