"""CUDA graphs: work that a slider repeats on a GPU, launched once instead of kernel by kernel.

On a GPU a small model's re-merge or forward pass costs host time, Python and one launch per
kernel, not arithmetic. A CUDA graph records the kernels once and replays them with one
launch; what it reads and writes are the addresses seen at capture, so a graph is valid only
while its inputs and outputs lie where they did. :func:`capture` is the one way this package
records a graph; :class:`GraphedRuns` keeps the re-merges' graphs (the scorer keeps its own).
``LWMM_CUDA_GRAPHS=0`` in the environment turns every graph off (:func:`graphs_enabled`).
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from lwmm_lab.errors import first_line

T = TypeVar("T")


def graphs_enabled() -> bool:
    """Whether CUDA graphs may be used: unless ``LWMM_CUDA_GRAPHS=0`` is set."""
    return os.environ.get("LWMM_CUDA_GRAPHS", "1") != "0"


def capture(
    fn: Callable[[], T], device: torch.device, pool: tuple[int, int] | None = None
) -> tuple[torch.cuda.CUDAGraph, T, T]:
    """Record ``fn()`` into a CUDA graph on ``device`` and replay it once.

    ``fn`` is first called eagerly on a side stream, so that lazy initialisations (a library's
    handles, a cache filled on first use) stay out of the graph. Returns the graph, what that
    eager call returned, and what the captured call returned (the graph's outputs, as of the
    replay). ``pool``: a memory pool shared with other graphs (``torch.cuda.graph_pool_handle``).
    Raises :class:`RuntimeError` where ``fn`` cannot be captured.
    """
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.device(device):
        side, main = torch.cuda.Stream(), torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            eager = fn()
        main.wait_stream(side)
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            captured = fn()
        graph.replay()
    return graph, eager, captured


class GraphedRuns:
    """A few re-merges kept as CUDA graphs, replayed with new per-depth weights.

    A run is known by ``key``: everything its kernels depend on besides its small float
    ``inputs`` (the addresses it reads and writes, the number of groups, the flags that choose
    kernels). The first run of a key is left to the caller (``replay`` returns False), so a
    one-off merge costs no capture; the second is captured, replayed and compared with an
    eager run: a run that cannot be captured, or whose replay differs, stays eager (with a
    warning). Later runs upload the inputs (one copy) and replay.
    The graphs share one memory pool: they run one after another and keep no outputs of their
    own (they write into the caller's tensors), so the temporaries of a re-merge (the gathered
    weight row, where the torch ops run instead of the fused kernel) are held once, not once
    per graph.
    """

    #: Keys whose graphs are kept (a slider needs one; two let a pair of targets take turns).
    KEPT = 2

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        #: How many graphs were captured.
        self.captures = 0
        self._seen: OrderedDict[Hashable, _Graphed | str | None] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle()

    def replay(
        self,
        key: Hashable,
        inputs: Sequence[Tensor],
        run: Callable[[Sequence[Tensor]], None],
        written: Sequence[Tensor],
    ) -> bool:
        """Do ``run(inputs on the device)`` from the key's graph; False where the caller is to
        run it eagerly instead. ``inputs``: small float tensors on the host (their shapes are
        part of the key); ``written``: the tensors ``run`` writes, compared after a capture."""
        seen = self._seen.pop(key, _UNSEEN)
        if seen is _UNSEEN:
            self._keep(key, None)
            return False
        if seen is None:
            seen = self._capture(inputs, run, written)
        self._keep(key, seen)
        if isinstance(seen, str):
            return False
        seen.upload(inputs)
        seen.graph.replay()
        return True

    def _keep(self, key: Hashable, seen: _Graphed | str | None) -> None:
        self._seen[key] = seen
        while len(self._seen) > self.KEPT:
            self._seen.popitem(last=False)

    def _capture(
        self,
        inputs: Sequence[Tensor],
        run: Callable[[Sequence[Tensor]], None],
        written: Sequence[Tensor],
    ) -> _Graphed | str:
        """A graph of ``run`` on device copies of ``inputs``, checked against an eager run;
        or, where it cannot be had, why."""
        graphed = _Graphed(inputs, self.device, self.dtype)
        graphed.upload(inputs)
        run(graphed.inputs)  # what the graph's replay must give
        expected = [t.clone() for t in written]
        try:
            graphed.graph = capture(lambda: run(graphed.inputs), self.device, self._pool)[0]
        except RuntimeError as e:
            why = f"it cannot be captured in a CUDA graph ({first_line(e)})"
        else:
            if all(map(torch.equal, written, expected)):
                self.captures += 1
                return graphed
            why = "its CUDA graph's replay differs from the eager run"
        warnings.warn(f"lwmm: a re-merge runs eagerly: {why}", stacklevel=4)
        return why


_UNSEEN = object()


class _Graphed:
    """A captured run: its inputs on the device (in ``dtype``), where the graph reads them."""

    def __init__(self, inputs: Sequence[Tensor], device: torch.device, dtype: torch.dtype) -> None:
        sizes = [t.numel() for t in inputs]
        self.device_buffer = torch.empty(sum(sizes), dtype=dtype, device=device)
        self.inputs = [
            piece.view(t.shape)
            for piece, t in zip(self.device_buffer.split(sizes), inputs, strict=True)
        ]
        self.graph: torch.cuda.CUDAGraph | None = None

    def upload(self, inputs: Sequence[Tensor]) -> None:
        """Copy ``inputs`` (a few hundred numbers) to the device in one copy. From pageable
        memory the copy is done when this returns, so no host buffer is shared with the queue
        (on an H100 about 0.04 ms of host time, against 0.09 ms for a pinned buffer with the
        event that guards its reuse)."""
        self.device_buffer.copy_(torch.cat([t.reshape(-1) for t in inputs]))
