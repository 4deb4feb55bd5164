"""Progress bars: tqdm.auto's, except in a lab panel's work, where they are the panel's own line.

A panel works in a background thread (:mod:`lwmm_lab.lab.panel`), and Jupyter sends a
thread's output to the cell run last, not to the panel: a Fisher estimate or a full-val score
started from the MergeLab would draw its bar under whatever cell the student ran since. So
every bar lwmm draws is made by :func:`progress_bar`, and a panel runs its work inside
:func:`shown_by`, which hands that thread's bars to the panel as lines of text, and its
warnings (a file that stores no depth order, say) too.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
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
def shown_by(show: Show, warn: Callable[[Warning | str], None] | None = None) -> Iterator[None]:
    """Within, the bars this thread makes call ``show`` with their text instead of drawing
    themselves (and with None as one that does not stay closes); with ``warn``, the warnings
    this thread shows are passed to it instead of printed. Other threads' bars and warnings
    go where they went, and Python's filters still decide which warnings are shown (by
    default, not one already shown from the same line)."""
    if warn is not None and not getattr(warnings.showwarning, "by_thread", False):
        _route_warnings(warnings.showwarning)
    before = getattr(_thread, "show", None), getattr(_thread, "warn", None)
    _thread.show, _thread.warn = show, warn
    try:
        yield
    finally:
        _thread.show, _thread.warn = before


def _route_warnings(elsewhere: Callable[..., None]) -> None:
    """Make ``warnings.showwarning`` pass a thread's warnings to its :func:`shown_by`'s
    ``warn``, the others to ``elsewhere`` (the function it had). Whoever sets their own
    (``warnings.catch_warnings`` on leaving, say) replaces this; the next ``shown_by``
    routes again."""

    def showwarning(message: Warning | str, category: type[Warning], *where: Any) -> None:
        warn = getattr(_thread, "warn", None)
        if warn is None:
            elsewhere(message, category, *where)
        else:
            warn(message)

    showwarning.by_thread = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


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
