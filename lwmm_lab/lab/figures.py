"""Every chart of the lab as a plotly figure: notebooks show them, widgets update them in place,
the CLI writes them as HTML or PNG.

Images (segmentations, change maps) are embedded as PNG data URIs, which keeps figures small:
a widget that changes one image sends a few kilobytes.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from lwmm_lab.analysis.comparison import ADDED_FIELDS
from lwmm_lab.analysis.discrepancy import KINDS, Discrepancy, region_of
from lwmm_lab.analysis.findings import FAMILIES as FAMILY_ORDER
from lwmm_lab.analysis.findings import SeededFinding
from lwmm_lab.analysis.interpolation import LinearPath
from lwmm_lab.analysis.qualitative import CHANGE_PALETTE, CHANGES, Example
from lwmm_lab.analysis.sweeps import Sweep
from lwmm_lab.data import labels as L
from lwmm_lab.data.datasets import dataset_label
from lwmm_lab.engine.merge import MergePlan
from lwmm_lab.errors import LwmmError, check_names
from lwmm_lab.files import atomic_path, output_path

KIND_COLORS = dict(
    zip(KINDS, ("#1f77b4", "#aec7e8", "#2ca02c", "#98df8a", "#d62728", "#ff9896"), strict=True)
)
REGION_SHADES = {
    "encoder": "rgba(31,119,180,0.06)",
    "decoder": "rgba(44,160,44,0.08)",
    "head": "rgba(214,39,40,0.10)",
}
MODEL_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
METHOD_COLORS = {
    "isotropic": "#7f7f7f",
    "fisher": "#9467bd",
    "ensemble": "#ff7f0e",
    "layerwise": "#d62728",
    "weighted": "#8c564b",
    "task_arithmetic": "#17becf",
    "ties": "#bcbd22",
}


#: The discrepancy's axis title: the relative L2 distance of a tensor to the reference's.
RELATIVE_L2 = "‖θ − θ<sub>ref</sub>‖ / ‖θ<sub>ref</sub>‖"


def _base_layout(fig: go.Figure, title: str, **extra: Any) -> go.Figure:
    layout = {
        "title": {"text": title, "x": 0.01, "xanchor": "left"},
        "template": "plotly_white",
        "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
        "legend": {"orientation": "h", "y": -0.18},
    }
    fig.update_layout(layout | extra)
    return fig


def _region_spans(names: Sequence[str]) -> list[tuple[str, int, int]]:
    """Consecutive depth ranges (1-based, inclusive) of the encoder, decoder and head."""
    spans: list[tuple[str, int, int]] = []
    for j, name in enumerate(names, start=1):
        region = region_of(name)
        if spans and spans[-1][0] == region:
            spans[-1] = (region, spans[-1][1], j)
        else:
            spans.append((region, j, j))
    return spans


def _shade_regions(fig: go.Figure, names: Sequence[str], **where: Any) -> None:
    for region, j0, j1 in _region_spans(names):
        fig.add_vrect(
            x0=j0 - 0.5,
            x1=j1 + 0.5,
            fillcolor=REGION_SHADES[region],
            line_width=0,
            layer="below",
            annotation_text=region,
            annotation_position="top left",
            **where,
        )


# ------------------------------------------------------------------------------ schedules


def schedule_figure(plan: MergePlan) -> go.Figure:
    """The weight each model gets at each depth (the paper's Fig. 5a)."""
    names = plan.layout.depth_names
    weights = plan.weights.numpy()
    x = np.arange(1, len(names) + 1)
    fig = go.Figure()
    for i, label in enumerate(plan.pool.labels):
        anchor = i == plan.anchor
        fig.add_trace(
            go.Scatter(
                x=x,
                y=weights[:, i],
                mode="lines",
                name=f"{label} (anchor)" if anchor else label,
                line={"width": 3 if anchor else 1.5, "color": MODEL_COLORS[i % len(MODEL_COLORS)]},
                customdata=names,
                hovertemplate="j=%{x} %{customdata}<br>weight %{y:.3f}<extra></extra>",
            )
        )
    _shade_regions(fig, names)
    if plan.config.start is not None:
        fig.add_vline(
            x=plan.config.start,
            line_dash="dash",
            line_color="black",
            name="start",
            annotation={"text": f"s = {plan.config.start}", "name": "start"},
            annotation_position="bottom right",
        )
    fig.update_yaxes(title="weight", range=[-0.02, 1.02])
    fig.update_xaxes(title="depth index j (shared tensors, in the anchor's order)")
    return _base_layout(fig, _schedule_title(plan))


def _schedule_title(plan: MergePlan) -> str:
    c = plan.config
    knobs = f", s = {c.start}, alpha = {c.alpha:.2f}" if c.start is not None else ""
    return f"Merge weights by depth: {c.method} ({plan.schedule}{knobs})"


def update_schedule_figure(fig: go.Figure, plan: MergePlan) -> bool:
    """Move ``fig`` (from :func:`schedule_figure`) to ``plan`` in place: new weights, anchor,
    start and title.

    Cheap enough for every slider step: one ``plotly_update`` of what changed (plotly validates
    every property set, 0.5-1 ms each, even one that sets the value the figure has). Returns
    False when the figure cannot follow (other models, other depth names, a start line added or
    gone): then draw a new one.
    """
    weights, start = plan.weights.numpy(), plan.config.start
    shapes, notes = fig.layout.shapes, fig.layout.annotations
    line = [k for k, shape in enumerate(shapes) if shape.name == "start"]
    if (
        len(fig.data) != weights.shape[1]
        or any(len(t.y) != weights.shape[0] for t in fig.data)
        or len(line) != (start is not None)
        or tuple(fig.data[0].customdata) != plan.layout.depth_names
    ):
        return False
    # Contiguous rows: a FigureWidget sends numpy arrays as raw buffers, which must be.
    restyle: dict[str, list] = {"y": list(np.ascontiguousarray(weights.T))}
    names = [f"{m} (anchor)" if i == plan.anchor else m for i, m in enumerate(plan.pool.labels)]
    if names != [t.name for t in fig.data]:
        restyle["name"] = names
        restyle["line.width"] = [3 if i == plan.anchor else 1.5 for i in range(len(names))]
    relayout: dict[str, Any] = {"title.text": _schedule_title(plan)}
    if line and shapes[line[0]].x0 != start:
        relayout[f"shapes[{line[0]}].x0"] = relayout[f"shapes[{line[0]}].x1"] = start
        for k, note in enumerate(notes):
            if note.name == "start":
                relayout[f"annotations[{k}].x"] = start
                relayout[f"annotations[{k}].text"] = f"s = {start}"
    fig.plotly_update(restyle_data=restyle, relayout_data=relayout)
    return True


# ---------------------------------------------------------------------------- discrepancy


def discrepancy_figure(d: Discrepancy, tau: float, kinds: Sequence[str] | None = None) -> go.Figure:
    """Relative L2 distance per tensor and depth, by kind, with the 1/tau line (Fig. 2);
    ``kinds`` picks the kinds drawn and counted (all by default)."""
    fig = go.Figure()
    _discrepancy_panel(fig, d, tau, kinds)
    total = len(d.above(tau, kinds or KINDS))
    fig.update_yaxes(type="log", title=RELATIVE_L2)
    fig.update_xaxes(title="depth index j")
    title = f"Discrepancy to {d.reference}: {total} tensors at or above 1/tau"
    return _base_layout(fig, title)


def discrepancy_comparison_figure(
    panels: dict[str, Discrepancy], tau: float, kinds: Sequence[str] | None = None
) -> go.Figure:
    """Several discrepancies side by side on one log scale (two families of models, say);
    ``panels`` maps each panel's title to its :class:`Discrepancy`."""
    kinds = kinds or KINDS
    titles = [
        f"{title}<br>{len(d.above(tau, kinds))} of {len(d.of_kinds(kinds))} above 1/tau"
        for title, d in panels.items()
    ]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles, shared_yaxes=True)
    for col, d in enumerate(panels.values(), start=1):
        _discrepancy_panel(fig, d, tau, kinds, col=col, legend=col == 1)
        fig.update_xaxes(title="depth index j", row=1, col=col)
    fig.update_yaxes(type="log", title=RELATIVE_L2, col=1)
    fig.update_yaxes(type="log")
    title = f"Discrepancy to the best model of each family (tau = {tau:g})"
    margin = {"l": 60, "r": 20, "t": 100, "b": 50}  # room for the panels' two-line titles
    return _base_layout(fig, title, margin=margin)


def _discrepancy_panel(
    fig: go.Figure,
    d: Discrepancy,
    tau: float,
    kinds: Sequence[str] | None,
    col: int | None = None,
    legend: bool = True,
) -> None:
    """One discrepancy's markers (one trace per model and kind), the 1/tau line, the boundary.

    The colour is the kind and the symbol the model: the legend has one entry per kind (a click
    hides that kind for every model) and, in a single panel of several models, one grey entry
    per model's symbol, so it stays a few rows long however many models there are.
    """
    where = {} if col is None else {"row": 1, "col": col}
    symbols = ("circle", "diamond", "square", "triangle-up", "x", "star")
    shown: set[str] = set()
    for m, model in enumerate(d.others):
        for kind in kinds or KINDS:
            rows = [r for r in d.rows if r["model"] == model and r["kind"] == kind]
            if not rows:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[r["j"] for r in rows],
                    y=[max(r["relative_l2"], 1e-8) for r in rows],
                    mode="markers",
                    name=kind,
                    legendgroup=kind,
                    showlegend=legend and kind not in shown,
                    marker={
                        "color": KIND_COLORS[kind],
                        "size": 6,
                        "symbol": symbols[m % len(symbols)],
                    },
                    customdata=[r["name"] for r in rows],
                    hovertemplate=f"{model}<br>j=%{{x}} %{{customdata}}<br>"
                    "relative L2 %{y:.2e}<extra></extra>",
                ),
                **where,
            )
            shown.add(kind)
    if legend and col is None and len(d.others) > 1:
        for m, model in enumerate(d.others):
            marker = {"color": "gray", "size": 6, "symbol": symbols[m % len(symbols)]}
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=model, marker=marker))
    fig.add_hline(
        y=d.threshold(tau),
        line_dash="dash",
        line_color="black",
        annotation_text=f"1/tau, tau = {tau:g}",
        **where,
    )
    if d.boundary is not None:
        fig.add_vline(
            x=d.boundary - 0.5,
            line_dash="dot",
            line_color="gray",
            annotation_text="backbone | head",
            annotation_position="bottom left",
            **where,
        )


def counts_figure(d: Discrepancy, tau: float, kinds: Sequence[str] | None = None) -> go.Figure:
    """Tensors (of ``kinds``, all by default) above 1/tau per kind and per region, one bar per
    other model."""
    counts = d.counts(tau, kinds or KINDS)
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("by kind", "by region"), column_widths=[0.65, 0.35]
    )
    for m, model in enumerate(d.others):
        color = MODEL_COLORS[m % len(MODEL_COLORS)]
        by_kind, by_region = counts[model]["kind"], counts[model]["region"]
        fig.add_trace(
            go.Bar(
                x=list(by_kind),
                y=list(by_kind.values()),
                name=model,
                marker_color=color,
                legendgroup=model,
            ),
            1,
            1,
        )
        fig.add_trace(
            go.Bar(
                x=list(by_region),
                y=list(by_region.values()),
                name=model,
                marker_color=color,
                legendgroup=model,
                showlegend=False,
            ),
            1,
            2,
        )
    fig.update_yaxes(title="tensors above 1/tau", col=1)
    shown = list(kinds or KINDS)  # ticks of two short upright lines, not slanted into the legend
    ticks = [k.replace("running_", "").replace(" ", "<br>") for k in shown]
    fig.update_xaxes(tickvals=shown, ticktext=ticks, col=1)
    fig.update_xaxes(tickangle=0)
    return _base_layout(fig, f"Discrepant tensors (tau = {tau:g})", barmode="group")


def _series_by_model(
    fig: go.Figure, rows: Sequence[dict[str, Any]], y: str, label: str, mode: str, hover: str
) -> None:
    """One trace per model of ``rows`` (x: depth j, y: ``rows[y]``, hover: ``rows[label]``)."""
    for m, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        mine = [r for r in rows if r["model"] == model]
        color = MODEL_COLORS[m % len(MODEL_COLORS)]
        fig.add_trace(
            go.Scatter(
                x=[r["j"] for r in mine],
                y=[r[y] for r in mine],
                mode=mode,
                name=model,
                line={"color": color},
                marker={"color": color, "size": 5},
                customdata=[r[label] for r in mine],
                hovertemplate=f"j=%{{x}} %{{customdata}}<br>{hover}<extra></extra>",
            )
        )
    fig.update_xaxes(title="depth index j")


def bn_divergence_figure(rows: Sequence[dict[str, Any]]) -> go.Figure:
    """Symmetric KL between the BN layers' per-channel Gaussians, by depth."""
    fig = go.Figure()
    _series_by_model(fig, rows, "symmetric_kl", "module", "lines+markers", "KL %{y:.3g}")
    fig.update_yaxes(type="log", title="symmetric KL (mean over channels)")
    return _base_layout(fig, "BatchNorm statistics: how far apart the domains' Gaussians are")


def variance_ratio_figure(ratios: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Per model (``{label: bn_variance_ratios(model, images)}``), each BatchNorm layer's
    input variance over its running variance, layer by layer as the pass reaches them, on a
    log scale with the model's regions shaded: below 1, the features vary less than the layer
    divides by (a merge of decoders trained apart, REPAIR's variance collapse)."""
    names = list(dict.fromkeys(name for layers in ratios.values() for name in layers))
    if not names:
        raise LwmmError("variance_ratio_figure: no BatchNorm layer's ratio to show")
    at = {name: k for k, name in enumerate(names, start=1)}
    rows = [
        {"model": label, "j": at[name], "module": name, "ratio": ratio}
        for label, layers in ratios.items()
        for name, ratio in layers.items()
    ]
    fig = go.Figure()
    _series_by_model(fig, rows, "ratio", "module", "lines+markers", "ratio %{y:.2f}")
    fig.add_hline(y=1, line_dash="dot", annotation_text="the statistics fit")
    _shade_regions(fig, names)
    fig.update_xaxes(title="BatchNorm layer, in the order the pass reaches it")
    fig.update_yaxes(type="log", title="input variance / running variance")
    return _base_layout(fig, "Where the features vary less than the BN statistics assume")


def task_vector_figure(rows: Sequence[dict[str, Any]], suggestion: int | None = None) -> go.Figure:
    """Cosine between task vectors (model minus base) per tensor; a suggested start layer."""
    fig = go.Figure()
    _series_by_model(fig, rows, "cosine", "name", "markers", "cos %{y:.2f}")
    if suggestion is not None:
        fig.add_vline(x=suggestion, line_dash="dash", annotation_text=f"suggested s = {suggestion}")
    fig.update_yaxes(title="cosine of task vectors", range=[-1.05, 1.05])
    return _base_layout(fig, "Do the models move the same way? Task-vector agreement by depth")


# ---------------------------------------------------------------------------------- sweeps


def sweep_heatmap(sweep: Sweep, domain: str, anchor: int | None = None) -> go.Figure:
    """mIoU over (start, alpha) for one anchor (the paper's Fig. 5b/5c as one picture); the
    first anchor merged into by default."""
    results = sweep.of([domain], anchor)
    anchor = results[0]["anchor"] if results else anchor
    starts = sorted({r["start"] for r in results})
    alphas = sorted({round(r["alpha"], 6) for r in results})
    z = np.full((len(starts), len(alphas)), np.nan)
    for r in results:
        z[starts.index(r["start"]), alphas.index(round(r["alpha"], 6))] = r["miou"][domain]
    fig = go.Figure(
        go.Heatmap(
            x=alphas,
            y=starts,
            z=z,
            colorscale="Viridis",
            colorbar={"title": "mIoU"},
            hovertemplate="s=%{y} alpha=%{x}<br>mIoU %{z:.2f}<extra></extra>",
        )
    )
    best = np.unravel_index(np.nanargmax(z), z.shape) if np.isfinite(z).any() else None
    if best is not None:
        fig.add_trace(
            go.Scatter(
                x=[alphas[best[1]]],
                y=[starts[best[0]]],
                mode="markers",
                name="best",
                marker={
                    "symbol": "star",
                    "size": 14,
                    "color": "white",
                    "line": {"color": "black", "width": 1},
                },
            )
        )
    fig.update_xaxes(title="alpha (the anchor's share before the decay)")
    fig.update_yaxes(title="start layer s")
    label = sweep.labels[anchor] if sweep.labels else anchor
    return _base_layout(fig, f"{dataset_label(domain)} mIoU over start and alpha (anchor {label})")


def sweep_curves(
    sweep: Sweep, domains: Sequence[str] | str, anchor: int = 0, alpha: float = 0.5
) -> go.Figure:
    """mIoU against the start layer at ``alpha`` (the grid's nearest; 0.5 as in the paper's
    Fig. 5b) and against alpha at s = 1 (Fig. 5c). Not at the best alpha: where that is 1,
    the merge is the anchor at every s and the curve is flat by construction. ``domains`` is
    a list of domain names, or one."""
    domains = [domains] if isinstance(domains, str) else list(domains)
    results = sweep.of(domains, anchor)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("by start layer s", "by alpha at s = 1"))
    shown = min({r["alpha"] for r in results}, key=lambda a: abs(a - alpha)) if results else None
    for d, domain in enumerate(domains):
        color = MODEL_COLORS[d % len(MODEL_COLORS)]
        by_start = sorted((r["start"], r["miou"][domain]) for r in results if r["alpha"] == shown)
        by_alpha = sorted((r["alpha"], r["miou"][domain]) for r in results if r["start"] == 1)
        for col, points in ((1, by_start), (2, by_alpha)):
            if points:
                xs, ys = zip(*points, strict=True)
                fig.add_trace(
                    go.Scatter(
                        x=xs,
                        y=ys,
                        mode="lines+markers",
                        name=dataset_label(domain),
                        legendgroup=domain,
                        showlegend=col == 1,
                        line={"color": color},
                    ),
                    1,
                    col,
                )
    fig.update_yaxes(title="mIoU", col=1)
    fig.update_xaxes(title="start layer s", col=1)
    fig.update_xaxes(title="alpha", col=2)
    return _base_layout(
        fig, f"Target and source mIoU (alpha = {shown:.2f} on the left)" if results else ""
    )


def linear_path_figure(
    paths: Mapping[str, LinearPath], domain: str | None = None, title: str | None = None
) -> go.Figure:
    """The mIoU along each named linear path between two models, with the straight line
    between its endpoints dotted: the gap between the two is the barrier, which the legend
    gives. ``domain``: one the paths were scored on (default: their first)."""
    fig = go.Figure()
    first = next(iter(paths.values()), None)
    domain = domain or (next(iter(first.miou)) if first else "")
    for k, (name, path) in enumerate(paths.items()):
        values = path.scores(domain)
        color = MODEL_COLORS[k % len(MODEL_COLORS)]
        fig.add_trace(
            go.Scatter(
                x=path.t, y=values, mode="lines+markers", legendgroup=name,
                name=f"{name}: barrier {path.barrier(domain):.1f}", line={"color": color},
                hovertemplate="t = %{x:.2f}: %{y:.2f}<extra></extra>",
            )
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=[0, 1], y=[values[0], values[-1]], mode="lines", legendgroup=name,
                showlegend=False, line={"color": color, "dash": "dot"}, hoverinfo="skip",
            )
        )  # fmt: skip
    fig.update_xaxes(title="t: the weights (1 − t)·θ<sub>a</sub> + t·θ<sub>b</sub>", range=[0, 1])
    fig.update_yaxes(title=f"{dataset_label(domain)} mIoU".strip())
    return _base_layout(fig, title or "Along the straight line from model a (t = 0) to b (t = 1)")


# ---------------------------------------------------------------------------- comparisons


def comparison_figure(
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str] | str | None = None,
    domain: str = "real",
    title: str = "Merging more and more models",
) -> go.Figure:
    """mIoU of each method as models are added (the paper's Table 2 as a chart): ``rows`` of
    :func:`~lwmm_lab.analysis.comparison.add_one_at_a_time`, ``methods`` some of theirs (by
    default all; one that they lack is refused by name, a KeyError before)."""
    scored = [key for key in rows[0] if key not in ADDED_FIELDS] if rows else []
    methods = scored if methods is None else check_names(methods, scored, "method")
    fig = go.Figure()
    k = [r["models"] for r in rows]
    fig.add_trace(
        go.Scatter(
            x=k,
            y=[r["added_miou"] for r in rows],
            mode="lines+markers",
            name="added model alone",
            line={"dash": "dot", "color": "black"},
            customdata=[r["added"] for r in rows],
            hovertemplate="%{customdata}: %{y:.2f}<extra></extra>",
        )
    )
    for method in methods:
        fig.add_trace(
            go.Scatter(
                x=k,
                y=[r[method] for r in rows],
                mode="lines+markers",
                name=method,
                line={
                    "color": METHOD_COLORS.get(method),
                    "width": 3 if method == "layerwise" else 2,
                },
            )
        )
    fig.update_xaxes(title="number of models merged (best first; the first is the anchor)", dtick=1)
    fig.update_yaxes(title=f"{domain} mIoU")
    return _base_layout(fig, title)


def spread_figure(findings: Sequence[SeededFinding], title: str = "How sure are we?") -> go.Figure:
    """Each claim's key figure over several builds of the zoo: the mean with the build-to-build
    standard deviation as error bars, every build as a dot, and the first build scored on another
    val set as a diamond (evaluation noise beside build noise). Units are each claim's own."""
    fig = go.Figure()
    for family, color in zip(FAMILY_ORDER, ("#1f77b4", "#d62728"), strict=True):
        rows = [(f, f.spreads[family]) for f in findings if family in f.spreads]
        x = [f"{f.number}" for f, _ in rows]
        names = [r.name for _, r in rows]
        fig.add_trace(
            go.Scatter(
                x=x, y=[r.mean for _, r in rows], mode="markers", name=f"{family}: mean ± sd",
                marker={"color": color, "size": 12, "symbol": "line-ew-open"},
                error_y={"type": "data", "array": [r.sd for _, r in rows], "visible": True},
                customdata=names, hovertemplate="claim %{x}: %{customdata} %{y:.2f}<extra></extra>",
            )
        )  # fmt: skip
        builds = [(f"{f.number}", v) for f, r in rows for v in r.values]
        fig.add_trace(
            go.Scatter(
                x=[b[0] for b in builds], y=[b[1] for b in builds], mode="markers",
                name=f"{family}: each build", marker={"color": color, "size": 6, "opacity": 0.6},
            )
        )  # fmt: skip
        other = [(f"{f.number}", r.other_val_set) for f, r in rows if r.other_val_set is not None]
        fig.add_trace(
            go.Scatter(
                x=[o[0] for o in other], y=[o[1] for o in other], mode="markers",
                name=f"{family}: build 1, another val set",
                marker={"color": color, "size": 8, "symbol": "diamond-open"},
            )
        )  # fmt: skip
    fig.add_hline(y=0, line={"color": "gray", "width": 1})
    fig.update_xaxes(title="claim", type="category")
    fig.update_yaxes(title="key figure (each claim's own unit)")
    return _base_layout(fig, title)


def rows_figure(rows: Sequence[dict[str, Any]], title: str) -> go.Figure:
    """Bars of mIoU for individual models and merges, with inference time per image."""
    names = [r["name"] for r in rows]
    colors = [
        METHOD_COLORS.get(r["name"], "#4c72b0") if r["kind"] == "merged" else "#c0c0c0"
        for r in rows
    ]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[r["miou"] for r in rows],
            marker_color=colors,
            text=[f"{r['ms_per_image']:.1f} ms" for r in rows],
            textposition="outside",
            hovertemplate="%{x}: mIoU %{y:.2f}<extra></extra>",
        )
    )
    fig.update_yaxes(title="mIoU")
    return _base_layout(fig, title)


def update_iou_delta_figure(fig: go.Figure, delta: dict[str, float | None]) -> None:
    """Show new per-class IoU changes in a figure from :func:`iou_delta_figure`, in place."""
    names, values, colors = _delta_bars(delta)
    fig.plotly_restyle({"x": [names], "y": [values], "marker.color": [colors]}, 0)


def iou_delta_figure(
    delta: dict[str, float | None], title: str = "Per-class IoU: merged minus anchor"
) -> go.Figure:
    """Per-class IoU change, green where the merge helps, red where it hurts."""
    names, values, colors = _delta_bars(delta)
    fig = go.Figure(
        go.Bar(
            x=names, y=values, marker_color=colors, hovertemplate="%{x}: %{y:+.2f}<extra></extra>"
        )
    )
    fig.update_yaxes(title="IoU change (points)", zeroline=True)
    return _base_layout(fig, title)


def _delta_bars(delta: dict[str, float | None]) -> tuple[list[str], list[float], list[str]]:
    """The classes scored by both models, their IoU changes and the bars' colours."""
    names = [n for n, v in delta.items() if v is not None]
    values = [v for v in delta.values() if v is not None]
    return names, values, [change_color(v) for v in values]


def change_color(diff: float) -> str:
    """Green for a gain (or no change), red for a loss: the lab's colour of a difference."""
    return "#2ca02c" if diff >= 0 else "#d62728"


def table_figure(
    rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str = ""
) -> go.Figure:
    """Rows of results as a plotly table; numbers are shown with two decimals.

    Each column is as wide as its longest text (relative to the others), so a long name does
    not wrap onto a second line, and the figure is as tall as its rows. ``columns`` (one name
    or several; by default the first row's) are checked against the rows' (a misspelt one was
    an empty column).
    """
    present = list(dict.fromkeys(key for r in rows for key in r))
    if columns is None:
        columns = list(rows[0]) if rows else []
    else:
        columns = check_names(columns, present, "column")

    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, list | tuple):
            return " + ".join(map(str, value))
        return "" if value is None else str(value)

    cells = [[show(r.get(c)) for r in rows] for c in columns]
    widths = [max(map(len, [c, *column])) + 2 for c, column in zip(columns, cells, strict=True)]
    table = go.Table(
        columnwidth=widths,
        header={
            "values": [f"<b>{c}</b>" for c in columns],
            "fill_color": "#e8eef7",
            "align": "left",
            "height": 28,
        },
        cells={"values": cells, "align": "left", "height": 24},
    )
    fig = go.Figure(table)
    margin = {"l": 10, "r": 10, "t": 40, "b": 10}
    return _base_layout(fig, title, height=90 + 24 * len(rows), margin=margin)


# ------------------------------------------------------------------------------ qualitative


def png_uri(pixels: np.ndarray, palette: np.ndarray | None = None) -> str:
    """An RGB uint8 array, or a uint8 index map with its (K, 3) ``palette``, as a PNG data URI
    (what ``go.Image(source=...)`` shows). An indexed PNG encodes a third of the bytes: a
    label map sent that way takes a quarter of the time of its RGB image."""
    image = Image.fromarray(pixels)
    if palette is not None:
        image.putpalette(palette.tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


COLUMNS = ("image", "ground truth", "anchor", "merged", "change")


def _panel_pixels(example: Example, column: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The panel of ``example`` in :data:`COLUMNS` ``[column]``: an index map with its palette
    (a semantic or change map), or RGB with none (the image, a panoptic map)."""
    if column == 0:
        return example.image, None
    if column == len(COLUMNS) - 1:
        return example.changes, CHANGE_PALETTE
    label = (example.label, example.anchor, example.merged)[column - 1]
    if example.instances is None:
        return label, L.PALETTE
    return L.colorize_panoptic(label, example.instances[column - 1]), None


def example_panel(example: Example, column: int) -> np.ndarray:
    """The RGB panel of an example in :data:`COLUMNS` ``[column]`` (a panoptic map, instances
    shaded apart, for a panoptic example)."""
    pixels, palette = _panel_pixels(example, column)
    return pixels if palette is None else palette[pixels]


def panel_uri(example: Example, column: int) -> str:
    """:func:`example_panel` as a PNG data URI, indexed where the panel is a map of codes."""
    return png_uri(*_panel_pixels(example, column))


def qualitative_figure(
    examples: Sequence[Example], title: str = "What the merge changes", width: int = 900
) -> go.Figure:
    """Image, ground truth, anchor, merged and change map per example, with legends.

    The figure is ``width`` pixels wide (900: the output column of JupyterLab in a 1400-pixel
    window with its file browser open) and as tall as the images' aspect ratio needs; the
    class and change legends sit below the grid.
    """
    rows = max(1, len(examples))
    h, w = examples[0].image.shape[:2] if examples else (1, 2)
    fig = make_subplots(
        rows=rows,
        cols=len(COLUMNS),
        column_titles=list(COLUMNS),
        horizontal_spacing=0.008,
        vertical_spacing=0.02,
    )
    for r, example in enumerate(examples, start=1):
        for c in range(len(COLUMNS)):
            fig.add_trace(go.Image(source=panel_uri(example, c), hoverinfo="skip"), r, c + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    shown = {int(v) for e in examples for a in (e.label, e.anchor, e.merged) for v in np.unique(a)}
    for cls in sorted(shown - {255}):
        color = "rgb({},{},{})".format(*L.COLORS[cls])
        marker = {"color": color, "symbol": "square", "size": 11}
        fig.add_trace(
            go.Scatter(x=[None], y=[None], mode="markers", name=L.CLASSES[cls], marker=marker)
        )
    for name, color in CHANGES.items():
        marker = {"color": "rgb({},{},{})".format(*color), "symbol": "square", "size": 11}
        fig.add_trace(
            go.Scatter(x=[None], y=[None], mode="markers", name=f"change: {name}", marker=marker)
        )
    panel_height = (width - 40) / len(COLUMNS) * h / w
    height = int(110 + rows * (panel_height + 12) + 90)
    legend = {"orientation": "h", "y": -0.02, "yanchor": "top", "font": {"size": 11}}
    margin = {"l": 20, "r": 20, "t": 70, "b": 10}
    return _base_layout(fig, title, width=width, height=height, legend=legend, margin=margin)


# ----------------------------------------------------------------------------------- export


def save_html(figures: Sequence[go.Figure] | go.Figure, path: str | os.PathLike) -> Path:
    """Write several figures (or one) to one self-contained HTML page, atomically."""
    figures = [figures] if isinstance(figures, go.Figure) else figures
    path = page_path(path)
    parts = [fig.to_html(full_html=False, include_plotlyjs=k == 0) for k, fig in enumerate(figures)]
    page = "<html><head><meta charset='utf-8'></head><body>" + "".join(parts) + "</body></html>"
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path


def page_path(path: str | os.PathLike) -> Path:
    """``path`` when :func:`save_html` can write it (``.html``); commands check it up front."""
    return output_path(path, "the page", ".html")


def figure_path(path: str | os.PathLike) -> Path:
    """``path`` when :func:`save_figure` can write it (``.html`` or ``.png``)."""
    return output_path(path, "a figure", ".html", ".png")


def save_figure(fig: go.Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as ``.html`` (self-contained) or ``.png`` (through kaleido), atomically."""
    path = figure_path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".html":
            fig.write_html(tmp, include_plotlyjs=True, full_html=True)
        else:
            try:
                png = fig.to_image(format="png", scale=2)
            except Exception as e:  # kaleido raises its own types when no browser is found
                raise LwmmError(
                    f"{path}: PNG export needs kaleido and a Chromium browser "
                    f"(apt install chromium); write .html instead ({type(e).__name__})"
                ) from None
            tmp.write_bytes(png)
    return path
