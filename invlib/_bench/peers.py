"""MemCNN and RevLib, the RevNet libraries, built over the very same coupling sub-networks.

Both invert additive coupling blocks only (no dense or convolutional inverse), so they are
offered for the ``coupling`` net, and only when the package is installed.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Sequence

from torch import Tensor, nn

PEERS = ("memcnn", "revlib")


def available(name: str) -> bool:
    """Whether the package behind peer ``name`` can be imported."""
    return importlib.util.find_spec(name) is not None


def peer_forward(name: str, blocks: Sequence[nn.Module]) -> Callable[[Tensor], Tensor]:
    """The chain of ``invlib.AdditiveCoupling`` ``blocks`` as peer ``name`` trains it, sharing
    each block's ``F`` and ``G`` (same weights, same function)."""
    if name == "memcnn":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # memcnn's torch.cuda.amp decorators
            import memcnn
        # memcnn frees storage through the deprecated TypedStorage API on every call
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        return nn.Sequential(*[
            memcnn.InvertibleModuleWrapper(fn=memcnn.AdditiveCoupling(Fm=b.F, Gm=b.G),
                                           keep_input=False, keep_input_inverse=False)
            for b in blocks])
    if name == "revlib":
        import revlib
        return revlib.ReversibleSequential(*[m for b in blocks for m in (b.F, b.G)], split_dim=1)
    raise ValueError(f"peer must be one of {PEERS}, got {name!r}")
