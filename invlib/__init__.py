"""invlib: constant-memory backpropagation through invertible neural networks."""

from .activations import ELU, Asinh, LeakyReLU
from .base import Invertible
from .conv import CircularConv1d, CircularConv2d
from .coupling import AdditiveCoupling
from .linear import InvertibleLinear
from .lu_linear import LULinear
from .sequential import InvertibleSequential

__all__ = [
    "ELU",
    "AdditiveCoupling",
    "Asinh",
    "CircularConv1d",
    "CircularConv2d",
    "Invertible",
    "InvertibleLinear",
    "InvertibleSequential",
    "LULinear",
    "LeakyReLU",
]

# Added by the lead (not the layer engine): book helpers and sub-modules.
from . import compare, costs, memory, ode, reference
from .sliders import slider

__all__ += ["compare", "costs", "memory", "ode", "reference", "slider"]
