"""One fused kernel for the GPU's whole-row weighted sum: each column's lerp weight looked up by
its depth.

A weighted sum over whole rows of the stack (:data:`~lwmm_lab.engine.merge.FLAT_SUM`) lerps
two rows with a weight per column, the weight of the column's depth row. In torch ops that is a
gather and a lerp: the gather writes a (P,) weight row that the lerp reads back, 24 bytes of
memory traffic per value (4 index, 4 + 4 weight, 4 + 4 rows, 4 out), as many as the one-pass
floor at M = 5 (five rows read, one written). :func:`lerp_by_row` does it as one Triton kernel
where Triton is there (torch's CUDA builds for Linux depend on it): each weight is looked up in
the (Np,) column, which stays in the GPU's cache, so a value costs 16 bytes, and no weight row
is held. Its arithmetic is ``torch.lerp``'s (from the nearer end), so the kernel and the torch
ops agree to rounding.

Where the kernel is not used (a CPU, no Triton, ``LWMM_TRITON=0``, or a launch that failed
once, with a warning) the torch ops run instead.
"""

# ruff: noqa: ANN001, ANN202
# (a Triton kernel's arguments are typed by what a launch passes, pointers and ints: Triton
# reads annotations as specialisation hints, so the kernel has none)

from __future__ import annotations

import contextlib
import os
import warnings

import torch
from torch import Tensor

from lwmm_lab.errors import first_line

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch comes without Triton: the torch ops serve
    triton = None

#: Devices where :func:`lerp_by_row` runs the Triton kernel. A CPU runs the torch ops: Triton
#: compiles for GPUs (its interpreter, ``TRITON_INTERPRET=1``, runs the kernel on a CPU for
#: the tests, far slower).
FUSED = {"cuda": True, "cpu": False}

#: Columns per kernel program: a pointwise kernel that only streams memory.
BLOCK = 1024

#: Why the kernel failed in this process, once it has (then the torch ops run).
_failed: str | None = None


def fused_enabled(device: torch.device) -> bool:
    """Whether :func:`lerp_by_row` runs the fused kernel on ``device``."""
    return (
        triton is not None
        and FUSED.get(device.type, False)
        and _failed is None
        and os.environ.get("LWMM_TRITON", "1") != "0"
    )


def lerp_by_row(start: Tensor, end: Tensor, weights: Tensor, rows: Tensor, out: Tensor) -> Tensor:
    """``out = lerp(start, end, weights[rows])``: ``start``, ``end`` and ``out`` are (P,)
    contiguous rows (``out`` may be ``start``), ``weights`` (Np,) one weight per depth (a
    column of a table: any stride), ``rows`` (P,) int32 each column's depth row. Returns
    ``out``."""
    global _failed
    if fused_enabled(out.device):
        try:
            with torch.cuda.device(out.device) if out.is_cuda else contextlib.nullcontext():
                n = out.numel()
                _lerp_by_row[(triton.cdiv(n, BLOCK),)](
                    start, end, weights, weights.stride(0), rows, out, n, BLOCK=BLOCK
                )
            return out
        except Exception as e:  # Triton raises compiler and driver errors of many types
            _failed = first_line(e)
            warnings.warn(
                f"lwmm: the fused re-merge kernel failed ({_failed}); torch ops run instead",
                stacklevel=2,
            )
    return torch.lerp(start, end, weights.index_select(0, rows), out=out)


if triton is not None:

    @triton.jit
    def _lerp_by_row(start, end, weights, stride, rows, out, n, BLOCK: tl.constexpr):
        at = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = at < n
        a = tl.load(start + at, mask=inside)
        b = tl.load(end + at, mask=inside)
        row = tl.load(rows + at, mask=inside, other=0)
        w = tl.load(weights + row * stride)
        d = b - a
        # torch.lerp's formula: from the nearer end, so that weights 0 and 1 give the ends
        lerped = tl.where(tl.abs(w) < 0.5, a + w * d, b - d * (1.0 - w))
        tl.store(out + at, lerped, mask=inside)
