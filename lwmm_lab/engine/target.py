"""Where a merge writes: a target whose tensors lie end to end like the pool's stack.

:func:`lay_out` places a model's (or a state dict's) tensors so; :func:`joined_views` finds
those runs again in a target and checks it once against the anchor. A merge into such a target
writes whole rows, one kernel per step, instead of a multi-tensor copy into every tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from lwmm_lab.engine.checkpoints import check_compatible
from lwmm_lab.engine.pool import Layout, Pool, lies_as_row, row_view
from lwmm_lab.engine.routes import routes
from lwmm_lab.errors import LwmmError

Target = TypeVar("Target", nn.Module, MutableMapping[str, Tensor])


def lay_out(target: Target, pool: Pool, anchor: int = 0) -> Target:
    """Place the tensors of ``target`` (a model or a state dict) end to end in flat buffers,
    keeping their values: the ones the pool stacks in its column order, the rest (the anchor's
    own, the integer counts) one buffer per dtype in the anchor's order. Returns ``target``.
    Tensors on the ``meta`` device (a model built without memory) get their memory this way,
    and no values.

    A merge into a laid-out target writes whole rows: one kernel per step instead of a
    multi-tensor copy into every tensor (launches, not bandwidth, bound a GPU re-merge of a
    small model). A model's tensors stay ordinary parameters and buffers (views, convolution
    weights channels last as :func:`~lwmm_lab.engine.pool.as_row` lays them; a tensor starts
    16-byte aligned when the sizes before it are multiples of four, as every smp model's
    are). A target whose tensors do not match the anchor's names, shapes and, for the stacked
    ones, the pool's dtype is left as it is (a merge checks it and says why).
    """
    layout = pool.layout(anchor)
    anchor_tensors = pool.checkpoints[layout.anchor].tensors
    state = target.state_dict(keep_vars=True) if isinstance(target, nn.Module) else target
    if any(
        name not in state or state[name].shape != anchor_tensors[name].shape
        for name in anchor_tensors
    ):
        return target
    r = routes(pool, layout)
    places = (pool.device, torch.device("meta"))
    for k, names in enumerate([tuple(pool.columns), *r.copied]):
        dtype = pool.flat.dtype if k == 0 else anchor_tensors[names[0]].dtype
        if any(state[n].dtype != dtype or state[n].device not in places for n in names):
            continue
        sizes = [state[n].numel() for n in names]
        pieces = torch.empty(sum(sizes), dtype=dtype, device=pool.device).split(sizes)
        for name, piece in zip(names, pieces, strict=True):
            old, view = state[name], row_view(piece, state[name].shape)
            if not old.is_meta:
                with torch.no_grad():
                    view.copy_(old)
            if isinstance(target, nn.Module):
                _put(target, name, view)
            else:
                target[name] = view
    return target


def joined_views(targets: Mapping[str, Tensor], pool: Pool, layout: Layout) -> JoinedViews:
    """The flat views of a merge target's tensors where :func:`lay_out` placed them end to end
    (None where not), after checking once that the target fits the anchor's names and shapes
    (:class:`~lwmm_lab.errors.LwmmError` names what does not)."""
    r = routes(pool, layout)
    # A slider writes into the same tensors on every change: they are checked once (the
    # last few targets are remembered, so two taking turns are not checked again). They
    # are known by where their memory is, not by their Python objects: a tensor given other
    # memory (``set_``) stays the same object, and a new object may reuse a freed one's
    # id. What is remembered holds no tensor, so a target let go is freed.
    try:
        seen = tuple(map(Tensor.data_ptr, targets.values()))
    except TypeError:  # a value that is no tensor: named, where data_ptr's message names none
        name, value = next((k, v) for k, v in targets.items() if not isinstance(v, Tensor))
        raise LwmmError(
            f"the target model: '{name}' is a {type(value).__name__}, not a tensor (give a model "
            "or its state_dict())"
        ) from None
    checked: dict[tuple[int, ...], Joined] = r.kept("checked targets", dict)
    if seen not in checked:
        expected = {e.name: e.shape for e in layout.entries}
        hint = "; build it from the anchor's spec"
        check_compatible(expected, targets, "the target model", hint)
        shared = _joined([targets[n] for n in pool.columns])
        if shared is not None and (shared.dtype != pool.flat.dtype or shared.device != pool.device):
            shared = None
        copied = [_joined([targets[n] for n in names]) for names in r.copied]
        while len(checked) >= 4:
            del checked[next(iter(checked))]
        checked[seen] = Joined(
            tuple(
                None if view is None else (names[0], view.numel())
                for view, names in zip(
                    (shared, *copied), (tuple(pool.columns), *r.copied), strict=True
                )
            )
        )
    return checked[seen].views(targets)


@dataclass(frozen=True)
class Joined:
    """Where a merge target's tensors lie end to end in one buffer (as :func:`lay_out` places
    them): for the pool's columns, then each dtype group of the copied entries, the name of the
    group's first tensor and the group's length, or None where its tensors do not lie so."""

    runs: tuple[tuple[str, int] | None, ...]

    def views(self, targets: Mapping[str, Tensor]) -> JoinedViews:
        """The flat views of ``targets`` over those runs."""
        views = [
            None
            if run is None
            else targets[run[0]].as_strided((run[1],), (1,), targets[run[0]].storage_offset())
            for run in self.runs
        ]
        return JoinedViews(views[0], tuple(views[1:]))


@dataclass(frozen=True)
class JoinedViews:
    """A target's flat views: ``shared`` (P,) in the pool's column order, and one per dtype
    group of the copied entries (None where the target's tensors do not lie end to end)."""

    shared: Tensor | None
    copied: tuple[Tensor | None, ...]


def _put(model: nn.Module, name: str, value: Tensor) -> None:
    """Make ``value`` the model's tensor ``name``: a parameter keeps its object (what refers to
    it still does) unless it has no memory yet (meta), a buffer is replaced."""
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    old = module._parameters.get(leaf)
    if old is None:
        module._buffers[leaf] = value
    elif old.is_meta:
        module._parameters[leaf] = nn.Parameter(value, old.requires_grad)
    else:
        old.data = value


def _joined(tensors: list[Tensor]) -> Tensor | None:
    """One 1-D view over ``tensors`` when they lie end to end, in this order, in one storage,
    each in its :func:`~lwmm_lab.engine.pool.as_row` order (one dtype and device); else None."""
    first = tensors[0]
    storage, start = first.untyped_storage().data_ptr(), first.storage_offset()
    offset = start
    for t in tensors:
        if (
            t.storage_offset() != offset
            or not lies_as_row(t)
            or t.dtype != first.dtype
            or t.device != first.device
            or t.untyped_storage().data_ptr() != storage
        ):
            return None
        offset += t.numel()
    return first.as_strided((offset - start,), (1,), start)
