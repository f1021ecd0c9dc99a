"""``torch.linalg.lu_factor_ex`` made safe for batches on the CPU.

torch 2.13's CPU batched LU splits the batch over threads with a grain size that truncates to 0
for matrices of more than 14 rows, so LAPACK's ``getrf`` runs on several threads at once, which
MKL's row swaps (``xLASWP``) do not survive: with two or more threads, a stack of 256 x 256
matrices comes back with invalid pivots and wrong factors, with ``info = 0`` and only MKL's
"Parameter 6 was incorrect on entry to SLASWP" on stderr (measured here; reported and fixed
upstream in pytorch/pytorch pull request 181570). invlib factorises stacks of weights and of
frequency responses, so every factorisation goes through :func:`lu_factor`, which runs a CPU
batch of such matrices on one thread (the batch is then factorised one matrix after another,
as intended upstream); single matrices and GPU batches are passed straight through.
"""

from __future__ import annotations

import torch
from torch import Tensor

_SAFE_ROWS = 14  # up to this size torch's heuristic keeps the batch on one thread by itself


def lu_factor(a: Tensor) -> tuple[Tensor, Tensor]:
    """Packed LU factors and pivots of ``a`` (``(..., n, n)``), as ``torch.linalg.lu_factor_ex``
    (no error on singular input: a zero pivot is left for the caller's verdict)."""
    threads = torch.get_num_threads()
    if a.device.type != "cpu" or a.ndim < 3 or a.shape[-1] <= _SAFE_ROWS or threads == 1 \
            or a.shape[:-2].numel() <= 1:
        lu, pivots, _ = torch.linalg.lu_factor_ex(a)
        return lu, pivots
    torch.set_num_threads(1)
    try:
        lu, pivots, _ = torch.linalg.lu_factor_ex(a)
    finally:
        torch.set_num_threads(threads)
    return lu, pivots
