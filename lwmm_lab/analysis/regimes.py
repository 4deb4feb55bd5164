"""The zoo's two regimes, measured: when layer-wise merging matters, and when a plain average is
enough.

Models fine-tuned from one source model (``strategies``) stay in one basin: every weight average
works, and the knobs move the merge by tenths of a point. Models that share only the
pre-trained encoder (``independent``) have decoders with their channels in other orders: a
plain average collapses, and where the anchor takes over decides everything.

:func:`bars` checks the zoo against the bars it is built to meet, each measured the way the
commands ``lwmm merge`` and ``lwmm eval --json`` measure it (the merge is written to a file
and scored from it). :func:`summary` is the table the notebooks show.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from lwmm_lab.analysis.comparison import compare
from lwmm_lab.analysis.evaluation import evaluate_checkpoints
from lwmm_lab.engine.merge import save_merge
from lwmm_lab.engine.pool import Pool
from lwmm_lab.errors import check_count
from lwmm_lab.markdown import markdown_table
from lwmm_lab.zoo.manifest import family_run, final, find_zoo, load_manifest, scenario_checkpoints

#: The zoo's bars on the 100-image real val: (family, measurement, comparison, threshold).
BARS = (
    ("independent", "isotropic over all six strategies, minus the anchor", "<=", -10.0),
    (
        "independent",
        "advent + minent at alpha 0.5: start-frac 0 vs 1, absolute difference",
        ">=",
        5.0,
    ),
    ("strategies", "layer-wise over all six strategies, minus isotropic", ">=", 1.0),
)


def scored_merge(paths: list[str], images: int = 100, **config: Any) -> float:
    """Real-val mIoU of a merge written to a file and read back: ``lwmm merge`` + ``lwmm eval``."""
    with tempfile.TemporaryDirectory(prefix="lwmm-bars-") as tmp:
        merged = save_merge(Pool(paths, device="cpu"), Path(tmp) / "merged.safetensors", **config)
        return scored(str(merged), images)


def scored(path: str, images: int = 100) -> float:
    """Real-val mIoU of one checkpoint file (``lwmm eval PATH --images N``)."""
    (scores,) = evaluate_checkpoints([path], domain="real", images=images, device="cpu")
    return scores.miou


def bars(zoo: str | os.PathLike | None = None, images: int = 100) -> list[dict[str, Any]]:
    """Each bar of :data:`BARS`: the measured value, whether it is met, and the commands."""
    images = check_count("images", images)
    manifest = load_manifest(zoo or find_zoo())
    independent = scenario_checkpoints(manifest, "independent")
    strategies = scenario_checkpoints(manifest, "strategies")
    pair = [final(manifest, family_run("independent", s)) for s in ("advent", "minent")]
    values = [
        scored_merge(independent, images, method="isotropic") - scored(independent[0], images),
        abs(
            scored_merge(pair, images, start_frac=0.0, alpha=0.5)
            - scored_merge(pair, images, start_frac=1.0, alpha=0.5)
        ),
        scored_merge(strategies, images) - scored_merge(strategies, images, method="isotropic"),
    ]
    ev = f"lwmm eval merged.safetensors --images {images} --json"
    commands = [
        f"lwmm merge $(lwmm zoo list independent --paths) --method isotropic -o merged.safetensors"
        f" && {ev}",
        "lwmm merge IND_ADVENT IND_MINENT --alpha 0.5 --start-frac 0 (then 1) "
        f"-o merged.safetensors && {ev}",
        f"lwmm merge $(lwmm zoo list strategies --paths) [--method isotropic] -o merged.safetensors"
        f" && {ev}",
    ]
    rows = []
    for (family, what, op, threshold), value, command in zip(BARS, values, commands, strict=True):
        met = value <= threshold if op == "<=" else value >= threshold
        rows.append(
            {
                "family": family,
                "measurement": what,
                "value": value,
                "bar": f"{op} {threshold:+g}",
                "met": met,
                "command": command,
            }
        )
    return rows


def bars_table(rows: list[dict[str, Any]]) -> str:
    """The bars as a Markdown table (the README's)."""
    header = ["family", "measurement (real val, mIoU points)", "value", "bar", "met"]
    cells = [
        [f"`{r['family']}`", r["measurement"], f"{r['value']:+.2f}", r["bar"],
         "yes" if r["met"] else "**no**"]
        for r in rows
    ]  # fmt: skip
    return "\n".join(markdown_table(header, cells, right={2}))


def family_merges(
    manifest: dict[str, Any],
    family: str,
    images: int = 100,
    resolution: tuple[int, int] = (96, 192),
    val_seed: int = 0,
) -> dict[str, Any]:
    """A family's six final models: the anchor (the best one) alone, and isotropic and
    layer-wise merges of all of them, unaligned and aligned to the anchor (weight matching)."""
    paths = scenario_checkpoints(manifest, family)
    settings = {"images": images, "resolution": resolution, "val_seed": val_seed}
    methods = ("isotropic", "layerwise")
    plain = compare([paths], methods=methods, **settings)[0]
    aligned = compare([paths], methods=methods, align=True, **settings)[0]
    return {
        "family": family,
        "models": len(paths),
        "anchor": compare([paths[:1]], methods=("layerwise",), **settings)[0]["layerwise"],
        "isotropic": plain["isotropic"],
        "layerwise": plain["layerwise"],
        "isotropic, aligned": aligned["isotropic"],
        "layerwise, aligned": aligned["layerwise"],
    }


def summary(zoo: str | os.PathLike | None = None, images: int = 100) -> list[dict[str, Any]]:
    """:func:`family_merges` for both families, one row each (notebook 01's table)."""
    manifest = load_manifest(zoo or find_zoo())
    resolution = tuple(manifest["config"]["resolution"])
    return [family_merges(manifest, f, images, resolution) for f in ("strategies", "independent")]


def lesson(rows: list[dict[str, Any]]) -> str:
    """What :func:`summary`'s numbers say, in a few sentences for a student."""
    by = {r["family"]: r for r in rows}
    sentences = []
    for family, who in (
        ("strategies", "Fine-tuned from one source model"),
        ("independent", "Sharing only the pre-trained encoder"),
    ):
        r = by[family]
        iso, lw, anchor = r["isotropic"] - r["anchor"], r["layerwise"] - r["anchor"], r["anchor"]
        if iso >= -1:
            verdict = f"a plain average stays within a point of the best model ({iso:+.1f})"
        elif iso >= -5:
            verdict = f"a plain average loses {-iso:.1f} points against the best model"
        else:
            verdict = f"a plain average collapses ({r['isotropic']:.1f} against {anchor:.1f})"
        sentences.append(
            f"{who}, the {r['models']} strategies merge like this: {verdict}, and layer-wise "
            f"changes the best model by {lw:+.1f} (aligned first: isotropic "
            f"{r['isotropic, aligned']:.1f}, layer-wise {r['layerwise, aligned']:.1f})."
        )
    return " ".join(sentences)
