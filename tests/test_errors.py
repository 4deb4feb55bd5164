"""The checks every count, image size and knob pass where they enter lwmm_lab."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lwmm_lab import Checkpoint, Pool, make_plan, merge, merged_model, save_merge
from lwmm_lab.analysis.comparison import compare
from lwmm_lab.analysis.discrepancy import bn_divergence, discrepancy, task_vector_cosine
from lwmm_lab.analysis.evaluation import evaluate_checkpoints
from lwmm_lab.analysis.sweeps import grid
from lwmm_lab.data.domains import generate
from lwmm_lab.errors import (
    LwmmError,
    check_count,
    check_finite,
    check_image_size,
    check_name,
    check_names,
    check_seed,
)
from lwmm_lab.files import sha256
from lwmm_lab.lab.merge_lab import MergeLab


@given(st.integers(-10, 10) | st.floats(allow_nan=True, allow_infinity=True))
def test_a_count_is_a_whole_number_of_at_least_one(value: float) -> None:
    whole = math.isfinite(value) and value == int(value)
    if whole and value >= 1:
        assert check_count("images", value) == value
        assert isinstance(check_count("images", value), int)
    else:
        with pytest.raises(LwmmError, match=r"^images="):
            check_count("images", value)


def test_counts_refuse_bools_and_strings_and_take_numpy_integers() -> None:
    assert check_count("workers", np.int64(3)) == 3
    for bad in (True, "3", None, 2.5):
        with pytest.raises(LwmmError, match=r"^workers=.* is not a whole number"):
            check_count("workers", bad)


@given(st.integers(-(2**40), 2**40) | st.floats(-10, 10))
def test_a_seed_is_a_whole_number_of_at_least_zero(value: float) -> None:
    if value == int(value) and value >= 0:
        assert check_seed(value) == value and isinstance(check_seed(value), int)
    else:
        with pytest.raises(LwmmError, match=r"^seed="):
            check_seed(value)


def test_a_negative_seed_is_refused_where_scenes_are_drawn() -> None:
    """numpy's seed sequences take no negative entropy: refused by name, not deep in numpy."""
    with pytest.raises(LwmmError, match=r"^seed=-1: give 0 or a positive whole number"):
        generate("real", "val", 0, seed=-1, size=(8, 16))
    for index, says in ((-1, "index=-1: give 0 or"), (1.5, r"index=1\.5 is not a whole")):
        with pytest.raises(LwmmError, match=f"^{says}"):  # were numpy's ValueError, TypeError
            generate("real", "val", index, size=(8, 16))
    with pytest.raises(LwmmError, match=r"^image size 0 x 16"):
        generate("real", "val", 0, size=(0, 16))


@given(st.lists(st.integers(-3, 40), min_size=1, max_size=3))
def test_an_image_size_is_two_whole_sides_of_at_least_one(size: list[int]) -> None:
    if len(size) == 2 and min(size) >= 1:
        assert check_image_size(size) == tuple(size)
    else:
        with pytest.raises(LwmmError, match=f"image size {' x '.join(map(str, size))}: give"):
            check_image_size(size)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_a_knob_is_a_finite_number(value: float) -> None:
    if math.isfinite(value):
        assert check_finite("scale", value) == value
    else:
        with pytest.raises(LwmmError, match=r"^scale=.* is not a finite number"):
            check_finite("scale", value)


def test_an_image_size_given_as_one_string_or_number_is_named_whole() -> None:
    for bad, shown in (("96x192", "'96x192'"), (96, "96"), (None, "None")):
        with pytest.raises(LwmmError, match=f"^image size {shown}: give a height and a width"):
            check_image_size(bad)
    assert check_image_size(np.array([4, 8])) == (4, 8)


def test_a_lone_path_where_a_list_of_files_goes_is_refused_everywhere(tmp_path: Path) -> None:
    """A string is a sequence of characters, each of which was taken for a file ("/: not an
    smp save_pretrained directory"); the API's entry points take it as what it is."""
    path = str(tmp_path / "m.safetensors")
    calls = {
        "checkpoints": (
            lambda: Pool(path, device="cpu"),
            lambda: evaluate_checkpoints(path),
            lambda: grid(path),
            lambda: MergeLab(path),
        ),
        "each group": (lambda: compare([path]),),
        "fisher": (lambda: Pool([path], device="cpu", fisher=path),),
    }
    for what, entries in calls.items():
        for call in entries:
            with pytest.raises(LwmmError, match=rf"^{what}: give a list of checkpoint files, not"):
                call()
    for item, says in (
        (None, "got a NoneType where a checkpoint or a path goes"),
        ({"w": torch.ones(1)}, r"got a dict .* \(wrap a state dict as Checkpoint\(state_dict\)\)"),
    ):
        with pytest.raises(LwmmError, match=f"^checkpoints: {says}"):
            Pool([Checkpoint({"w": torch.ones(1)}), item], device="cpu")
    with pytest.raises(LwmmError, match=r"^checkpoints: got a Checkpoint where a path goes"):
        evaluate_checkpoints([Checkpoint({"w": torch.ones(1)})])


def test_a_name_is_checked_against_its_choices_with_the_closest_named() -> None:
    known = ("isotropic", "layerwise", "ties")
    assert check_name("ties", known, "method") == "ties"
    with pytest.raises(
        LwmmError,
        match=r"^method 'isotropc' is not one of isotropic, layerwise, ties "
        r"\(did you mean 'isotropic'\?\)$",
    ):
        check_name("isotropc", known, "method")
    with pytest.raises(
        LwmmError, match=r"^method 'mean' is not one of isotropic, layerwise, ties$"
    ):
        check_name("mean", known, "method")
    with pytest.raises(LwmmError, match=r"^method \['ties'\] is not one of"):  # was unhashable
        check_name(["ties"], dict.fromkeys(known), "method")


def test_a_list_of_names_takes_one_name_as_itself_not_its_letters() -> None:
    """``methods="isotropic"`` was read letter by letter: "method 'i' is not one of ..."."""
    known = ("real", "foggy", "night")
    assert check_names("real", known, "domain") == ["real"]
    assert check_names(("night", "real"), known, "domain") == ["night", "real"]
    for bad, says in (
        (
            ["real", "fogy"],
            r"^domain 'fogy' is not one of real, foggy, night \(did you mean 'foggy'",
        ),
        ([], r"^no domain given \(pick from real, foggy, night\)"),
        (3, r"^domain: give a name or a list of names, not 3"),
    ):
        with pytest.raises(LwmmError, match=says):
            check_names(bad, known, "domain")


def test_a_content_hash_reads_a_folder_checkpoint_and_names_a_missing_file(tmp_path: Path) -> None:
    """Sweep and Fisher caches are keyed by content: an smp save_pretrained folder gave an
    IsADirectoryError, a missing file a FileNotFoundError."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"1")
    before = sha256(folder)
    assert before == sha256(folder) and len(before) == 64
    (folder / "model.safetensors").write_bytes(b"2")
    assert sha256(folder) != before, "a folder's hash follows its files' content"
    with pytest.raises(LwmmError, match=r"missing\.safetensors: cannot read it \(No such file"):
        sha256(tmp_path / "missing.safetensors")


def test_files_where_a_pool_goes_are_refused_saying_how_to_make_one(tmp_path: Path) -> None:
    """``merged_model(["a.pt", "b.pt"])`` and the analyses of a pool failed on a pool's field
    (``'list' object has no attribute 'anchor_index'``)."""
    files = [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    for call, args in (
        (make_plan, (files,)),
        (merge, (files,)),
        (merged_model, (files,)),
        (save_merge, (files, tmp_path / "m.safetensors")),
        (discrepancy, (files,)),
        (bn_divergence, (files,)),
        (task_vector_cosine, (files,)),
    ):
        with pytest.raises(LwmmError, match=r"^a list is given where a Pool goes; Pool\(checkp"):
            call(*args)
