"""Sweeps over the layer-wise knobs (the paper's Fig. 5b, 5c): start s, alpha, and the anchor.

A sweep is a list of :class:`Cell` s; :func:`sweep_cell` is a pure function of one cell (it
builds or reuses the pool, merges, evaluates), so the cells can run anywhere: serially, on a
local process pool, or on a Dask or Ray cluster given its address. Run serially on a GPU
(``Cell.device="cuda"``, the CLI's default when there is one), a sweep stays in one process
with the pool, the anchor's model and the val sets on the device: each cell is a re-merge in
place and a few batched forward passes, with the confusion summed on the device. Results are
cached on disk per cell, keyed by the checkpoints' sha256 and the cell's settings, so a sweep
that is run again (or interrupted) only computes what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from lwmm_lab._version import __version__
from lwmm_lab.analysis.evaluation import evaluate, val_set
from lwmm_lab.data.datasets import check_dataset_names, data_key, on_disk
from lwmm_lab.engine.checkpoints import peek_checkpoint
from lwmm_lab.engine.merge import MergeConfig, MergePlan, make_plan
from lwmm_lab.engine.methods import METHODS
from lwmm_lab.engine.model import merge_target, require_spec
from lwmm_lab.engine.pool import Pool, path_list
from lwmm_lab.errors import (
    LwmmError,
    check_count,
    check_image_size,
    check_name,
    check_numbers,
    first_line,
    naming,
    unknown_name,
)
from lwmm_lab.files import atomic_write_text, data_dir, output_folder, sha256
from lwmm_lab.progress import progress_bar

EXECUTORS = ("serial", "process", "dask", "ray")
#: The methods a sweep runs: each under the layer-wise schedule, which s and alpha define
#: (layer-wise Fisher, task arithmetic and TIES); isotropic and weighted have schedules of
#: their own, on which s and alpha have no effect.
SWEEP_METHODS = tuple(n for n, m in METHODS.items() if m.schedule in (None, "layerwise"))
#: Images per forward pass when a cell is scored.
EVAL_BATCH = 50


@dataclass(frozen=True)
class Cell:
    """One merge of a sweep and how to score it: everything :func:`sweep_cell` needs.

    ``method`` is one of :data:`SWEEP_METHODS`, run under the layer-wise schedule; ``base``
    (task arithmetic, TIES), ``fisher`` (one file per checkpoint), ``density`` and ``scale``
    are what those methods take, as in :class:`~lwmm_lab.engine.merge.MergeConfig`. ``align``
    first matches the other models' decoder channels to the anchor's (``Pool(align=...)``).
    """

    checkpoints: tuple[str, ...]
    anchor: int = 0
    start: int | None = None
    start_frac: float | None = None
    alpha: float | None = None
    method: str = "layerwise"
    bn: str = "linear"
    #: Where the merge is scored: synthetic domains or datasets on disk (``cityscapes:PATH``).
    domains: tuple[str, ...] = ("real", "synthetic")
    images: int = 100
    resolution: tuple[int, int] = (96, 192)
    device: str = "cpu"
    #: Which val set of each synthetic domain (another seed gives other scenes of that size).
    val_seed: int = 0
    base: str | None = None
    fisher: tuple[str, ...] | None = None
    density: float = 0.2
    scale: float = 1.0
    align: bool = False

    def __post_init__(self) -> None:
        """Refuse a bad setting here, not in a worker halfway through a sweep."""
        check_name(self.method, METHODS, "method")
        if self.method not in SWEEP_METHODS:
            raise LwmmError(
                f"method '{self.method}' has a schedule of its own, on which s and alpha have "
                f"no effect: a sweep runs {', '.join(SWEEP_METHODS)}"
            )
        if self.base is not None:
            object.__setattr__(self, "base", str(self.base))
        if self.fisher is not None:
            object.__setattr__(self, "fisher", tuple(path_list(self.fisher, "fisher")))
        check_count("images", self.images)
        object.__setattr__(self, "resolution", check_image_size(self.resolution))  # hashable
        if not isinstance(self.align, bool):  # "yes" aligned, and 0 did not, without a word
            raise LwmmError(f"align={self.align!r}: give True or False")
        object.__setattr__(self, "domains", tuple(check_dataset_names(self.domains)))

    def config(self) -> MergeConfig:
        """The merge this cell makes."""
        return MergeConfig(
            method=self.method, anchor=self.anchor, start=self.start,
            start_frac=self.start_frac, alpha=self.alpha, bn=self.bn, schedule="layerwise",
            density=self.density, scale=self.scale,
        )  # fmt: skip

    def key(self, digests: dict[tuple[str, int], str] | None = None) -> str:
        """A content key: the sha256 of the checkpoints, base and Fisher files (not their
        paths), of the val images and labels of a dataset on disk, and the settings.
        ``digests`` keeps the datasets' digests between cells: a sweep lists and stats a
        dataset's files once, not once per cell (10-20 ms each for Cityscapes' val)."""
        fields = asdict(self) | {
            "checkpoints": [sha256(p) for p in self.checkpoints],
            "base": self.base and sha256(self.base),
            "fisher": self.fisher and [sha256(p) for p in self.fisher],
        }
        digests = {} if digests is None else digests
        for d in filter(on_disk, self.domains):
            if (d, self.images) not in digests:
                digests[d, self.images] = data_key(d, self.images)
        files = {d: digests[d, self.images] for d in self.domains if on_disk(d)}
        if files:  # only then: the keys of sweeps on synthetic domains stay as they were
            fields["data"] = files
        text = json.dumps({"cell": fields, "lwmm_lab": __version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


#: The val sets the last cell scored. The next cell of a sweep scores the same ones: held here,
#: they are found again even when they are too big for val_set's cache to keep.
_last_sets: list[TensorDataset] = []


def sweep_cell(cell: Cell) -> dict[str, Any]:
    """Merge and score one cell; the same cell always gives the same result."""
    pool = _pool(cell, cell.device)
    plan = make_plan(pool, cell.config())
    model, tensors = _model_for(pool, plan.anchor)
    plan.run(into=tensors)
    where = str(pool.device)
    sets = [
        val_set(d, cell.images, tuple(cell.resolution), cell.val_seed, device=where)
        for d in cell.domains
    ]
    _last_sets[:] = sets
    miou = {
        d: evaluate(model, data, d, batch_size=EVAL_BATCH).miou
        for d, data in zip(cell.domains, sets, strict=True)
    }
    return _result(cell, plan, miou)


def _result(cell: Cell, plan: MergePlan, miou: dict[str, float]) -> dict[str, Any]:
    """A cell's result: its resolved settings and the mIoU per domain."""
    return {
        "anchor": plan.anchor,
        "start": plan.config.start,
        "start_frac": cell.start_frac,
        "alpha": plan.config.alpha,
        "method": cell.method,
        "bn": cell.bn,
        "n_depth": plan.layout.n_depth,
        "miou": miou,
    }


def _tuples(cell: dict[str, Any]) -> dict[str, Any]:
    """A cell's fields as JSON gives them back, with its lists made tuples again (a cell is
    hashable: it keys the pools and models kept between cells)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cell.items()}


#: The settings of a cell that :func:`grid` takes beside the grid's own axes.
_AXES = {"checkpoints", "anchor", "start", "start_frac", "alpha"}
_CELL_SETTINGS = frozenset(f.name for f in fields(Cell)) - _AXES


@dataclass
class Sweep:
    """The results of a sweep, in the order of its cells."""

    cells: list[Cell]
    results: list[dict[str, Any]]
    labels: list[str] = field(default_factory=list)
    #: The merges scored by this run: cells read from the cache, and cells that make the same
    #: merge as another, are not scored again.
    scored: int = 0

    def of(self, domains: Sequence[str] | str, anchor: int | None = None) -> list[dict[str, Any]]:
        """The results of one anchor (by default the first merged into), for a figure of
        ``domains`` (a list of names, or one). A domain the sweep did not score, or an anchor
        it did not merge into, is refused by name (a KeyError and an IndexError inside the
        figure before)."""
        scored = list(self.results[0]["miou"]) if self.results else []
        for domain in [domains] if isinstance(domains, str) else domains:
            if domain not in scored:
                raise LwmmError(
                    f"domain '{domain}' was not scored by this sweep (it scored "
                    f"{', '.join(scored) or 'nothing'})"
                )
        anchors = sorted({r["anchor"] for r in self.results})
        if anchor is None and anchors:
            anchor = anchors[0]
        elif anchor not in anchors:
            merged = ", ".join(map(str, anchors))
            raise LwmmError(f"anchor {anchor} is not one this sweep merged into ({merged})")
        return [r for r in self.results if r["anchor"] == anchor]

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "cells": [asdict(c) for c in self.cells],
            "results": self.results,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | str | os.PathLike) -> Sweep:
        """The sweep :meth:`to_json` wrote, or the path of its file (``lwmm sweep --json >
        sweep.json``): a sweep run elsewhere (on a GPU, a cluster) shown by the figures and
        :class:`~lwmm_lab.lab.SweepExplorer` here. What is not such a sweep is refused in one
        line naming the file."""
        source = "sweep"
        if isinstance(data, str | os.PathLike):
            source = str(data)
            try:
                data = json.loads(Path(data).read_text())
            except (OSError, ValueError) as e:
                raise LwmmError(
                    f"{source}: cannot read a sweep from it ({first_line(e)})"
                ) from None
        with naming(source):
            if not isinstance(data, dict) or not {"cells", "results"} <= data.keys():
                raise LwmmError("not a sweep (to_json's cells and results)")
            if len(data["cells"]) != len(data["results"]):
                raise LwmmError(f"{len(data['cells'])} cells for {len(data['results'])} results")
            try:
                cells = [Cell(**_tuples(c)) for c in data["cells"]]
            except TypeError as e:
                raise LwmmError(f"a cell is not a sweep cell ({e})") from None
        return cls(cells, list(data["results"]), list(data.get("labels", [])))


def grid(
    checkpoints: Sequence[str | os.PathLike],
    starts: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    alphas: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    anchors: Sequence[int] = (0,),
    **cell: Any,
) -> list[Cell]:
    """The cells of a (start fraction x alpha x anchor) grid; ``cell`` sets the other fields."""
    if unknown := set(cell) - _CELL_SETTINGS:
        raise unknown_name(min(unknown), sorted(_CELL_SETTINGS), "a sweep cell setting", "settings")
    paths = tuple(path_list(checkpoints))
    starts, alphas = check_numbers("starts", starts), check_numbers("alphas", alphas)
    if isinstance(anchors, str) or not isinstance(anchors, Iterable):
        raise LwmmError(f"anchors={anchors!r}: give a list of indices into the checkpoints")
    return [
        Cell(paths, anchor=a, start_frac=float(s), alpha=float(al), **cell)
        for a in anchors
        for s in starts
        for al in alphas
    ]


def check_executor(executor: str, address: str | None = None) -> str:
    """``executor`` when it is one of :data:`EXECUTORS` and has what it needs (Dask: the
    scheduler's address); else an :class:`LwmmError` naming it, before any cell runs."""
    check_name(executor, EXECUTORS, "executor")
    if executor == "dask" and not address:
        raise LwmmError(
            "the dask executor needs the scheduler's address (e.g. tcp://127.0.0.1:8786)"
        )
    return executor


def run_sweep(
    cells: Sequence[Cell],
    executor: str = "serial",
    address: str | None = None,
    workers: int | None = None,
    cache: str | os.PathLike | bool | None = True,
    progress: bool = True,
    on_result: Callable[[int, dict[str, Any]], None] | None = None,
) -> Sweep:
    """Compute every cell (cached ones are read back), with a progress bar.

    ``executor`` is ``serial``, ``process`` (a local pool of ``workers`` processes, one
    thread each), ``dask`` or ``ray`` (a cluster at ``address``; ``pip install
    lwmm-lab[dask]`` / ``[ray]``; with no address, Ray starts a local one for the sweep).
    ``on_result(done, result)`` is called after each cell.
    ``cache`` is a folder, True for ``data/cache/sweeps``, or None/False for none.
    """
    check_executor(executor, address)
    if workers is not None:
        check_count("workers", workers)
    cells = list(cells)
    if cache is True:
        cache = data_dir() / "cache" / "sweeps"
    if not cells:
        raise LwmmError("no cells to sweep (give at least one start, alpha and anchor)")
    store = _Store(output_folder(cache, "the sweep cache")) if cache else None
    digests: dict[tuple[str, int], str] = {}
    keys = [c.key(digests) for c in cells]
    results: dict[int, dict[str, Any]] = {}
    todo = []
    for i, key in enumerate(keys):
        cached = store.get(key) if store else None
        if cached is None:
            todo.append(i)
        else:
            results[i] = cached
    same = _same_merges([cells[i] for i in todo], todo, local=executor == "serial")
    for (_, plan), *_ in same.values():  # an anchor with no model spec fails before the bar
        require_spec(plan.pool.checkpoints[plan.anchor])
    bar = progress_bar(total=len(cells), initial=len(results), desc="sweep", disable=not progress)
    first = list(same)
    for i, result in _execute(executor, [cells[i] for i in first], first, address, workers):
        for k, plan in same[i]:
            results[k] = result if k == i else _result(cells[k], plan, result["miou"])
            if store:
                store.put(keys[k], results[k])
            bar.update()
            if on_result is not None:
                on_result(len(results), results[k])
    bar.close()
    _last_sets.clear()  # a serial sweep's, in this process: the cache decides what stays
    labels = [peek_checkpoint(p).label for p in cells[0].checkpoints] if cells else []
    return Sweep(cells, [results[i] for i in range(len(cells))], labels, len(same))


def _same_merges(
    cells: list[Cell], index: list[int], local: bool
) -> dict[int, list[tuple[int, MergePlan]]]:
    """The cells grouped by the merge they make, keyed by the first of each group: cells whose
    plans give every model the same weight at every depth and every BN layer make the same
    model (a layer-wise merge with alpha = 1 is the anchor whatever s), so only the first is
    scored. Each cell comes with its plan, whose resolved start and alpha its result keeps.
    The plans are made on the cells' device when they run here (``local``), else on the CPU."""
    groups: dict[Any, list[tuple[int, MergePlan]]] = {}
    for i, cell in zip(index, cells, strict=True):
        pool = _pool(cell, cell.device if local else "cpu")
        plan = make_plan(pool, cell.config())
        setting = replace(cell, start=None, start_frac=None, alpha=None)
        merge = (setting, plan.weights.numpy().tobytes(), plan.bn_table.numpy().tobytes())
        groups.setdefault(merge, []).append((i, plan))
    return {group[0][0]: group for group in groups.values()}


def _execute(
    executor: str, cells: list[Cell], index: list[int], address: str | None, workers: int | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    if not cells:
        return
    if executor == "serial":
        for i, cell in zip(index, cells, strict=True):
            yield i, sweep_cell(cell)
    elif executor == "process":
        with ProcessPoolExecutor(
            max_workers=workers or os.cpu_count(), initializer=_one_thread
        ) as pool:
            futures = {pool.submit(sweep_cell, c): i for c, i in zip(cells, index, strict=True)}
            for future in as_completed(futures):
                yield futures[future], future.result()
    elif executor == "dask":
        yield from _dask(cells, index, address)
    else:
        yield from _ray(cells, index, address)


def _dask(cells: list[Cell], index: list[int], address: str | None) -> Iterator[tuple[int, dict]]:
    try:
        from dask.distributed import Client
        from dask.distributed import as_completed as dask_completed
    except ImportError:
        raise LwmmError(
            "the dask executor needs dask[distributed]: pip install 'lwmm-lab[dask]'"
        ) from None
    with Client(address) as client:
        futures = client.map(sweep_cell, cells, pure=False)
        where = {f.key: i for f, i in zip(futures, index, strict=True)}
        for future in dask_completed(futures):
            yield where[future.key], future.result()


def _ray(cells: list[Cell], index: list[int], address: str | None) -> Iterator[tuple[int, dict]]:
    try:
        import ray
    except ImportError:
        raise LwmmError("the ray executor needs ray: pip install 'lwmm-lab[ray]'") from None
    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=address, log_to_driver=False)
    try:
        remote = ray.remote(sweep_cell)
        pending = {remote.remote(c): i for c, i in zip(cells, index, strict=True)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)
    finally:
        if connected_here:
            ray.shutdown()


def _one_thread() -> None:
    torch.set_num_threads(1)


def _pool(cell: Cell, device: str) -> Pool:
    """The pool of a cell's checkpoints (with its base and Fisher files, aligned to its anchor
    when asked) on ``device``."""
    align = cell.anchor if cell.align else None
    return _pool_of(cell.checkpoints, device, cell.base, cell.fisher, align)


@lru_cache(maxsize=4)
def _pool_of(
    checkpoints: tuple[str, ...],
    device: str,
    base: str | None,
    fisher: tuple[str, ...] | None,
    align: int | None,
) -> Pool:
    return Pool(list(checkpoints), device=device, base=base, fisher=fisher, align=align)


#: The modules each pool's merges are written into, by anchor; gone with their pool (an
#: ``id`` could be reused by a later pool, of other models).
_Target = tuple[torch.nn.Module, dict[str, torch.Tensor]]
_MODELS: weakref.WeakKeyDictionary[Pool, dict[int, _Target]] = weakref.WeakKeyDictionary()


def _model_for(pool: Pool, anchor: int) -> _Target:
    """The module a pool's merges with this anchor are written into (built on first use), and
    its state dict (the module's own tensors, collected once)."""
    kept = _MODELS.setdefault(pool, {})
    if anchor not in kept:
        model = merge_target(pool, anchor)
        kept[anchor] = (model, model.state_dict())
    return kept[anchor]


class _Store:
    """Results cached one JSON file per cell: written atomically, read back by key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.folder / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None

    def put(self, key: str, result: dict[str, Any]) -> None:
        atomic_write_text(self.folder / f"{key}.json", json.dumps(result))
