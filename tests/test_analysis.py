"""Discrepancy, sweeps (serial, process pool, a local Dask cluster), comparisons, figures."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from plotly.serializers import custom_serializers
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lwmm_lab import (
    Checkpoint,
    ModelSpec,
    Pool,
    load_checkpoint,
    make_plan,
    merged_model,
    save_checkpoint,
)
from lwmm_lab.analysis import evaluation
from lwmm_lab.analysis.adabn import reestimate_bn, train_images
from lwmm_lab.analysis.comparison import (
    add_one_at_a_time,
    compare,
    fisher_file,
    heads_and_decoders,
    multi_target,
)
from lwmm_lab.analysis.discrepancy import (
    bn_divergence,
    discrepancy,
    suggest_start,
    task_vector_cosine,
    tensor_kind,
)
from lwmm_lab.analysis.evaluation import evaluate, val_set
from lwmm_lab.analysis.qualitative import (
    change_map,
    examples,
    examples_from_predictions,
    iou_delta,
)
from lwmm_lab.analysis.sweeps import SWEEP_METHODS, Sweep, grid, run_sweep
from lwmm_lab.cli import main
from lwmm_lab.engine.model import load_model
from lwmm_lab.errors import LwmmError
from lwmm_lab.fixtures import cityscapes_folder
from lwmm_lab.lab.figures import (
    COLUMNS,
    bn_divergence_figure,
    comparison_figure,
    counts_figure,
    discrepancy_figure,
    example_panel,
    iou_delta_figure,
    panel_uri,
    qualitative_figure,
    rows_figure,
    save_figure,
    save_html,
    schedule_figure,
    sweep_curves,
    sweep_heatmap,
    table_figure,
    task_vector_figure,
    update_iou_delta_figure,
    update_schedule_figure,
)
from lwmm_lab.zoo import base_checkpoint, load_manifest, preset, select

from .conftest import TINY, perturbed_model


def test_tensor_kinds_of_an_smp_model(make_models) -> None:
    sd = make_models(1)[0].state_dict()
    shapes = {n: tuple(t.shape) for n, t in sd.items()}
    kinds = {n: tensor_kind(n, shapes) for n in sd if not n.endswith("num_batches_tracked")}
    assert kinds["encoder.model.conv1.0.weight"] == "weight"
    assert kinds["encoder.model.conv1.1.weight"] == "norm weight"
    assert kinds["encoder.model.conv1.1.bias"] == "norm bias"
    assert kinds["encoder.model.conv1.1.running_var"] == "BN running_var"
    assert kinds["segmentation_head.0.bias"] == "bias"


def test_discrepancy_follows_the_papers_threshold() -> None:
    ref = Checkpoint(
        {"encoder.a.weight": torch.ones(4, 4), "segmentation_head.0.weight": torch.ones(2, 2)}
    )
    other = Checkpoint(
        {
            "encoder.a.weight": torch.ones(4, 4) * 1.05,
            "segmentation_head.0.weight": torch.ones(2, 2) * 1.5,
        }
    )
    d = discrepancy(Pool([ref, other], device="cpu"))
    by_name = {r["name"]: r for r in d.rows}
    assert by_name["encoder.a.weight"]["relative_l2"] == pytest.approx(0.05)
    assert by_name["segmentation_head.0.weight"]["relative_l2"] == pytest.approx(0.5)
    assert by_name["encoder.a.weight"]["cosine_distance"] == pytest.approx(0.0, abs=1e-12)
    assert d.boundary == 2, "the head starts at the second depth index"
    assert [r["name"] for r in d.above(tau=10)] == ["segmentation_head.0.weight"]  # rel >= 0.1
    assert len(d.above(tau=100)) == 2
    counts = d.counts(tau=10)["model#1"]
    assert counts["region"] == {"encoder": 0, "decoder": 0, "head": 1} and counts["total"] == 1
    assert d.counts(tau=100, kinds=["bias"])["model#1"] == {
        "kind": {"bias": 0},
        "region": {"encoder": 0, "decoder": 0, "head": 0},
        "total": 0,
    }, "only the kinds asked for are counted"
    assert len(d.above(tau=100, kinds="weight")) == 2
    with pytest.raises(LwmmError, match=r"kind of tensor 'weights' is not one of weight, bias"):
        d.above(tau=10, kinds=["weights"])
    with pytest.raises(LwmmError, match=r"tau='10' is not a number"):
        d.above(tau="10")


def test_a_reference_is_named_as_an_anchor_is_and_needs_another_model() -> None:
    """A label or path names the reference, as it names an anchor (a path was a TypeError);
    a pool of one model is refused (its tables came out empty, without a word)."""
    models = [
        Checkpoint(
            {
                "encoder.bn.running_mean": torch.full((3,), float(i)),
                "encoder.bn.running_var": torch.ones(3),
            }
        )
        for i in range(2)
    ]
    pool = Pool(models, device="cpu")
    assert discrepancy(pool, "model#1").reference == "model#1"
    assert bn_divergence(pool, "model#1")[0]["model"] == "model#0"
    with pytest.raises(LwmmError, match=r"^reference '2' is not among the inputs"):
        discrepancy(pool, 2)
    for analysis in (discrepancy, bn_divergence):
        with pytest.raises(LwmmError, match="needs at least two checkpoints"):
            analysis(Pool(models[:1], device="cpu"))


def test_a_discrepancy_says_which_tensors_it_does_not_compare(tmp_path: Path, capsys) -> None:
    """Another head (16 classes) cannot be compared with the reference's: it is left out, and
    the API, the JSON and the text say so, rather than count it as zero discrepant."""
    sixteen = ModelSpec("Unet", TINY.encoder, 16, TINY.kwargs)
    paths = [
        save_checkpoint(
            tmp_path / f"{name}.safetensors", perturbed_model(spec, i).state_dict(), spec
        )
        for i, (name, spec) in enumerate((("ref", TINY), ("other", sixteen)))
    ]
    d = discrepancy(Pool(paths, device="cpu"))
    assert d.unshared == ["segmentation_head.0.weight", "segmentation_head.0.bias"]
    assert not {r["name"] for r in d.rows} & set(d.unshared)
    assert d.notes() == [
        "2 of the reference's tensors are not compared, as [1] other lacks them or has another "
        "shape: segmentation_head.0.weight, segmentation_head.0.bias"
    ]
    assert main(["discrepancy", *map(str, paths), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unshared"] == d.unshared
    assert main(["discrepancy", *map(str, paths)]) == 0
    assert f"note: {d.notes()[0]}" in capsys.readouterr().out
    assert discrepancy(Pool([paths[0], paths[0]], device="cpu")).notes() == []
    ref = load_checkpoint(paths[0])
    deeper = Checkpoint({**ref.tensors, "aux.weight": torch.ones(3)}, tmp_path / "deeper.pth")
    d = discrepancy(Pool([ref, deeper], device="cpu"))
    assert d.left_out == {"[1] deeper": ["aux.weight"]}
    assert all(r["name"] != "aux.weight" for r in d.rows)
    assert d.notes() == [
        "1 of [1] deeper's tensors are not compared, as the reference lacks them: aux.weight"
    ]
    assert d.to_json()["left_out"] == d.left_out


def test_bn_divergence_is_the_symmetric_kl_of_gaussians() -> None:
    a = Checkpoint({"bn.running_mean": torch.tensor([0.0]), "bn.running_var": torch.tensor([1.0])})
    b = Checkpoint({"bn.running_mean": torch.tensor([2.0]), "bn.running_var": torch.tensor([4.0])})
    (row,) = bn_divergence(Pool([a, b], device="cpu"))
    # KL(p||q) + KL(q||p) for N(0, 1) and N(2, 4): (1 + 4)/8 + (4 + 4)/2 - 1
    assert row["symmetric_kl"] == pytest.approx(5 / 8 + 4 - 1)
    (same,) = bn_divergence(Pool([a, a], device="cpu"))
    assert same["symmetric_kl"] == pytest.approx(0.0)


def test_task_vectors_and_the_suggested_start() -> None:
    base = Checkpoint({f"l{k}": torch.zeros(3) for k in range(20)})
    a = Checkpoint({f"l{k}": torch.tensor([1.0, 0.0, 0.0]) for k in range(20)})
    b = Checkpoint(
        {f"l{k}": torch.tensor([1.0, 0.1, 0.0] if k < 12 else [-1.0, 0.0, 0.5]) for k in range(20)}
    )
    rows = task_vector_cosine(Pool([a, b], device="cpu", base=base))
    assert rows[0]["cosine"] > 0.99 and rows[-1]["cosine"] < 0
    assert suggest_start(rows, 20, window=1) == 13, "agreement ends after the 12th layer"
    for window in (2, 4, 9, 40):  # an even window was a ValueError (one value too many)
        assert 1 <= suggest_start(rows, 20, window=window) <= 20
    with pytest.raises(LwmmError, match="window=0: give at least 1"):
        suggest_start(rows, 20, window=0)
    with pytest.raises(LwmmError, match="task vectors need the pool's base checkpoint"):
        task_vector_cosine(Pool([a, b], device="cpu"))


def test_the_schedule_figure_follows_a_plan_in_place() -> None:
    """Moved in place, the figure equals one drawn anew (weights, anchor, start, title); with
    other depth names it asks to be redrawn."""
    pool = Pool([Checkpoint({f"l{k}": torch.randn(2) for k in range(6)}) for _ in range(3)])
    fig = schedule_figure(make_plan(pool, start=2, alpha=0.2))
    moved = make_plan(pool, anchor=1, start=3, alpha=0.7)
    assert update_schedule_figure(fig, moved)
    fresh = schedule_figure(moved)

    def shown(f: go.Figure) -> list:
        starts = [(s.x0, s.x1) for s in f.layout.shapes if s.name == "start"]
        notes = [(a.x, a.text) for a in f.layout.annotations if a.name == "start"]
        traces = [(t.name, t.line.width, list(t.y)) for t in f.data]
        return [f.layout.title.text, starts, notes, traces]

    assert shown(fig) == shown(fresh) and "alpha = 0.70" in fig.layout.title.text
    fig.data[0].customdata = (*fresh.data[0].customdata[:-1], "another.model.s.tensor")
    assert not update_schedule_figure(fig, moved), "other depth names: draw a new figure"


def _buffers(value: object) -> list[memoryview]:
    if isinstance(value, memoryview):
        return [value]
    items = value.values() if isinstance(value, dict) else value
    return [b for v in items for b in _buffers(v)] if isinstance(value, dict | list) else []


def test_a_figure_moved_in_place_sends_what_a_frontend_can_receive() -> None:
    """The update a lab FigureWidget sends when moved in place serialises (plotly's own widget
    serialiser) to C-contiguous buffers only: the comm to the browser cannot send a strided
    one, and a failed send stops the lab's update (the browser test caught this)."""
    pool = Pool([Checkpoint({f"l{k}": torch.randn(2) for k in range(6)}) for _ in range(3)])
    schedule = go.FigureWidget(schedule_figure(make_plan(pool, start=2, alpha=0.2)))
    bars = go.FigureWidget(iou_delta_figure({"road": 1.0, "car": -2.0}))
    sent: list[dict] = []
    for fig in (schedule, bars):
        fig.observe(lambda c: c.new and sent.append(c.new), ["_py2js_update", "_py2js_restyle"])
    update_schedule_figure(schedule, make_plan(pool, anchor=1, start=3, alpha=0.7))
    update_iou_delta_figure(bars, {"road": -0.5, "car": 3.0})
    assert len(sent) == 2
    buffers = _buffers(custom_serializers["to_json"](sent, None))
    assert buffers and all(b.c_contiguous for b in buffers)


def test_the_iou_delta_figure_follows_new_scores_in_place() -> None:
    """The lab's bars (a FigureWidget) moved to new per-class changes equal bars drawn anew:
    the classes scored, their values and their colours."""
    fig = go.FigureWidget(iou_delta_figure({"road": 1.0, "car": -2.0, "bus": None}))
    delta = {"road": -0.5, "car": None, "bus": 3.0, "sky": 0.0}
    update_iou_delta_figure(fig, delta)
    (fresh,) = iou_delta_figure(delta).data
    bar = fig.data[0]
    assert (list(bar.x), list(bar.y), list(bar.marker.color)) == (
        list(fresh.x),
        list(fresh.y),
        list(fresh.marker.color),
    )
    assert list(bar.x) == ["road", "bus", "sky"] and bar.marker.color[0] != bar.marker.color[1]


def test_change_map_codes() -> None:
    import numpy as np

    label = np.array([[0, 0, 1, 255]])
    anchor = np.array([[0, 1, 1, 0]])
    merged = np.array([[0, 0, 2, 1]])
    assert change_map(label, anchor, merged).tolist() == [[0, 1, 2, 4]]


@pytest.fixture(scope="module")
def two_finals(quick_zoo: Path) -> list[str]:
    manifest = load_manifest(quick_zoo)
    finals = {
        e["strategy"]: e["path"] for e in select(manifest, scenario="strategies", fraction=1.0)
    }
    return [finals["advent"], finals["minent"]]


@pytest.mark.parametrize(("alphas", "shown"), [((0.0, 0.5, 1.0), 0.5), ((0.0, 0.4, 1.0), 0.4)])
def test_the_start_layer_curve_is_at_alpha_half_not_the_best_alpha(
    alphas: tuple[float, ...], shown: float
) -> None:
    """Where the anchor alone (alpha = 1) scores best, the curve over s at the best alpha
    would be flat by construction; it is drawn at alpha = 0.5 (the grid's nearest), as the
    paper's Fig. 5b."""

    def miou(start: int, alpha: float) -> float:
        return 20.0 + 5 * alpha - start / 10

    results = [
        {"anchor": 0, "start": s, "alpha": a, "miou": {"real": miou(s, a), "synthetic": 30.0}}
        for s in (1, 5, 9)
        for a in alphas
    ]
    fig = sweep_curves(Sweep([], results), ["real", "synthetic"])
    by_start = fig.data[0]
    assert list(by_start.x) == [1, 5, 9]
    assert list(by_start.y) == [miou(s, shown) for s in (1, 5, 9)]
    assert f"alpha = {shown:.2f}" in fig.layout.title.text


def test_a_sweep_figure_of_a_domain_or_anchor_it_lacks_is_refused(tmp_path: Path) -> None:
    """A domain the sweep did not score was a KeyError (a single name given to the curves, a
    KeyError on its first letter), an anchor it did not merge into an IndexError."""
    results = [
        {"anchor": 1, "start": s, "alpha": a, "miou": {"real": 20.0 + s, "synthetic": 30.0}}
        for s in (1, 5)
        for a in (0.3, 0.6)
    ]
    sweep = Sweep([], results)
    assert "anchor 1" in sweep_heatmap(sweep, "real").layout.title.text, "the first anchor"
    assert len(sweep_curves(sweep, "real", anchor=1).data) == 2, "one domain, two panels"
    for draw, says in (
        (lambda: sweep_heatmap(sweep, "night"), r"domain 'night' was not scored by this sweep"),
        (lambda: sweep_curves(sweep, "night", anchor=1), "domain 'night' was not scored"),
        (lambda: sweep_heatmap(sweep, "real", anchor=0), r"anchor 0 is not one this sweep merged"),
    ):
        with pytest.raises(LwmmError, match=says):
            draw()
    assert save_html(sweep_heatmap(sweep, "real"), tmp_path / "one.html").is_file(), "one figure"


def test_sweep_executors_agree_and_cache(two_finals: list[str], tmp_path: Path) -> None:
    cells = grid(
        two_finals,
        starts=(0.0, 1.0),
        alphas=(0.5, 1.0),
        domains=("real",),
        images=4,
        resolution=(64, 128),
    )
    serial = run_sweep(cells, "serial", cache=tmp_path / "cache", progress=False)
    assert len(serial.results) == 4 and len(list((tmp_path / "cache").glob("*.json"))) == 4
    assert serial.scored == 3, "the two alpha = 1 cells are one merge (the anchor), scored once"
    assert [r["start"] for r in serial.results if r["alpha"] == 1.0] == [
        1,
        serial.results[-1]["n_depth"],
    ]
    process = run_sweep(cells, "process", workers=2, cache=None, progress=False)
    for a, b in zip(serial.results, process.results, strict=True):
        assert a["miou"]["real"] == pytest.approx(b["miou"]["real"], abs=1e-6)
    anchor_only = [r for r in serial.results if r["alpha"] == 1.0]
    assert len({round(r["miou"]["real"], 6) for r in anchor_only}) == 1, (
        "alpha = 1 is the anchor, whatever s"
    )
    model = merged_model(Pool(two_finals, device="cpu"), alpha=1.0)
    expected = evaluate(model, val_set("real", 4, (64, 128))).miou
    assert anchor_only[0]["miou"]["real"] == pytest.approx(expected)
    for path in (tmp_path / "cache").glob("*.json"):
        data = json.loads(path.read_text())
        data["miou"]["real"] = -1.0
        path.write_text(json.dumps(data))
    cached = run_sweep(cells, "serial", cache=tmp_path / "cache", progress=False)
    assert all(r["miou"]["real"] == -1.0 for r in cached.results), "cached cells are read back"
    assert cached.scored == 0


def test_a_sweep_reads_each_val_set_once_whatever_the_cache_keeps(
    two_finals: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cell of a sweep scores the same val sets: held from one cell to the next, each
    is read once even when val_set's cache keeps none (sets bigger than its budget, as 100
    full-size Cityscapes images are); it was read again for every cell."""
    reads: list[str] = []

    def counted(domain: str, *args: object, **kwargs: object) -> object:
        reads.append(domain)
        return read(domain, *args, **kwargs)

    read = evaluation.open_dataset
    monkeypatch.setattr(evaluation, "open_dataset", counted)
    monkeypatch.setattr(evaluation, "VAL_CACHE_BYTES", 0)
    cells = grid(
        two_finals, starts=(0.0, 1.0), alphas=(0.3, 0.6), domains=("real", "night"),
        images=2, resolution=(32, 96),
    )  # fmt: skip
    sweep = run_sweep(cells, "serial", cache=None, progress=False)
    assert sweep.scored == 4 and sorted(reads) == ["night", "real"]


@pytest.mark.parametrize("method", ["ties", "task_arithmetic", "fisher"])
def test_a_sweep_runs_layerwise_ties_task_arithmetic_and_fisher(
    quick_zoo: Path, two_finals: list[str], tmp_path: Path, method: str
) -> None:
    """The methods that take a base or Fisher files sweep s and alpha under the layer-wise
    schedule: each cell is the merge ``merged_model`` makes with those settings, and the cache
    tells apart cells that differ only in what those methods take."""
    base = base_checkpoint(load_manifest(quick_zoo))
    if method == "fisher":
        fishers = [fisher_file(p, images=4, cache=tmp_path) for p in two_finals]
        inputs, changed = {"fisher": fishers}, {"fisher": fishers[::-1]}
    elif method == "ties":
        inputs, changed = {"base": base, "density": 0.3}, {"density": 0.5}
    else:
        inputs, changed = {"base": base, "scale": 0.8}, {"scale": 0.5}
    settings = {"domains": ("real",), "images": 4, "resolution": (64, 128), "method": method}
    cells = grid(two_finals, starts=(0.5,), alphas=(0.2, 0.8), **settings, **inputs)
    sweep = run_sweep(cells, cache=tmp_path / "cache", progress=False)
    pool = Pool(two_finals, device="cpu", base=inputs.get("base"), fisher=inputs.get("fisher"))
    data = val_set("real", 4, (64, 128))
    knobs = {k: v for k, v in inputs.items() if k in ("density", "scale")}
    for alpha, result in zip((0.2, 0.8), sweep.results, strict=True):
        model = merged_model(
            pool, method=method, schedule="layerwise", start_frac=0.5, alpha=alpha, **knobs
        )
        assert result["miou"]["real"] == pytest.approx(evaluate(model, data).miou, abs=1e-9)
    assert sweep.scored == 2, "alpha changes the layer-wise schedule: two merges"
    other = grid(two_finals, starts=(0.5,), alphas=(0.2,), **settings, **inputs)
    assert other[0].key() == cells[0].key()
    moved = grid(two_finals, starts=(0.5,), alphas=(0.2,), **settings, **inputs | changed)
    assert moved[0].key() != cells[0].key()


def test_a_sweep_refuses_a_method_with_a_schedule_of_its_own(two_finals: list[str]) -> None:
    assert "isotropic" not in SWEEP_METHODS and "layerwise" in SWEEP_METHODS
    with pytest.raises(LwmmError, match="method 'isotropic' has a schedule of its own"):
        grid(two_finals, method="isotropic")
    with pytest.raises(SystemExit):
        main(["sweep", *two_finals, "--method", "weighted"])


def test_a_sweep_refuses_a_grid_it_cannot_run_before_any_cell(
    two_finals: list[str], tmp_path: Path
) -> None:
    """A misspelt setting was a TypeError, starts given as a string a ValueError from its
    characters, an unknown method was said to have "a schedule of its own", a cache path
    that is a file failed once the first cell was computed, no cells made an empty sweep.
    One anchor was a TypeError, a domain or a Fisher file given as a string was read letter
    by letter, a missing base file was a FileNotFoundError from the cache key."""
    (tmp_path / "cache").write_text("a file")
    for make, says in (
        (lambda: grid(two_finals, imgs=2), r"'imgs' is not a sweep cell setting \(did you mean"),
        (lambda: grid(two_finals, starts="0.5"), r"starts='0.5': give a list of numbers"),
        (lambda: grid(two_finals, method="mean"), "method 'mean' is not one of isotropic"),
        (
            lambda: run_sweep(
                grid(two_finals, starts=[0.5], alphas=[0.5]), cache=tmp_path / "cache"
            ),
            "cache: is a file, not a folder for the sweep cache",
        ),
        (lambda: run_sweep(grid(two_finals, starts=[])), "no cells to sweep"),
        (lambda: grid(two_finals, anchors=0), r"anchors=0: give a list of indices"),
        (lambda: grid(two_finals, align="yes"), r"align='yes': give True or False"),
        (lambda: grid(two_finals, domains="fogy"), r"dataset 'fogy' is not a .*'foggy'"),
        (lambda: grid(two_finals, fisher="f.safetensors"), "fisher: give a list of checkpoint"),
        (
            lambda: run_sweep(grid(two_finals, starts=[0.5], alphas=[0.5], base="b.pt")),
            r"b\.pt: cannot read it",
        ),
    ):
        with pytest.raises(LwmmError, match=says):
            make()


def test_a_sweep_and_a_fisher_file_take_a_save_pretrained_folder(
    two_finals: list[str], tmp_path: Path
) -> None:
    """Their caches are keyed by content: a folder checkpoint was an IsADirectoryError."""
    folder = tmp_path / "advent"
    load_model(two_finals[0], "cpu").save_pretrained(folder)
    cells = grid([folder, two_finals[1]], starts=[0.5], alphas=[0.5], images=2, domains="real")
    first = run_sweep(cells, cache=tmp_path / "cache", progress=False)
    again = run_sweep(cells, cache=tmp_path / "cache", progress=False)
    assert first.scored == 1 and again.scored == 0, "the second sweep reads the cache"
    assert list(again.results[0]["miou"]) == ["real"] == list(first.results[0]["miou"])
    assert fisher_file(folder, images=2, cache=tmp_path).is_file()


def test_the_sweep_command_refuses_inputs_its_method_ignores(
    quick_zoo: Path, two_finals: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    base = base_checkpoint(load_manifest(quick_zoo))
    small = [*two_finals, "--starts", "0", "--alphas", "0.5", "--images", "2", "--no-cache"]
    assert main(["sweep", *small, "--base", base]) == 1
    assert "--base is not used by this sweep (method layerwise)" in capsys.readouterr().err
    ta = ["--method", "task_arithmetic", "--base", base]
    assert main(["sweep", *small, *ta, "--density", "0.5"]) == 1
    assert "--density is not used by this sweep (method task_arithmetic)" in capsys.readouterr().err


def assert_cluster_matches_serial(checkpoints: list[str], executor: str, address: str) -> None:
    """A small sweep on the cluster at ``address`` gives the serial sweep's results."""
    cells = grid(
        checkpoints,
        starts=(0.5,),
        alphas=(0.0, 0.5),
        domains=("real",),
        images=4,
        resolution=(64, 128),
    )
    serial = run_sweep(cells, "serial", cache=None, progress=False)
    remote = run_sweep(cells, executor, address=address, cache=None, progress=False)
    for a, b in zip(serial.results, remote.results, strict=True):
        assert a["miou"]["real"] == pytest.approx(b["miou"]["real"], abs=1e-6)


def test_sweep_on_a_local_dask_cluster(two_finals: list[str]) -> None:
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        assert_cluster_matches_serial(two_finals, "dask", cluster.scheduler_address)


def test_sweep_on_a_local_ray_cluster(two_finals: list[str]) -> None:
    """A head node started like a user's (``ray start --head``), reached by its address."""
    pytest.importorskip("ray")
    ray_cli = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = [ray_cli, "start", "--head", "--port=6391", "--num-cpus=2", "--include-dashboard=false"]
    subprocess.run(head, check=True, env=env, capture_output=True)
    try:
        assert_cluster_matches_serial(two_finals, "ray", "127.0.0.1:6391")
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True)


def test_comparisons_on_the_quick_zoo(quick_zoo: Path, table_bars: list[tqdm]) -> None:
    manifest = load_manifest(quick_zoo)
    finals = sorted(
        select(manifest, scenario="strategies", fraction=1.0), key=lambda e: -e["miou"]["real"]
    )
    paths = [e["path"] for e in finals[:3]]
    rows = add_one_at_a_time(paths, images=4, resolution=(64, 128))
    assert [r["models"] for r in rows] == [1, 2, 3]
    first = rows[0]
    assert (
        first["isotropic"]
        == pytest.approx(first["added_miou"])
        == pytest.approx(first["layerwise"])
    )
    assert first["ensemble"] == pytest.approx(first["added_miou"]), (
        "one model: every method is the model"
    )
    (sixteen,) = select(manifest, scenario="other-classes", fraction=1.0)
    decoder_entries = select(manifest, scenario="other-decoders", fraction=1.0)
    decoders = [e["path"] for e in decoder_entries]
    table = heads_and_decoders(
        paths[0], [sixteen["path"], *decoders], images=4, resolution=(64, 128)
    )
    assert [r["kind"] for r in table] == ["individual"] * 4 + ["merged"] * 4
    names = [r["name"] for r in table]
    assert len(set(names)) == len(names), f"a figure's bars are keyed by name: {names}"
    assert names[2:4] == [f"{e['run']}@{e['step']}" for e in decoder_entries]
    ensemble = next(r for r in table if r["name"] == "ensemble")
    layerwise = next(r for r in table if r["name"] == "layerwise")
    assert ensemble["models"] == 4 and layerwise["models"] == 1, "the ensemble runs four models"
    assert all(r["ms_per_image"] > 0 for r in table)
    small = {"images": 2, "resolution": (64, 128)}
    (row,) = compare([paths[:2]], methods="layerwise", **small)  # was "method 'l' is not ..."
    assert "layerwise" in row and "isotropic" not in row
    alone = [evaluate(load_model(p, "cpu"), val_set("real", 2, (64, 128))).miou for p in paths[:2]]
    assert (row["anchor_miou"], row["best_single"]) == pytest.approx((alone[0], max(alone)))
    rows = multi_target(paths[:2], None, domains="night", bn_rules="anchor", **small)
    assert [r["name"] for r in rows][-1] == "merge, BN anchor"
    assert all(r["mean"] == r["night"] for r in rows), "one domain: its mIoU is the mean"
    *_, adabn = multi_target(paths[:2], None, ("night", "foggy"), "linear", reestimate=3, **small)
    merged = merged_model(Pool(paths[:2], device="cpu"), method="isotropic")
    merged = reestimate_bn(merged, train_images(("night", "foggy"), 3, small["resolution"]))
    night = evaluate(merged, val_set("night", 2, small["resolution"]), "night").miou
    assert adabn["name"] == "merge, BN re-estimated" and adabn["night"] == pytest.approx(night)
    with pytest.raises(LwmmError, match=r"^reestimate=-1: give a number of images per target"):
        multi_target(paths[:2], None, reestimate=-1)
    bars = table_bars
    assert len(bars) == 5 and all(bar.n == bar.total > 0 for bar in bars), "every bar fills"
    assert bars[1].total == len(table) and bars[3].total == len(rows), "a bar step per row"
    with pytest.raises(LwmmError, match=r"method 'ensembel' is not one of ensemble, isotropic"):
        compare([paths[:2]], methods=["layerwise", "ensembel"], **small)


def test_every_figure_is_a_plotly_figure(quick_zoo: Path, tmp_path: Path) -> None:
    manifest = load_manifest(quick_zoo)
    reference, others = preset(manifest, "checkpoint", run="advent")
    pool = Pool([reference, *others], device="cpu", base=base_checkpoint(manifest))
    d = discrepancy(pool)
    tv = task_vector_cosine(pool)
    plan = make_plan(pool, start_frac=0.5, alpha=0.5)
    merged = merged_model(pool, plan.config)
    anchor = merged_model(pool, alpha=1.0)
    data = val_set("real", 3, (64, 128))
    shown = examples(anchor, merged, data, [0, 2])
    assert [e.index for e in examples(anchor, merged, data, 1)] == [1], "one index"
    for indices, says in (
        ([3], r"index 3 is outside 0\.\.2"),
        ([-1], "index -1"),
        ([], "at least"),
    ):
        with pytest.raises(LwmmError, match=says):  # -1 was shown as image -1, [] failed in torch
            examples(anchor, merged, data, indices)
    delta = iou_delta(evaluate(anchor, data), evaluate(merged, data))
    cells = grid(
        [reference, others[0]],
        starts=(0.0, 1.0),
        alphas=(0.5,),
        domains=("real", "synthetic"),
        images=2,
        resolution=(64, 128),
    )
    sweep = run_sweep(cells, cache=None, progress=False)
    rows = [{"models": 1, "added": "a", "added_miou": 10.0, "layerwise": 10.0, "isotropic": 10.0}]
    figures = [
        schedule_figure(plan),
        discrepancy_figure(d, 10),
        counts_figure(d, 10),
        bn_divergence_figure(bn_divergence(pool)),
        task_vector_figure(tv, suggest_start(tv, d.n_depth)),
        sweep_heatmap(sweep, "real"),
        sweep_curves(sweep, ["real", "synthetic"]),
        comparison_figure(rows, ["isotropic", "layerwise"]),
        rows_figure([{"name": "a", "kind": "individual", "miou": 1.0, "ms_per_image": 2.0}], "t"),
        iou_delta_figure(delta),
        qualitative_figure(shown),
    ]
    assert all(isinstance(f, go.Figure) and f.data for f in figures)
    assert [t.name for t in comparison_figure(rows).data][1:] == ["layerwise", "isotropic"]
    with pytest.raises(LwmmError, match=r"^method 'ties' is not one of layerwise, isotropic$"):
        comparison_figure(rows, ["isotropic", "ties"])  # was a KeyError
    (table,) = table_figure(rows, "added_miou").data  # one column, not its letters
    assert table.header.values == ("<b>added_miou</b>",) and table.cells.values == (["10.00"],)
    assert len(table_figure(rows).data[0].header.values) == len(rows[0]), "every column"
    with pytest.raises(LwmmError, match=r"^column 'add' is not one of models, added, "):
        table_figure(rows, ["models", "add"])  # was an empty column
    assert len(figures[0].data) == 4, "one weight curve per model"
    images = [t for t in figures[-1].data if isinstance(t, go.Image)]
    assert len(images) == 2 * 5 and images[0].source.startswith("data:image/png;base64,")
    page = save_html(figures, tmp_path / "all.html")
    assert page.read_text().count("plotly-graph-div") >= len(figures)
    assert not math.isnan(sum(v for v in delta.values() if v is not None))


class _MixedSizes(torch.utils.data.Dataset):
    """A real dataset at its own size: image 1 is taller and narrower than the others."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        h, w = (48, 32) if i == 1 else (32, 64)
        return torch.rand(3, h, w, generator=g), torch.randint(0, 19, (h, w), generator=g)


def test_examples_of_images_of_several_sizes_each_as_it_is_alone() -> None:
    """GTA5 at its own size mixes image sizes: torch.stack failed on them. uint8 images were
    shown as garbage, a DataLoader failed on indexing."""
    spec = ModelSpec("Unet", "tu-resnet10t", 19, {"encoder_depth": 2, "decoder_channels": [8, 8]})
    anchor, merged = perturbed_model(spec, 0), perturbed_model(spec, 1)
    data = _MixedSizes()
    shown = examples(anchor, merged, data, [2, 1, 0])
    assert [e.index for e in shown] == [2, 1, 0] and shown[1].label.shape == (48, 32)
    for e in shown:
        (alone,) = examples(anchor, merged, data, e.index)
        assert np.array_equal(e.merged, alone.merged) and np.array_equal(e.changes, alone.changes)
    uint8 = torch.utils.data.TensorDataset(
        torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 8, 8, dtype=torch.long)
    )
    for bad, says in ((uint8, "images are uint8; give floats"), (DataLoader(data), "DataLoader")):
        with pytest.raises(LwmmError, match=says):
            examples(anchor, merged, bad, [0])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    panoptic=st.booleans(),
)
def test_every_panel_is_sent_as_the_pixels_it_shows(seed: int, size, panoptic: bool) -> None:
    """Each grid panel's PNG (indexed for label and change maps, RGB for the image and a
    panoptic map) decodes to exactly the panel's RGB pixels: ignore, every class and every
    change code included."""
    rng = np.random.default_rng(seed)
    h, w = size
    maps = [torch.from_numpy(rng.choice([*range(19), 255], (1, h, w))) for _ in range(3)]
    ids = tuple(torch.from_numpy(rng.integers(0, 3, (1, h, w))) for _ in range(3))
    image = torch.from_numpy(rng.random((1, 3, h, w), dtype=np.float32))
    (example,) = examples_from_predictions(image, *maps, [0], ids if panoptic else None)
    for column in range(len(COLUMNS)):
        uri = panel_uri(example, column)
        png = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
        shown = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        np.testing.assert_array_equal(shown, example_panel(example, column))


def test_png_export_works_or_says_what_is_missing(tmp_path: Path) -> None:
    fig = go.Figure(go.Bar(x=["a"], y=[1]))
    try:
        path = save_figure(fig, tmp_path / "f.png")
    except Exception as e:  # without a browser: one clear line
        assert "PNG export needs kaleido and a Chromium browser" in str(e)
    else:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_discrepancy_and_sweep_commands(
    quick_zoo: Path, two_finals: list[str], tmp_path: Path, capsys
) -> None:
    page = str(tmp_path / "d.html")
    assert (
        main(
            [
                "discrepancy",
                "--preset",
                "heterogeneous",
                "--zoo",
                str(quick_zoo),
                "--json",
                "--html",
                page,
            ]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert {"rows", "counts", "bn_divergence", "task_vector_cosine", "suggested_start"} <= set(
        payload
    )
    assert (tmp_path / "d.html").is_file()
    assert (
        main(["discrepancy", "--preset", "checkpoint", "--run", "minent", "--zoo", str(quick_zoo)])
        == 0
    )
    assert "reference minent@3" in capsys.readouterr().out
    assert main(["discrepancy", *two_finals, "--tau", "5"]) == 0
    assert "tensors above" in capsys.readouterr().out
    kinds = ["--kinds", "BN running_var", "--tau", "1000", "--json"]
    assert main(["discrepancy", *two_finals, *kinds]) == 0
    (counts,) = json.loads(capsys.readouterr().out)["counts"].values()
    assert list(counts["kind"]) == ["BN running_var"] and counts["total"] > 0
    assert main(["discrepancy", *two_finals, "--kinds", "weights"]) == 1
    assert "kind of tensor 'weights' is not one of" in capsys.readouterr().err
    options = ["--starts", "0", "1", "--alphas", "0.5", "--images", "2", "--domains", "real"]
    assert main(["sweep", *two_finals, *options, "--no-cache", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["results"]) == 2 and not any(c["align"] for c in result["cells"])
    assert main(["sweep", *two_finals, *options, "--no-cache", "--json", "--align"]) == 0
    aligned = json.loads(capsys.readouterr().out)
    assert len(aligned["results"]) == 2 and all(c["align"] for c in aligned["cells"])
    (tmp_path / "sweep.json").write_text(json.dumps(aligned))
    back = Sweep.from_json(tmp_path / "sweep.json")  # a sweep run elsewhere, read back here
    assert json.loads(json.dumps(back.to_json())) == aligned and back.cells[0].align
    assert isinstance(hash(back.cells[0]), int), "hashable, as the cells a sweep runs (lists)"
    for bad, says in (
        (tmp_path / "none.json", r"none\.json: cannot read a sweep from it"),
        ({"cells": aligned["cells"], "results": []}, r"^sweep: 2 cells for 0 results"),
        ({"cells": [{"imgs": 2}], "results": [{}]}, r"^sweep: a cell is not a sweep cell"),
        ([aligned], r"^sweep: not a sweep"),
    ):
        with pytest.raises(LwmmError, match=says):
            Sweep.from_json(bad)
    assert main(["discrepancy", two_finals[0]]) == 1
    assert "give at least two checkpoints" in capsys.readouterr().err


def test_a_sweep_scores_your_dataset_on_disk_and_again_when_it_changes(
    two_finals: list[str], tmp_path: Path, capsys
) -> None:
    """``lwmm sweep --domains cityscapes:PATH --size H W`` scores the folder's val images at
    that size (what the merge scores there alone); a second run reads the cache, and a run
    after a label file changed scores again: the cache keys the files' contents."""
    root = cityscapes_folder(tmp_path / "cs", images=3, size=(64, 128))
    target = f"cityscapes:{root}"
    options = ["--starts", "0", "1", "--alphas", "0.5", "--images", "2", "--domains", target]
    options += ["--size", "32", "64"]
    assert main(["sweep", *two_finals, *options, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    cell = first["cells"][1]
    assert cell["domains"] == [target] and cell["resolution"] == [32, 64]
    merge = merged_model(Pool(two_finals, device="cpu"), start_frac=1.0, alpha=0.5)
    expected = evaluate(merge, val_set(target, 2, (32, 64)), target).miou
    assert first["results"][1]["miou"][target] == pytest.approx(expected, abs=1e-6)
    assert main(["sweep", *two_finals, *options]) == 0
    assert "(0 merges scored" in capsys.readouterr().out
    label = sorted(root.glob("gtFine/val/*/*_labelIds.png"))[0]
    label.write_bytes(sorted(root.glob("gtFine/val/*/*_labelIds.png"))[1].read_bytes())
    assert main(["sweep", *two_finals, *options]) == 0
    assert "(2 merges scored" in capsys.readouterr().out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_sweep_on_the_gpu_matches_the_cpu(two_finals: list[str]) -> None:
    """On CUDA a serial sweep keeps pool, model and val sets on the device; same scores."""
    settings = {"starts": (0.0, 1.0), "alphas": (0.5,), "images": 8, "resolution": (64, 128)}
    cpu = run_sweep(grid(two_finals, device="cpu", **settings), cache=None, progress=False)
    gpu = run_sweep(grid(two_finals, device="cuda", **settings), cache=None, progress=False)
    for a, b in zip(cpu.results, gpu.results, strict=True):
        for domain, value in a["miou"].items():
            assert b["miou"][domain] == pytest.approx(value, abs=0.5), "a few pixels may flip"
