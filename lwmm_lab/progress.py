"""Progress bars: tqdm.auto's, except in a lab panel's work, where they are the panel's own line.

A panel works in a background thread (:mod:`lwmm_lab.lab.panel`), and Jupyter sends a
thread's output to the cell run last, not to the panel: a Fisher estimate or a full-val score
started from the MergeLab would draw its bar under whatever cell the student ran since. So
every bar lwmm draws is made by :func:`progress_bar`, and a panel runs its work inside
:func:`shown_by`, which hands that thread's bars to the panel as lines of text.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tqdm import std
from tqdm.auto import tqdm

#: What :func:`progress_bar` returns, whichever kind it makes.
Bar = std.tqdm
#: A function given each line of a bar's text, and None when a bar that does not stay closes.
Show = Callable[[str | None], None]

_thread = threading.local()


def progress_bar(*args: Any, **kwargs: Any) -> Bar:
    """A tqdm bar (same arguments): tqdm.auto's, or in a thread under :func:`shown_by`, one
    drawn as text by that function's ``show``."""
    show = getattr(_thread, "show", None)
    if show is None:
        return tqdm(*args, **kwargs)
    return _LineBar(*args, show=show, **kwargs)


@contextlib.contextmanager
def shown_by(show: Show) -> Iterator[None]:
    """Within, the bars this thread makes call ``show`` with their text instead of drawing
    themselves (and with None as one that does not stay closes)."""
    before = getattr(_thread, "show", None)
    _thread.show = show
    try:
        yield
    finally:
        _thread.show = before


class _LineBar(std.tqdm):
    """A bar whose every redraw is one call of ``show``: tqdm's text meter, or None where
    tqdm would clear the bar (a bar with ``leave=False`` closing)."""

    def __init__(self, *args: Any, show: Show, **kwargs: Any) -> None:
        self._show = show
        kwargs.setdefault("ascii", False)  # block characters: the text is shown as HTML
        super().__init__(*args, file=io.StringIO(), **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        self._show(self.__str__() if msg is None else msg or None)
        return True
