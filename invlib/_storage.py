"""Who else holds a tensor's memory: the test behind every in-place reuse in invlib.

The reverse sweep saves memory by writing rebuilt activations into buffers it owns and by
freeing sub-network outputs whose values it has already used. Both are safe only when no other
tensor (the caller's output, an autograd saved tensor, a view) shares the memory.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sole_reference(t: Tensor) -> bool:
    """True if no other tensor shares ``t``'s storage, so ``t`` may be overwritten or freed.

    Compares the storage's use count with that of a freshly made tensor, which is referenced once.
    Views and detached aliases of ``t`` each hold the storage, and so do tensors autograd saved.
    If PyTorch does not expose the count, answers False: never reuse what may be shared.
    """
    if _USE_COUNT is None or t._base is not None:
        return False
    return _USE_COUNT(t.untyped_storage()._cdata) == _FRESH


def _fresh_count() -> int | None:
    """The use count of a storage held by one tensor alone (it depends on torch's internals)."""
    if _USE_COUNT is None:
        return None
    fresh = torch.empty(1)
    return _USE_COUNT(fresh.untyped_storage()._cdata)


_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)
_FRESH = _fresh_count()


def shares_memory(a: Tensor, *others: Tensor) -> bool:
    """True if ``a`` lives in the same storage as any of ``others``."""
    ptr = a.untyped_storage().data_ptr()
    return any(ptr == o.untyped_storage().data_ptr() for o in others)
