"""The lab: plotly figures, and the ipywidgets panels that the notebooks show.

The panels are imported when first asked for, so that ``lwmm_lab.lab.figures`` (what the CLI
and the analyses draw with) never loads ipywidgets or the widgets module.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DiscrepancyExplorer", "MergeLab", "SweepExplorer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lwmm_lab.lab import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
