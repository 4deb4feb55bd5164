"""The one exception lwmm_lab raises for bad input, the checks every count and image size pass
where it enters, and the warning for an unknown depth order."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager


class LwmmError(Exception):
    """Bad input: a message of one line that names the file, key or value and what is wrong.

    The CLI prints it as ``lwmm: error: <message>`` and exits with status 1, without a traceback.
    """


class DepthOrderWarning(UserWarning):
    """A checkpoint does not say in which order its tensors sit in the model.

    The layer-wise schedule needs the model's ``state_dict`` order; a foreign safetensors file
    without a model spec only gives its keys sorted (``decoder.*`` before ``encoder.*``).
    """


@contextmanager
def naming(source: str) -> Iterator[None]:
    """An :class:`LwmmError` raised inside is prefixed with ``source``: the file whose content
    it is about, where the code that raised it (a model spec's build) knows of no file."""
    try:
        yield
    except LwmmError as e:
        raise LwmmError(f"{source}: {e}") from None


def unknown_name(name: str, known: Sequence[str], what: str, listed: str) -> LwmmError:
    """The error for ``name``, which is not among ``known``: it says which it most resembles
    (``'alpah'`` -> ``alpha``) and lists them all under ``listed``."""
    close = did_you_mean(name, known)
    hint = f"did you mean '{close}'? " if close else ""
    return LwmmError(f"'{name}' is not {what} ({hint}{listed}: {', '.join(known)})")


def check_name(name: str, known: Iterable[str], what: str) -> str:
    """``name`` when it is one of ``known``; else an :class:`LwmmError`: ``what 'name' is not
    one of a, b, c``, with the one it most resembles (``'minet'`` -> ``minent``)."""
    known = list(known)
    if isinstance(name, str) and name in known:
        return name
    close = did_you_mean(name, known)
    hint = f" (did you mean '{close}'?)" if close else ""
    shown = f"'{name}'" if isinstance(name, str) else repr(name)
    raise LwmmError(f"{what} {shown} is not one of {', '.join(known)}{hint}")


def did_you_mean(name: object, known: Sequence[str]) -> str | None:
    """The one of ``known`` that ``name`` most resembles, if any is close (difflib)."""
    close = difflib.get_close_matches(name, known, n=1) if isinstance(name, str) else []
    return close[0] if close else None


def check_names(names: str | Iterable[str], known: Iterable[str], what: str) -> list[str]:
    """One name or a list of them (``methods="layerwise"`` or ``["isotropic", "layerwise"]``),
    each checked by :func:`check_name`, before any work (see :func:`name_list`)."""
    known = list(known)
    return [check_name(n, known, what) for n in name_list(names, what, ", ".join(known))]


def name_list(names: str | Iterable[str], what: str, choices: str) -> list[str]:
    """``names`` as a list: a string is one name, not a list of letters, and an empty list is
    refused, naming the ``choices``: there would be nothing to compute."""
    if isinstance(names, str):
        return [names]
    if not isinstance(names, Iterable):
        raise LwmmError(f"{what}: give a name or a list of names, not {names!r}")
    names = list(names)
    if not names:
        raise LwmmError(f"no {what} given (pick from {choices})")
    return names


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    one-line report quotes of an error raised deep inside a library."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_whole(name: str, value: int) -> int:
    """``value`` as an int when it is a whole number (an int, a numpy integer or an integral
    float, not a bool); else an :class:`LwmmError` naming it, where ``int`` would truncate."""
    if not _whole(value):
        raise LwmmError(f"{name}={value!r} is not a whole number")
    return int(value)


def check_count(name: str, value: int) -> int:
    """``value`` as an int when it is a whole number >= 1 (images, scenes, workers); else an
    :class:`LwmmError` naming it. Zero images would score nothing and print empty tables."""
    count = check_whole(name, value)
    if count < 1:
        raise LwmmError(f"{name}={value}: give at least 1")
    return count


def check_seed(value: int) -> int:
    """``value`` as an int when it is a whole number >= 0; else an :class:`LwmmError` naming it
    (numpy's seed sequences take no negative entropy)."""
    seed = check_whole("seed", value)
    if seed < 0:
        raise LwmmError(f"seed={value}: give 0 or a positive whole number")
    return seed


def check_image_size(size: Sequence[int]) -> tuple[int, int]:
    """``size`` as ``(height, width)`` when both are whole numbers >= 1; else an
    :class:`LwmmError` naming it (an empty image fails deep inside OpenCV otherwise)."""
    try:
        values = [] if isinstance(size, str) else list(size)
    except TypeError:  # a number, or None
        values = []
    if len(values) != 2 or not all(_whole(v) and v >= 1 for v in values):
        shown = " x ".join(map(str, values)) if values else repr(size)
        raise LwmmError(f"image size {shown}: give a height and a width, whole numbers >= 1")
    return int(values[0]), int(values[1])


def check_numbers(name: str, values: Iterable[float]) -> list[float]:
    """``values`` as a list of floats when it is a list of finite numbers; else an
    :class:`LwmmError` naming it (a string is a sequence of characters, each taken for one)."""
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise LwmmError(f"{name}={values!r}: give a list of numbers")
    return [check_finite(name, v) for v in values]


def check_finite(name: str, value: float) -> float:
    """``value`` as a float when it is a finite number (not a string or a bool, which would
    travel on as they are); else an :class:`LwmmError` naming it (a NaN knob would write a
    file of NaNs without a word)."""
    try:
        if isinstance(value, str | bytes | bool):  # float() reads "0.5" and True
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise LwmmError(f"{name}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise LwmmError(f"{name}={value} is not a finite number")
    return number


def _whole(value: object) -> bool:
    """An int, a numpy integer or an integral float; not a bool, NaN or infinity."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value) and value == int(value)
