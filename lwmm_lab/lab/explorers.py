"""The lab's explorers: the per-layer discrepancy with a tau slider, and the (s, alpha) sweep.

- :class:`DiscrepancyExplorer`: the per-layer discrepancy (Fig. 2) with a tau slider.
- :class:`SweepExplorer`: runs or loads an (s, alpha) sweep; clicking a cell loads that merge
  into a :class:`~lwmm_lab.lab.merge_lab.MergeLab`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go

from lwmm_lab.analysis.comparison import fisher_file
from lwmm_lab.analysis.discrepancy import KINDS, Discrepancy, discrepancy
from lwmm_lab.analysis.sweeps import (
    SWEEP_METHODS,
    Cell,
    Sweep,
    check_executor,
    grid,
    run_sweep,
)
from lwmm_lab.data.datasets import check_dataset_names, dataset_label
from lwmm_lab.engine.checkpoints import peek_checkpoint
from lwmm_lab.engine.methods import METHODS
from lwmm_lab.engine.pool import Pool, path_list, resolve_device
from lwmm_lab.errors import LwmmError, check_count, check_image_size, check_name, check_whole
from lwmm_lab.lab.figures import counts_figure, discrepancy_figure, sweep_heatmap
from lwmm_lab.lab.merge_lab import MergeLab, checkpoint_options, panel_manifest
from lwmm_lab.lab.panel import (
    Panel,
    add_checkpoint,
    choice_buttons,
    fit_width,
    note_lines,
    shows_errors,
    sync_figure,
)
from lwmm_lab.zoo.manifest import (
    PRESETS,
    SCENARIO_LABELS,
    check_family,
    family_run,
    final,
    find_zoo,
    load_manifest,
    preset,
    zoo_runs,
)
from lwmm_lab.zoo.recipe import FAMILIES


class DiscrepancyExplorer(Panel):
    """The per-layer discrepancy between a reference and other checkpoints, with a tau slider.

    ``checkpoints`` (paths, the first the reference) or a zoo preset give the models: the
    checkpoints of one ``run`` (``advent`` by default, where the zoo has it), or the
    strategies of one ``family`` (one source model, or independent decoders) against the best
    of them. The zoo (default: :func:`find_zoo`) is needed only for its presets; a path box
    adds any checkpoint file or smp directory.
    """

    def __init__(
        self,
        checkpoints: Sequence[str | os.PathLike] | None = None,
        zoo: str | os.PathLike | None = None,
        scenario: str = "heterogeneous",
        run: str | None = None,
        tau: float = 20.0,
        family: str = "strategies",
        background: bool = True,
    ) -> None:
        super().__init__(background)
        self.manifest = panel_manifest(checkpoints, zoo)
        paths = [] if checkpoints is None else path_list(checkpoints)
        if checkpoints is not None:
            scenario = "custom"
            if len(paths) < 2:
                raise LwmmError("give at least two checkpoints (the first is the reference)")
        runs = [r for r in zoo_runs(self.manifest) if r != "base"] if self.manifest else []
        options = checkpoint_options(self.manifest, paths)
        presets = list(PRESETS) if self.manifest else []
        check_name(scenario, ["custom", *presets], "scenario")
        if run is not None and self.manifest:
            check_name(run, runs, "run")
        check_family(family)
        self.scenario = W.Dropdown(
            options=["custom", *presets], value=scenario, description="scenario"
        )
        default_run = "advent" if "advent" in runs else next(iter(runs), None)
        self.run = W.Dropdown(options=runs, value=run or default_run, description="run")
        self.family = W.Dropdown(
            options=[(SCENARIO_LABELS[f], f) for f in FAMILIES], value=family, description="family"
        )
        self.reference = W.Dropdown(options=options, description="reference")
        self.others = W.SelectMultiple(options=options, rows=6, description="others")
        if paths:
            self.reference.value, self.others.value = paths[0], tuple(paths[1:])
        self.path = W.Text(placeholder="add a checkpoint path", layout=W.Layout(width="240px"))
        self.add_button = W.Button(description="add", layout=W.Layout(width="60px"))
        Discrepancy.threshold(tau)  # a tau <= 0 or not finite is refused here, in one line
        power = math.log10(tau)  # the slider spans 2..1000, and reaches out to a tau beyond
        self.tau = W.FloatLogSlider(
            value=tau, base=10, min=min(0.3, power), max=max(3, power), step=0.05,
            description="tau", continuous_update=False, readout_format=".3g",
        )  # fmt: skip
        self.kinds = W.SelectMultiple(
            options=list(KINDS), value=list(KINDS), rows=6, description="kinds"
        )
        self.result: Discrepancy | None = None
        self._computed_for: tuple[str, tuple[str, ...]] | None = None  # the result's models
        self.figure = go.FigureWidget()
        self.counts = go.FigureWidget()
        self.scenario.observe(self._scenario_changed, names="value")
        self.run.observe(self._scenario_changed, names="value")
        self.family.observe(self._scenario_changed, names="value")
        self._presetting = False  # set while a preset moves the menus
        self.reference.observe(self._picked, names="value")
        self.others.observe(self._picked, names="value")
        self.tau.observe(lambda _: self.submit(self._sync), names="value")
        self.kinds.observe(lambda _: self.submit(self._sync), names="value")
        self.add_button.on_click(self._add_path)
        presets_shown = [self.scenario, self.run, self.family] if self.manifest else []
        left = W.VBox([*presets_shown, self.reference, self.tau])
        others = W.VBox([self.others, W.HBox([self.path, self.add_button])])
        self.widget = W.VBox(
            [
                W.HBox([left, others, self.kinds]),
                self.status,
                self.error,
                self.figure,
                self.counts,
            ]
        )
        self._scenario_changed(None)

    @shows_errors
    def _add_path(self, _: Any) -> None:
        """Add the typed checkpoint to the menus and to the others (the reference when there
        is none); one that cannot be read is refused in the error box, naming the file."""
        path = self.path.value.strip()
        if not path:
            return
        self._presetting = True  # the menus' new option is not a pick
        try:
            add_checkpoint(path, self.reference, self.others)
        finally:
            self._presetting = False
        self.path.value = ""
        if self.reference.value is None:
            self.reference.value = path
        elif path != self.reference.value and path not in self.others.value:
            self.others.value = (*self.others.value, path)

    @shows_errors
    def _scenario_changed(self, _: Any) -> None:
        """A preset picks the reference and the others."""
        if self.scenario.value != "custom":
            reference, others = preset(
                self.manifest, self.scenario.value, run=self.run.value, family=self.family.value
            )
            self._presetting = True
            try:
                with self.others.hold_trait_notifications():
                    self.reference.value = reference
                    self.others.value = tuple(others)
            finally:
                self._presetting = False
        self.submit(self._sync)

    @shows_errors
    def _picked(self, _: Any) -> None:
        """Models picked by hand: the scenario becomes ``custom`` (which recomputes)."""
        if self._presetting:
            return
        if self.scenario.value != "custom":
            self.scenario.value = "custom"
        else:
            self.submit(self._sync)

    def _sync(self) -> None:
        """The one job of every change: the discrepancy computed again when the reference or
        the others differ from the result's, then drawn with tau and the kinds. The worker runs
        only the newest job: as each does all that the controls ask, none is lost."""
        others = tuple(p for p in self.others.value if p != self.reference.value)
        if self.reference.value is None or not others:
            self.status.value = "pick a reference and at least one other checkpoint"
            return
        if (self.reference.value, others) != self._computed_for:
            self.result = discrepancy(Pool([self.reference.value, *others], device="cpu"))
            self._computed_for = (self.reference.value, others)
        self._draw()

    def _draw(self) -> None:
        if self.result is None:
            return
        tau, kinds = self.tau.value, list(self.kinds.value)
        if not kinds:
            self.status.value = "pick at least one kind of tensor"
            return
        sync_figure(self.figure, discrepancy_figure(self.result, tau, kinds))
        sync_figure(self.counts, counts_figure(self.result, tau, kinds))
        total, of = len(self.result.above(tau, kinds)), len(self.result.of_kinds(kinds))
        cut = self.result.threshold(tau)
        notes = note_lines(self.result.notes())
        self.status.value = (
            f"tau = {tau:.3g}: <b>{total}</b> tensors with relative distance >= {cut:.3g} "
            f"(of {of}{'' if len(kinds) == len(KINDS) else ' of the kinds picked'}){notes}"
        )


class SweepExplorer(Panel):
    """Run or load an (s, alpha) sweep; click a cell to load that merge into ``merge_lab``.

    The models are ``checkpoints``, else the MergeLab's as they are when the sweep is run
    (with its anchor), else the independent family's AdvEnt and MinEnt (where the start layer
    and alpha matter). With a MergeLab the sweep also takes its method (layer-wise when the
    lab's has a schedule of its own: isotropic), BN rule, base and alignment, and a cell
    clicked loads all of that into the lab, so the lab shows the merge the cell scored.
    The cells are scored on ``domains`` (synthetic domains or datasets on disk, as
    :func:`~lwmm_lab.analysis.evaluation.val_set` takes them), else on the MergeLab's target
    and source, else on real and synthetic; at ``resolution``, else the MergeLab's, else the
    one the first model records.
    """

    def __init__(
        self,
        merge_lab: MergeLab | None = None,
        checkpoints: Sequence[str] | None = None,
        zoo: str | os.PathLike | None = None,
        steps: int = 11,
        images: int = 50,
        executor: str = "serial",
        domains: Sequence[str] | None = None,
        resolution: tuple[int, int] | None = None,
        background: bool = True,
    ) -> None:
        super().__init__(background)
        if merge_lab is not None and not isinstance(merge_lab, MergeLab):
            raise LwmmError(f"merge_lab: a {type(merge_lab).__name__} is not a MergeLab")
        self.merge_lab = merge_lab
        if checkpoints is None and merge_lab is None:
            manifest = load_manifest(zoo or find_zoo())
            runs = (family_run("independent", s) for s in ("advent", "minent"))
            checkpoints = [final(manifest, run) for run in runs]
        #: The models swept; None: the MergeLab's, as they are when the sweep is run.
        self.checkpoints = None if checkpoints is None else path_list(checkpoints)
        if check_whole("steps", steps) < 2:
            raise LwmmError(f"steps={steps}: give at least 2 (s and alpha from 0 to 1)")
        self.steps, self.images = steps, check_count("images", images)
        self.executor = check_executor(executor)
        if domains is None:
            domains = merge_lab.domains if merge_lab else ("real", "synthetic")
        self.domains = tuple(dict.fromkeys(check_dataset_names(domains)))
        if resolution is None and self.checkpoints is None:
            resolution = merge_lab.resolution
        elif resolution is None:
            resolution = peek_checkpoint(self.checkpoints[0]).resolution
        self.resolution = check_image_size(resolution)
        self.domain = choice_buttons(_labelled(self.domains), self.domains[0], "domain")
        self.run_button = W.Button(
            description=f"run the {steps} x {steps} sweep", icon="play", layout=fit_width()
        )
        self.progress = W.IntProgress(min=0, max=steps * steps, description="cells")
        self.sweep: Sweep | None = None
        self._run_asked = False  # the run button was pressed and the sweep has not started
        self.figure = go.FigureWidget()
        self.run_button.on_click(self._ask_run)
        self.domain.observe(self._domain_moved, names="value")
        header = W.HBox([self.run_button, self.progress, self.domain])
        self.widget = W.VBox([header, self.status, self.error, self.figure])

    def cells(self) -> list[Cell]:
        """The sweep's cells, with the MergeLab's settings as they are now (see the class)."""
        fractions = [k / (self.steps - 1) for k in range(self.steps)]
        lab = self.merge_lab
        checkpoints, anchors, settings = self.checkpoints, (0,), {}
        if lab is not None:
            if checkpoints is None:
                checkpoints, anchors = [str(p) for p in lab.pool.paths], (lab.plan.anchor,)
            c = lab.config()
            method = c.method if c.method in SWEEP_METHODS else "layerwise"
            needs = METHODS[method].needs
            settings = {
                "method": method, "bn": c.bn, "density": c.density, "scale": c.scale,
                "align": lab.align.value,
                "base": lab.pool.base_path if "base" in needs else None,
                "fisher": [fisher_file(p) for p in checkpoints] if "fisher" in needs else None,
            }  # fmt: skip
        device = lab.pool.device if lab else resolve_device("auto")
        return grid(
            checkpoints, starts=fractions, alphas=fractions, anchors=anchors,
            domains=self.domains, images=self.images,
            resolution=tuple(self.resolution), device=str(device), **settings,
        )  # fmt: skip

    def _ask_run(self, _: Any) -> None:
        self._run_asked = True
        self.submit(self._sync)

    def _domain_moved(self, _: Any) -> None:
        self.submit(self._sync)

    def _sync(self) -> None:
        """The one job of every change: the sweep run when asked for, then drawn for the
        domain shown (a domain switched while a run waits does not drop the run)."""
        if self._run_asked:
            self._run_asked = False
            self._run()
        self._draw()

    def _run(self) -> None:
        cells = self.cells()
        self.progress.max = len(cells)
        self.status.value = "running the sweep (cells computed before are read from the cache) ..."

        def advance(done: int, result: dict[str, Any]) -> None:
            self.progress.value = done

        self.run_button.disabled = True  # a second press could only run the same cells again
        try:
            self.sweep = run_sweep(cells, self.executor, progress=False, on_result=advance)
        finally:
            self.run_button.disabled = False
        self.progress.value = len(cells)

    def load(self, sweep: Sweep) -> None:
        """Show an already computed sweep; the domain buttons become the domains it scored
        (a sweep made elsewhere may score others than a run here)."""
        if not isinstance(sweep, Sweep):
            raise LwmmError(f"sweep: a {type(sweep).__name__} is not a Sweep (run_sweep's result)")
        if not sweep.results:
            raise LwmmError("sweep: it has no results to show")
        self.sweep = sweep
        self.submit(self._sync)

    def _offer_domains(self, sweep: Sweep) -> None:
        """The domain buttons as the domains ``sweep`` scored, the one shown kept where it
        can be, without a redraw of their own (the caller draws)."""
        scored = list(sweep.results[0]["miou"])
        if list(self.domain.options) == _labelled(scored):
            return
        shown = self.domain.value if self.domain.value in scored else scored[0]
        self.domain.unobserve(self._domain_moved, names="value")
        try:
            self.domain.options, self.domain.value = _labelled(scored), shown
        finally:
            self.domain.observe(self._domain_moved, names="value")

    def _draw(self) -> None:
        if self.sweep is None:
            return
        self._offer_domains(self.sweep)
        domain = self.domain.value
        sync_figure(self.figure, sweep_heatmap(self.sweep, domain))
        self.figure.data[0].on_click(self._clicked)
        best = max(self.sweep.of(domain), key=lambda r: r["miou"][domain])  # the anchor shown
        self.status.value = (
            f"best {dataset_label(domain)} mIoU {best['miou'][domain]:.2f} at s = {best['start']}, "
            f"alpha = {best['alpha']:.2f}; click a cell to load that merge into the MergeLab"
        )

    def _clicked(self, trace: Any, points: Any, state: Any) -> None:
        if points.point_inds:
            self.pick(points.ys[0], points.xs[0])

    def pick(self, start: int, alpha: float) -> None:
        """Load the sweep's merge at (start, alpha) into the MergeLab: its models, anchor,
        method under the layer-wise schedule and BN rule too (a sweep merges the checkpoints'
        BN statistics, so the lab's AdaBN box is unticked)."""
        if self.merge_lab is None or self.sweep is None:
            return
        shown = self.sweep.of(self.domain.value)[0]["anchor"]  # the heat map's anchor
        sweep = self.sweep
        cell = next(
            c for c, r in zip(sweep.cells, sweep.results, strict=True) if r["anchor"] == shown
        )
        self.merge_lab.load(
            cell.checkpoints, cell.checkpoints[cell.anchor], method=cell.method,
            schedule="layerwise", bn=cell.bn, granularity="tensor", align=cell.align,
            reestimate=False, start=int(start), alpha=float(alpha),
        )  # fmt: skip


def _labelled(domains: Sequence[str]) -> list[tuple[str, str]]:
    """The domain buttons' options: (a short label, the dataset's name)."""
    return [(dataset_label(d), d) for d in domains]
