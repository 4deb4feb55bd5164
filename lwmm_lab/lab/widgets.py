"""The lab's panels: ipywidgets controls and plotly FigureWidgets that display themselves.

- :class:`MergeLab`: pick models, the anchor, the method, the start layer and alpha, the BN rule,
  the granularity and the device; every change re-merges (on the GPU when there is one) and
  updates the schedule, the mIoU readout, the per-class IoU bars and a qualitative grid.
- :class:`DiscrepancyExplorer`: the per-layer discrepancy (Fig. 2) with a tau slider.
- :class:`SweepExplorer`: runs or loads an (s, alpha) sweep; clicking a cell loads that merge
  into a MergeLab.

Work runs in a background thread and only the newest request is computed: moving a slider
quickly never queues a backlog, and the kernel stays free to receive the next change.
Errors are shown in the panel. ``background=False`` computes inline (for tests and scripts).
"""

from __future__ import annotations

import contextlib
import html
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go
import torch
from torch.utils.data import TensorDataset

from lwmm_lab.analysis.comparison import fisher_file
from lwmm_lab.analysis.discrepancy import KINDS, discrepancy
from lwmm_lab.analysis.evaluation import (
    BatchScorer,
    Scores,
    evaluate,
    model_classes,
    scores_from_confusion,
    val_set,
)
from lwmm_lab.analysis.panoptic import PanopticScores, panoptic_outputs
from lwmm_lab.analysis.qualitative import Example, examples_from_predictions, iou_delta
from lwmm_lab.analysis.sweeps import Cell, Sweep, grid, run_sweep
from lwmm_lab.engine.checkpoints import peek_checkpoint
from lwmm_lab.engine.merge import MergeConfig, MergePlan, make_plan, merge_command, save_merge
from lwmm_lab.engine.methods import BN_RULES, METHODS
from lwmm_lab.engine.model import load_model, merge_target
from lwmm_lab.engine.panoptic import is_panoptic
from lwmm_lab.engine.pool import GRANULARITIES, Pool, resolve_device
from lwmm_lab.lab.figures import (
    COLUMNS,
    change_color,
    counts_figure,
    discrepancy_figure,
    iou_delta_figure,
    panel_uri,
    qualitative_figure,
    schedule_figure,
    sweep_heatmap,
    update_iou_delta_figure,
    update_schedule_figure,
)
from lwmm_lab.zoo.manifest import (
    PRESETS,
    SCENARIO_LABELS,
    base_checkpoint,
    family_run,
    final,
    find_zoo,
    load_manifest,
    preset,
    scenario_checkpoints,
)
from lwmm_lab.zoo.recipe import FAMILIES, SCENARIOS


class LatestOnly:
    """Run submitted jobs in one background thread, always the newest: older ones are dropped.

    With ``background=False`` a job runs at once, in the caller's thread.
    """

    def __init__(self, on_error: Callable[[BaseException], None], background: bool = True) -> None:
        self.on_error, self.background = on_error, background
        self._job: Callable[[], None] | None = None
        self._busy = False
        self._cv = threading.Condition()
        if background:
            threading.Thread(target=self._loop, daemon=True, name="lwmm-widgets").start()

    def submit(self, job: Callable[[], None]) -> None:
        if not self.background:
            self._run(job)
            return
        with self._cv:
            self._job = job
            self._cv.notify_all()

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until nothing is pending or running; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self._job is None and not self._busy, timeout)

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._job is not None)
                job, self._job, self._busy = self._job, None, True
            self._run(job)
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception as e:  # shown in the panel, never swallowed
            self.on_error(e)


class _Panel:
    """Shared parts: a status line, an error box, a worker, and self-display."""

    def __init__(self, background: bool) -> None:
        self.status = W.HTML()
        self.error = W.HTML()
        self.worker = LatestOnly(self._show_error, background)
        self.widget: W.Widget = W.VBox()

    def _show_error(self, e: BaseException) -> None:
        detail = html.escape("".join(traceback.format_exception(e)))
        self.error.value = (
            f"<div style='color:#b00020'><b>{type(e).__name__}:</b> {html.escape(str(e))}"
            f"<details><summary>traceback</summary><pre>{detail}</pre></details></div>"
        )

    def wait(self, timeout: float = 60.0) -> bool:
        """Wait for the panel's pending work (useful in scripts and tests)."""
        return self.worker.wait(timeout)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def sync_figure(widget: go.FigureWidget, figure: go.Figure) -> None:
    """Make ``widget`` show ``figure``: trace by trace when the traces match, else replace all."""
    with widget.batch_update():
        same = len(widget.data) == len(figure.data) and all(
            type(a) is type(b) for a, b in zip(widget.data, figure.data, strict=True)
        )
        if same:
            for old, new in zip(widget.data, figure.data, strict=True):
                old.update(new.to_plotly_json(), overwrite=True)
        else:
            widget.data = ()
            widget.add_traces(list(figure.data))
        widget.layout = figure.layout


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
    """A model's previews: its scores on the target and the source, its predictions on the
    target images the grid shows, and for a panoptic model its panoptic scores, categories
    and instance ids on the target."""

    scores: Scores
    source: Scores
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


def _signed(diff: float) -> str:
    """A difference in green (up) or red (down)."""
    return f"<span style='color:{change_color(diff)}'>{diff:+.2f}</span>"


class MergeLab(_Panel):
    """Merge checkpoints with sliders and see what changes.

    ``checkpoints`` (paths) or a zoo ``scenario`` give the models, the first one the anchor.
    By default the lab opens on the zoo's (default: :func:`find_zoo`) ``independent``
    strategies, where the start layer and alpha matter most; the scenario chooser switches to
    the one-source strategies, the checkpoints of one run, other classes, other decoders or
    multi-target. ``align`` matches the other models' decoder channels to the anchor's first
    (weight matching). Preview mIoU is on ``preview`` images of the target and source val; a
    button scores the full val (``full`` images).
    """

    def __init__(
        self,
        checkpoints: Sequence[str] | None = None,
        zoo: str | os.PathLike | None = None,
        scenario: str = "independent",
        align: bool = False,
        target: str = "real",
        source: str = "synthetic",
        preview: int = 16,
        full: int = 100,
        shown: int = 3,
        device: str = "auto",
        background: bool = True,
    ) -> None:
        super().__init__(background)
        self.manifest = None
        if checkpoints is None or zoo is not None:
            self.manifest = load_manifest(zoo or find_zoo())
        scenarios = [("custom", "custom")]
        if self.manifest is not None:
            present = {s for e in self.manifest["checkpoints"] for s in e["scenarios"]}
            scenarios += [(SCENARIO_LABELS[s], s) for s in SCENARIOS if s in present]
        if checkpoints is None:
            checkpoints = scenario_checkpoints(self.manifest, scenario, target)
        else:
            scenario = "custom"
        checkpoints = [str(p) for p in checkpoints]
        self.target, self.source = target, source
        self.preview_size, self.full_size, self.shown = preview, full, shown
        trained_at = peek_checkpoint(checkpoints[0]).provenance.get("resolution", (128, 256))
        self.resolution = tuple(trained_at)
        self.pool: Pool | None = None
        self.plan: MergePlan | None = None
        self.scores: dict[str, Scores | PanopticScores] = {}
        self.last_update_seconds = 0.0
        self.last_update_parts: dict[str, float] = {}
        self._models: dict[int, tuple[torch.nn.Module, dict[str, torch.Tensor]]] = {}
        self._anchor_cache: dict[int, Outputs] = {}
        self._scorers: dict[tuple[str, int], BatchScorer] = {}
        self._panel_keys: dict[int, bytes] = {}
        self._depth_names: tuple[str, ...] = ()
        self._quiet = False  # set while the panel itself moves controls

        wide = W.Layout(width="440px")
        self.scenario = W.Dropdown(options=scenarios, value=scenario, description="scenario")
        self.align = W.Checkbox(
            value=align, description="align decoders to the anchor (weight matching)", indent=False
        )
        self.models = W.SelectMultiple(
            options=checkpoint_options(self.manifest, checkpoints, target),
            value=tuple(checkpoints),
            rows=7,
            description="models",
            layout=wide,
        )
        self.path = W.Text(placeholder="add a checkpoint path", layout=W.Layout(width="340px"))
        self.add_button = W.Button(description="add", layout=W.Layout(width="90px"))
        self.anchor = W.Dropdown(description="anchor")
        self.method = W.Dropdown(options=list(METHODS), value="layerwise", description="method")
        self.start = W.IntSlider(
            value=1, min=1, max=2, description="start s", continuous_update=False, layout=wide
        )
        self.start_name = W.HTML()
        self.alpha = W.FloatSlider(
            value=0.5, min=0.0, max=1.0, step=0.01, description="alpha",
            continuous_update=False, readout_format=".2f",
        )  # fmt: skip
        self.bn = W.Dropdown(options=list(BN_RULES), value="linear", description="BN rule")
        self.granularity = W.ToggleButtons(
            options=list(GRANULARITIES), value="tensor", description="granularity"
        )
        self.device = W.Dropdown(
            options=["auto", "cpu", "cuda"], value=device, description="device"
        )
        self.full_button = W.Button(description=f"score full val ({full})", icon="check")
        self.output = W.Text(value="merged.safetensors", description="save as")
        self.save_button = W.Button(description="save merge", icon="save")
        self.command_button = W.Button(description="show lwmm command", icon="terminal")
        self.command = W.Textarea(layout=W.Layout(width="100%", height="64px", display="none"))
        self.readout = W.HTML()

        self._build_pool(checkpoints[0])
        with self._quietly():
            self.alpha.value = round(1 / self.pool.n_models, 2)  # the paper's default: 1/M
        self.plan = make_plan(self.pool, self.config())
        self.plan.run(into=self._built(self.plan.anchor)[1])
        self.schedule_fig = go.FigureWidget(schedule_figure(self.plan))
        title = f"Per-class IoU on {target}: merged minus anchor"
        self.delta_fig = go.FigureWidget(iou_delta_figure({}, title))
        merged = self._outputs(self._model(self.plan.anchor))
        self.grid_fig = go.FigureWidget(
            qualitative_figure(self._examples(self._anchor(self.plan.anchor), merged))
        )

        controls = (self.anchor, self.method, self.start, self.alpha, self.bn, self.granularity)
        for control in controls:
            control.observe(self._changed, names="value")
        self.models.observe(self._picked, names="value")
        self.device.observe(self._models_changed, names="value")
        self.align.observe(self._models_changed, names="value")
        self.scenario.observe(self._scenario_changed, names="value")
        self.add_button.on_click(self._add_path)
        self.full_button.on_click(lambda _: self.worker.submit(self._score_full))
        self.save_button.on_click(lambda _: self.worker.submit(self._save))
        self.command_button.on_click(self._show_command)
        pick = W.VBox([self.scenario, self.models, W.HBox([self.path, self.add_button])])
        knobs = W.VBox([self.anchor, self.method, self.bn, self.device, self.align])
        buttons = W.HBox([self.full_button, self.output, self.save_button, self.command_button])
        self.widget = W.VBox(
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
        self.refresh()

    def config(self) -> MergeConfig:
        """The merge the controls describe."""
        return MergeConfig(
            method=self.method.value,
            anchor=self.anchor.value or 0,
            start=self.start.value,
            alpha=self.alpha.value,
            bn=self.bn.value,
            granularity=self.granularity.value,
        )

    @contextlib.contextmanager
    def _quietly(self) -> Iterator[None]:
        """Move controls without their observers re-merging (the panel moves them itself)."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def refresh(self) -> None:
        """Re-merge with the current controls and update every view (in the background)."""
        self.worker.submit(self._update)

    def set(self, **values: Any) -> None:
        """Move several controls at once (``start=``, ``alpha=``, ...) with one re-merge."""
        with self._quietly():
            for name, value in values.items():
                getattr(self, name).value = value
        self.refresh()

    # ------------------------------------------------------------------- pool and models

    def _build_pool(self, anchor_path: str | None = None) -> None:
        paths = list(self.models.value)
        if not paths:
            raise ValueError("select at least one model")
        base = base_checkpoint(self.manifest) if self.manifest else None
        anchor = paths.index(anchor_path) if anchor_path in paths else 0
        align = anchor if self.align.value else None
        self.pool = Pool(paths, device=self.device.value, base=base, align=align)
        self._models.clear()
        self._anchor_cache.clear()
        with self._quietly():
            self.anchor.options = [(label, i) for i, label in enumerate(self.pool.labels)]
            self.anchor.value = anchor
            self._fit_start_slider()
        self.plan = make_plan(self.pool, self.config())

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
        """A preview val set; ``on_device``: held where the pool is (copied there once)."""
        device = str(self.pool.device) if on_device else "cpu"
        return val_set(domain, images, self.resolution, device=device, instances=instances)

    # ------------------------------------------------------------------------- events

    def _changed(self, change: dict[str, Any]) -> None:
        if self._quiet:
            return
        if change["owner"] is self.anchor and self.align.value:
            self._models_changed(None)  # the pool is aligned to its anchor: align to the new one
            return
        if change["owner"] in (self.anchor, self.granularity):
            with self._quietly():
                self._fit_start_slider()
        self.start_name.value = self._start_label()
        self.refresh()

    def _scenario_changed(self, _: Any) -> None:
        """Load the scenario's models, its first one the anchor."""
        if self._quiet or self.scenario.value == "custom" or self.manifest is None:
            return
        paths = scenario_checkpoints(self.manifest, self.scenario.value, self.target)
        known = {path for _, path in self.models.options}
        extra = [(peek_checkpoint(p).label, p) for p in paths if p not in known]
        with self._quietly():
            self.models.options = [*self.models.options, *extra]
        self._rebuild(paths[0], paths)

    def _picked(self, _: Any) -> None:
        """Models picked by hand: the scenario becomes ``custom``."""
        if self._quiet:
            return
        with self._quietly():
            self.scenario.value = "custom"
        self._models_changed(None)

    def _models_changed(self, _: Any) -> None:
        if self._quiet:
            return
        anchor_path = None
        if self.pool is not None and self.anchor.value is not None:
            anchor_path = str(self.pool.checkpoints[self.anchor.value].path)
        self._rebuild(anchor_path)

    def _rebuild(self, anchor_path: str | None, paths: Sequence[str] | None = None) -> None:
        """Rebuild the pool (models, device or alignment changed) and re-merge."""

        def rebuild() -> None:
            if paths is not None:
                with self._quietly():
                    self.models.value = tuple(paths)
            self._build_pool(anchor_path)
            self._update()

        self.worker.submit(rebuild)

    def _add_path(self, _: Any) -> None:
        path = self.path.value.strip()
        if not path:
            return
        if not Path(path).exists():
            self._show_error(FileNotFoundError(f"{path}: no such file or directory"))
            return
        self.models.options = [*self.models.options, (peek_checkpoint(path).label, path)]
        self.models.value = (*self.models.value, path)
        self.path.value = ""

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

        self.error.value = ""
        if self.method.value == "fisher" and self.pool.fisher is None:
            self._attach_fisher()
        plan = make_plan(self.pool, self.config())
        done("plan")
        model, tensors = self._built(plan.anchor)
        plan.run(into=tensors)
        self.plan = plan
        done("merge")
        merged, anchor = self._outputs(model), self._anchor(plan.anchor)
        self.scores = {"merged": merged.scores, "anchor": anchor.scores, self.source: merged.source}
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
        self.readout.value = self._readout(anchor, merged)
        done("grid")
        self.last_update_parts = parts
        self.last_update_seconds = time.perf_counter() - started
        ms = self.last_update_seconds * 1000
        self.status.value = f"<small>merged on {self.pool.device} and scored in {ms:.0f} ms</small>"

    def _attach_fisher(self) -> None:
        self.status.value = "estimating each model's Fisher (once; cached under data/cache) ..."
        paths = [str(c.path) for c in self.pool.checkpoints]
        fishers = [fisher_file(p) for p in paths]
        self.pool = Pool(paths, device=self.device.value, base=self.pool.base_path, fisher=fishers)
        self._models.clear()

    def _scorer(self) -> BatchScorer:
        """The target's and the source's previews as one batch on the pool's device (made
        once per device): a slider change scores both in one forward pass."""
        key = (str(self.pool.device), self.preview_size)
        if key not in self._scorers:
            target, source = (
                self._data(domain, self.preview_size, on_device=True).tensors
                for domain in (self.target, self.source)
            )
            images, labels = (torch.cat([t, s]) for t, s in zip(target, source, strict=True))
            self._scorers[key] = BatchScorer(images, labels, (self.preview_size,) * 2)
        return self._scorers[key]

    def _outputs(self, model: torch.nn.Module) -> Outputs:
        """A model's scores on the target and source previews and its predictions on the
        target images shown (and, for a panoptic model, its panoptic outputs on the target)."""
        pred, counts = self._scorer()(model)
        classes, n = model_classes(model), self.preview_size
        target, source = (
            scores_from_confusion(c, classes, domain, n)
            for c, domain in zip(counts.cpu(), (self.target, self.source), strict=True)
        )
        shown = pred[: self.shown].cpu()
        if not is_panoptic(model):
            return Outputs(target, source, shown)
        data = self._data(self.target, self.preview_size, on_device=True, instances=True)
        panoptic, category, instance = panoptic_outputs(model, *data.tensors)
        return Outputs(target, source, shown, (panoptic, category.cpu(), instance.cpu()))

    def _anchor(self, anchor: int) -> Outputs:
        """The anchor's own preview outputs (cached per anchor)."""
        if anchor not in self._anchor_cache:
            model = load_model(self.pool.checkpoints[anchor], self.pool.device)
            self._anchor_cache[anchor] = self._outputs(model)
        return self._anchor_cache[anchor]

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

    def _readout(self, anchor: Outputs, merged: Outputs) -> str:
        a, m, source = anchor.scores, merged.scores, merged.source
        panoptic = ""
        if anchor.panoptic is not None and merged.panoptic is not None:
            ap, mp = anchor.panoptic[0], merged.panoptic[0]
            panoptic = (
                f"<br>panoptic on <b>{self.target}</b>: PQ merged <b class='lwmm-pq'>"
                f"{mp.pq:.2f}</b> (anchor {ap.pq:.2f}, {_signed(mp.pq - ap.pq)}), SQ {mp.sq:.2f} "
                f"(anchor {ap.sq:.2f}), RQ {mp.rq:.2f} (anchor {ap.rq:.2f})"
            )
        notes = "".join(
            f"<br><small>note: {html.escape(n, quote=False)}</small>" for n in self.plan.notes()
        )
        return (
            f"<div style='font-size:15px'><b>{self.target}</b> mIoU: merged "
            f"<b class='lwmm-miou'>{m.miou:.2f}</b> (anchor {a.miou:.2f}, "
            f"{_signed(m.miou - a.miou)}) &nbsp;|&nbsp; "
            f"<b>{self.source}</b> mIoU: {source.miou:.2f} "
            f"<small>(preview: {m.images} images each)</small>{panoptic}{notes}</div>"
        )

    def _score_full(self) -> None:
        self.status.value = f"scoring the full {self.target} val ({self.full_size} images) ..."
        data = self._data(self.target, self.full_size, on_device=True)
        scores = evaluate(self._model(self.plan.anchor), data, self.target)
        self.status.value = (
            f"full {self.target} val: mIoU <b>{scores.miou:.2f}</b> on {scores.images} images"
        )

    def _save(self) -> None:
        path = save_merge(self.pool, self.output.value, self.plan.config)
        self.status.value = f"saved <code>{html.escape(str(path))}</code> with its provenance"

    def _show_command(self, _: Any) -> None:
        self.command.value = merge_command(self.plan, self.output.value)
        self.command.layout.display = ""


class DiscrepancyExplorer(_Panel):
    """The per-layer discrepancy between a reference and other checkpoints, with a tau slider.

    Presets: the checkpoints of one ``run``, or the strategies of one ``family`` (one source
    model, or independent decoders) against the best of them.
    """

    def __init__(
        self,
        zoo: str | os.PathLike | None = None,
        scenario: str = "heterogeneous",
        run: str = "advent",
        tau: float = 20.0,
        family: str = "strategies",
        background: bool = True,
    ) -> None:
        super().__init__(background)
        self.manifest = load_manifest(zoo or find_zoo())
        runs = sorted({e["run"] for e in self.manifest["checkpoints"] if e["run"] != "base"})
        options = checkpoint_options(self.manifest, [])
        self.scenario = W.Dropdown(
            options=["custom", *PRESETS], value=scenario, description="scenario"
        )
        self.run = W.Dropdown(
            options=runs, value=run if run in runs else runs[0], description="run"
        )
        self.family = W.Dropdown(
            options=[(SCENARIO_LABELS[f], f) for f in FAMILIES], value=family, description="family"
        )
        self.reference = W.Dropdown(options=options, description="reference")
        self.others = W.SelectMultiple(options=options, rows=6, description="others")
        self.tau = W.FloatLogSlider(
            value=tau, base=10, min=0.3, max=3, step=0.05, description="tau",
            continuous_update=False, readout_format=".3g",
        )  # fmt: skip
        self.kinds = W.SelectMultiple(
            options=list(KINDS), value=list(KINDS), rows=6, description="kinds"
        )
        self.result = None
        self.figure = go.FigureWidget()
        self.counts = go.FigureWidget()
        self.scenario.observe(self._scenario_changed, names="value")
        self.run.observe(self._scenario_changed, names="value")
        self.family.observe(self._scenario_changed, names="value")
        for control in (self.reference, self.others):
            control.observe(lambda _: self.worker.submit(self._compute), names="value")
        for control in (self.tau, self.kinds):
            control.observe(lambda _: self.worker.submit(self._draw), names="value")
        left = W.VBox([self.scenario, self.run, self.family, self.reference, self.tau])
        self.widget = W.VBox(
            [
                W.HBox([left, self.others, self.kinds]),
                self.status,
                self.error,
                self.figure,
                self.counts,
            ]
        )
        self._scenario_changed(None)

    def _scenario_changed(self, _: Any) -> None:
        if self.scenario.value != "custom":
            reference, others = preset(
                self.manifest, self.scenario.value, run=self.run.value, family=self.family.value
            )
            with self.others.hold_trait_notifications(), self.reference.hold_trait_notifications():
                self.reference.value = reference
                self.others.value = tuple(others)
        self.worker.submit(self._compute)

    def _compute(self) -> None:
        self.error.value = ""
        others = [p for p in self.others.value if p != self.reference.value]
        if self.reference.value is None or not others:
            self.status.value = "pick a reference and at least one other checkpoint"
            return
        self.result = discrepancy(Pool([self.reference.value, *others], device="cpu"))
        self._draw()

    def _draw(self) -> None:
        if self.result is None:
            return
        tau, kinds = self.tau.value, list(self.kinds.value)
        sync_figure(self.figure, discrepancy_figure(self.result, tau, kinds))
        sync_figure(self.counts, counts_figure(self.result, tau))
        total = sum(c["total"] for c in self.result.counts(tau).values())
        cut = self.result.threshold(tau)
        self.status.value = (
            f"tau = {tau:.3g}: <b>{total}</b> tensors with relative distance >= {cut:.3g} "
            f"(of {len(self.result.rows)})"
        )


class SweepExplorer(_Panel):
    """Run or load an (s, alpha) sweep; click a cell to load that merge into ``merge_lab``.

    The models are ``checkpoints``, else the MergeLab's, else the independent family's AdvEnt
    and MinEnt (where the start layer and alpha matter).
    """

    def __init__(
        self,
        merge_lab: MergeLab | None = None,
        checkpoints: Sequence[str] | None = None,
        zoo: str | os.PathLike | None = None,
        steps: int = 11,
        images: int = 50,
        executor: str = "serial",
        background: bool = True,
    ) -> None:
        super().__init__(background)
        self.merge_lab = merge_lab
        if checkpoints is None and merge_lab is not None:
            checkpoints = [str(c.path) for c in merge_lab.pool.checkpoints]
        if checkpoints is None:
            manifest = load_manifest(zoo or find_zoo())
            runs = (family_run("independent", s) for s in ("advent", "minent"))
            checkpoints = [final(manifest, run) for run in runs]
        self.checkpoints = [str(p) for p in checkpoints]
        self.steps, self.images, self.executor = steps, images, executor
        resolution = peek_checkpoint(self.checkpoints[0]).provenance.get("resolution", (128, 256))
        self.resolution = tuple(resolution)
        self.domain = W.ToggleButtons(
            options=["real", "synthetic"], value="real", description="domain"
        )
        self.run_button = W.Button(description=f"run the {steps} x {steps} sweep", icon="play")
        self.progress = W.IntProgress(min=0, max=steps * steps, description="cells")
        self.sweep: Sweep | None = None
        self.figure = go.FigureWidget()
        self.run_button.on_click(lambda _: self.worker.submit(self._run))
        self.domain.observe(lambda _: self.worker.submit(self._draw), names="value")
        header = W.HBox([self.run_button, self.progress, self.domain])
        self.widget = W.VBox([header, self.status, self.error, self.figure])

    def cells(self) -> list[Cell]:
        fractions = [k / (self.steps - 1) for k in range(self.steps)]
        device = self.merge_lab.pool.device if self.merge_lab else resolve_device("auto")
        return grid(
            self.checkpoints, starts=fractions, alphas=fractions, domains=("real", "synthetic"),
            images=self.images, resolution=tuple(self.resolution), device=str(device),
        )  # fmt: skip

    def _run(self) -> None:
        self.error.value = ""
        cells = self.cells()
        self.progress.max = len(cells)
        self.status.value = "running the sweep (cells computed before are read from the cache) ..."

        def advance(done: int, result: dict[str, Any]) -> None:
            self.progress.value = done

        self.sweep = run_sweep(cells, self.executor, progress=False, on_result=advance)
        self.progress.value = len(cells)
        self._draw()

    def load(self, sweep: Sweep) -> None:
        """Show an already computed sweep."""
        self.sweep = sweep
        self.worker.submit(self._draw)

    def _draw(self) -> None:
        if self.sweep is None:
            return
        domain = self.domain.value
        sync_figure(self.figure, sweep_heatmap(self.sweep, domain))
        self.figure.data[0].on_click(self._clicked)
        best = max(self.sweep.results, key=lambda r: r["miou"][domain])
        self.status.value = (
            f"best {domain} mIoU {best['miou'][domain]:.2f} at s = {best['start']}, "
            f"alpha = {best['alpha']:.2f}; click a cell to load that merge into the MergeLab"
        )

    def _clicked(self, trace: Any, points: Any, state: Any) -> None:
        if points.point_inds:
            self.pick(points.ys[0], points.xs[0])

    def pick(self, start: int, alpha: float) -> None:
        """Load the merge at (start, alpha) into the MergeLab."""
        if self.merge_lab is not None:
            self.merge_lab.set(start=int(start), alpha=float(alpha))
