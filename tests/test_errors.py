"""The checks every count, image size and knob pass where they enter lwmm_lab."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lwmm_lab.data.domains import generate
from lwmm_lab.errors import LwmmError, check_count, check_finite, check_image_size, check_seed


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
