"""Analytic memory and FLOP costs of caching versus inverting, checked against measurements.

* :func:`dense`, :func:`conv1d`, :func:`conv2d`, :func:`coupling` return a :class:`Cost`: weight and activation
  element counts (the seed post's convention and autograd's real one), bytes for a dtype, the bytes
  of a training step with or without the cache, and FLOPs of forward, backward and inversion.
* :func:`larger_model_factor`, :func:`savings_fraction`, :func:`batch_where_cache_equals_params`:
  what dropping the cache buys, under a stated memory accounting.
* :func:`checkpoint_elements`: the peak cache of gradient checkpointing with ``sqrt(depth)`` segments.
* :func:`autograd_saved` and :func:`counted_flops` measure the same quantities on real modules.
* :func:`dense_step`, :func:`coupling_step`, :func:`conv_step`: FLOPs of one training step, plain or
  by inversion, split into what ``FlopCounterMode`` counts and what it cannot see (:class:`StepFlops`).
* :func:`image_memory`: what a step of :mod:`invlib.image_nets`' ResNets, RevNets and i-RevNets keeps.
* :func:`transformer_memory`: what a step of :mod:`invlib.transformer`'s models keeps, plain,
  checkpointed per block or reversible, with the flash or the math attention kernel.
* :func:`post_flops` and :func:`post_memory_claims`: the post's formulas and percentages, verbatim.
"""

from invlib.costs._coupling import checkpoint_elements, coupling
from invlib.costs._image import ImageMemory, image_memory
from invlib.costs._transformer import TRANSFORMER_METHODS, block_elements, transformer_memory
from invlib.costs._flops import STEP_METHODS, StepFlops, conv_step, coupling_step, dense_step, step_ratio
from invlib.costs._measure import CountedFlops, SavedTensors, autograd_saved, counted_flops
from invlib.costs._memory import (batch_where_cache_equals_params, break_even_depth, larger_model_factor,
                                 savings_fraction)
from invlib.costs._model import ACTIVATION_SAVES, INVERSION_WORKING_SET, Cost, conv1d, conv2d, dense, element_size
from invlib.costs._post import PostClaim, PostFlops, post_flops, post_memory_claims

__all__ = [
    "Cost", "dense", "conv1d", "conv2d", "coupling", "checkpoint_elements", "element_size", "ACTIVATION_SAVES", "INVERSION_WORKING_SET",
    "larger_model_factor", "savings_fraction", "batch_where_cache_equals_params", "break_even_depth",
    "SavedTensors", "autograd_saved", "CountedFlops", "counted_flops",
    "STEP_METHODS", "StepFlops", "dense_step", "coupling_step", "conv_step", "step_ratio",
    "PostFlops", "post_flops", "PostClaim", "post_memory_claims", "ImageMemory", "image_memory",
    "TRANSFORMER_METHODS", "block_elements", "transformer_memory",
]
