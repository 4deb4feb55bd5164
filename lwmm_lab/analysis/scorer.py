"""Scoring the lab's previews: one batch held in memory, scored model after model, replayed
from a CUDA graph on a GPU."""

from __future__ import annotations

import itertools
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lwmm_lab.analysis.evaluation import classify, confusion, eval_mode, model_classes, normalize
from lwmm_lab.engine.graphs import capture, graphs_enabled
from lwmm_lab.errors import first_line
from lwmm_lab.heap import keep_freed_memory


class BatchScorer:
    """Scores models on one batch held in memory, cut into parts (the lab's target and source
    previews): one forward pass, then each part's confusion, all where the batch lies. The
    inputs are normalised once, as the batch never changes while the models do.

    On a GPU the scoring of a model seen before is replayed from a CUDA graph (``graphs``):
    the lab re-merges into the same module in place, so the forward pass of ~400 kernels costs
    one launch, not ~400 from Python. A graph reads the model's memory as it is at replay; it
    is captured the second time a model (an eval-mode module whose tensors lie where they did)
    is scored, so a model scored once costs no capture, and is checked once against the eager
    pass: a forward pass that cannot be captured, or whose replay differs, is scored eagerly.
    ``graphs=None`` follows the environment: ``LWMM_CUDA_GRAPHS=0`` scores eagerly.
    """

    #: Models whose graphs are kept (each holds the activations of one pass).
    KEPT = 4

    def __init__(
        self, images: Tensor, labels: Tensor, parts: Sequence[int], graphs: bool | None = None
    ) -> None:
        if images.device.type == "cpu":
            keep_freed_memory()
        self.x, self.labels = normalize(images), labels
        ends = list(itertools.accumulate(parts))
        self.parts = [slice(end - size, end) for end, size in zip(ends, parts, strict=True)]
        if graphs is None:
            graphs = graphs_enabled()
        self.graphs = graphs and self.x.is_cuda
        #: How many CUDA graphs were captured (a new one per model, or per move of its memory).
        self.captures = 0
        self._seen: OrderedDict[int, _Seen] = OrderedDict()

    def __call__(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        """The model's predictions (N, H, W) and each part's confusion (parts, 19, 19)."""
        if model.training:
            with eval_mode(model):
                return self._score(model)
        if not self.graphs:
            return self._score(model)
        seen = self._seen.pop(id(model), None)
        if seen is None or seen.model() is not model or seen.memory != _memory(seen.modules):
            modules = tuple(model.modules())
            seen = _Seen(weakref.ref(model), modules, _memory(modules))
        elif seen.graph is None and seen.eager is None:
            self._capture(model, seen)
        self._seen[id(model)] = seen
        while len(self._seen) > self.KEPT:
            self._seen.popitem(last=False)
        if seen.graph is None:
            return self._score(model)
        seen.graph.replay()
        return tuple(t.clone() for t in seen.outputs)

    def _score(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        classes = model_classes(model)
        with torch.no_grad():
            pred = classify(model, self.x)
        counts = [confusion(pred[part], self.labels[part], classes) for part in self.parts]
        return pred, torch.stack(counts)

    def _capture(self, model: nn.Module, seen: _Seen) -> None:
        """Capture ``self._score(model)`` into ``seen`` (its graph and outputs), or record
        there why the model is scored eagerly. Warmed up on a side stream first (lazy
        initialisations stay out of the graph), then replayed once and compared with that
        eager pass."""
        try:
            graph, eager, outputs = capture(lambda: self._score(model), self.x.device)
        except RuntimeError as e:
            seen.eager = f"its forward pass cannot be captured in a CUDA graph ({first_line(e)})"
        else:
            if all(map(torch.equal, eager, outputs)):
                seen.graph, seen.outputs = graph, outputs
                self.captures += 1
                return
            seen.eager = "its CUDA graph's replay differs from the eager pass"
        warnings.warn(f"lwmm: {type(model).__name__} is scored eagerly: {seen.eager}", stacklevel=3)


@dataclass
class _Seen:
    """A model a :class:`BatchScorer` has scored: where its tensors lay, and once captured,
    its graph and the graph's outputs (or, when it cannot be graphed, why)."""

    model: weakref.ref
    modules: tuple[nn.Module, ...]
    memory: tuple[int, ...]
    graph: torch.cuda.CUDAGraph | None = None
    eager: str | None = None
    outputs: tuple[Tensor, ...] = ()


def _memory(modules: Iterable[nn.Module]) -> tuple[int, ...]:
    """Where each parameter and buffer of a model's modules lies: a graph of its forward pass
    reads those addresses, so it is valid while they stay. Read from each module's own
    tables (0.15 ms for the zoo's Unet; ``parameters()`` and ``buffers()`` take 0.8 ms)."""
    return tuple(
        t.data_ptr()
        for module in modules
        for table in (module._parameters, module._buffers)
        for t in table.values()
        if t is not None
    )
