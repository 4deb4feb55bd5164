"""The pool: M checkpoints aligned by name and shape (never by position), stacked once.

Every entry of the anchor's ``state_dict`` is one of three kinds:

- ``shared``: all M models have it, with the same shape and a floating dtype. These carry the
  depth index j = 1..Np, in the anchor's order, and are merged.
- ``anchor-only``: some model lacks it or has another shape (another head, class count or
  decoder). It is copied from the anchor.
- ``integer``: an integer buffer such as ``num_batches_tracked``. It never passes through float
  weights: it is copied from the anchor (or summed, for the ``gaussian-counts`` BN rule).

The shared tensors of all M models live in one flat ``(M, P)`` buffer on the pool's device, so
a new merge with other settings is one fused weighted sum per tensor: no file I/O, no copies.
Each tensor's columns hold its values in the order the lab's models keep them in memory
(:func:`as_row`: channels last for convolution weights), so that a model's tensors can be
views of one row (:func:`lwmm_lab.engine.target.lay_out`).

With ``align=`` the models are first aligned to one of them by weight matching
(:mod:`lwmm_lab.engine.align`): their Unet decoder channels are permuted, as they are read, to
match that model's, which then has to be the anchor of every merge of the pool.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lwmm_lab.engine.align import (
    Alignment,
    check_matchable,
    match_channels,
    permute,
    unet_channel_groups,
)
from lwmm_lab.engine.checkpoints import (
    Checkpoint,
    check_submodel,
    load_checkpoint,
    peek_checkpoint,
    state_dict_hint,
    unique_labels,
)
from lwmm_lab.errors import LwmmError, check_name, check_whole, did_you_mean
from lwmm_lab.files import same_file

KINDS = ("shared", "anchor-only", "integer")
GRANULARITIES = ("tensor", "module")
BN_STATS = ("running_mean", "running_var")

Source = Checkpoint | str | os.PathLike


@dataclass(frozen=True)
class Entry:
    """One tensor of the anchor: its kind and, when shared, its depth index ``j`` (1-based)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    j: int | None


@dataclass(frozen=True)
class Layout:
    """The anchor's entries in depth order, at a granularity (``tensor`` or ``module``)."""

    anchor: int
    granularity: str
    entries: tuple[Entry, ...]
    depth_names: tuple[str, ...]
    order_known: bool

    @property
    def n_depth(self) -> int:
        """Np: the number of depth indices (shared tensors, or modules holding them)."""
        return len(self.depth_names)


def module_of(name: str) -> str:
    """The module that owns a state-dict entry: ``encoder.bn1.weight`` -> ``encoder.bn1``."""
    return name.rpartition(".")[0]


def is_bn_stat(name: str) -> bool:
    """A BatchNorm running statistic (``running_mean`` / ``running_var``)."""
    return name.rpartition(".")[2] in BN_STATS


#: The memory format of a tensor's run of columns, by its number of dimensions: channels last
#: for convolution weights (2-D and 3-D), what :meth:`~lwmm_lab.engine.spec.ModelSpec.build`
#: gives the lab's models; every other tensor in its own order.
ROW_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def as_row(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values as one 1-D run of the stack's columns, in the order of
    :data:`ROW_FORMATS` (the channel dimension last for 4-D and 5-D tensors)."""
    return (t.movedim(1, -1) if t.dim() in ROW_FORMATS else t).reshape(-1)


def row_view(row: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A 1-D contiguous run of columns seen as a tensor of ``shape``: the inverse of
    :func:`as_row`, and a view (writing into it writes the run)."""
    if len(shape) in ROW_FORMATS:
        return row.view(shape[0], *shape[2:], shape[1]).movedim(-1, 1)
    return row.view(shape)


def lies_as_row(t: torch.Tensor) -> bool:
    """Whether ``t``'s memory holds its values densely in :func:`as_row`'s order."""
    return t.is_contiguous(memory_format=ROW_FORMATS.get(t.dim(), torch.contiguous_format))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when available, else the CPU; asking for CUDA without one (or for a
    GPU index this machine lacks) is an error, as is another kind of device (``mps``, ``meta``:
    the lab's merges and evaluations are written for these two).

    A CUDA device gets its index (``cuda`` -> ``cuda:0``), so it compares equal to the device
    of the tensors made on it.
    """
    if isinstance(device, bool) or not isinstance(device, str | torch.device | int):
        raise LwmmError(f"device={device!r}: give auto, cpu, cuda or cuda:N")  # None: TypeError
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise LwmmError(f"device '{device}' is not one of auto, cpu, cuda (or cuda:N)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LwmmError(f"device '{device}' requested but CUDA is not available here")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise LwmmError(
                f"device '{device}': this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return dev


class Pool:
    """M checkpoints, aligned and stacked on one device, ready to be merged many times.

    ``sources`` are paths or :class:`Checkpoint` objects; paths are read one at a time after
    their headers, so building costs about M model sizes of memory on the device plus one
    model at a time on the CPU. ``base`` (for task arithmetic and TIES) and ``fisher`` (one
    diagonal Fisher per model, for Fisher merging) are aligned with the shared tensors.
    """

    @torch.no_grad()  # the stack is data: a model's parameters given as sources stay outside
    def __init__(
        self,
        sources: Sequence[Source],
        device: str | torch.device = "auto",
        base: Source | None = None,
        fisher: Sequence[Source] | None = None,
        submodel: str | None = None,
        align: int | str | os.PathLike | None = None,
    ) -> None:
        sources = source_list(sources, "checkpoints")
        if not sources:
            raise LwmmError("no checkpoints given")
        if base is not None:
            _check_source(base, "base")
        if fisher is not None:
            fisher = source_list(fisher, "fisher")
        self.device = resolve_device(device)
        self.submodel = submodel
        heads = [_head(s, submodel) for s in sources]
        check_submodel(heads, submodel)
        self.labels = unique_labels([h.label for h in heads])
        self.paths = [_path_of(s) for s in sources]
        self.columns = _shared_columns(heads)
        if not self.columns:
            names = ", ".join(h.label for h in heads)
            raise LwmmError(
                f"no tensor is shared by all {len(heads)} checkpoints "
                f"(same name and shape, floating dtype): {names}"
            )
        #: Each model's dtype of each stacked tensor as stored: the stack is one dtype (float32,
        #: or float64 if any input is), and a merge's values go back in the anchor's.
        self.stored_dtypes = [{n: h.tensors[n].dtype for n in self.columns} for h in heads]
        dtypes = {dtype for stored in self.stored_dtypes for dtype in stored.values()}
        dtype = torch.float64 if torch.float64 in dtypes else torch.float32
        width = next(reversed(self.columns.values())).stop
        self.flat = torch.empty((len(heads), width), dtype=dtype, device=self.device)
        self.alignment: Alignment | None = None
        if align is None:
            self.checkpoints = [
                self._stack(i, self._load(src, head))
                for i, (src, head) in enumerate(zip(sources, heads, strict=True))
            ]
        elif isinstance(align, bool):  # not an index: True would be model 1
            raise LwmmError(
                f"align={align}: give the model to align to (its index, label or path; "
                "0 for the first), or None not to align"
            )
        else:
            self.checkpoints = self._aligned_stack(
                sources, heads, self.anchor_index(align, "align")
            )
        self.base = None if base is None else self._column_vector(base, "base", None)
        self.base_path = None if base is None else _path_of(base)
        self.fisher = None
        self.fisher_paths: list[Path | None] = []
        if fisher is not None:
            if len(fisher) != len(heads):
                raise LwmmError(f"{len(fisher)} Fisher files for {len(heads)} checkpoints")
            self.fisher = torch.stack(
                [self._column_vector(f, "Fisher", 0.0, model=i) for i, f in enumerate(fisher)]
            )
            self.fisher_paths = [_path_of(f) for f in fisher]
            self._check_fisher()
        self._layouts: dict[tuple[int, str], Layout] = {}
        self._left_out: dict[int, dict[str, list[str]]] = {}
        self._rows = self.flat.unbind(0)
        self._means: list[tuple[tuple[int, ...] | None, torch.Tensor]] = []
        #: Structures the merge derives from a layout once (index tensors), by layout key.
        self.derived: dict[tuple[int, str], object] = {}

    @property
    def n_models(self) -> int:
        return self.flat.shape[0]

    def model_mean(self, members: tuple[int, ...], slot: int = 0) -> torch.Tensor:
        """The mean of the models ``members`` over every shared value (P,), kept for reuse.

        A single member is its own row (no copy; the same view object every time, so what is
        derived from it can be kept). A mean is written into the buffer ``slot`` and kept
        there until another group is asked for in it: a layer-wise merge with one anchor asks
        for the same group, the other models, every time (one model size of memory), and a
        schedule with several groups of equal-weight models asks for each in a slot of its
        own. A slot's mean always lies at one address (what a CUDA graph of a merge reads).
        """
        if len(members) == 1:
            return self._rows[members[0]]
        while len(self._means) <= slot:
            self._means.append((None, torch.empty_like(self.flat[0])))
        held, mean = self._means[slot]
        if held != members:
            self._means[slot] = (None, mean)
            mean.copy_(self.flat[members[0]])
            for m in members[1:]:
                mean.add_(self.flat[m])
            mean.div_(len(members))
            self._means[slot] = (members, mean)
        return mean

    def stack(self, name: str) -> torch.Tensor:
        """The ``(M, n)`` view of a shared tensor across the M models (flattened, no copy)."""
        return self.flat[:, self.columns[name]]

    def layout(self, anchor: int = 0, granularity: str = "tensor") -> Layout:
        """The anchor's entries, classified, with depth indices at ``granularity``."""
        check_name(granularity, GRANULARITIES, "granularity")
        anchor = self.anchor_index(anchor)
        key = (anchor, granularity)
        if key not in self._layouts:
            self._layouts[key] = self._make_layout(anchor, granularity)
        return self._layouts[key]

    def unshared(self, anchor: int = 0) -> tuple[list[str], list[str]]:
        """The anchor's float entries that are not shared (the ``anchor-only`` ones: a merge
        copies them, a discrepancy leaves them out), and ``[i] label`` of each model that
        lacks one of them or has it in another shape."""
        layout = self.layout(anchor)
        own = [e.name for e in layout.entries if e.kind == "anchor-only"]
        return own, self.lacking(own, like=layout.anchor)

    def left_out(self, anchor: int = 0) -> dict[str, list[str]]:
        """``[i] label`` of each other model that holds float tensors under names the anchor
        lacks, with those names: a merge has the anchor's structure, so they are left out
        (a deeper encoder's extra blocks, another decoder). Found once per anchor (a plan's
        notes ask on every slider step); each call gets its own copy."""
        anchor = self.anchor_index(anchor)
        if anchor not in self._left_out:
            own = self.checkpoints[anchor].tensors
            extra = {
                f"[{i}] {label}": [
                    n for n, t in ckpt.tensors.items() if t.is_floating_point() and n not in own
                ]
                for i, (ckpt, label) in enumerate(zip(self.checkpoints, self.labels, strict=True))
                if i != anchor
            }
            self._left_out[anchor] = {model: names for model, names in extra.items() if names}
        return {model: list(names) for model, names in self._left_out[anchor].items()}

    def lacking(self, names: Sequence[str], like: int | None = None) -> list[str]:
        """``[i] label`` of each model that lacks one of ``names``, or has it in another shape
        than model ``like`` has."""
        theirs = None if like is None else self.checkpoints[like].tensors
        return [
            f"[{i}] {label}"
            for i, (ckpt, label) in enumerate(zip(self.checkpoints, self.labels, strict=True))
            if any(
                n not in ckpt.tensors
                or (theirs is not None and ckpt.tensors[n].shape != theirs[n].shape)
                for n in names
            )
        ]

    def anchor_index(self, anchor: int | str | os.PathLike, what: str = "anchor") -> int:
        """The index of ``anchor``: an index 0..M-1, a label, or one of the input paths.
        ``what`` names it in the error (an analysis's ``reference``)."""
        if isinstance(anchor, numbers.Number):
            anchor = check_whole(what, anchor)  # 1.0 and numpy integers too, not 1.5
        if isinstance(anchor, int) or (isinstance(anchor, str) and anchor.lstrip("-").isdigit()):
            index = int(anchor)
            if 0 <= index < self.n_models:
                return index
        elif isinstance(anchor, str | os.PathLike):
            for i, path in enumerate(self.paths):
                if str(anchor) == self.labels[i] or (path is not None and same_file(path, anchor)):
                    return i
        close = did_you_mean(str(anchor), self.labels)
        hint = f"did you mean '{close}'? " if close else ""
        raise LwmmError(
            f"{what} '{anchor}' is not among the inputs ({hint}give an index "
            f"0..{self.n_models - 1}, one of the input paths, or a label: "
            f"{first_names(self.labels)})"
        )

    def __repr__(self) -> str:
        aligned = ""
        if self.alignment is not None:
            aligned = f", aligned to {self.labels[self.alignment.anchor]}"
        return (
            f"Pool({self.n_models} models, {len(self.columns)} shared tensors, "
            f"{self.flat.shape[1]:,} shared values each, {self.flat.dtype}, on {self.device}"
            f"{aligned})"
        )

    def _load(self, src: Source, head: Checkpoint) -> Checkpoint:
        return head if isinstance(src, Checkpoint) else load_checkpoint(src, self.submodel, False)

    def _aligned_stack(
        self, sources: Sequence[Source], heads: list[Checkpoint], anchor: int
    ) -> list[Checkpoint]:
        """Stack the anchor, then every other model with its channels matched to the anchor's.

        Every model's layers are checked against the anchor's (shapes only) before any is read.
        """
        groups = unet_channel_groups(heads[anchor].tensors, self.labels[anchor])
        for i, head in enumerate(heads):
            if i != anchor:
                check_matchable(groups, head.tensors, self.labels[i])
        stacked: list[Checkpoint | None] = [None] * len(heads)
        stacked[anchor] = self._stack(anchor, self._load(sources[anchor], heads[anchor]))
        perms = [{g.name: torch.arange(g.size) for g in groups} for _ in heads]
        rounds = [0] * len(heads)
        for i, (src, head) in enumerate(zip(sources, heads, strict=True)):
            if i != anchor:
                ckpt = self._load(src, head)
                perms[i], rounds[i] = match_channels(stacked[anchor].tensors, ckpt.tensors, groups)
                stacked[i] = self._stack(
                    i, ckpt.with_tensors(permute(ckpt.tensors, groups, perms[i]))
                )
        self.alignment = Alignment(anchor, tuple(groups), tuple(perms), tuple(rounds))
        return stacked

    def _stack(self, i: int, ckpt: Checkpoint) -> Checkpoint:
        tensors = {}
        for name, t in ckpt.tensors.items():
            if name in self.columns:
                view = row_view(self.flat[i, self.columns[name]], t.shape)
                view.copy_(t)
                tensors[name] = view
            else:
                tensors[name] = t.to(self.device)
            if t.is_floating_point() and not bool(torch.isfinite(tensors[name]).all()):
                raise LwmmError(
                    f"{ckpt.path or ckpt.label}: tensor '{name}' contains NaN or Inf; "
                    "refusing to merge it"
                )
        return ckpt.with_tensors(tensors)

    def _column_vector(
        self, src: Source, role: str, bn_default: float | None, model: int | None = None
    ) -> torch.Tensor:
        """A ``(P,)`` vector of ``src``'s tensors in the pool's column order.

        With ``model`` (a Fisher estimate of that model) and an aligned pool, the tensors are
        permuted like the model's channels.
        """
        ckpt = src if isinstance(src, Checkpoint) else load_checkpoint(src, self.submodel)
        tensors = ckpt.tensors
        if model is not None and self.alignment is not None:
            tensors = self.alignment.apply(model, tensors)
        out = torch.empty(self.flat.shape[1], dtype=self.flat.dtype, device=self.device)
        for name, cols in self.columns.items():
            t = tensors.get(name)
            if t is None and bn_default is not None and is_bn_stat(name):
                out[cols] = bn_default
                continue
            if t is None or t.numel() != cols.stop - cols.start:
                problem = "lacks" if t is None else "has another shape for"
                raise LwmmError(
                    f"{role} {ckpt.path or ckpt.label} {problem} shared tensor '{name}'"
                )
            shape = self.checkpoints[0].tensors[name].shape
            row_view(out[cols], shape).copy_(t.reshape(shape))
        return out

    def _check_fisher(self) -> None:
        """Refuse a negative Fisher value, naming the file and tensor: a diagonal Fisher is a
        mean of squared gradients, and a negative weight would push a merge beyond the models."""
        negative = (self.fisher < 0).any(1)
        if not bool(negative.any()):
            return
        i = int(negative.nonzero()[0])
        name = next(n for n, cols in self.columns.items() if bool((self.fisher[i, cols] < 0).any()))
        raise LwmmError(
            f"Fisher {self.fisher_paths[i] or i}: tensor '{name}' has negative values (a Fisher "
            "estimate is a mean of squared gradients, >= 0)"
        )

    def _make_layout(self, anchor: int, granularity: str) -> Layout:
        ckpt = self.checkpoints[anchor]
        entries, depth_names = [], []
        for name, t in ckpt.tensors.items():
            shape = tuple(t.shape)
            if name in self.columns:
                unit = name if granularity == "tensor" else module_of(name)
                if not depth_names or depth_names[-1] != unit or granularity == "tensor":
                    depth_names.append(unit)
                entries.append(Entry(name, "shared", shape, len(depth_names)))
            elif not t.is_floating_point():
                entries.append(Entry(name, "integer", shape, None))
            else:
                entries.append(Entry(name, "anchor-only", shape, None))
        return Layout(anchor, granularity, tuple(entries), tuple(depth_names), ckpt.order_known)


def unshared_note(own: Sequence[str], lacking: Sequence[str], whose: str, fate: str) -> str:
    """One line on :meth:`Pool.unshared`'s entries: how many of ``whose`` tensors meet which
    ``fate``, the models that cause it, and the first three names."""
    verbs = "lack them or have" if len(lacking) > 1 else "lacks them or has"
    return (
        f"{len(own)} of {whose} tensors are {fate}, as {', '.join(lacking) or 'a model'} "
        f"{verbs} another shape: {first_names(own)}"
    )


def left_out_note(left_out: dict[str, list[str]], whose: str, fate: str) -> str:
    """One line on :meth:`Pool.left_out`: how many tensors of which models meet which
    ``fate``, as ``whose`` model lacks them, and the first three names."""
    counts = ", ".join(f"{len(names)} of {model}'s" for model, names in left_out.items())
    names = list(dict.fromkeys(n for names in left_out.values() for n in names))
    return f"{counts} tensors are {fate}, as {whose} lacks them: {first_names(names)}"


def unknown_order_note(whose: str) -> str:
    """The note for a layout whose depth order is unknown: ``whose`` file (a foreign
    safetensors, say) stores no key order and names no model spec."""
    return (
        f"depth order unknown: {whose} gives neither a stored key order nor a model spec, "
        "so j follows sorted key names"
    )


def first_names(names: Sequence[str], shown: int = 3) -> str:
    """The first ``shown`` names and how many more: what a one-line note lists."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{', '.join(names[:shown])}{more}"


def source_list(sources: Iterable[Source], what: str, paths_only: bool = False) -> list[Source]:
    """``sources`` as a list of checkpoints or paths (only paths with ``paths_only``). A lone
    path is refused (a string is a sequence of characters, each taken for a file), and so is
    anything else in the list."""
    if isinstance(sources, Source) or not isinstance(sources, Iterable):
        raise LwmmError(f"{what}: give a list of checkpoint files, not {sources!r}")
    return [_check_source(s, what, paths_only) for s in sources]


def check_pool(pool: Pool) -> Pool:
    """``pool`` when it is a :class:`Pool`; else an :class:`LwmmError` that says how to make
    one (a list of checkpoint files gave an AttributeError on a pool's field)."""
    if not isinstance(pool, Pool):
        raise LwmmError(
            f"a {type(pool).__name__} is given where a Pool goes; Pool(checkpoints) stacks "
            "checkpoint files (or Checkpoints) into one"
        )
    return pool


def path_list(paths: Iterable[str | os.PathLike], what: str = "checkpoints") -> list[str]:
    """``paths`` as a list of strings, checked as :func:`source_list` checks files: where the
    analyses and panels take checkpoint files by path."""
    return [str(p) for p in source_list(paths, what, paths_only=True)]


def _check_source(src: object, what: str, paths_only: bool = False) -> Source:
    if not isinstance(src, str | os.PathLike if paths_only else Source):
        goes = "a path" if paths_only else "a checkpoint or a path"
        hint = state_dict_hint(src)
        raise LwmmError(f"{what}: got a {type(src).__name__} where {goes} goes{hint}")
    return src


def _head(src: Source, submodel: str | None) -> Checkpoint:
    if isinstance(src, Checkpoint):
        if any(t.is_meta for t in src.tensors.values()):
            raise LwmmError(f"{src.path or src.label}: holds only shapes (meta tensors), no data")
        return src
    return peek_checkpoint(src, submodel)


def _path_of(src: Source) -> Path | None:
    return src.path if isinstance(src, Checkpoint) else Path(src)


def _shared_columns(heads: list[Checkpoint]) -> dict[str, slice]:
    """Column ranges in the flat buffer of the entries every model has (same shape, float)."""
    columns, offset = {}, 0
    for name, t in heads[0].tensors.items():
        others = [h.tensors.get(name) for h in heads[1:]]
        if t.is_floating_point() and all(
            o is not None and o.is_floating_point() and o.shape == t.shape for o in others
        ):
            columns[name] = slice(offset, offset + t.numel())
            offset += t.numel()
    return columns
