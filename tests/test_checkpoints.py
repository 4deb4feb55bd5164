"""Reading and writing checkpoints: formats, layouts, metadata, order, atomic writes, refusals."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from lwmm_lab import (
    Checkpoint,
    DepthOrderWarning,
    LwmmError,
    ModelSpec,
    Pool,
    load_checkpoint,
    load_model,
    make_plan,
    save_checkpoint,
)
from lwmm_lab.engine.checkpoints import DEFAULT_RESOLUTION, peek_checkpoint
from lwmm_lab.files import atomic_path
from lwmm_lab.fixtures import cityscapes_folder, daformer_checkpoint, smp_directory

from .conftest import TINY, Payload, perturbed_model


def test_smp_model_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = perturbed_model(TINY, 1, counts=7)
    path = save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), TINY)
    again = load_model(path, device="cpu")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again(x))
    assert again.state_dict()["encoder.model.bn1.num_batches_tracked"].item() == 7


def test_saved_file_keeps_model_order_and_spec(tmp_path: Path) -> None:
    model = perturbed_model(TINY, 2)
    path = save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), TINY, {"note": "x"})
    ckpt = load_checkpoint(path)
    assert list(ckpt.tensors) == list(model.state_dict())
    assert next(iter(ckpt.tensors)).startswith("encoder.")
    assert ckpt.spec == TINY and ckpt.order_known
    assert ckpt.provenance == {"note": "x"}
    upper = save_checkpoint(tmp_path / "M.SAFETENSORS", model.state_dict(), TINY)
    assert list(load_checkpoint(upper).tensors) == list(ckpt.tensors), "what is written reads back"


def test_foreign_safetensors_order_unknown_warns_and_plan_says_so(tmp_path: Path) -> None:
    sd = perturbed_model(TINY, 3).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "foreign.safetensors")
    with pytest.warns(DepthOrderWarning, match="foreign.safetensors"):
        ckpt = load_checkpoint(tmp_path / "foreign.safetensors")
    assert not ckpt.order_known
    assert next(iter(ckpt.tensors)).startswith("decoder."), "sorted keys put decoder first"
    plan = make_plan(Pool([ckpt, ckpt], device="cpu"))
    assert any("depth order unknown" in note for note in plan.notes())
    assert "depth order unknown" in plan.format()


def test_smp_save_pretrained_directory(tmp_path: Path) -> None:
    model = perturbed_model(TINY, 4)
    model.save_pretrained(tmp_path / "smpdir")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DepthOrderWarning)
        ckpt = load_checkpoint(tmp_path / "smpdir")
    assert ckpt.spec.arch == "Unet" and ckpt.spec.encoder == "tu-resnet10t"
    assert list(ckpt.tensors) == list(model.state_dict()), "order comes from the config's spec"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), load_model(tmp_path / "smpdir", device="cpu")(x))


def _mmseg_file(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    subs = {
        p: perturbed_model(TINY, i).state_dict()
        for i, p in enumerate(("model", "ema_model", "imnet_model"))
    }
    state = {f"{p}.{k}": v for p, sd in subs.items() for k, v in sd.items()}
    optimizer = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 6e-5}]}
    torch.save(
        {
            "meta": {"iter": 40000, "CLASSES": ("road", "car")},
            "state_dict": state,
            "optimizer": optimizer,
        },
        path,
    )
    return subs


@pytest.mark.parametrize("submodel", [None, "model", "ema_model", "imnet_model"])
def test_mmseg_daformer_nested_checkpoint(tmp_path: Path, submodel: str | None) -> None:
    subs = _mmseg_file(tmp_path / "iter_40000.pth")
    ckpt = load_checkpoint(tmp_path / "iter_40000.pth", submodel=submodel)
    expected = subs[submodel or "model"]
    assert list(ckpt.tensors) == list(expected), "pickle order is kept"
    assert all(torch.equal(ckpt.tensors[k], v) for k, v in expected.items())


def test_missing_submodel_is_named(tmp_path: Path) -> None:
    sd = perturbed_model(TINY, 0).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "a.pth")
    with pytest.raises(LwmmError, match=r"a\.pth: no sub-model 'ema_model\.' \(it has: model\)"):
        load_checkpoint(tmp_path / "a.pth", submodel="ema_model")


@pytest.mark.parametrize(
    "layout",
    [
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"model": sd, "optimizer": {"param_groups": []}},
        lambda sd: {
            "epoch": 3,
            "global_step": 1200,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{k}": v for k, v in sd.items()},
            "optimizer_states": [{"state": {0: {"momentum_buffer": torch.ones(2)}}}],
            "lr_schedulers": [],
            "hyper_parameters": {"lr": 0.01, "arch": "Unet"},
        },
    ],
    ids=["dataparallel", "maxsquare", "model-key", "lightning"],
)
def test_pickle_layouts(tmp_path: Path, layout) -> None:
    """The layouts training code saves, each read back as the model's own state dict (a
    Lightning module's ``.ckpt``: its ``model.`` attribute's tensors among the loop's state)."""
    sd = perturbed_model(TINY, 5).state_dict()
    suffix = ".ckpt" if "pytorch-lightning_version" in layout({}) else ".pt"
    torch.save(layout(sd), tmp_path / f"c{suffix}")
    ckpt = load_checkpoint(tmp_path / f"c{suffix}")
    assert list(ckpt.tensors) == list(sd)
    assert all(torch.equal(ckpt.tensors[k], v) for k, v in sd.items())


def test_code_bearing_pickle_is_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2), "obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(LwmmError, match=r"evil\.pt: refused: this pickle needs code") as e:
        load_checkpoint(tmp_path / "evil.pt")
    assert "Payload" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_and_garbage_files(tmp_path: Path, suffix: str) -> None:
    good = tmp_path / f"good{suffix}"
    sd = {"w": torch.randn(64, 64)}
    save_checkpoint(good, sd) if suffix == ".safetensors" else torch.save(sd, good)
    for name, data in (("trunc", good.read_bytes()[:-100]), ("garbage", b"\x00garbage" * 50)):
        bad = tmp_path / f"{name}{suffix}"
        bad.write_bytes(data)
        with pytest.raises(LwmmError, match=rf"{name}\{suffix}: not a readable") as e:
            load_checkpoint(bad)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("m.safetensors", b"", "the file is empty"),
        ("m.pt", b"  \n\n", "it holds only blank space"),
        (
            "m.safetensors",
            b"version https://git-lfs.github.com/spec/v1\noid sha256:0f\nsize 9\n",
            "it is a Git LFS pointer, not weights; fetch the files with `git lfs pull`",
        ),
        ("m.pth", b"<!DOCTYPE html>\n<html><body>Sign in</body></html>", "it is a web page"),
        ("m.ckpt", b"model weights go here\n", "it is text, not weights: 'model weights go here'"),
        ("m.pt", "good.safetensors", "it is a safetensors file; name it .safetensors"),
        ("m.safetensors", "good.pt", "it is a torch.save archive; name it .pt"),
        ("m.safetensors", ("good.safetensors", 20), "truncated: 20 bytes, and its header alone"),
        (
            "m.safetensors",
            ("good.safetensors", -100),
            r"truncated: \d+ of the \d+ bytes its header describes",
        ),
    ],
    ids=[
        "empty",
        "blank",
        "lfs",
        "html",
        "text",
        "safetensors.pt",
        "pt.safetensors",
        "cut-header",
        "cut-data",
    ],
)
def test_a_file_that_holds_no_weights_says_what_it_holds(
    tmp_path: Path, name: str, data: bytes | str | tuple[str, int], says: str
) -> None:
    """The failures users meet most (a clone without git-lfs, a download that fetched a web
    page, a misnamed file, a copy cut off) are each named as such, not as the reader's error
    (safetensors' "invalid header length", torch's "KeyError: 101")."""
    sd = {"w": torch.randn(64, 64)}
    save_checkpoint(tmp_path / "good.safetensors", sd)
    torch.save(sd, tmp_path / "good.pt")
    if isinstance(data, tuple):
        data = (tmp_path / data[0]).read_bytes()[: data[1]]
    elif isinstance(data, str):
        data = (tmp_path / data).read_bytes()
    (tmp_path / name).write_bytes(data)
    with pytest.raises(LwmmError) as e:
        load_checkpoint(tmp_path / name)
    assert str(e.value).startswith(f"{tmp_path / name}: not a readable ")
    assert re.search(says, str(e.value)) and "\n" not in str(e.value), str(e.value)


def test_bytes_that_are_not_utf8_are_not_called_text(tmp_path: Path) -> None:
    """Binary garbage keeps the reader's own error: only a file that decodes as UTF-8 (and
    holds no control bytes) is said to be text."""
    (tmp_path / "m.pt").write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(LwmmError, match=r"m\.pt: not a readable PyTorch checkpoint") as e:
        load_checkpoint(tmp_path / "m.pt")
    assert "text" not in str(e.value)


@pytest.fixture(scope="module")
def good_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The bytes of one small checkpoint (a float and an integer tensor) in each format:
    safetensors, torch's zip pickle (``.pt``) and its older plain pickle (``.pth``)."""
    folder = tmp_path_factory.mktemp("good")
    sd = {"a.weight": torch.randn(8, 8), "a.num_batches_tracked": torch.tensor(3)}
    save_checkpoint(folder / "g.safetensors", sd)
    torch.save(sd, folder / "g.pt")
    torch.save(sd, folder / "g.pth", _use_new_zipfile_serialization=False)
    return {path.suffix: path.read_bytes() for path in folder.iterdir()}


@given(
    suffix=st.sampled_from([".safetensors", ".pt", ".pth"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
)
def test_a_damaged_file_loads_or_is_refused_in_one_line(
    good_files: dict[str, bytes],
    tmp_path_factory: pytest.TempPathFactory,
    suffix: str,
    cut: float,
    flips: list[tuple[float, int]],
) -> None:
    """A file cut short or with bytes changed anywhere (a bad download, a full disk) gives
    either a checkpoint or one :class:`LwmmError` line naming the file: never an exception
    from deep inside the unpickler or the safetensors reader."""
    data = bytearray(good_files[suffix][: max(1, round(cut * len(good_files[suffix])))])
    for where, value in flips:
        data[min(len(data) - 1, int(where * len(data)))] = value
    path = tmp_path_factory.mktemp("damaged") / f"damaged{suffix}"
    path.write_bytes(bytes(data))
    for read in (load_checkpoint, peek_checkpoint):
        with warnings.catch_warnings(record=True) as leaked:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", DepthOrderWarning)
            try:
                read(path)
            except LwmmError as e:
                assert str(e).startswith(str(path)) and "\n" not in str(e)
        assert not leaked, [str(w.message) for w in leaked]


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_pickle_of_a_newer_protocol_is_refused_naming_it(
    tmp_path: Path, zip_format: bool
) -> None:
    """torch's weights-only reader follows pickle protocols 2 and 3, not 4 and 5 (which
    ``torch.save`` writes when asked, e.g. for objects over 4 GB): the error names the protocol
    in one line, and torch's own note on the protocol does not leak out."""
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"p{protocol}.pt"
        sd = {"w": torch.ones(2)}
        torch.save(sd, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
        with warnings.catch_warnings(record=True) as leaked:
            warnings.simplefilter("always")
            if protocol <= 3:
                assert torch.equal(load_checkpoint(path).tensors["w"], sd["w"])
            else:
                with pytest.raises(
                    LwmmError,
                    match=rf"p{protocol}\.pt: saved with pickle protocol {protocol}, .*safetensors",
                ) as e:
                    load_checkpoint(path)
                assert "\n" not in str(e.value)
        assert not leaked, [str(w.message) for w in leaked]


def test_nan_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    save_checkpoint(
        tmp_path / "n.safetensors",
        {"a": torch.ones(3), "b.weight": torch.tensor([1.0, float("nan")])},
    )
    with pytest.raises(LwmmError, match=r"n\.safetensors: tensor 'b\.weight' contains NaN or Inf"):
        load_checkpoint(tmp_path / "n.safetensors")
    bad = Checkpoint({"a": torch.tensor([float("inf")])})
    with pytest.raises(LwmmError, match="tensor 'a' contains NaN or Inf"):
        Pool([bad], device="cpu")


def test_other_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(LwmmError, match=r"nope\.pt: no such file"):
        load_checkpoint(tmp_path / "nope.pt")
    for bad, says in ((None, "a NoneType$"), ({"w": torch.ones(1)}, r"a dict \(wrap a state")):
        with pytest.raises(LwmmError, match=f"a checkpoint is read from a path, not {says}"):
            load_model(bad)  # was pathlib's TypeError, naming no argument
    (tmp_path / "x.onnx").write_bytes(b"1")
    with pytest.raises(LwmmError, match=r"x\.onnx: unknown checkpoint format"):
        load_checkpoint(tmp_path / "x.onnx")
    (tmp_path / "d").mkdir()
    with pytest.raises(LwmmError, match="not an smp save_pretrained directory"):
        load_checkpoint(tmp_path / "d")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(LwmmError, match=r"list\.pt: holds a list, not a state dict"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"w": torch.ones(2), "s": torch.eye(2).to_sparse()}, tmp_path / "sparse.pt")
    with pytest.raises(LwmmError, match=r"sparse\.pt: tensor 's' is sparse_coo; a merge"):
        load_checkpoint(tmp_path / "sparse.pt")
    with pytest.raises(LwmmError, match=r"a checkpoint is written as a \.safetensors file"):
        save_checkpoint(tmp_path / "out.pt", {"a": torch.ones(1)})


def test_writes_are_atomic_and_protect_inputs(tmp_path: Path) -> None:
    target = save_checkpoint(tmp_path / "m.safetensors", {"a": torch.ones(3)})
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"], "no temp file left behind"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask(), "the usual file mode, not 0600"
    with pytest.raises(LwmmError, match="output is one of the inputs"):
        save_checkpoint(tmp_path / "." / "m.safetensors", {"a": torch.zeros(3)}, protect=(target,))
    assert target.read_bytes() == before


def test_a_checkpoint_holds_tensors_and_is_written_with_tied_ones(tmp_path: Path) -> None:
    """A list for a tensor, None for the tensors or a string for the spec failed deep inside a
    merge or a write (AttributeErrors); tied weights (two names, one memory) were refused by
    safetensors, and provenance that is not JSON data was a TypeError."""
    for make, says in (
        (lambda: Checkpoint({"w": [1.0, 2.0]}), r"^Checkpoint: 'w' holds a list, not a tensor"),
        (lambda: Checkpoint(None), r"^Checkpoint: tensors are a NoneType, not names -> tensors"),
        (lambda: Checkpoint({}, spec="Unet"), r"^Checkpoint: spec='Unet' is not a ModelSpec"),
        (lambda: Checkpoint({}, path=3), r"^Checkpoint: path=3 is not a path"),
    ):
        with pytest.raises(LwmmError, match=says):
            make()
    assert Checkpoint({}, path="runs/a.pt").label == "a", "a path given as a string"
    out = tmp_path / "t.safetensors"
    for bad, says in (
        ({"tensors": {"w": 1.0}}, "'w' holds a float, not a tensor"),
        ({"tensors": {}, "spec": "Unet"}, "spec='Unet' is not a ModelSpec"),
        ({"tensors": {}, "provenance": {"x": object()}}, "provenance is not JSON data"),
    ):
        with pytest.raises(LwmmError, match=rf"t\.safetensors: {says}"):
            save_checkpoint(out, **bad)
    assert not out.exists()
    embedding = torch.arange(6.0).view(2, 3)
    tied = {
        "encoder.w": embedding,
        "head.w": embedding,
        "head.row": embedding[1],
        "b": torch.ones(2),
    }
    back = load_checkpoint(save_checkpoint(out, tied)).tensors
    assert list(back) == list(tied) and all(torch.equal(back[k], tied[k]) for k in tied)
    assert tied["head.w"] is embedding, "the caller's tensors are left as they are"


def test_the_stand_ins_never_replace_what_is_there(tmp_path: Path) -> None:
    """07_bring_your_own's stand-ins wrote over a file, or into a folder, given by mistake."""
    source = save_checkpoint(
        tmp_path / "m.safetensors", perturbed_model(TINY, 0).state_dict(), TINY
    )
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (tmp_path / "mine.pth").write_text("mine")
    for write in (
        lambda: daformer_checkpoint(tmp_path / "mine.pth", source),
        lambda: smp_directory(mine, source),
        lambda: cityscapes_folder(mine, images=1, size=(8, 16)),
    ):
        with pytest.raises(LwmmError, match=r"mine(\.pth)?: already exists; a stand-in is written"):
            write()
    assert (tmp_path / "mine.pth").read_text() == "mine" and os.listdir(mine) == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert (smp_directory(tmp_path / "empty", source) / "model.safetensors").is_file()
    student = load_checkpoint(daformer_checkpoint(tmp_path / "new" / "d.pth", source))
    assert set(student.tensors) == set(load_checkpoint(source).tensors), "the model. student"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_spec_metadata_errors_are_one_line(tmp_path: Path) -> None:
    save_file({"a": torch.ones(1)}, tmp_path / "s.safetensors", metadata={"lwmm.spec": "{not json"})
    with pytest.raises(LwmmError, match=r"s\.safetensors: malformed model spec"):
        load_checkpoint(tmp_path / "s.safetensors")
    two = {"a": torch.ones(1), "b": torch.ones(2)}
    for key, value, message in (
        ("lwmm.provenance", "[1, 2]", "metadata 'lwmm.provenance' is not a JSON object"),
        ("lwmm.order", '{"a": 1}', "metadata 'lwmm.order' is not a JSON list"),
        ("lwmm.order", '["a"]', "metadata 'lwmm.order' does not list tensor 'b'"),
    ):
        save_file(two, tmp_path / "m.safetensors", metadata={key: value})
        with pytest.raises(LwmmError, match=rf"m\.safetensors: {message}"):
            load_checkpoint(tmp_path / "m.safetensors")
    save_file(two, tmp_path / "m.safetensors", metadata={"lwmm.order": '["b", "a"]'})
    assert list(load_checkpoint(tmp_path / "m.safetensors").tensors) == ["b", "a"]
    spec = '{"arch": "Unet", "encoder": "tu-resnet10t", "classes": 0}'  # built, predicted nothing
    save_file(two, tmp_path / "z.safetensors", metadata={"lwmm.spec": spec})
    with pytest.raises(LwmmError, match=r"z\.safetensors: model spec: classes=0: give at least 1"):
        load_checkpoint(tmp_path / "z.safetensors")


def test_a_model_spec_describes_a_model_or_is_refused_by_field() -> None:
    """A class count of "5" failed in smp's string formatting, kwargs of None in dict.update,
    kwargs that are not JSON data only when the spec was written into a file."""
    assert ModelSpec("Unet", "tu-resnet10t", np.int64(5)).classes == 5
    for make, says in (
        (lambda: ModelSpec("Unet", "tu-resnet10t", "5"), r"classes='5' is not a whole number"),
        (lambda: ModelSpec("Unet", "tu-resnet10t", 0), "classes=0: give at least 1"),
        (lambda: ModelSpec("Unet", None, 5), "encoder=None is not a name"),
        (lambda: ModelSpec("Unet", "tu-resnet10t", 5, None), "kwargs=None: give a dict"),
        (lambda: ModelSpec("Unet", "tu-resnet10t", 5, {"x": object()}), "kwargs: not JSON data"),
    ):
        with pytest.raises(LwmmError, match=f"^model spec: {says}"):
            make()


def test_provenance_records_are_read_or_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    for provenance, resolution, label in (
        ({}, DEFAULT_RESOLUTION, "p"),
        ({"resolution": [96, 192], "zoo": {"run": "r", "step": 3}}, (96, 192), "r@3"),
        ({"zoo": "not a record"}, DEFAULT_RESOLUTION, "p"),
    ):
        save_file({"a": torch.ones(1)}, path, metadata={"lwmm.provenance": json.dumps(provenance)})
        ckpt = peek_checkpoint(path)
        assert (ckpt.resolution, ckpt.label) == (resolution, label)
    for resolution, shown in (("96x192", "'96x192'"), ([0, 10], "0 x 10"), ([96], "96")):
        metadata = {"lwmm.provenance": json.dumps({"resolution": resolution})}
        save_file({"a": torch.ones(1)}, path, metadata=metadata)
        with pytest.raises(LwmmError, match=rf"p\.safetensors: .* resolution: image size {shown}:"):
            _ = peek_checkpoint(path).resolution
    assert ModelSpec.from_json(TINY.to_json()) == TINY
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"classes": 3}))
    save_file({"a": torch.ones(1)}, tmp_path / "cfg" / "model.safetensors")
    with pytest.raises(
        LwmmError, match=r"config\.json: not an smp config \(missing _model_class, encoder_name\)"
    ):
        load_checkpoint(tmp_path / "cfg")


def test_a_spec_that_cannot_be_built_names_its_file(tmp_path: Path) -> None:
    """An encoder this timm does not know (a config from a newer one) is refused naming the
    file the spec came from, not with timm's bare RuntimeError."""
    model = perturbed_model(TINY, 0)
    model.save_pretrained(tmp_path / "smpdir")
    config = tmp_path / "smpdir" / "config.json"
    config.write_text(config.read_text().replace("tu-resnet10t", "tu-resnet10z"))
    with pytest.raises(LwmmError, match=r"smpdir/config\.json: model spec .* Unknown model"):
        load_checkpoint(tmp_path / "smpdir")
    unknown = ModelSpec("Unet", "tu-resnet10z", TINY.classes, TINY.kwargs)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    metadata = {"lwmm.spec": unknown.to_json(), "lwmm.order": json.dumps(list(tensors))}
    save_file(tensors, tmp_path / "m.safetensors", metadata=metadata)
    with pytest.raises(LwmmError, match=r"m\.safetensors: model spec .* Unknown model"):
        load_model(tmp_path / "m.safetensors", "cpu")
