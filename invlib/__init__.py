"""invlib: constant-memory backpropagation through invertible neural networks."""

from . import reference
from .sliders import slider

__all__ = ["reference", "slider"]
