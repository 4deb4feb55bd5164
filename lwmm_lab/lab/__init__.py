"""The lab: plotly figures, and the ipywidgets panels that the notebooks show.

The panels are imported when first asked for, so that ``lwmm_lab.lab.figures`` (what the CLI
and the analyses draw with) never loads ipywidgets or the panels' modules.
"""

from __future__ import annotations

from lwmm_lab.lazy import lazy_names

__all__ = ["DiscrepancyExplorer", "MergeLab", "SweepExplorer"]
__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "DiscrepancyExplorer": "lwmm_lab.lab.explorers",
        "MergeLab": "lwmm_lab.lab.merge_lab",
        "SweepExplorer": "lwmm_lab.lab.explorers",
    },
)
