"""What every lab panel shares: a worker that runs only the newest request, a status line, an
error box, self-display, and the redraw of a plotly FigureWidget.

Work runs in a background thread and only the newest request is computed: moving a slider
quickly never queues a backlog, and the kernel stays free to receive the next change. So each
panel's job does all that its controls ask, whichever control moved: a dropped job loses
nothing. ``background=False`` computes inline (for tests and scripts).

Errors are shown in the panel, those of the work and those of the event handlers alike (see
:func:`shows_errors`): bad input as its one line, anything else with its traceback folded
under it. So are the work's progress bars, after the status line, and the warnings it raises,
above its error (:mod:`lwmm_lab.progress`): Jupyter would put both under the cell run last,
as the work runs in a thread.
"""

from __future__ import annotations

import functools
import html
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import ipywidgets as W
import plotly.graph_objects as go
from traitlets import TraitError

from lwmm_lab.engine.checkpoints import peek_checkpoint
from lwmm_lab.errors import LwmmError, check_finite, check_whole, first_line, unknown_name
from lwmm_lab.progress import shown_by

P = TypeVar("P", bound="Panel")


class LatestOnly:
    """Run submitted jobs in one background thread, always the newest: older ones are dropped.

    With ``background=False`` a job runs at once, in the caller's thread.
    """

    def __init__(self, on_error: Callable[[BaseException], None], background: bool = True) -> None:
        self.on_error, self.background = on_error, background
        self._job: Callable[[], None] | None = None
        self._busy = False
        self._cv = threading.Condition()
        if background:
            threading.Thread(target=self._loop, daemon=True, name="lwmm-widgets").start()

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` next, in place of any job still waiting."""
        if not self.background:
            self._run(job)
            return
        with self._cv:
            self._job = job
            self._cv.notify_all()

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until nothing is pending or running; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self._job is None and not self._busy, timeout)

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._job is not None)
                job, self._job, self._busy = self._job, None, True
            self._run(job)
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception as e:  # shown in the panel, never swallowed
            self.on_error(e)


class Panel:
    """A panel's shared parts: a status line, an error box, a worker, and self-display.

    A subclass lays its controls out in ``widget`` and hands its work to :meth:`submit`.
    """

    def __init__(self, background: bool) -> None:
        self.status = W.HTML()
        self.error = W.HTML()
        self.worker = LatestOnly(self._show_error, background)
        self.widget: W.Widget = W.VBox()
        self._status_under_bar = self._status_with_bar = ""
        self._warned = ""  # the newest work's warnings, as the error box shows them
        #: what the newest work raised (None when it went through): for scripts, which cannot
        #: read the error box, and must not time a failed change as if it were a fast one
        self.last_error: BaseException | None = None

    def _show_error(self, e: BaseException) -> None:
        """Bad input (:class:`~lwmm_lab.errors.LwmmError`) as its one line; anything else,
        a bug, with its type and the traceback folded under it; after the work's warnings."""
        self.last_error = e
        if isinstance(e, LwmmError):
            self.error.value = (
                f"{self._warned}<div style='color:#b00020'>{html.escape(str(e))}</div>"
            )
            return
        detail = html.escape("".join(traceback.format_exception(e)))
        self.error.value = (
            f"{self._warned}<div style='color:#b00020'><b>{type(e).__name__}:</b> "
            f"{html.escape(str(e))}"
            f"<details><summary>traceback</summary><pre>{detail}</pre></details></div>"
        )

    def _show_warning(self, message: Warning | str) -> None:
        """A warning the work raised, one line in the error box (after those before it)."""
        self._warned += f"<div style='color:#8a5300'>warning: {html.escape(str(message))}</div>"
        self.error.value = self._warned

    def submit(self, job: Callable[[], None]) -> None:
        """Hand ``job`` to the worker; the error box is cleared as it starts, so that an error
        or a warning shown is always the newest work's (a failed save does not outlive the
        next one)."""

        def fresh() -> None:
            self._warned = self.error.value = ""
            self.last_error = None
            with shown_by(self._show_progress, self._show_warning):
                job()

        self.worker.submit(fresh)

    def _show_progress(self, bar: str | None) -> None:
        """A progress bar of the panel's work, after the status line as the work last set it;
        None (the bar gone) leaves that status alone."""
        if self.status.value != self._status_with_bar:  # the work has set a status since
            self._status_under_bar = self.status.value
        shown = self._status_under_bar
        if bar is not None:
            shown += f" <small><code>{html.escape(bar)}</code></small>"
        self.status.value = self._status_with_bar = shown

    def wait(self, timeout: float = 60.0) -> bool:
        """Wait for the panel's pending work (useful in scripts and tests)."""
        return self.worker.wait(timeout)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def shows_errors(handler: Callable[[P, Any], None]) -> Callable[[P, Any], None]:
    """An event handler whose errors appear in its panel's error box, like the worker's:
    ipywidgets would send them to the log console, away from the control that was moved."""

    @functools.wraps(handler)
    def handle(panel: P, event: Any) -> None:
        try:
            handler(panel, event)
        except Exception as e:
            panel._show_error(e)

    return handle


def fit_width() -> W.Layout:
    """A layout as wide as the widget's own text: ipywidgets' fixed widths cut longer button
    and checkbox descriptions to "..."."""
    return W.Layout(width="auto")


def choice_buttons(
    options: Sequence[str | tuple[str, str]], value: str, description: str
) -> W.ToggleButtons:
    """A row of buttons for a few choices (names, or (label, value) pairs), laid out like the
    dropdowns beside it: the description on the left of the buttons, not above them as
    ipywidgets 8 puts it."""
    labels = [o if isinstance(o, str) else o[0] for o in options]
    width = max(96, 8 * max(map(len, labels), default=0) + 24)  # no label cut to "..."
    buttons = W.ToggleButtons(
        options=list(options),
        value=value,
        description=description,
        style={"button_width": f"{width}px"},
    )
    buttons.add_class("widget-inline-hbox")  # ipywidgets' class for a labelled one-line control
    return buttons


def add_checkpoint(path: str, *menus: W.Dropdown | W.SelectMultiple) -> None:
    """Offer checkpoint ``path`` in each of ``menus`` that lacks it, labelled as the file's
    :attr:`~lwmm_lab.engine.checkpoints.Checkpoint.label`, keeping what each menu has selected
    (ipywidgets clears a menu's selection when its options change). The file's header is read
    only when a menu lacks it; one that cannot be read is refused, naming it."""
    lacking = [m for m in menus if path not in {v for _, v in m.options}]
    if not lacking:
        return
    label = peek_checkpoint(path).label
    for menu in lacking:
        picked = menu.value
        menu.options = [*menu.options, (label, path)]
        menu.value = picked


def move_control(panel: object, name: str, value: Any, controls: Sequence[str]) -> None:
    """Move ``panel``'s control ``name`` (one of ``controls``) to ``value``, as a hand would;
    or refuse in one line: another name (with the one it most resembles), a value outside a
    slider's range (the slider would clamp it without a word), a choice the control lacks."""
    if name not in controls:
        raise unknown_name(name, controls, "a control of this panel", "controls")
    control = getattr(panel, name)
    if isinstance(control, W.IntSlider | W.FloatSlider):
        check = check_whole if isinstance(control, W.IntSlider) else check_finite
        value = check(name, value)
        if not control.min <= value <= control.max:
            raise LwmmError(f"{name}={value} is outside {control.min}..{control.max}, its range")
    try:
        control.value = value
    except TraitError as e:
        options = getattr(control, "options", ())
        if not options:
            raise LwmmError(f"{name}={value!r}: {first_line(e)}") from None
        choices = [f"{o[1]}: {o[0]}" if isinstance(o, tuple) else str(o) for o in options]
        raise LwmmError(
            f"{name}={value!r} is not one of its choices ({', '.join(choices)})"
        ) from None


def note_lines(notes: Sequence[str]) -> str:
    """Notes for a status line's HTML: each on a line of its own, small, as plain text."""
    return "".join(f"<br><small>note: {html.escape(n, quote=False)}</small>" for n in notes)


def sync_figure(widget: go.FigureWidget, figure: go.Figure) -> None:
    """Make ``widget`` show ``figure``: trace by trace when the traces match, else replace all."""
    with widget.batch_update():
        same = len(widget.data) == len(figure.data) and all(
            type(a) is type(b) for a, b in zip(widget.data, figure.data, strict=True)
        )
        if same:
            for old, new in zip(widget.data, figure.data, strict=True):
                old.update(new.to_plotly_json(), overwrite=True)
        else:
            widget.data = ()
            widget.add_traces(list(figure.data))
        widget.layout = figure.layout
