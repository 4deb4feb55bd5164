"""The widget panels without a browser: set controls, check merged weights and readouts."""

from __future__ import annotations

import shlex
import threading
import time
import warnings
from pathlib import Path

import ipywidgets as W
import plotly.graph_objects as go
import pytest
import torch
from safetensors.torch import save_file

from lwmm_lab import load_checkpoint, load_model
from lwmm_lab.analysis.adabn import reestimate_bn, train_images
from lwmm_lab.analysis.evaluation import evaluate, predict, val_set
from lwmm_lab.analysis.qualitative import examples_from_predictions
from lwmm_lab.analysis.sweeps import grid, run_sweep
from lwmm_lab.cli import main
from lwmm_lab.data.datasets import open_dataset
from lwmm_lab.engine.checkpoints import peek_checkpoint
from lwmm_lab.engine.merge import merge_command
from lwmm_lab.engine.model import merged_model
from lwmm_lab.errors import DepthOrderWarning, LwmmError
from lwmm_lab.fixtures import cityscapes_folder
from lwmm_lab.lab import DiscrepancyExplorer, MergeLab, SweepExplorer
from lwmm_lab.lab.figures import COLUMNS, panel_uri
from lwmm_lab.lab.panel import LatestOnly
from lwmm_lab.zoo import load_manifest, select
from lwmm_lab.zoo.manifest import base_checkpoint, final, scenario_checkpoints


@pytest.fixture
def lab(quick_zoo: Path) -> MergeLab:
    return MergeLab(zoo=quick_zoo, preview=4, full=6, background=False)


def _values(buttons: W.ToggleButtons) -> list[str]:
    return [value for _, value in buttons.options]


def _images(fig: go.FigureWidget) -> list[str]:
    return [t.source for t in fig.data if isinstance(t, go.Image)]


def test_sliders_remerge_and_update_every_view(lab: MergeLab) -> None:
    anchor = lab.pool.checkpoints[lab.plan.anchor].tensors
    assert lab.start.max == lab.pool.layout().n_depth
    lab.alpha.value = 1.0
    merged = lab._model(lab.plan.anchor).state_dict()
    assert all(torch.equal(merged[k], anchor[k]) for k in anchor), "alpha = 1 is the anchor"
    assert "+0.00" in lab.readout.value
    readout, images, weights = (
        lab.readout.value,
        _images(lab.grid_fig),
        list(lab.schedule_fig.data[1].y),
    )
    lab.alpha.value = 0.0
    merged = lab._model(lab.plan.anchor).state_dict()
    assert not torch.equal(
        merged["encoder.model.conv_stem.weight"], anchor["encoder.model.conv_stem.weight"]
    )
    assert list(lab.schedule_fig.data[1].y) != weights, "the schedule follows alpha"
    assert "alpha = 0.00" in lab.schedule_fig.layout.title.text, "and so does its title"
    parts = lab.last_update_parts
    assert list(parts) == ["plan", "merge", "score", "figures", "grid"]
    assert min(parts.values()) >= 0 and sum(parts.values()) <= lab.last_update_seconds * 1000
    assert lab.readout.value != readout and _images(lab.grid_fig) != images
    lab.start.value = 10
    assert "j = 10:" in lab.start_name.value and lab.plan.config.start == 10
    assert [s.x0 for s in lab.schedule_fig.layout.shapes if s.name == "start"] == [10]


def test_the_grid_and_the_scores_are_the_current_merges(lab: MergeLab) -> None:
    """The grid re-sends a panel only when its maps change, and one forward pass scores both
    previews: after moves of alpha and the anchor, every panel is the current merge's and
    every score is what scoring that preview alone gives."""
    for control, value in ((lab.alpha, 0.0), (lab.anchor, 1), (lab.alpha, 0.3)):
        control.value = value
    model = merged_model(lab.pool, lab.config())
    anchor = merged_model(lab.pool, lab.config(), alpha=1.0)
    for domain, key in ((lab.target, "merged"), (lab.source, lab.source)):
        expected = evaluate(model, val_set(domain, lab.preview_size, lab.resolution), domain)
        assert lab.scores[key].miou == pytest.approx(expected.miou)
    images, labels = val_set(lab.target, lab.shown, lab.resolution).tensors
    shown = examples_from_predictions(
        images, labels, predict(anchor, images), predict(model, images), range(lab.shown)
    )
    expected = [panel_uri(e, c) for e in shown for c in range(len(COLUMNS))]
    assert _images(lab.grid_fig) == expected


def test_method_granularity_and_anchor_controls(lab: MergeLab) -> None:
    lab.method.value = "isotropic"
    weights = lab.plan.weights
    assert torch.allclose(weights, torch.full_like(weights, 1 / lab.pool.n_models))
    tensors = lab.start.max
    lab.granularity.value = "module"
    assert lab.start.max < tensors and lab.plan.layout.granularity == "module"
    lab.anchor.value = 2
    assert lab.plan.anchor == 2 and "(anchor)" in lab.schedule_fig.data[2].name


def test_scenario_chooser_and_alignment(lab: MergeLab, quick_zoo: Path) -> None:
    manifest = load_manifest(quick_zoo)
    assert lab.scenario.value == "independent", "the lab opens on the knobs that bite"
    assert list(lab.models.value) == scenario_checkpoints(manifest, "independent")
    assert "note:" not in lab.readout.value, "the same architecture: every tensor is merged"
    lab.scenario.value = "other-decoders"
    anchor, *decoders = scenario_checkpoints(manifest, "other-decoders")
    assert list(lab.models.value) == [anchor, *decoders] and lab.plan.anchor == 0
    own = sum(e.kind == "anchor-only" for e in lab.plan.layout.entries)
    assert f"note: {own} of the anchor's tensors are copied from it, not merged" in (
        lab.readout.value
    )
    assert "indep-minent" in lab.pool.labels[0] and lab.pool.alignment is None
    lab.align.value = True  # FPN and DeepLabV3+ have no Unet decoder to match
    assert "cannot be matched" in lab.error.value
    lab.scenario.value = "strategies"
    assert lab.pool.alignment is not None and lab.pool.alignment.anchor == 0
    lab.anchor.value = 2
    assert lab.pool.alignment.anchor == 2 and lab.plan.anchor == 2, "re-aligned to the anchor"
    assert lab.error.value == ""
    lab.models.value = tuple(lab.models.value[:2])
    assert lab.scenario.value == "custom" and lab.pool.n_models == 2


def test_fisher_keeps_the_pool_aligned_to_the_anchor(quick_zoo: Path) -> None:
    """Switching to Fisher rebuilds the pool with each model's Fisher: still aligned while
    *align* is ticked, to the anchor picked (the rebuild dropped the alignment before)."""
    lab = MergeLab(zoo=quick_zoo, align=True, preview=4, background=False)
    lab.anchor.value = 1
    lab.method.value = "fisher"
    assert lab.error.value == "" and lab.pool.fisher is not None
    assert lab.pool.alignment is not None and lab.pool.alignment.anchor == lab.plan.anchor == 1


def test_a_base_gives_task_vectors_to_models_outside_a_zoo(quick_zoo: Path) -> None:
    """Task arithmetic needs the model the others were tuned from: without a zoo the lab
    says so in one line, and takes one as ``base``."""
    manifest = load_manifest(quick_zoo)
    paths = scenario_checkpoints(manifest, "strategies")[:2]
    lab = MergeLab(paths, preview=4, background=False)
    lab.method.value = "task_arithmetic"
    assert "needs a base" in lab.error.value and "traceback" not in lab.error.value
    assert isinstance(lab.last_error, LwmmError), "what a script reads in place of the box"
    lab.method.value = "isotropic"
    assert lab.error.value == "" and lab.last_error is None
    lab = MergeLab(paths, base=base_checkpoint(manifest), preview=4, background=False)
    lab.method.value = "task_arithmetic"
    assert lab.error.value == "" and lab.plan.config.method == "task_arithmetic"
    assert lab.plan.provenance()["base"]["path"] == base_checkpoint(manifest)


def test_a_rebuild_or_a_save_is_not_dropped_for_a_newer_change(
    quick_zoo: Path, tmp_path: Path
) -> None:
    """The worker computes only the newest job: *align* ticked and *save* pressed while the
    worker is busy, then alpha moved, must still align the pool and save (the alpha job
    dropped both before); the file saved is the merge shown."""
    lab = MergeLab(zoo=quick_zoo, preview=4)
    assert lab.wait()
    lab.output.value = str(tmp_path / "saved.safetensors")
    gate = threading.Event()
    lab.submit(lambda: gate.wait(10))
    lab.align.value = True
    lab.save_button.click()
    lab.alpha.value = 0.4
    gate.set()
    assert lab.wait() and lab.error.value == ""
    assert lab.pool.alignment is not None and lab.plan.config.alpha == 0.4
    saved = load_checkpoint(tmp_path / "saved.safetensors")
    assert saved.provenance["alpha"] == 0.4 and "alignment" in saved.provenance


def test_a_control_moved_while_the_panel_moves_others_is_heard(lab: MergeLab) -> None:
    """The worker moves controls quietly (the anchor menu after a rebuild); a slider the user
    moves meanwhile, in the kernel's thread, must still re-merge."""
    moved = threading.Thread(target=lambda: setattr(lab.alpha, "value", 0.7))
    with lab._quietly():
        moved.start()
        moved.join()
    assert lab.plan.config.alpha == 0.7


def test_set_moves_controls_as_by_hand(lab: MergeLab) -> None:
    """``set`` re-merges once, with what each move implies: the anchor of an aligned pool
    re-aligns it, a coarser granularity narrows the start slider before ``start`` is set."""
    lab.set(align=True)
    assert lab.pool.alignment.anchor == 0
    lab.set(anchor=2, granularity="module", start=3)
    assert lab.pool.alignment.anchor == lab.plan.anchor == 2 and lab.error.value == ""
    assert lab.start.max == lab.pool.layout(2, "module").n_depth
    assert (lab.plan.config.granularity, lab.plan.config.start) == ("module", 3)


def test_set_and_load_refuse_what_no_hand_could_do(lab: MergeLab) -> None:
    """A slider clamped an out-of-range value without a word (alpha=2 merged at 1); a name
    that is no control, or a choice a menu lacks, was an AttributeError or a TraitError. Each
    is refused in one line, and the views still follow the controls moved before it."""
    for values, says in (
        ({"alpah": 0.3}, r"'alpah' is not a control of this panel \(did you mean 'alpha'\?"),
        ({"alpha": 2.0}, r"alpha=2.0 is outside 0.0..1.0"),
        ({"start": 10**6}, r"start=1000000 is outside 1\.\."),
        ({"method": "mean"}, r"method='mean' is not one of its choices \(isotropic,"),
        ({"anchor": 9}, r"anchor=9 is not one of its choices \(0: "),
        ({"align": "yes"}, r"align='yes': The 'value' trait of a Checkbox"),
        ({"_deferred": True}, "'_deferred' is not a control"),
    ):
        with pytest.raises(LwmmError, match=says):
            lab.set(**values)
    with pytest.raises(LwmmError, match="is outside"):
        lab.set(alpha=0.4, start=0)
    assert lab.plan.config.alpha == 0.4, "the move before the refused one is merged"
    paths = list(lab.models.value)
    with pytest.raises(LwmmError, match=r"anchor 'other\.pt' is not one of the checkpoints"):
        lab.load(paths, "other.pt")
    lab.load(paths, 1)  # an index into them, as an anchor is given elsewhere ('1' before)
    assert lab.plan.anchor == 1 and lab._anchor_path == paths[1]
    with pytest.raises(LwmmError, match="give a list of checkpoint files"):
        lab.load(paths[0], paths[0])


def test_a_panoptic_anchor_shows_pq_and_panoptic_outputs(lab: MergeLab) -> None:
    """Fig. 6 in the lab: with the panoptic model as the anchor, the readout gives PQ, SQ and
    RQ beside mIoU, and the grid shows panoptic maps (instances outlined) that follow alpha."""
    lab.scenario.value = "panoptic"
    assert lab.error.value == "" and "panoptic" in lab.pool.labels[0]
    assert "PQ merged" in lab.readout.value and "SQ" in lab.readout.value
    merged, anchor = lab.scores["merged panoptic"], lab.scores["anchor panoptic"]
    assert 0 <= merged.pq <= 100 and 0 <= anchor.pq <= 100
    before = _images(lab.grid_fig)
    lab.alpha.value = 1.0
    assert lab.scores["merged panoptic"].pq == pytest.approx(anchor.pq), "alpha 1 is the anchor"
    assert _images(lab.grid_fig) != before
    lab.scenario.value = "independent"
    assert "PQ" not in lab.readout.value and "merged panoptic" not in lab.scores


def test_the_device_menu_offers_what_the_machine_has(lab: MergeLab, quick_zoo: Path) -> None:
    assert ("cuda" in lab.device.options) == torch.cuda.is_available()
    if not torch.cuda.is_available():
        with pytest.raises(LwmmError, match="'cuda' requested but CUDA is not available"):
            MergeLab(zoo=quick_zoo, device="cuda", background=False)


def test_errors_show_in_the_panel(lab: MergeLab, tmp_path: Path) -> None:
    """Bad input as its one line, no traceback; each piece of work clears the last error."""
    own = MergeLab(list(lab.models.value[:2]), preview=2, background=False)  # no zoo: no base
    own.method.value = "ties"
    assert "method &#x27;ties&#x27; needs a base" in own.error.value
    assert "traceback" not in own.error.value
    own.method.value = "layerwise"
    assert own.error.value == ""
    picked = lab.models.value
    lab.models.value = ()
    assert "no models picked" in lab.error.value and "traceback" not in lab.error.value
    lab.models.value = picked
    assert lab.error.value == "" and lab.pool.n_models == len(picked)
    lab.output.value = str(tmp_path / "merged.pt")
    lab.save_button.click()
    assert "merged.pt: a checkpoint is written as a .safetensors file" in lab.error.value
    lab.output.value = str(tmp_path / "merged.safetensors")
    lab.save_button.click()
    assert lab.error.value == "" and "saved" in lab.status.value


def test_a_typed_path_joins_the_picked_models(lab: MergeLab, tmp_path: Path) -> None:
    """The path box adds a model to those picked (new options must not clear the picks); a
    file that cannot be read is refused in the panel in one line naming it, the models kept."""
    picked = tuple(lab.models.value)
    copy = tmp_path / "mine.safetensors"
    copy.write_bytes(Path(picked[1]).read_bytes())
    lab.path.value = str(copy)
    lab.add_button.click()
    assert lab.models.value == (*picked, str(copy)) and lab.scenario.value == "custom"
    assert lab.pool.n_models == len(picked) + 1 and lab.error.value == ""
    assert lab.path.value == ""
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    for bad in (garbage, tmp_path / "missing.pt"):
        lab.path.value = str(bad)
        lab.add_button.click()
        assert str(bad) in lab.error.value and "traceback" not in lab.error.value
        assert lab.models.value == (*picked, str(copy)) and lab.pool.n_models == len(picked) + 1


def test_save_and_the_equivalent_command(lab: MergeLab, tmp_path: Path) -> None:
    lab.set(alpha=0.3, start=7)
    lab.bn.value = "gaussian"
    lab.output.value = str(tmp_path / "from_panel.safetensors")
    lab.save_button.click()
    saved = load_checkpoint(tmp_path / "from_panel.safetensors")
    assert saved.provenance["alpha"] == 0.3 and saved.provenance["start"] == 7
    lab.command_button.click()
    command = shlex.split(lab.command.value)
    command[command.index("-o") + 1] = str(tmp_path / "from_cli.safetensors")
    assert main(command[1:]) == 0
    again = load_checkpoint(tmp_path / "from_cli.safetensors")
    assert all(torch.equal(again.tensors[k], v) for k, v in saved.tensors.items())


def test_bn_statistics_from_target_images_in_the_lab(quick_zoo: Path, tmp_path: Path) -> None:
    """Ticked, the merge shown is the merge with its BN statistics measured on the target's
    train images (the BN rule greyed out), against the anchor measured the same way (the
    anchor as it is in the readout); it is what *save* writes and what the command writes
    again; unticked, the rule's statistics are back."""
    lab = MergeLab(zoo=quick_zoo, preview=4, background=False, reestimate_images=3)
    lab.set(alpha=0.4, bn="gaussian", reestimate=True)
    assert lab.bn.disabled and lab.config().bn == "linear" and "AdaBN" in lab.readout.value
    size = lab.resolution
    expected = reestimate_bn(merged_model(lab.pool, lab.config()), train_images("real", 3, size))
    shown = lab._model(lab.plan.anchor)
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(shown.state_dict()[name], tensor, msg=name)
    scores = evaluate(expected, lab._data("real", 4), "real")
    assert lab.scores["merged"].miou == pytest.approx(scores.miou, abs=1e-6)
    anchor = lab.pool.checkpoints[lab.plan.anchor].path
    for measured in (True, False):
        model = load_model(anchor, "cpu")
        if measured:
            reestimate_bn(model, train_images("real", 3, size))
        miou = evaluate(model, lab._data("real", 4), "real").miou
        if measured:  # compared like with like, the anchor as it is in the readout
            assert lab.scores["anchor"].miou == pytest.approx(miou, abs=1e-6)
        else:
            assert f"the anchor with its own: mIoU {miou:.2f}" in lab.readout.value
    lab.output.value = str(tmp_path / "from_panel.safetensors")
    lab.save_button.click()
    saved = load_checkpoint(tmp_path / "from_panel.safetensors")
    on = {"domains": ["real"], "images": 3, "resolution": list(size)}
    assert saved.provenance["bn_reestimated"] == on
    lab.command_button.click()
    command = shlex.split(lab.command.value)
    assert command[command.index("--reestimate") :][:3] == [
        "--reestimate",
        "real",
        "--reestimate-images",
    ]
    command[command.index("-o") + 1] = str(tmp_path / "from_cli.safetensors")
    assert main(command[1:]) == 0
    again = load_checkpoint(tmp_path / "from_cli.safetensors")
    for name, tensor in saved.tensors.items():
        torch.testing.assert_close(again.tensors[name], tensor, msg=name)
    lab.reestimate.value = False
    assert not lab.bn.disabled and lab.plan.config.bn == "gaussian"
    assert lab.scores["anchor"].miou == pytest.approx(miou, abs=1e-6), "the anchor as it is"
    rule = merged_model(lab.pool, lab.config()).state_dict()
    assert all(torch.equal(v, rule[k]) for k, v in shown.state_dict().items())


def test_a_saved_merge_is_replaced_only_when_asked_twice(lab: MergeLab, tmp_path: Path) -> None:
    """Sliding on and pressing *save* again keeps the earlier file: the panel asks, and only a
    second press for that name replaces it; a new name saves at once."""
    first = tmp_path / "merged.safetensors"
    lab.output.value = str(first)
    lab.set(alpha=0.3)
    lab.save_button.click()
    lab.set(alpha=0.6)
    lab.save_button.click()
    assert "exists: press <b>save merge</b> again" in lab.status.value
    assert load_checkpoint(first).provenance["alpha"] == 0.3
    lab.save_button.click()
    assert "saved" in lab.status.value and load_checkpoint(first).provenance["alpha"] == 0.6
    lab.set(alpha=0.4)
    lab.save_button.click()
    assert "exists" in lab.status.value, "a replace is asked for again for each save"
    lab.output.value = str(tmp_path / "other.safetensors")
    lab.save_button.click()
    assert load_checkpoint(tmp_path / "other.safetensors").provenance["alpha"] == 0.4
    assert load_checkpoint(first).provenance["alpha"] == 0.6


def test_full_val_button(lab: MergeLab) -> None:
    lab.full_button.click()
    assert "on 6 images" in lab.status.value


def test_a_panels_work_draws_its_progress_bars_in_the_panel(
    quick_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """A panel works in a thread, and Jupyter puts a thread's output under the cell run last:
    so the work's bars (here each model's Fisher estimate, none cached yet) show in the
    panel's status line, after the status the work set, and are gone once they close."""
    monkeypatch.setenv("LWMM_DATA", str(tmp_path))
    lab = MergeLab(zoo=quick_zoo, preview=4)
    assert lab.wait()
    shown: list[str] = []
    lab.status.observe(lambda change: shown.append(change.new), "value")
    capfd.readouterr()
    lab.method.value = "fisher"
    assert lab.wait() and lab.error.value == "" and lab.pool.fisher is not None
    n = lab.pool.n_models
    for k in range(1, n + 1):
        bars = [s for s in shown if "fisher:" in s and f": {k} of {n} ..." in s]
        assert bars and "0/32" in bars[0], f"model {k}'s bar, after the status saying so"
    assert "fisher" not in capfd.readouterr().err, "no bar is drawn outside the panel"
    assert "fisher:" not in lab.status.value and "merged on" in lab.status.value


def test_latest_only_drops_stale_requests() -> None:
    ran, errors = [], []
    gate = threading.Event()
    worker = LatestOnly(errors.append, background=True)
    worker.submit(lambda: (gate.wait(5), ran.append(0)))
    time.sleep(0.05)
    for k in range(1, 6):
        worker.submit(lambda k=k: ran.append(k))
    gate.set()
    assert worker.wait(5)
    assert ran == [0, 5], "only the newest pending request runs"
    worker.submit(lambda: 1 / 0)
    worker.wait(5)
    assert isinstance(errors[0], ZeroDivisionError)


def test_discrepancy_explorer(quick_zoo: Path) -> None:
    d = DiscrepancyExplorer(
        zoo=quick_zoo, scenario="checkpoint", run="minent", tau=10, background=False
    )
    count = int(d.status.value.split("<b>")[1].split("</b>")[0])
    d.tau.value = 1000
    assert int(d.status.value.split("<b>")[1].split("</b>")[0]) >= count
    assert len(d.figure.data) > 0 and len(d.counts.data) > 0
    assert d.result.reference == "minent@3" and d.result.others == [
        "minent@6",
        "minent@9",
        "minent@12",
    ]
    d.kinds.value = ("BN running_var",)
    shown = d.result.above(1000, d.kinds.value)
    assert f"<b>{len(shown)}</b>" in d.status.value, "the count is of the kinds shown"
    assert 0 < len(shown) < len(d.result.above(1000))
    bars = {b.x for b in d.counts.data}
    assert bars >= {("BN running_var",)} and ("weight",) not in {tuple(x) for x in bars}
    d.kinds.value = ()
    assert "pick at least one kind" in d.status.value
    d.scenario.value = "heterogeneous"
    assert len(d.result.others) == 5 and all(o.endswith("@12") for o in d.result.others)
    assert not any(o.startswith("indep-") for o in d.result.others)
    d.family.value = "independent"
    assert len(d.result.others) == 5 and all(o.startswith("indep-") for o in d.result.others)


def test_discrepancy_explorer_on_your_own_checkpoints(quick_zoo: Path, tmp_path: Path) -> None:
    """Checkpoints outside any zoo: no presets shown, a typed path joins the others, a file
    that cannot be read is refused in one line; picking by hand makes the preset ``custom``."""
    manifest = load_manifest(quick_zoo)
    finals = [e["path"] for e in select(manifest, scenario="strategies", fraction=1.0)]
    mine = []
    for k, path in enumerate(finals[:3]):
        mine.append(tmp_path / f"mine{k}.safetensors")
        mine[-1].write_bytes(Path(path).read_bytes())
    labels = [peek_checkpoint(p).label for p in mine]
    d = DiscrepancyExplorer([mine[0], mine[1]], tau=10, background=False)
    assert d.manifest is None and d.scenario not in d.widget.children[0].children[0].children
    assert d.result.reference == labels[0] and d.result.others == labels[1:2]
    d.path.value = str(mine[2])
    d.add_button.click()
    assert d.others.value == (str(mine[1]), str(mine[2])) and d.path.value == ""
    assert d.result.others == labels[1:] and d.error.value == ""
    d.path.value = str(tmp_path / "missing.safetensors")
    d.add_button.click()
    assert "missing.safetensors" in d.error.value and "traceback" not in d.error.value
    assert d.result.others == labels[1:]
    assert "note:" not in d.status.value
    d.path.value = final(manifest, "synthia16-minent")  # another head: it is not compared
    d.add_button.click()
    assert "2 of the reference's tensors are not compared, as [3] synthia16-minent@" in (
        d.status.value
    )
    with pytest.raises(LwmmError, match="at least two checkpoints"):
        DiscrepancyExplorer([mine[0]], background=False)
    zoo = DiscrepancyExplorer(zoo=quick_zoo, scenario="checkpoint", run="minent", background=False)
    zoo.others.value = zoo.others.value[:1]
    assert zoo.scenario.value == "custom" and zoo.result.others == ["minent@6"]


def test_a_panels_work_shows_its_warnings_in_the_panel(
    quick_zoo: Path, tmp_path: Path, capfd: pytest.CaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    """A foreign safetensors file (no key order, no spec) warns as it loads. The explorer
    loads it in its thread, and Jupyter would put the warning under the cell run last: it
    shows in the panel's error box instead, and the result notes the unknown order; a warning
    of another thread still goes where it went."""
    finals = [e["path"] for e in select(load_manifest(quick_zoo), scenario="strategies")]
    foreign = tmp_path / "foreign.safetensors"
    save_file(dict(load_checkpoint(finals[0]).tensors), foreign)
    capfd.readouterr()
    d = DiscrepancyExplorer([foreign, finals[1]], tau=10)
    assert d.wait() and d.result is not None and not d.result.order_known
    assert d.error.value.count("warning: ") == 1 and "foreign.safetensors: no stored key" in (
        d.error.value
    )
    assert "note: depth order unknown: the reference gives neither" in d.status.value
    assert "depth order" not in capfd.readouterr().err, "nothing under the cell run last"
    d.reference.value = finals[1]
    assert d.wait() and d.error.value == "", "the newest work's warnings only"
    assert getattr(warnings.showwarning, "by_thread", False), "the panels' routing is in place"
    again = tmp_path / "again.safetensors"
    again.write_bytes(foreign.read_bytes())
    load_checkpoint(again)  # in this thread: recorded as before, not shown by the panel
    assert [str(w.message) for w in recwarn if w.category is DepthOrderWarning][-1].startswith(
        str(again)
    )
    assert d.error.value == ""


def test_the_explorers_never_lose_a_change_behind_a_newer_one(
    lab: MergeLab, quick_zoo: Path
) -> None:
    """Each explorer's worker runs only its newest job: a new reference, then tau, moved while
    the worker is busy, must still recompute; a run asked for, then a domain, must still run."""
    d = DiscrepancyExplorer(zoo=quick_zoo, scenario="checkpoint", run="minent")
    assert d.wait()
    gate = threading.Event()
    d.submit(lambda: gate.wait(10))
    d.reference.value = d.others.value[-1]
    d.tau.value = 1000
    gate.set()
    assert d.wait() and d.result.reference == "minent@12" and "tau = 1e+03" in d.status.value
    manifest = load_manifest(quick_zoo)
    finals = [e["path"] for e in select(manifest, scenario="strategies", fraction=1.0)][:2]
    sweep = SweepExplorer(lab, checkpoints=finals, steps=2, images=2)
    gate.clear()
    sweep.submit(lambda: gate.wait(10))
    sweep.run_button.click()
    sweep.domain.value = "synthetic"
    gate.set()
    assert sweep.wait(120) and sweep.sweep is not None and "best synthetic" in sweep.status.value


def test_sweep_explorer_loads_a_cell_into_the_lab(lab: MergeLab, quick_zoo: Path) -> None:
    manifest = load_manifest(quick_zoo)
    finals = [e["path"] for e in select(manifest, scenario="strategies", fraction=1.0)][:2]
    sweep = SweepExplorer(
        lab, checkpoints=finals, steps=2, images=lab.preview_size, background=False
    )
    pressable: list[bool] = []
    sweep.run_button.observe(lambda change: pressable.append(not change["new"]), "disabled")
    sweep.run_button.click()
    assert sweep.progress.value == 4 and "best real mIoU" in sweep.status.value
    assert pressable == [False, True], "the run button is off while the sweep runs"
    best = sweep.sweep.results[-1]
    sweep.pick(best["start"], best["alpha"])
    assert lab.start.value == best["start"] and lab.alpha.value == best["alpha"]
    assert lab.plan.config.alpha == best["alpha"]
    assert [str(p) for p in lab.pool.paths] == finals, "the sweep's models, not the lab's"
    assert lab.scores["merged"].miou == pytest.approx(best["miou"]["real"], abs=1e-6), (
        "the lab shows the merge the cell scored"
    )


def test_the_sweep_explorer_shows_the_domains_a_loaded_sweep_scored(
    lab: MergeLab, quick_zoo: Path, tmp_path: Path
) -> None:
    """A sweep scored on foggy and night showed "domain 'real' was not scored" and nothing
    else (the buttons offered only real and synthetic); something else than a sweep was an
    AttributeError in the error box. With two anchors, the best cell named and the merge a
    click loads are the heat map's anchor's (they were the whole sweep's, and the first
    cell's anchor)."""
    two = [final(load_manifest(quick_zoo), run) for run in ("minent", "advent")]
    cells = grid(
        two, starts=[0, 1], alphas=[0.5], anchors=[1, 0], domains=["foggy", "night"], images=2
    )
    foggy = run_sweep(cells, cache=tmp_path, progress=False)
    explorer = SweepExplorer(lab, checkpoints=two, steps=2, images=2, background=False)
    explorer.load(foggy)
    assert _values(explorer.domain) == ["foggy", "night"] and not explorer.error.value
    explorer.domain.value = "night"
    shown = [r for r in foggy.results if r["anchor"] == 0]  # the heat map's: the first anchor
    best = max(shown, key=lambda r: r["miou"]["night"])
    assert f"best night mIoU {best['miou']['night']:.2f} at s = {best['start']}," in (
        explorer.status.value
    )
    explorer.pick(best["start"], best["alpha"])
    assert lab._anchor_path == two[0] and lab.start.value == best["start"]
    explorer.run_button.click()
    assert _values(explorer.domain) == ["real", "synthetic"] and explorer.sweep is not foggy
    assert "best real mIoU" in explorer.status.value, "its own run scores real and synthetic"
    for bad, says in ((foggy.to_json(), "a dict is not a Sweep"), (grid, "a function is")):
        with pytest.raises(LwmmError, match=f"^sweep: {says}"):
            explorer.load(bad)


def test_the_sweep_explorer_sweeps_the_merge_the_lab_shows(lab: MergeLab) -> None:
    """Linked to a MergeLab, the sweep takes its models, anchor, method, BN rule and base, and
    a cell clicked brings the lab back to that merge after the lab has moved on."""
    lab.set(anchor=1, method="ties", bn="gaussian", align=True)
    sweep = SweepExplorer(lab, steps=2, images=lab.preview_size, background=False)
    sweep.run_button.click()
    (cell, *_) = sweep.sweep.cells
    assert (cell.anchor, cell.method, cell.bn, cell.align) == (1, "ties", "gaussian", True)
    assert cell.base == str(lab.pool.base_path) and cell.checkpoints == tuple(
        str(p) for p in lab.pool.paths
    )
    scored = sweep.sweep.results[1]
    lab.set(anchor=0, method="isotropic", bn="linear", align=False)
    sweep.pick(scored["start"], scored["alpha"])
    c = lab.plan.config
    assert lab.pool.alignment is not None and lab.pool.alignment.anchor == 1
    assert (lab.plan.anchor, c.method, lab.plan.schedule, c.bn) == (
        1,
        "ties",
        "layerwise",
        "gaussian",
    )
    assert (c.start, c.alpha) == (scored["start"], scored["alpha"])
    assert lab.scores["merged"].miou == pytest.approx(scored["miou"]["real"], abs=1e-6)


def test_the_lab_and_its_sweep_score_your_dataset_on_disk(quick_zoo: Path, tmp_path: Path) -> None:
    """Real checkpoints are judged on real data: the MergeLab previews and the sweeps score a
    Cityscapes folder (here a stand-in of 3 images, fewer than the preview asks for), at the
    resolution given, and name it by its folder; without a source, the target alone."""
    root = cityscapes_folder(tmp_path / "my_cityscapes", images=3, size=(64, 128))
    target = f"cityscapes:{root}"
    two = [final(load_manifest(quick_zoo), run) for run in ("minent", "advent")]
    lab = MergeLab(two, target=target, resolution=(32, 64), preview=4, background=False)
    lab.set(alpha=0.3)
    model = merged_model(lab.pool, lab.config())
    previewed = evaluate(model, open_dataset(target, "val", (32, 64)), target).miou
    assert lab.scores["merged"].miou == pytest.approx(previewed)
    assert lab.scores["merged"].images == 3 and lab.scores["synthetic"].images == 4
    assert "<b>cityscapes (my_cityscapes)</b> mIoU" in lab.readout.value
    assert "(preview: 3 and 4 images)" in lab.readout.value
    sweep = SweepExplorer(lab, steps=2, images=2, background=False)
    assert _values(sweep.domain) == [target, "synthetic"], "the lab's target and source"
    sweep.run_button.click()
    assert "best cityscapes (my_cityscapes) mIoU" in sweep.status.value, sweep.error.value
    scored = sweep.sweep.results[1]
    data = val_set(target, 2, (32, 64))
    expected = evaluate(merged_model(lab.pool, sweep.sweep.cells[1].config()), data, target)
    assert scored["miou"][target] == pytest.approx(expected.miou, abs=1e-6)
    alone = MergeLab(two, target=target, source=None, resolution=(32, 64), background=False)
    alone.set(alpha=0.3)
    assert alone.scores["merged"].miou == pytest.approx(previewed)
    assert set(alone.scores) == {"merged", "anchor"} and "(preview: 3 images)" in (
        alone.readout.value
    )
    assert "synthetic" not in alone.readout.value, "no source: the target alone"
    assert _values(SweepExplorer(alone, steps=2, images=2, background=False).domain) == [target]
    with pytest.raises(LwmmError, match=r"^Cityscapes root '.*elsewhere' is not a directory"):
        MergeLab(two, target=f"cityscapes:{tmp_path / 'elsewhere'}", background=False)


def test_the_lab_offers_a_schedule_for_methods_without_one(lab: MergeLab) -> None:
    """Fisher, task arithmetic and TIES run layer-wise or uniform; s and alpha are live only
    under the layer-wise schedule; weighted, whose weights no control sets, is not offered."""
    assert "weighted" not in lab.method.options and "ties" in lab.method.options
    assert lab.schedule.disabled and not lab.alpha.disabled, "layerwise is its own schedule"
    lab.method.value = "ties"
    assert not lab.schedule.disabled and lab.plan.schedule == "layerwise"
    lab.alpha.value = 0.0
    low = lab._model(lab.plan.anchor).state_dict()
    low = {k: v.clone() for k, v in low.items()}
    lab.alpha.value = 1.0
    high = lab._model(lab.plan.anchor).state_dict()
    assert any(not torch.equal(low[k], high[k]) for k in low), "alpha moves layer-wise TIES"
    assert "--schedule layerwise" in merge_command(lab.plan, "m.safetensors")
    lab.schedule.value = "uniform"
    assert lab.plan.schedule == "uniform" and lab.alpha.disabled and lab.start.disabled
    lab.method.value = "isotropic"
    assert lab.schedule.value == "uniform" and lab.schedule.disabled
    lab.method.value = "fisher"
    assert lab.schedule.value == "uniform" and not lab.schedule.disabled, "the schedule stays"
    lab.method.value = "layerwise"
    assert lab.schedule.value == "layerwise" and not lab.alpha.disabled


def test_the_panels_refuse_bad_settings_when_they_are_made(quick_zoo: Path) -> None:
    """A count below 1, a sweep grid of one step, an unknown executor, a tau <= 0 or no
    checkpoint at all: refused in one line where the panel is made, not in its error box
    later (a ZeroDivisionError for steps=1) or silently clamped (tau=0 showed tau = 2)."""
    two = [final(load_manifest(quick_zoo), run) for run in ("minent", "advent")]
    bad = [
        (lambda: MergeLab([], background=False), "give at least one checkpoint"),
        (lambda: MergeLab(two, full=0, background=False), "full=0: give at least 1"),
        (lambda: MergeLab(two, shown=0, background=False), "shown=0: give at least 1"),
        (lambda: MergeLab(two, align="yes", background=False), "align='yes': give True or"),
        (lambda: SweepExplorer(checkpoints=two, steps=1), "steps=1: give at least 2"),
        (lambda: SweepExplorer(checkpoints=two, images=0), "images=0: give at least 1"),
        (lambda: SweepExplorer(checkpoints=two, executor="gpu"), "executor 'gpu' is not one"),
        (lambda: DiscrepancyExplorer(two, tau=0, background=False), "tau=0: give a number > 0"),
        # a TraitError, a TraitError, a silent fall back to another run, an AttributeError:
        (lambda: DiscrepancyExplorer(zoo=quick_zoo, scenario="all"), "scenario 'all' is not"),
        (lambda: DiscrepancyExplorer(zoo=quick_zoo, family="own"), "family 'own' is not one"),
        (lambda: DiscrepancyExplorer(zoo=quick_zoo, run="avdent"), "run 'avdent' is not one of"),
        (lambda: SweepExplorer("lab", checkpoints=two), "merge_lab: a str is not a MergeLab"),
    ]
    for make, message in bad:
        with pytest.raises(LwmmError, match=message):
            make()
    wide = DiscrepancyExplorer(two, tau=5000, background=False)
    assert wide.tau.value == pytest.approx(5000) and "tau = 5e+03" in wide.status.value
