"""The lab: plotly figures, and the ipywidgets panels that the notebooks show."""

from lwmm_lab.lab.widgets import DiscrepancyExplorer, MergeLab, SweepExplorer

__all__ = ["DiscrepancyExplorer", "MergeLab", "SweepExplorer"]
