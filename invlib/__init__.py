"""invlib: constant-memory backpropagation through invertible neural networks.

Layers (every one an :class:`Invertible`, with ``forward``, ``inverse`` and the reverse step):
:class:`InvertibleLinear`, :class:`LULinear`, :class:`LeakyReLU`, :class:`Asinh`, :class:`ELU`,
:class:`AdditiveCoupling`, :class:`CircularConv1d`, :class:`CircularConv2d`, :class:`Squeeze2d`,
:class:`InvertibleConv1x1`; and the container
:class:`InvertibleSequential`, whose backward rebuilds every activation by inversion instead of
storing it (``anchor_every=k`` stores every k-th activation); and :func:`diagnose`, a per-layer
table of condition estimates and round-trip errors that says where a stack loses digits.

Sub-modules: :mod:`invlib.costs` (analytic memory and FLOP model), :mod:`invlib.memory`
(allocator-level peak memory), :mod:`invlib.compare` (one training step by plain autograd,
checkpointing or inversion), :mod:`invlib.precision` (gradient error under autocast),
:mod:`invlib.image_nets` (ResNet, RevNet and
i-RevNet image classifiers at MemCNN's CIFAR-10 shapes), :mod:`invlib.transformer` (ViT and a
causal language model, ordinary or reversible), :mod:`invlib.planner` (:func:`plan`: per layer,
cache, recompute or invert within a memory budget), :mod:`invlib.ode` (neural-ODE solvers and the adjoint method), :mod:`invlib.reference` (the
seed post's algorithm in NumPy), and :func:`invlib.sliders.slider` (the book's figures with
sliders).
"""

from . import compare, costs, image_nets, memory, ode, planner, reference, transformer
from ._diagnose import Diagnosis, diagnose
from .activations import ELU, Asinh, LeakyReLU
from .base import Invertible
from .conv import CircularConv1d, CircularConv2d
from .conv1x1 import InvertibleConv1x1
from .coupling import AdditiveCoupling
from .linear import InvertibleLinear
from .lu_linear import LULinear
from .planner import plan
from ._reverse_step import ReconstructionWarning
from .sequential import InvertibleSequential
from .squeeze import Squeeze2d
from .sliders import slider

__all__ = [
    "ELU",
    "AdditiveCoupling",
    "Asinh",
    "CircularConv1d",
    "CircularConv2d",
    "Diagnosis",
    "Invertible",
    "InvertibleConv1x1",
    "InvertibleLinear",
    "InvertibleSequential",
    "LULinear",
    "LeakyReLU",
    "ReconstructionWarning",
    "Squeeze2d",
    "compare",
    "costs",
    "diagnose",
    "image_nets",
    "memory",
    "ode",
    "plan",
    "planner",
    "reference",
    "slider",
    "transformer",
]
