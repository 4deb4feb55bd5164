"""The ``lwmm merge`` / ``lwmm inspect`` contract: outputs, JSON plan, one-line errors."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lwmm_lab import ModelSpec, Pool, load_checkpoint, load_model, make_plan, save_checkpoint
from lwmm_lab.cli import main
from lwmm_lab.engine.merge import merge_command
from lwmm_lab.files import sha256
from lwmm_lab.fixtures import daformer_checkpoint

from .conftest import TINY, Payload, perturbed_model


@pytest.fixture
def two(tmp_path: Path) -> list[Path]:
    return [
        save_checkpoint(
            tmp_path / f"m{i}.safetensors", perturbed_model(TINY, i, 10 * i).state_dict(), TINY
        )
        for i in range(2)
    ]


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_console_script_merges(two: list[Path], tmp_path: Path) -> None:
    lwmm = shutil.which("lwmm", path=str(Path(sys.executable).parent))
    assert lwmm, "the lwmm console script is installed"
    out = tmp_path / "merged.safetensors"
    options = [
        "--anchor",
        two[1],
        "--alpha",
        "0.6",
        "--start-frac",
        "0.5",
        "--bn",
        "gaussian-counts",
    ]
    command = [lwmm, "merge", *two, *options, "-o", out]
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "anchor [1] m1" in result.stdout
    p = load_checkpoint(out).provenance
    assert (p["anchor"]["index"], p["alpha"], p["bn"]) == (1, 0.6, "gaussian-counts")


def test_inspect_json_is_the_plan_in_depth_order(two: list[Path], capsys) -> None:
    rc, out, _ = _run(["inspect", *two, "--json", "--anchor", "1"], capsys)
    assert rc == 0
    rows = json.loads(out)
    assert set(rows[0]) == {"name", "kind", "j", "shape", "weights", "source"}
    depths = [r["j"] for r in rows if r["j"] is not None]
    assert depths == list(range(1, len(depths) + 1))
    assert {r["kind"] for r in rows} == {"shared", "integer"}
    assert rows[-1]["weights"] == [0.0, 1.0], "the last layer is the anchor's"
    assert rows[0]["name"].startswith("encoder."), (
        "the model's order, not safetensors' sorted order"
    )


def test_inspect_text_table(two: list[Path], capsys) -> None:
    rc, out, _ = _run(["inspect", *two, "--method", "isotropic", "--granularity", "module"], capsys)
    assert rc == 0
    assert (
        "method: isotropic" in out and "schedule: uniform" in out and "granularity: module" in out
    )
    assert "0.500 0.500" in out


def _bad_inputs(tmp_path: Path, two: list[Path]) -> dict[str, tuple[list, str]]:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not safetensors" * 20)
    truncated = tmp_path / "trunc.pt"
    torch.save(perturbed_model(TINY, 0).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "x": Payload()}, evil)
    nan = tmp_path / "nan.safetensors"
    sd = perturbed_model(TINY, 0).state_dict()
    sd["decoder.blocks.0.conv1.0.weight"][0, 0, 0, 0] = float("inf")
    save_checkpoint(nan, sd, TINY)
    unrelated = tmp_path / "unrelated.safetensors"
    save_file(
        {"other.weight": torch.ones(3)}, unrelated, metadata={"lwmm.order": '["other.weight"]'}
    )
    merged = tmp_path / "out.safetensors"
    (tmp_path / "folder.safetensors").mkdir()
    plain = tmp_path / "plain.pth"
    torch.save(perturbed_model(TINY, 0).state_dict(), plain)
    other = ModelSpec("Unet", "tu-resnet10t", 7, TINY.kwargs)
    return {
        "convert without a spec": (
            ["convert", plain, "-o", merged],
            "plain.pth: carries no model spec; give the spec of its model",
        ),
        "convert to another model": (
            ["convert", plain, "--spec", other.to_json(), "-o", merged],
            "plain.pth has another shape for 'segmentation_head.0.weight' (and 1 more) for "
            "Unet(tu-resnet10t, 7 classes, decoder_channels=[16, 8, 4], encoder_depth=3)",
        ),
        "convert with a spec it lacks": (
            ["convert", plain, "--spec", plain, "-o", merged],
            "--spec " + str(plain) + ": this checkpoint carries no model spec to take",
        ),
        "convert with a malformed spec": (
            ["convert", plain, "--spec", '{"arch": "Unet"}', "-o", merged],
            "--spec: malformed model spec (no 'encoder')",
        ),
        "convert a spec away": (
            ["convert", two[0], "--spec", other.to_json(), "-o", merged],
            "m0.safetensors: carries its own spec Unet(tu-resnet10t, 5 classes, decoder_channels=",
        ),
        "convert size": (
            ["convert", tmp_path / "nope.pth", "--spec", two[0], "--size", "0", "5", "-o", merged],
            "image size 0 x 5: give a height and a width",
        ),
        "convert onto the input": (
            ["convert", two[0], "-o", two[0]],
            "m0.safetensors: output is one of the inputs; refusing to overwrite it",
        ),
        "output folder": (
            ["merge", *two, "-o", tmp_path / "folder.safetensors"],
            "folder.safetensors: a folder is there; a checkpoint is written as a file",
        ),
        "output under a file": (
            ["merge", *two, "-o", two[0] / "out.safetensors"],
            "m0.safetensors/out.safetensors: cannot be written",
        ),
        "missing": (["merge", tmp_path / "nope.pt", two[0], "-o", merged], "nope.pt: no such file"),
        "corrupt": (
            ["merge", garbage, two[0], "-o", merged],
            "garbage.safetensors: not a readable safetensors",
        ),
        "truncated": (
            ["merge", truncated, two[0], "-o", merged],
            "trunc.pt: not a readable PyTorch checkpoint",
        ),
        "code pickle": (
            ["merge", evil, two[0], "-o", merged],
            "evil.pt: refused: this pickle needs code",
        ),
        "no shared": (
            ["merge", unrelated, two[0], "-o", merged],
            "no tensor is shared by all 2 checkpoints",
        ),
        "anchor index": (
            ["merge", *two, "--anchor", "2", "-o", merged],
            "anchor '2' is not among the inputs",
        ),
        "anchor path": (
            ["merge", *two, "--anchor", garbage, "-o", merged],
            "garbage.safetensors' is not among",
        ),
        "alpha": (["merge", *two, "--alpha", "1.5", "-o", merged], "alpha=1.5 is outside [0, 1]"),
        "start": (["merge", *two, "--start", "999", "-o", merged], "start=999 is outside 1..Np="),
        "nan": (
            ["merge", nan, two[0], "-o", merged],
            "tensor 'decoder.blocks.0.conv1.0.weight' contains NaN or Inf",
        ),
        "output=input": (
            ["merge", *two, "-o", two[1]],
            "m1.safetensors: output is one of the inputs",
        ),
        "cuda": (["merge", *two, "--device", "cuda", "-o", merged], "CUDA is not available"),
        "alpha unused": (
            ["merge", *two, "--method", "isotropic", "--alpha", "0.3", "-o", merged],
            "--alpha is not used by this merge (method isotropic, uniform schedule)",
        ),
        "weights unused": (
            ["merge", *two, "--weights", "1", "3", "-o", merged],
            "--weights is not used by this merge (method layerwise, layerwise schedule)",
        ),
        "density unused": (
            ["inspect", *two, "--density", "0.3"],
            "--density is not used by this merge (method layerwise, layerwise schedule): "
            "only method ties uses it",
        ),
        "scale nan": (
            [
                "merge",
                *two,
                "--method",
                "task_arithmetic",
                "--base",
                two[0],
                "--scale",
                "nan",
                "-o",
                merged,
            ],
            "scale=nan is not a finite number",
        ),
        "tau": (["discrepancy", *two, "--tau", "0"], "tau=0.0: give a number > 0"),
        "images": (["eval", two[0], "--images", "0"], "images=0: give at least 1"),
        "size": (
            ["eval", two[0], "--size", "0", "8"],
            "image size 0 x 8: give a height and a width",
        ),
        "fisher images": (
            ["fisher", two[0], "--images", "-1", "-o", merged],
            "images=-1: give at least 1",
        ),
        "fisher output=input": (
            ["fisher", two[0], "--images", "1", "-o", two[0]],
            "m0.safetensors: output is one of the inputs",
        ),
        "fisher suffix": (
            ["fisher", two[0], "-o", tmp_path / "f.txt"],
            "f.txt: a Fisher estimate is written as a .safetensors file",
        ),
        "sweep png": (
            ["sweep", *two, "--png", tmp_path / "heat.txt"],
            "heat.txt: a figure is written as a .html or .png file",
        ),
        "discrepancy html": (
            ["discrepancy", *two, "--html", tmp_path / "page.htm"],
            "page.htm: the page is written as a .html file",
        ),
        "scenes": (["data", "gallery", "--scenes", "0", "-o", tmp_path / "g.png"], "scenes=0"),
        "gallery seed": (
            ["data", "gallery", "--seed", "-1", "-o", tmp_path / "g.png"],
            "seed=-1: give 0 or a positive whole number",
        ),
        "sweep images": (
            ["sweep", *two, "--images", "0", "--starts", "0.5", "--alphas", "0.5"],
            "images=0: give at least 1",
        ),
        "sweep domain": (
            ["sweep", *two, "--domains", "mars", "--starts", "0.5", "--alphas", "0.5"],
            "dataset 'mars' is not a synthetic domain",
        ),
        "sweep dataset": (
            ["sweep", *two, "--domains", f"cityscapes:{tmp_path / 'cs'}", "--alphas", "0.5"],
            "Cityscapes root",
        ),
        "sweep workers": (
            ["sweep", *two, "--executor", "process", "--workers", "0", "--no-cache"],
            "workers=0: give at least 1",
        ),
        "interpolate steps": (
            ["interpolate", *two, "--steps", "1"],
            "steps=1: give at least 2 (the two models themselves)",
        ),
        "interpolate unrelated": (
            ["interpolate", two[0], unrelated],
            "no tensor is shared by all 2 checkpoints",
        ),
        "interpolate reestimate": (
            ["interpolate", *two, "--reestimate", "mars"],
            "dataset 'mars' is not a synthetic domain",
        ),
        "interpolate html": (
            ["interpolate", *two, "--html", tmp_path / "path.htm"],
            "path.htm: the page is written as a .html file",
        ),
        "merge reestimate images": (
            ["merge", *two, "--reestimate-images", "3", "-o", merged],
            "--reestimate-images is only used with --reestimate",
        ),
        "merge reestimate bn": (
            ["merge", *two, "--reestimate", "real", "--bn", "gaussian", "-o", merged],
            "--bn gaussian has no effect with --reestimate: the statistics are measured anew",
        ),
        "merge reestimate domain": (
            ["merge", *two, "--reestimate", "real", "mars", "-o", merged],
            "dataset 'mars' is not a synthetic domain",
        ),
        "merge reestimate count": (
            ["merge", *two, "--reestimate", "real", "--reestimate-images", "0", "-o", merged],
            "--reestimate-images=0: give at least 1",
        ),
        "claim": (["findings", "--only", "99"], "claim 99 is not one of 1.."),
        "bars images": (["zoo", "bars", "--images", "0"], "images=0: give at least 1"),
        "zoo workers": (
            ["zoo", "build", "--quick", "--workers", "0", "--out", tmp_path / "zoo"],
            "workers=0: give at least 1",
        ),
        "zoo into a file": (
            ["zoo", "build", "--quick", "--out", two[0]],
            r"m0.safetensors: is a file, not a folder for the zoo (--out)",
        ),
    }


def test_every_bad_input_gives_one_clear_line(two: list[Path], tmp_path: Path, capsys) -> None:
    before = [p.read_bytes() for p in two]
    cases = _bad_inputs(tmp_path, two)
    if torch.cuda.is_available():
        del cases["cuda"]
    for case, (args, message) in cases.items():
        rc, _, err = _run(args, capsys)
        assert rc == 1, case
        assert err.count("\n") == 1 and err.startswith("lwmm: error: "), (case, err)
        assert message in err, (case, err)
        assert "Traceback" not in err
    assert [p.read_bytes() for p in two] == before, "inputs are never modified"
    assert not (tmp_path / "out.safetensors").exists(), "nothing is written on error"
    assert not (tmp_path / "zoo").exists() and not (tmp_path / "g.png").exists()


@pytest.mark.parametrize(
    "settings",
    [
        {"start": 40, "alpha": 0.3, "bn": "gaussian-counts", "anchor": 1},
        {"method": "isotropic", "granularity": "module"},
        {"method": "weighted", "weights": (1.0, 3.0), "bn": "anchor"},
        {"method": "task_arithmetic", "scale": 0.7},
        {"method": "ties", "density": 0.3, "scale": 0.9},
        {"method": "fisher"},
    ],
    ids=lambda s: s.get("method", "layerwise"),
)
def test_the_lab_s_merge_command_reproduces_its_merge(
    settings: dict, two: list[Path], tmp_path: Path, capsys
) -> None:
    base = save_checkpoint(
        tmp_path / "base.safetensors", perturbed_model(TINY, 7).state_dict(), TINY
    )
    fishers = []
    for i, path in enumerate(two):
        params = dict(load_model(path, "cpu").named_parameters())
        g = torch.Generator().manual_seed(i)
        fisher = {k: torch.rand(p.shape, generator=g) for k, p in params.items()}
        fishers.append(save_checkpoint(tmp_path / f"f{i}.safetensors", fisher, TINY))
    pool = Pool(two, device="cpu", base=base, fisher=fishers)
    plan = make_plan(pool, **settings)
    out = tmp_path / "from the command.safetensors"
    words = shlex.split(merge_command(plan, out))
    assert words[:2] == ["lwmm", "merge"]
    rc, _, err = _run(words[1:], capsys)
    assert rc == 0, err
    written, expected = load_checkpoint(out).tensors, plan.run()
    assert written.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(written[name], value, rtol=0, atol=0, msg=name)


def test_a_sub_model_choice_applies_to_the_files_that_have_sub_models(
    two: list[Path], tmp_path: Path, capsys
) -> None:
    """``--submodel ema_model`` reads the teacher of a DAFormer file beside a plain one (and a
    plain base), is recorded per input and in the lab's command, and is refused where no file
    has sub-models."""
    daformer = daformer_checkpoint(tmp_path / "daformer.pth", two[1], teacher=two[0])
    pool = Pool([two[1], daformer], device="cpu", submodel="ema_model", base=two[0])
    assert [ck.submodel for ck in pool.checkpoints] == [None, "ema_model"]
    teacher = load_checkpoint(two[0]).tensors
    assert all(torch.equal(v, teacher[k]) for k, v in pool.checkpoints[1].tensors.items())
    plan = make_plan(pool, alpha=0.3, start=2)
    inputs = plan.provenance()["inputs"]
    assert [record.get("submodel") for record in inputs] == [None, "ema_model"]
    out = tmp_path / "from the command.safetensors"
    rc, _, err = _run(shlex.split(merge_command(plan, out))[1:], capsys)
    assert rc == 0, err
    written = load_checkpoint(out).tensors
    for name, value in plan.run().items():
        assert torch.equal(written[name], value), name
    loaded_first = Pool([load_checkpoint(daformer, "ema_model"), two[1]], device="cpu")
    assert "--submodel ema_model" in merge_command(make_plan(loaded_first), out)
    rc, _, err = _run(
        ["merge", *two, "--submodel", "ema_model", "-o", tmp_path / "x.safetensors"], capsys
    )
    assert rc == 1 and err.count("\n") == 1
    assert "submodel='ema_model': no sub-model prefixes" in err and "m1.safetensors" in err


def test_convert_gives_a_state_dict_its_model_spec(two: list[Path], tmp_path: Path, capsys) -> None:
    """A ``torch.save`` of a state dict (nested, with DataParallel's ``module.``) says no
    model: every command refuses it until ``lwmm convert`` writes a copy that carries the
    spec (given as JSON, or taken from a checkpoint that has it) and the training size. The
    copy is the same model, with its source's sha256; the source is left as it was."""
    model = perturbed_model(TINY, 3)
    pickle = tmp_path / "mine.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, pickle)
    before = pickle.read_bytes()
    rc, _, err = _run(["eval", pickle, "--images", "1"], capsys)
    assert rc == 1 and "no model spec" in err and "lwmm convert CKPT --spec JSON" in err
    rc, _, err = _run(["sweep", pickle, two[0], "--images", "1", "--no-cache"], capsys)
    assert rc == 1 and err.startswith(f"lwmm: error: {pickle}: no model spec"), "before the bar"
    out = tmp_path / "mine.safetensors"
    rc, stdout, err = _run(
        ["convert", pickle, "--spec", TINY.to_json(), "--size", "32", "64", "-o", out], capsys
    )
    assert rc == 0, err
    assert stdout.startswith(f"wrote {out}: ") and str(TINY) in stdout
    converted = load_checkpoint(out)
    assert converted.spec == TINY and converted.resolution == (32, 64)
    assert converted.provenance["converted_from"]["sha256"] == sha256(pickle)
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_model(out, "cpu")(x), model.eval()(x), rtol=0, atol=0)
    taken = tmp_path / "taken.safetensors"
    rc, _, err = _run(["convert", pickle, "--spec", two[0], "-o", taken], capsys)
    assert rc == 0, err
    assert load_checkpoint(taken).spec == TINY
    rc, _, err = _run(["eval", taken, "--images", "1"], capsys)
    assert rc == 0, err
    assert pickle.read_bytes() == before
    foreign = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, foreign)
    rc, _, err = _run(["convert", foreign, "--spec", two[0], "-o", out], capsys)
    assert rc == 0 and err == "", "the spec gives the key order the file lacks: no warning"
    assert list(load_checkpoint(out).tensors) == list(model.state_dict()), "the model's order"


def test_foreign_file_warns_on_one_line(two: list[Path], tmp_path: Path, capsys) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file(dict(load_checkpoint(two[0]).tensors), foreign)
    rc, out, err = _run(["inspect", foreign, two[1]], capsys)
    assert rc == 0
    assert err.startswith("lwmm: warning: ") and "depth order is unknown" in err
    assert "note: depth order unknown: the anchor" in out
    rc, out, err = _run(["discrepancy", foreign, two[1]], capsys)
    assert rc == 0 and "note: depth order unknown: the reference" in out


def test_a_reader_that_stops_reading_gets_no_traceback(two: list[Path]) -> None:
    """``lwmm inspect ... | head -1``: the pipe closes before the plan is written."""
    command = [sys.executable, "-m", "lwmm_lab.cli", "inspect", *map(str, two)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    err = process.stderr.read()
    assert (process.wait(), err) == (1, "")


@pytest.mark.parametrize("command", ["merge", "sweep", "interpolate"])
def test_size_help_names_the_size_used(command: str, capsys) -> None:
    """``--size``'s help names the size a checkpoint that records none is read at."""
    from lwmm_lab.engine.checkpoints import DEFAULT_RESOLUTION

    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "records, else {} {})".format(*DEFAULT_RESOLUTION) in help_text


def test_registry_options_list_and_check_their_names(two: list[Path], capsys) -> None:
    """``--method`` and ``--bn`` read the registries only when needed, and still list every
    name in their help and refuse one that is not there."""
    from lwmm_lab import BN_RULES, METHODS

    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"merge method (layerwise): {', '.join(METHODS)}" in help_text
    assert f"BN statistics rule (linear): {', '.join(BN_RULES)}" in help_text
    with pytest.raises(SystemExit):
        main(["merge", *map(str, two), "--method", "nope", "-o", "m.safetensors"])
    assert "argument --method: invalid choice: 'nope'" in capsys.readouterr().err


def test_every_option_of_every_command_says_what_it_is() -> None:
    """``lwmm COMMAND --help`` explains each argument: none is listed bare."""
    from argparse import _HelpAction, _SubParsersAction, _VersionAction

    from lwmm_lab.cli import build_parser

    bare, parsers = [], [("lwmm", build_parser())]
    while parsers:
        name, parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, _SubParsersAction):
                parsers += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
            elif not isinstance(action, _HelpAction | _VersionAction) and not action.help:
                bare.append(f"{name} {action.option_strings or action.dest}")
    assert not bare, f"arguments without help: {bare}"
