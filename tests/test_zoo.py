"""The quick zoo: what it contains, its manifest, resuming, evaluation and Fisher via the CLI."""

from __future__ import annotations

import itertools
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lwmm_lab import Pool, load_checkpoint, load_model, merge
from lwmm_lab.cli import main
from lwmm_lab.data.domains import TARGET_DOMAINS
from lwmm_lab.errors import LwmmError
from lwmm_lab.zoo import DEFAULT_RUNS, ZooConfig, build_zoo, load_manifest, select
from lwmm_lab.zoo.manifest import final, preset, scenario_checkpoints
from lwmm_lab.zoo.recipe import SCENARIOS, STRATEGY_RUNS, Run

KEYS = {"path", "run", "strategy", "scenarios", "arch", "encoder", "classes", "num_classes",
        "source", "targets", "seed", "init", "step", "fraction", "miou", "fingerprint"}  # fmt: skip
CHECKPOINTS = 1 + sum(len(run.fractions) for run in DEFAULT_RUNS)


def test_manifest_describes_every_checkpoint(quick_zoo: Path) -> None:
    manifest = load_manifest(quick_zoo)
    entries = manifest["checkpoints"]
    assert len(entries) == CHECKPOINTS
    for e in entries:
        assert set(e) == KEYS | ({"panoptic"} if e["arch"] == "PanopticUnet" else set())
        assert set(e["scenarios"]) <= set(SCENARIOS)
        assert Path(e["path"]).is_file()
        assert set(e["miou"]) == {e["source"], *TARGET_DOMAINS}
        assert all(0 <= v <= 100 for v in e["miou"].values())
    for family, init in (("strategies", "base"), ("independent", "encoder")):
        finals = select(manifest, scenario=family, fraction=1.0)
        assert sorted(e["strategy"] for e in finals) == sorted(STRATEGY_RUNS)
        assert {e["init"] for e in finals} == {init}
    assert len({e["seed"] for e in select(manifest, scenario="independent", fraction=1.0)}) == 6
    for run in ("advent", "indep-advent"):
        fractions = sorted(e["fraction"] for e in select(manifest, run=run))
        assert fractions == [0.25, 0.5, 0.75, 1.0]
    assert {e["run"] for e in select(manifest, scenario="checkpoints")} == {
        e["run"] for e in select(manifest, scenario="strategies")
    } | {e["run"] for e in select(manifest, scenario="independent")}
    (sixteen,) = select(manifest, scenario="other-classes", fraction=1.0)
    assert sixteen["num_classes"] == 16 and sixteen["source"] == "synthetic-16"
    assert {e["arch"] for e in select(manifest, scenario="other-decoders")} == {
        "FPN",
        "DeepLabV3Plus",
    }
    targets = {tuple(e["targets"]) for e in select(manifest, scenario="multi-target")}
    assert targets == {("real",), ("foggy",), ("night",), TARGET_DOMAINS}


def test_checkpoints_rebuild_and_share_the_base_encoder(quick_zoo: Path) -> None:
    manifest = load_manifest(quick_zoo)
    (base,) = select(manifest, run="base")
    (fpn,) = select(manifest, run="fpn-minent", fraction=1.0)
    model = load_model(fpn["path"], "cpu")
    assert type(model).__name__ == "FPN"
    assert model(torch.rand(1, 3, 64, 128)).shape == (1, 19, 64, 128)
    pool = Pool([base["path"], fpn["path"]], device="cpu")
    shared = {n for n in pool.columns if not n.startswith("encoder.")}
    assert shared == {"segmentation_head.0.bias"}, "the decoders share nothing; the heads a bias"
    assert sum(n.startswith("encoder.") for n in pool.columns) > 100
    assert load_checkpoint(fpn["path"]).provenance["zoo"]["run"] == "fpn-minent"


def test_independent_decoders_start_apart_one_source_decoders_together(quick_zoo: Path) -> None:
    """The two regimes: one family shares the base's decoder, the other only its encoder."""
    manifest = load_manifest(quick_zoo)
    base = select(manifest, run="base")[0]["path"]

    def distance(a: str, b: str, part: str) -> float:
        pool = Pool([a, b], device="cpu")
        cols = [c for n, c in pool.columns.items() if n.startswith(part)]
        x = torch.cat([pool.flat[0, c] for c in cols])
        y = torch.cat([pool.flat[1, c] for c in cols])
        return float((x - y).norm() / x.norm())

    one = scenario_checkpoints(manifest, "strategies")
    independent = scenario_checkpoints(manifest, "independent")
    apart = distance(independent[0], independent[1], "decoder.")
    assert apart > 5 * distance(one[0], one[1], "decoder.")
    assert distance(base, independent[0], "encoder.") < apart / 5, "the encoder is the base's"


def test_scenarios_put_the_anchor_first(quick_zoo: Path) -> None:
    manifest = load_manifest(quick_zoo)
    for name in ("independent", "strategies"):
        paths = scenario_checkpoints(manifest, name)
        miou = {e["path"]: e["miou"]["real"] for e in manifest["checkpoints"]}
        assert len(paths) == 6 and [miou[p] for p in paths] == sorted(
            (miou[p] for p in paths), reverse=True
        )
    steps = [load_checkpoint(p).provenance["zoo"]["step"] for p in scenario_checkpoints(
        manifest, "checkpoints")]  # fmt: skip
    assert steps == sorted(steps, reverse=True) and len(steps) == 4
    anchor, *decoders = scenario_checkpoints(manifest, "other-decoders")
    assert "indep-minent" in anchor and len(decoders) == 2
    assert len(scenario_checkpoints(manifest, "multi-target")) == 3
    with pytest.raises(LwmmError, match="scenario 'nope' is not one of independent, strategies"):
        scenario_checkpoints(manifest, "nope")
    with pytest.raises(LwmmError, match="domain 'Real' is not one of"):  # was a KeyError
        scenario_checkpoints(manifest, "strategies", target="Real")
    assert select(manifest, run="nope") == [], "a value no entry has: nothing, as asked"
    with pytest.raises(LwmmError, match=r"'strategie' is not a field of the zoo's entries \("):
        select(manifest, strategie="advent")
    for call in (  # said "not in this zoo" without its runs, and "fewer than two checkpoints"
        lambda: final(manifest, "advnet"),
        lambda: preset(manifest, "checkpoint", run="advnet"),
        lambda: scenario_checkpoints(manifest, "checkpoints", run="advnet"),
    ):
        with pytest.raises(LwmmError, match=r"^run 'advnet' is not one of .*did you mean 'advent'"):
            call()
    with pytest.raises(LwmmError, match=r"^manifest: a PosixPath is not a zoo's manifest; load_"):
        select(quick_zoo, run="advent")  # was a TypeError from indexing a path
    assert load_manifest(quick_zoo / "manifest.json") == manifest, "its file names the zoo too"


def test_a_zoo_recipe_it_cannot_train_is_refused_before_any_training(tmp_path: Path) -> None:
    """0 steps or a batch of 0 built a zoo of untrained models without a word; an unknown
    strategy failed once the base had trained, and a batch of one once a DeepLabV3+ run
    began. Each is refused by name, up front."""
    quick = ZooConfig.quick_config()
    for make, says in (
        (lambda: replace(quick, steps=0), "steps=0: give at least 1"),
        (lambda: replace(quick, batch=0), "batch=0: give at least 1"),
        (lambda: replace(quick, batch=1), "batch=1: run 'deeplabv3plus-minent' cannot train"),
        (lambda: replace(quick, lr=0.0), "lr=0.0: give a number > 0"),
        (lambda: replace(quick, resolution=(0, 8)), "image size 0 x 8"),
        (lambda: Run("r", "minent", (), source="mars"), "run 'r': domain 'mars' is not one of"),
        (lambda: Run("r", "minent", (), init="all"), "run 'r': init 'all' is not one of"),
        (lambda: Run("r", "minent", (), fractions=(0.0,)), r"run 'r': fractions \(0.0,\)"),
        (lambda: replace(quick, runs=(Run("r", "minent", ()),) * 2), "run 'r' is named twice"),
        (
            lambda: build_zoo(tmp_path, replace(quick, runs=(Run("r", "mean-teacher", ()),))),
            "run 'r': strategy 'mean-teacher' is not one of source_only, minent",
        ),
    ):
        with pytest.raises(LwmmError, match=says):
            make()
    assert not any(tmp_path.iterdir()), "nothing was written"
    assert replace(quick, batch=1, runs=(Run("r", "minent", ()),)).batch == 1, "a Unet can"


def test_zoo_list_command(quick_zoo: Path, capsys) -> None:
    assert main(["zoo", "list", "independent", "--zoo", str(quick_zoo), "--paths"]) == 0
    paths = capsys.readouterr().out.split()
    assert paths == scenario_checkpoints(load_manifest(quick_zoo), "independent")
    assert main(["zoo", "list", "--zoo", str(quick_zoo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("indep-selftrain@12 ") for line in lines)
    assert len({line.index(" Unet ") for line in lines if " Unet " in line}) == 1, "one column"
    assert main(["zoo", "list", "nope", "--zoo", str(quick_zoo)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lwmm: error: scenario 'nope'") and err.count("\n") == 1


def test_zoo_list_markdown_is_the_manifests_quality_table(quick_zoo: Path, capsys) -> None:
    """The README's quality table comes from the manifest: a row per final checkpoint with
    what it starts from and its recorded mIoU; another class set's source figure is named."""
    manifest = load_manifest(quick_zoo)
    assert main(["zoo", "list", "--zoo", str(quick_zoo), "--markdown"]) == 0
    header, rule, *rows = capsys.readouterr().out.splitlines()
    assert header == "| model | starts from | synthetic | real | foggy | night |"
    assert rule.count("|") == header.count("|")
    cells = {r.split(" | ")[0].strip("| ").split(" (")[0]: r.strip("| ").split(" | ") for r in rows}
    finals = [e for e in manifest["checkpoints"] if e["fraction"] == 1.0]
    assert list(cells) == [e["run"] for e in finals]
    for e in finals:
        _, starts, *scores = cells[e["run"]]
        assert starts == ("-" if e["run"] == "base" else e["init"])
        assert scores[1] == f"{e['miou']['real']:.1f}"
    assert cells["synthia16-minent"][0] == "synthia16-minent (16 classes)"
    assert cells["synthia16-minent"][2].endswith(" (synthetic-16)")
    assert main(["zoo", "list", "checkpoints", "--zoo", str(quick_zoo), "--markdown"]) == 0
    runs = [r.split(" | ")[0].strip("| ") for r in capsys.readouterr().out.splitlines()[2:]]
    assert runs[0] == "advent" and all(r.startswith("advent@") for r in runs[1:]) and runs[1:]


def test_uda_strategies_beat_source_only_on_the_target(quick_zoo: Path) -> None:
    manifest = load_manifest(quick_zoo)
    final = {
        e["strategy"]: e["miou"]["real"]
        for e in select(manifest, scenario="strategies", fraction=1.0)
    }
    baseline = final.pop("source_only")
    assert sum(v > baseline for v in final.values()) >= 3, final


def test_strategies_differ_more_than_checkpoints_of_one_run(quick_zoo: Path) -> None:
    manifest = load_manifest(quick_zoo)

    def distance(a: str, b: str) -> float:
        pool = Pool([a, b], device="cpu")
        diff = pool.flat[0] - pool.flat[1]
        return float(diff.norm() / pool.flat[0].norm())

    run = sorted(select(manifest, run="minent"), key=lambda e: e["step"])
    within = max(distance(x["path"], y["path"]) for x, y in itertools.pairwise(run))
    finals = {
        e["strategy"]: e["path"] for e in select(manifest, scenario="strategies", fraction=1.0)
    }
    across = distance(finals["minent"], finals["selftrain"])
    assert across > within


def test_rebuilding_keeps_finished_checkpoints(quick_zoo: Path, tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    shutil.copytree(quick_zoo, zoo)
    removed = zoo / "runs/maxsquare/step-000012.safetensors"
    removed.unlink()
    stamps = {p: p.stat().st_mtime_ns for p in zoo.glob("runs/*/*.safetensors")}
    messages: list[str] = []
    started = time.perf_counter()
    manifest = build_zoo(zoo, ZooConfig.quick_config(), device="cpu", log=messages.append)
    resumed = time.perf_counter() - started
    assert removed.is_file()
    recorded = load_manifest(quick_zoo)["build_seconds"]
    assert recorded + 0.5 * resumed <= manifest["build_seconds"] <= recorded + resumed + 0.1, (
        "a resume adds its own time to the build's"
    )
    assert len(manifest["checkpoints"]) == CHECKPOINTS
    assert manifest == load_manifest(zoo), "the paths of the manifest returned name its files"
    touched = {p for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert touched <= set(zoo.glob("runs/maxsquare/*")), "only the unfinished run is trained again"


def test_a_zoo_seed_changes_the_runs_and_keeps_its_own_folder(
    quick_zoo: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """``--seed K`` trains every run (the base too) from other initial weights and data order,
    into ``data/zoo-quick-seedK``; a folder of another seed is refused, untouched."""
    monkeypatch.setenv("LWMM_DATA", str(tmp_path))
    build_zoo(None, replace(ZooConfig.quick_config(), seed=1, runs=()), "cpu", log=print)
    folder = tmp_path / "zoo-quick-seed1"
    manifest = load_manifest(folder)
    assert manifest["config"]["seed"] == 1
    (ours,) = select(manifest, run="base")
    (published,) = select(load_manifest(quick_zoo), run="base")
    a, b = load_checkpoint(ours["path"]).tensors, load_checkpoint(published["path"]).tensors
    assert a.keys() == b.keys() and not torch.equal(a["segmentation_head.0.weight"],
        b["segmentation_head.0.weight"])  # fmt: skip
    before = (folder / "manifest.json").read_text()
    capsys.readouterr()
    assert main(["zoo", "build", "--quick", "--out", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "zoo of seed 1" in err and str(folder) in err
    assert (folder / "manifest.json").read_text() == before
    assert main(["zoo", "build", "--quick", "--seed", "-2"]) == 1
    assert "seed=-2: give 0 or a positive whole number" in capsys.readouterr().err


def test_another_programs_manifest_is_refused_and_left_as_it_was(tmp_path: Path, capsys) -> None:
    """A folder whose manifest.json is not a zoo's: a build would overwrite it, a listing
    would fail deep inside; both refuse it in one line and write nothing."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"hello": 1}')
    for args in (["zoo", "build", "--quick", "--out"], ["zoo", "list", "--zoo"]):
        assert main([*args, str(folder)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "manifest.json: not a zoo's manifest" in err, err
    assert [p.name for p in folder.iterdir()] == ["manifest.json"]
    assert (folder / "manifest.json").read_text() == '{"hello": 1}'


def test_eval_and_fisher_commands(quick_zoo: Path, tmp_path: Path, capsys) -> None:
    manifest = load_manifest(quick_zoo)
    finals = [e["path"] for e in select(manifest, scenario="strategies", fraction=1.0)][:2]
    assert main(["eval", finals[0], "--domain", "real", "--images", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"miou", "per_class_iou", "domain", "images"}
    assert (
        result["domain"] == "real" and result["images"] == 4 and len(result["per_class_iou"]) == 19
    )
    assert main(["eval", *finals, "--ensemble", "--images", "4", "--json"]) == 0
    ensemble = json.loads(capsys.readouterr().out)
    assert ensemble["models"] == 2
    out = tmp_path / "f.safetensors"
    assert (
        main(["fisher", finals[0], "--domain", "synthetic", "--images", "3", "-o", str(out)]) == 0
    )
    capsys.readouterr()
    fisher = load_checkpoint(out)
    assert fisher.provenance["fisher"]["images"] == 3
    assert all(bool((v >= 0).all()) for v in fisher.tensors.values())
    other = tmp_path / "g.safetensors"
    assert main(["fisher", finals[1], "--images", "3", "-o", str(other)]) == 0
    merged = merge(Pool(finals, device="cpu", fisher=[out, other]), method="fisher")
    assert all(bool(torch.isfinite(v).all()) for v in merged.values() if v.is_floating_point())


@pytest.mark.parametrize("bad", ["nope.safetensors"])
def test_eval_errors_are_one_line(bad: str, capsys) -> None:
    assert main(["eval", bad, "--domain", "real"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lwmm: error: ") and err.count("\n") == 1


def test_zoo_bars_are_what_lwmm_merge_and_eval_measure(
    quick_zoo: Path, tmp_path: Path, capsys
) -> None:
    zoo = str(quick_zoo)
    assert main(["zoo", "bars", "--zoo", zoo, "--images", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["family"] for r in rows] == ["independent", "independent", "strategies"]
    assert all(isinstance(r["met"], bool) and r["command"].startswith("lwmm merge") for r in rows)
    paths = scenario_checkpoints(load_manifest(quick_zoo), "independent")
    merged = tmp_path / "iso.safetensors"
    assert main(["merge", *paths, "--method", "isotropic", "-o", str(merged)]) == 0

    def miou(path: str) -> float:
        capsys.readouterr()
        assert main(["eval", path, "--images", "4", "--json"]) == 0
        return json.loads(capsys.readouterr().out)["miou"]

    expected = miou(str(merged)) - miou(paths[0])
    assert rows[0]["value"] == pytest.approx(expected, abs=1e-3), "eval --json rounds to 4 places"
    assert main(["zoo", "bars", "--zoo", zoo, "--images", "4", "--markdown"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| family |") and len(table) == 2 + len(rows)
