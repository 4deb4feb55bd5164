"""The merge lab: pick models, the anchor, the method, the start layer and alpha, the BN rule
(or BN statistics measured on the target's images), the granularity and the device; every
change re-merges (on the GPU when there is one) and updates the schedule, the mIoU readout,
the per-class IoU bars and a qualitative grid.

Like every panel (:mod:`lwmm_lab.lab.panel`), it works in a background thread on the newest
request only, and shows its errors in itself.
"""

from __future__ import annotations

import contextlib
import html
import os
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go
import torch
from torch.utils.data import TensorDataset

from lwmm_lab.analysis.adabn import reestimate_bn, reestimation_record, train_images
from lwmm_lab.analysis.comparison import fisher_file
from lwmm_lab.analysis.evaluation import (
    Scores,
    evaluate,
    model_classes,
    scores_from_confusion,
    val_set,
)
from lwmm_lab.analysis.panoptic import PanopticScores, panoptic_outputs
from lwmm_lab.analysis.qualitative import Example, examples_from_predictions, iou_delta
from lwmm_lab.analysis.scorer import BatchScorer
from lwmm_lab.data.datasets import check_dataset_name, dataset_label
from lwmm_lab.data.domains import DOMAINS
from lwmm_lab.engine.checkpoints import checkpoint_path, peek_checkpoint
from lwmm_lab.engine.merge import (
    MergeConfig,
    MergePlan,
    make_plan,
    merge_command,
    save_merge,
    write_merge,
)
from lwmm_lab.engine.methods import BN_RULES, METHODS
from lwmm_lab.engine.model import load_model, merge_target
from lwmm_lab.engine.panoptic import is_panoptic
from lwmm_lab.engine.pool import GRANULARITIES, Pool, path_list, resolve_device
from lwmm_lab.errors import LwmmError, check_count, check_image_size, check_whole
from lwmm_lab.lab.figures import (
    COLUMNS,
    change_color,
    iou_delta_figure,
    panel_uri,
    qualitative_figure,
    schedule_figure,
    update_iou_delta_figure,
    update_schedule_figure,
)
from lwmm_lab.lab.panel import (
    Panel,
    add_checkpoint,
    choice_buttons,
    fit_width,
    move_control,
    note_lines,
    shows_errors,
    sync_figure,
)
from lwmm_lab.zoo.manifest import (
    SCENARIO_LABELS,
    base_checkpoint,
    find_zoo,
    load_manifest,
    scenario_checkpoints,
)
from lwmm_lab.zoo.recipe import SCENARIOS

#: The methods the lab offers: every registered one but ``weighted``, whose per-model weights
#: no control of the lab sets (``lwmm merge --weights`` does).
LAB_METHODS = tuple(n for n, m in METHODS.items() if m.schedule != "weights")
#: The schedules the lab runs a method under that has none of its own (Fisher, task
#: arithmetic, TIES): the layer-wise one, which s and alpha define, or the uniform average.
LAB_SCHEDULES = ("layerwise", "uniform")


def panel_manifest(
    checkpoints: Sequence[str | os.PathLike] | None, zoo: str | os.PathLike | None
) -> dict[str, Any] | None:
    """The zoo's manifest for a panel: needed when no ``checkpoints`` are given, read when a
    ``zoo`` is named beside them (its checkpoints offered too); None for files alone."""
    if checkpoints is None or zoo is not None:
        return load_manifest(zoo or find_zoo())
    return None


def checkpoint_options(
    manifest: dict[str, Any] | None, checkpoints: Sequence[str], target: str = "real"
) -> list[tuple[str, str]]:
    """(label, path) for every zoo checkpoint (with its target mIoU) and the given files."""
    options = []
    if manifest is not None:
        for e in manifest["checkpoints"]:
            if e["run"] != "base":
                label = f"{e['run']}@{e['step']} ({e['miou'].get(target, 0.0):.1f})"
                options.append((label, e["path"]))
    known = {path for _, path in options}
    options += [(peek_checkpoint(p).label, str(p)) for p in checkpoints if str(p) not in known]
    return options


@dataclass
class Outputs:
    """A model's previews: its scores on the target and the source (None: the lab has none),
    its predictions on the target images the grid shows, and for a panoptic model its
    panoptic scores, categories and instance ids on the target."""

    scores: Scores
    source: Scores | None
    pred: torch.Tensor
    panoptic: tuple[PanopticScores, torch.Tensor, torch.Tensor] | None = None


def _drawn_from(example: Example) -> dict[int, bytes]:
    """What each changing panel of a grid row is drawn from (the anchor's map, the merged one,
    the change codes), by column: equal bytes draw an equal panel."""
    ids = example.instances or (None, None, None)
    drawn_from = {2: (example.anchor, ids[1]), 3: (example.merged, ids[2]), 4: (example.changes,)}
    return {
        c: b"".join(m.tobytes() for m in maps if m is not None) for c, maps in drawn_from.items()
    }


def _images(scores: Sequence[Scores]) -> str:
    """How many preview images the readout's scores are on."""
    counts = [s.images for s in scores]
    if len(set(counts)) == 1:
        return f"{counts[0]} images{' each' if len(counts) > 1 else ''}"
    return " and ".join(map(str, counts)) + " images"


def _signed(diff: float) -> str:
    """A difference in green (up) or red (down)."""
    return f"<span style='color:{change_color(diff)}'>{diff:+.2f}</span>"


class MergeLab(Panel):
    """Merge checkpoints with sliders and see what changes.

    ``checkpoints`` (paths) or a zoo ``scenario`` give the models, the first one the anchor.
    By default the lab opens on the zoo's (default: :func:`find_zoo`) ``independent``
    strategies, where the start layer and alpha matter most; the scenario chooser switches to
    the one-source strategies, the checkpoints of one run, other classes, other decoders or
    multi-target. ``align`` matches the other models' decoder channels to the anchor's first
    (weight matching). ``base``, the model the others were fine-tuned from, is what task
    arithmetic and TIES take task vectors against (default: the zoo's pre-trained base when
    the lab has a zoo). Preview mIoU is on ``preview`` images of the ``target`` and ``source``
    val (``source=None``: the target alone); a button scores the full val (``full`` images).
    Both are synthetic domains or your datasets on disk
    (``target="cityscapes:/data/cityscapes"``, ``source="gta5:/data/gta5"``), read at
    ``resolution`` (default: the one the anchor records, else 128 x 256; a real model wants
    its own, ``(512, 1024)`` say). A zoo's scenarios then rank their models on ``real``, its
    Cityscapes-like domain. Ticking *BN statistics from target images* measures the merge's
    BN statistics on the first ``reestimate_images`` train images of the target, unlabelled
    (AdaBN, :mod:`~lwmm_lab.analysis.adabn`), instead of merging the checkpoints' by the BN
    rule. The anchor it is compared with then has its statistics measured on the same images,
    so the gain shown is the merge's, not AdaBN's (which lifts a model alone by 0.2-2.2 mIoU on
    the zoo); the readout gives the anchor as it is beside it.
    """

    #: The controls :meth:`set` and :meth:`load` move, by name.
    CONTROLS = (
        "scenario", "models", "anchor", "method", "schedule", "start", "alpha", "bn",
        "granularity", "device", "align", "reestimate", "output",
    )  # fmt: skip

    def __init__(
        self,
        checkpoints: Sequence[str] | None = None,
        zoo: str | os.PathLike | None = None,
        scenario: str = "independent",
        align: bool = False,
        base: str | os.PathLike | None = None,
        target: str = "real",
        source: str | None = "synthetic",
        resolution: tuple[int, int] | None = None,
        preview: int = 16,
        full: int = 100,
        shown: int = 3,
        device: str = "auto",
        background: bool = True,
        reestimate_images: int = 32,
    ) -> None:
        super().__init__(background)
        self.target = check_dataset_name(target)
        self.source = None if source is None else check_dataset_name(source)
        #: What the previews score: the target, then the source when there is one.
        self.domains = (self.target,) if self.source is None else (self.target, self.source)
        self._ranked_on = target if target in DOMAINS else "real"  # what the zoo records
        self.manifest = panel_manifest(checkpoints, zoo)
        scenarios = [("custom", "custom")]
        if self.manifest is not None:
            present = {s for e in self.manifest["checkpoints"] for s in e["scenarios"]}
            scenarios += [(SCENARIO_LABELS[s], s) for s in SCENARIOS if s in present]
        if checkpoints is None:
            checkpoints = scenario_checkpoints(self.manifest, scenario, self._ranked_on)
        else:
            scenario = "custom"
        checkpoints = path_list(checkpoints)
        if not checkpoints:
            raise LwmmError("give at least one checkpoint to merge (or a zoo's scenario)")
        self.base = None if base is None else str(base)
        if not isinstance(align, bool):  # a TraitError from the checkbox before
            raise LwmmError(f"align={align!r}: give True or False")
        self.preview_size, self.full_size, self.shown, self.reestimate_images = (
            check_count(name, value)
            for name, value in (
                ("preview", preview),
                ("full", full),
                ("shown", shown),
                ("reestimate_images", reestimate_images),
            )
        )
        if resolution is None:
            resolution = peek_checkpoint(checkpoints[0]).resolution
        self.resolution = check_image_size(resolution)
        self.pool: Pool | None = None
        self.plan: MergePlan | None = None
        self.scores: dict[str, Scores | PanopticScores] = {}
        self.last_update_seconds = 0.0
        self.last_update_parts: dict[str, float] = {}
        self._models: dict[int, tuple[torch.nn.Module, dict[str, torch.Tensor]]] = {}
        self._anchor_cache: dict[tuple[int, bool], Outputs] = {}
        self._scorers: dict[tuple[str, int], BatchScorer] = {}
        self._held: dict[tuple[str, int, str, bool], TensorDataset] = {}  # see _data
        self._unlabelled: dict[str, torch.Tensor] = {}  # see _target_images
        self._panel_keys: dict[int, bytes] = {}
        self._depth_names: tuple[str, ...] = ()
        self._moving = threading.local()  # .quiet: this thread moves controls (see _quietly)
        self._deferred = False  # set while set() moves controls: one refresh at the end
        self._anchor_path = checkpoints[0]  # the anchor picked, by file: kept over rebuilds
        self._built_for: tuple[Any, ...] | None = None  # the pool's _pool_key() when built
        self._shown: tuple[Pool | None, Any] = (None, None)  # what the views show (_asked_merge)
        self._asked: list[Callable[[], None]] = []  # buttons pressed: run once views are current
        self._replace: Path | None = None  # an existing file *save* was pressed for once

        self._make_controls(scenarios, scenario, checkpoints, align, device, full)
        self._first_view()
        self._connect()
        self.widget = self._layout()
        self.refresh()

    def _first_view(self) -> None:
        """The first pool and merge (alpha at the paper's 1/M), and the figures that show it."""
        self._build_pool()
        with self._quietly():
            self.alpha.value = round(1 / self.pool.n_models, 2)  # the paper's default: 1/M
            self._fit_schedule()
        self.plan = make_plan(self.pool, self.config())
        self.plan.run(into=self._built(self.plan.anchor)[1])
        self.schedule_fig = go.FigureWidget(schedule_figure(self.plan))
        title = f"Per-class IoU on {dataset_label(self.target)}: merged minus anchor"
        self.delta_fig = go.FigureWidget(iou_delta_figure({}, title))
        merged = self._outputs(self._model(self.plan.anchor))
        self.grid_fig = go.FigureWidget(
            qualitative_figure(self._examples(self._anchor(self.plan.anchor), merged))
        )

    def _make_controls(
        self,
        scenarios: list[tuple[str, str]],
        scenario: str,
        checkpoints: list[str],
        align: bool,
        device: str,
        full: int,
    ) -> None:
        """Every control, set as the lab opens; the menus that depend on the pool (anchor,
        start) are filled when it is built."""
        wide = W.Layout(width="440px")
        self.scenario = W.Dropdown(options=scenarios, value=scenario, description="scenario")
        self.align = W.Checkbox(
            value=align,
            description="align decoders to the anchor (weight matching)",
            indent=False,
            layout=fit_width(),
        )
        self.models = W.SelectMultiple(
            options=checkpoint_options(self.manifest, checkpoints, self._ranked_on),
            value=tuple(checkpoints),
            rows=7,
            description="models",
            layout=wide,
        )
        self.path = W.Text(placeholder="add a checkpoint path", layout=W.Layout(width="340px"))
        self.add_button = W.Button(description="add", layout=W.Layout(width="90px"))
        self.anchor = W.Dropdown(description="anchor")
        self.method = W.Dropdown(options=list(LAB_METHODS), value="layerwise", description="method")
        self.schedule = choice_buttons(LAB_SCHEDULES, "layerwise", "schedule")
        self.start = W.IntSlider(
            value=1, min=1, max=2, description="start s", continuous_update=False, layout=wide
        )
        self.start_name = W.HTML()
        self.alpha = W.FloatSlider(
            value=0.5, min=0.0, max=1.0, step=0.01, description="alpha",
            continuous_update=False, readout_format=".2f",
        )  # fmt: skip
        self.bn = W.Dropdown(options=list(BN_RULES), value="linear", description="BN rule")
        self.reestimate = W.Checkbox(
            value=False,
            description=f"BN statistics from {self.reestimate_images} target images (AdaBN)",
            indent=False,
            layout=fit_width(),
        )
        self.granularity = choice_buttons(GRANULARITIES, "tensor", "granularity")
        resolve_device(device)  # a device this machine lacks is refused here, in one line
        devices = ["auto", "cpu", *(["cuda"] if torch.cuda.is_available() else []), device]
        self.device = W.Dropdown(
            options=list(dict.fromkeys(devices)), value=device, description="device"
        )
        self.full_button = W.Button(
            description=f"score full val ({full})", icon="check", layout=fit_width()
        )
        self.output = W.Text(value="merged.safetensors", description="save as")
        self.save_button = W.Button(description="save merge", icon="save", layout=fit_width())
        self.command_button = W.Button(
            description="show lwmm command", icon="terminal", layout=fit_width()
        )
        self.command = W.Textarea(layout=W.Layout(width="100%", height="64px", display="none"))
        self.readout = W.HTML()

    def _connect(self) -> None:
        """Each control's change, and each button, to the work it asks for."""
        controls = (self.anchor, self.method, self.schedule, self.start, self.alpha, self.bn)
        controls += (self.granularity,)
        for control in controls:
            control.observe(self._changed, names="value")
        self.models.observe(self._picked, names="value")
        self.device.observe(lambda _: self.refresh(), names="value")
        self.align.observe(lambda _: self.refresh(), names="value")
        self.reestimate.observe(self._reestimate_ticked, names="value")
        self.scenario.observe(self._scenario_changed, names="value")
        self.add_button.on_click(self._add_path)
        self.full_button.on_click(lambda _: self._ask(self._score_full))
        self.save_button.on_click(lambda _: self._ask(self._save))
        self.command_button.on_click(self._show_command)

    def _layout(self) -> W.VBox:
        """The panel: models and knobs, sliders, buttons, readout, then the figures."""
        pick = W.VBox([self.scenario, self.models, W.HBox([self.path, self.add_button])])
        knobs = W.VBox(
            [
                self.anchor,
                self.method,
                self.schedule,
                self.bn,
                self.device,
                self.align,
                self.reestimate,
            ]
        )
        buttons = W.HBox([self.full_button, self.output, self.save_button, self.command_button])
        return W.VBox(
            [
                W.HBox([pick, knobs]),
                W.HBox([self.start, self.start_name]),
                W.HBox([self.alpha, self.granularity]),
                buttons,
                self.command,
                self.readout,
                self.status,
                self.error,
                self.schedule_fig,
                self.delta_fig,
                self.grid_fig,
            ]
        )

    def config(self) -> MergeConfig:
        """The merge the controls describe. While the BN statistics are measured on the
        target's images, the rule is ``linear``: it is overwritten, and the command says so."""
        own = METHODS[self.method.value].schedule
        return MergeConfig(
            method=self.method.value,
            anchor=self.anchor.value or 0,
            start=self.start.value,
            alpha=self.alpha.value,
            bn="linear" if self.reestimate.value else self.bn.value,
            granularity=self.granularity.value,
            schedule=None if own is not None else self.schedule.value,
        )

    @contextlib.contextmanager
    def _quietly(self) -> Iterator[None]:
        """Move controls without their observers re-merging (the panel moves them itself).

        Per thread: observers run in the thread that moves a control, so a control the user
        moves while the worker moves others quietly is still heard."""
        was, self._moving.quiet = self._quiet, True
        try:
            yield
        finally:
            self._moving.quiet = was

    @property
    def _quiet(self) -> bool:
        """Whether this thread is moving controls quietly."""
        return getattr(self._moving, "quiet", False)

    def refresh(self) -> None:
        """Bring the pool and every view up to date with the controls (in the background)."""
        if not self._deferred:
            self.submit(self._sync)

    def set(self, **values: Any) -> None:
        """Move several controls at once (``start=``, ``alpha=``, ...), in the order given and
        each as if moved by hand, with one re-merge at the end. ``anchor`` is a position in the
        anchor menu as it stands (the pool's models before a change of ``models`` is merged)."""
        self._deferred = True
        try:
            for name, value in values.items():
                move_control(self, name, value, self.CONTROLS)
        finally:  # the views follow the controls moved, also those before a refused one
            self._deferred = False
            self.refresh()

    def load(self, checkpoints: Sequence[str], anchor: str | int = 0, **values: Any) -> None:
        """Show the merge of ``checkpoints`` with the anchor at path ``anchor`` (or at that
        index of ``checkpoints``) and the controls in ``values`` (as :meth:`set`; ``start``
        may exceed the depth of the models shown now): what a sweep's clicked cell loads. One
        re-merge, at the end."""
        paths = path_list(checkpoints)
        if isinstance(anchor, int) and not isinstance(anchor, bool) and 0 <= anchor < len(paths):
            anchor = paths[anchor]
        if str(anchor) not in paths:
            raise LwmmError(f"anchor '{anchor}' is not one of the checkpoints to load")
        start = values.pop("start", None)
        if start is not None and check_whole("start", start) < 1:
            raise LwmmError(f"start={start}: give a depth index >= 1")
        self._deferred = True
        try:
            for path in paths:
                add_checkpoint(path, self.models)
            if tuple(paths) == self._built_for[0]:
                self.anchor.value = paths.index(str(anchor))
            else:
                self._anchor_path = str(anchor)
                self.models.value = tuple(paths)
            for name, value in values.items():
                move_control(self, name, value, self.CONTROLS)
            if start is not None:
                self.start.max = max(self.start.max, start)
                self.start.value = start
        finally:
            self._deferred = False
            self.refresh()

    # ------------------------------------------------------------------- pool and models

    def _pool_key(self) -> tuple[Any, ...]:
        """What the controls ask of the pool: its models, its device, and while *align* is
        ticked the anchor it is aligned to (as :meth:`_build_pool` records it)."""
        aligned_to = self._anchor_path if self.align.value else None
        return tuple(self.models.value), self.device.value, aligned_to

    def _ask(self, action: Callable[[], None]) -> None:
        """A button's work (save, score the full val), done once the views show the controls."""
        self._asked.append(action)
        self.refresh()

    def _sync(self) -> None:
        """The one job of every change: rebuild the pool when the controls ask for another
        (:meth:`_pool_key`, or each model's Fisher for the Fisher merge), re-merge, re-score and
        redraw when the views show another merge, then do what the buttons asked. The worker
        runs only the newest job: as every job does all that the controls and buttons ask,
        dropping an older one never drops a rebuild or a save."""
        fisher_missing = self.method.value == "fisher" and self.pool.fisher is None
        if self._pool_key() != self._built_for or fisher_missing:
            self._build_pool()
        if self._shown[0] is not self.pool or self._shown[1] != self._asked_merge():
            self._update()
        while self._asked:
            self._asked.pop(0)()

    def _asked_merge(self) -> tuple[MergeConfig, bool]:
        """What the views must show: the merge the controls describe, and whether its BN
        statistics are measured on the target's images."""
        return self.config(), self.reestimate.value

    def _build_pool(self) -> None:
        """A pool of the models picked, on the device picked, with the base; aligned to the
        anchor while *align* is ticked, and with each model's Fisher for the Fisher merge."""
        # The controls are read once: moved during the build, they differ from _built_for.
        paths, device, aligned = list(self.models.value), self.device.value, self.align.value
        asked = self._anchor_path
        if not paths:
            raise LwmmError("no models picked: pick at least one")
        anchor = paths.index(asked) if asked in paths else 0
        fisher = None
        if self.method.value == "fisher":
            fisher = []
            for k, path in enumerate(paths, start=1):
                self.status.value = (
                    f"each model's Fisher (estimated once, cached under data/cache): "
                    f"{k} of {len(paths)} ..."
                )
                fisher.append(fisher_file(path))
        base = self.base or (base_checkpoint(self.manifest) if self.manifest else None)
        align = anchor if aligned else None
        self.pool = Pool(paths, device=device, base=base, align=align, fisher=fisher)
        self._built_for = (tuple(paths), device, paths[anchor] if aligned else None)
        if self._anchor_path == asked:  # else an anchor picked during the build stays picked
            self._anchor_path = paths[anchor]
        self._models.clear()
        self._anchor_cache.clear()
        with self._quietly():
            self.anchor.options = [(label, i) for i, label in enumerate(self.pool.labels)]
            self.anchor.value = paths.index(self._anchor_path) if self._anchor_path in paths else 0
            self._fit_start_slider()

    def _fit_start_slider(self) -> None:
        layout = self.pool.layout(self.anchor.value or 0, self.granularity.value)
        self.start.max = layout.n_depth
        self.start.value = min(self.start.value, layout.n_depth)
        self._depth_names = layout.depth_names
        self.start_name.value = self._start_label()

    def _model(self, anchor: int) -> torch.nn.Module:
        """The module merges with this anchor are written into (built once per anchor)."""
        return self._built(anchor)[0]

    def _built(self, anchor: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        """The anchor's module and its state dict, kept: a merge writes into the state dict's
        tensors (the module's own), which saves collecting them on every slider change."""
        if anchor not in self._models:
            model = merge_target(self.pool, anchor)
            self._models[anchor] = (model, model.state_dict())
        return self._models[anchor]

    def _data(
        self, domain: str, images: int, on_device: bool = False, instances: bool = False
    ) -> TensorDataset:
        """A preview val set; ``on_device``: held where the pool is (copied there once). Kept
        by the lab: a dataset on disk is looked over for changed files on every ``val_set``
        (10 ms for Cityscapes' 500 val images), and the previews are the lab's for its life."""
        device = str(self.pool.device) if on_device else "cpu"
        key = (domain, images, device, instances)
        if key not in self._held:
            self._held[key] = val_set(
                domain, images, self.resolution, device=device, instances=instances
            )
        return self._held[key]

    # ------------------------------------------------------------------------- events

    @shows_errors
    def _changed(self, change: dict[str, Any]) -> None:
        """A knob moved: the start slider kept within the anchor's depths, and a re-merge
        (a new pool when the pool is aligned to the anchor, see :meth:`_sync`)."""
        if self._quiet:
            return
        if change["owner"] is self.anchor and self.anchor.value is not None:
            self._anchor_path = self._built_for[0][self.anchor.value]  # the pool's files
        if change["owner"] in (self.anchor, self.granularity):
            with self._quietly():
                self._fit_start_slider()
        if change["owner"] in (self.method, self.schedule):
            with self._quietly():
                self._fit_schedule()
        self.start_name.value = self._start_label()
        self.refresh()

    @shows_errors
    def _scenario_changed(self, _: Any) -> None:
        """Load the scenario's models, its first one the anchor."""
        if self._quiet or self.scenario.value == "custom" or self.manifest is None:
            return
        paths = scenario_checkpoints(self.manifest, self.scenario.value, self._ranked_on)
        known = {path for _, path in self.models.options}
        extra = [(peek_checkpoint(p).label, p) for p in paths if p not in known]
        with self._quietly():
            self.models.options = [*self.models.options, *extra]
            self.models.value = tuple(paths)
        self._anchor_path = paths[0]
        self.refresh()

    @shows_errors
    def _picked(self, _: Any) -> None:
        """Models picked by hand: the scenario becomes ``custom``."""
        if self._quiet:
            return
        with self._quietly():
            self.scenario.value = "custom"
        self.refresh()

    @shows_errors
    def _add_path(self, _: Any) -> None:
        """Add the typed checkpoint to the models and select it; one that cannot be read is
        refused in the error box, naming the file, and the models stay as they were."""
        path, picked = self.path.value.strip(), tuple(self.models.value)
        if not path:
            return
        with self._quietly():
            add_checkpoint(path, self.models)
        self.path.value = ""
        if path not in picked:
            self.models.value = (*picked, path)

    @shows_errors
    def _reestimate_ticked(self, _: Any) -> None:
        """The BN rule is greyed out while the statistics are measured anew."""
        self.bn.disabled = self.reestimate.value
        if not self._quiet:
            self.refresh()

    def _target_images(self) -> torch.Tensor:
        """The target's first train images, unlabelled, where the pool is (read once)."""
        device = str(self.pool.device)
        if device not in self._unlabelled:
            images = train_images(self.target, self.reestimate_images, self.resolution)
            self._unlabelled[device] = images.to(device)
        return self._unlabelled[device]

    def _fit_schedule(self) -> None:
        """The schedule shown is the method's own when it has one (and then fixed); s, alpha
        and the granularity are live only under the layer-wise schedule, which they define."""
        own = METHODS[self.method.value].schedule
        if own is not None:
            self.schedule.value = own
        self.schedule.disabled = own is not None
        inert = self.schedule.value != "layerwise"
        self.start.disabled = self.alpha.disabled = self.granularity.disabled = inert

    def _start_label(self) -> str:
        j, names = self.start.value, self._depth_names
        return f"<code>j = {j}: {html.escape(names[j - 1])}</code>" if 0 < j <= len(names) else ""

    # ------------------------------------------------------------------------ updates

    def _update(self) -> None:
        """Re-merge, re-score and redraw; ``last_update_parts`` keeps each step's milliseconds
        (host time: on a GPU the merge's kernels finish during the scoring)."""
        started = mark = time.perf_counter()
        parts: dict[str, float] = {}

        def done(part: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            parts[part], mark = (now - mark) * 1000, now

        config, reestimating = asked = self._asked_merge()
        plan = make_plan(self.pool, config)
        done("plan")
        model, tensors = self._built(plan.anchor)
        plan.run(into=tensors)
        self.plan = plan
        done("merge")
        if reestimating:
            reestimate_bn(model, self._target_images())
            done("BN statistics")
        merged, anchor = self._outputs(model), self._anchor(plan.anchor, reestimating)
        self.scores = {"merged": merged.scores, "anchor": anchor.scores}
        if merged.source is not None:
            self.scores[self.source] = merged.source
        if merged.panoptic is not None and anchor.panoptic is not None:
            self.scores["merged panoptic"] = merged.panoptic[0]
            self.scores["anchor panoptic"] = anchor.panoptic[0]
        done("score")
        if not update_schedule_figure(self.schedule_fig, plan):
            sync_figure(self.schedule_fig, schedule_figure(plan))
        update_iou_delta_figure(self.delta_fig, iou_delta(anchor.scores, merged.scores))
        done("figures")
        self._update_grid(self._examples(anchor, merged))
        self.start_name.value = self._start_label()
        own = self._anchor(plan.anchor) if reestimating else None
        self.readout.value = self._readout(anchor, merged, own)
        done("grid")
        self._shown = (self.pool, asked)
        self.last_update_parts = parts
        self.last_update_seconds = time.perf_counter() - started
        ms = self.last_update_seconds * 1000
        self.status.value = f"<small>merged on {self.pool.device} and scored in {ms:.0f} ms</small>"

    def _scorer(self) -> BatchScorer:
        """The target's and the source's previews as one batch on the pool's device (made
        once per device): a slider change scores both in one forward pass."""
        key = (str(self.pool.device), self.preview_size)
        if key not in self._scorers:
            sets = [self._data(d, self.preview_size, on_device=True) for d in self.domains]
            images, labels = (torch.cat([s.tensors[k] for s in sets]) for k in (0, 1))
            parts = [len(s) for s in sets]  # fewer where a dataset on disk is small
            self._scorers[key] = BatchScorer(images, labels, parts)
        return self._scorers[key]

    def _outputs(self, model: torch.nn.Module) -> Outputs:
        """A model's scores on the target and source previews and its predictions on the
        target images shown (and, for a panoptic model, its panoptic outputs on the target)."""
        scorer = self._scorer()
        pred, counts = scorer(model)
        classes, parts = model_classes(model), (p.stop - p.start for p in scorer.parts)
        target, *source = (
            scores_from_confusion(c, classes, domain, n)
            for c, domain, n in zip(counts.cpu(), self.domains, parts, strict=True)
        )
        source = source[0] if source else None
        shown = pred[: self.shown].cpu()
        if not is_panoptic(model):
            return Outputs(target, source, shown)
        data = self._data(self.target, self.preview_size, on_device=True, instances=True)
        panoptic, category, instance = panoptic_outputs(model, *data.tensors)
        return Outputs(target, source, shown, (panoptic, category.cpu(), instance.cpu()))

    def _anchor(self, anchor: int, reestimated: bool = False) -> Outputs:
        """The anchor's preview outputs, with its own BN statistics or with them measured on
        the target's images as the merge's are (cached per anchor and kind)."""
        key = (anchor, reestimated)
        if key not in self._anchor_cache:
            model = load_model(self.pool.checkpoints[anchor], self.pool.device)
            if reestimated:
                reestimate_bn(model, self._target_images())
            self._anchor_cache[key] = self._outputs(model)
        return self._anchor_cache[key]

    def _examples(self, anchor: Outputs, merged: Outputs) -> list[Example]:
        """The grid's rows: semantic maps, or panoptic ones when both models are panoptic."""
        n = self.shown
        if anchor.panoptic is None or merged.panoptic is None:
            images, labels = self._data(self.target, self.preview_size).tensors[:2]
            return examples_from_predictions(
                images[:n],
                labels[:n],
                anchor.pred[:n],
                merged.pred[:n],
                list(range(len(images[:n]))),
            )
        images, labels, instances = self._data(
            self.target, self.preview_size, instances=True
        ).tensors
        return examples_from_predictions(
            images[:n],
            labels[:n],
            anchor.panoptic[1][:n],
            merged.panoptic[1][:n],
            list(range(len(images[:n]))),
            (instances[:n], anchor.panoptic[2][:n], merged.panoptic[2][:n]),
        )

    def _update_grid(self, shown: list[Example]) -> None:
        """Only the panels that can change (the anchor's, the merged and the change map), and
        of those only the ones whose maps differ from what the grid shows: a step of alpha that
        moves no pixel of an image sends nothing for it, and the anchor's panels are sent only
        when the anchor changes."""
        images = [t for t in self.grid_fig.data if isinstance(t, go.Image)]
        with self.grid_fig.batch_update():
            for r, example in enumerate(shown):
                for c, key in _drawn_from(example).items():
                    k = r * len(COLUMNS) + c
                    if self._panel_keys.get(k) != key:
                        images[k].source = panel_uri(example, c)
                        self._panel_keys[k] = key

    def _readout(self, anchor: Outputs, merged: Outputs, own: Outputs | None) -> str:
        """The scores of the merge against the anchor; ``own``: the anchor as it is, where
        ``anchor`` has its BN statistics measured anew as the merge has."""
        a, m, source = anchor.scores, merged.scores, merged.source
        scored, sources = [m], ""
        if source is not None:
            scored.append(source)
            sources = f" &nbsp;|&nbsp; <b>{dataset_label(self.source)}</b> mIoU: {source.miou:.2f}"
        panoptic = ""
        if anchor.panoptic is not None and merged.panoptic is not None:
            ap, mp = anchor.panoptic[0], merged.panoptic[0]
            panoptic = (
                f"<br>panoptic on <b>{dataset_label(self.target)}</b>: PQ merged "
                f"<b class='lwmm-pq'>"
                f"{mp.pq:.2f}</b> (anchor {ap.pq:.2f}, {_signed(mp.pq - ap.pq)}), SQ {mp.sq:.2f} "
                f"(anchor {ap.sq:.2f}), RQ {mp.rq:.2f} (anchor {ap.rq:.2f})"
            )
        measured = []
        if own is not None:
            images = f"{self.reestimate_images} {dataset_label(self.target)} train images"
            as_is = f"mIoU {own.scores.miou:.2f}" + (
                f", PQ {own.panoptic[0].pq:.2f}" if own.panoptic is not None else ""
            )
            measured.append(
                f"BN statistics measured on the first {images} (AdaBN), the merge's and the "
                f"anchor's alike; the anchor with its own: {as_is}"
            )
        notes = note_lines([*measured, *self.plan.notes()])
        return (
            f"<div style='font-size:15px'><b>{dataset_label(self.target)}</b> mIoU: merged "
            f"<b class='lwmm-miou'>{m.miou:.2f}</b> (anchor {a.miou:.2f}, "
            f"{_signed(m.miou - a.miou)}){sources} "
            f"<small>(preview: {_images(scored)})</small>{panoptic}{notes}</div>"
        )

    def _score_full(self) -> None:
        target = dataset_label(self.target)
        self.status.value = f"scoring the full {target} val ({self.full_size} images) ..."
        # Not held by the lab as the previews are: val_set's cache bounds what it keeps.
        data = val_set(self.target, self.full_size, self.resolution, device=str(self.pool.device))
        scores = evaluate(self._model(self.plan.anchor), data, self.target, progress=True)
        self.status.value = (
            f"full {target} val: mIoU <b>{scores.miou:.2f}</b> on {scores.images} images"
        )

    def _save(self) -> None:
        """Save the merge shown. A file already there (the default name's earlier save, say) is
        replaced only when *save* is pressed a second time for it, so sliding on and saving
        again never loses a saved merge unasked."""
        path = checkpoint_path(self.output.value)
        shown = f"<code>{html.escape(str(path))}</code>"
        if path.exists() and self._replace != path:
            self._replace = path
            self.status.value = (
                f"{shown} exists: press <b>save merge</b> again to replace it, or type another name"
            )
            return
        self._replace = None
        if self._measured:
            tensors = self._built(self.plan.anchor)[1]
            write_merge(self.plan, tensors, path, bn_reestimated=self._reestimated_on())
        else:
            save_merge(self.pool, path, self.plan.config)
        self.status.value = f"saved {shown} with its provenance"

    @property
    def _measured(self) -> bool:
        """Whether the merge shown has its BN statistics measured on the target's images."""
        return self._shown[1] is not None and self._shown[1][1]

    def _reestimated_on(self) -> dict[str, Any]:
        """What a saved merge's provenance says its BN statistics were measured on."""
        return reestimation_record([self.target], self.reestimate_images, self.resolution)

    @shows_errors
    def _show_command(self, _: Any) -> None:
        command = merge_command(self.plan, self.output.value)
        if self._measured:
            on = self._reestimated_on()
            size = [str(v) for v in on["resolution"]]
            words = ["--reestimate", *on["domains"], "--reestimate-images", str(on["images"])]
            command += " " + shlex.join([*words, "--size", *size])
        self.command.value = command
        self.command.layout.display = ""
