"""The papers' claims, measured on the zoo: one small function per claim, registered in order.

The zoo has two families of strategy models (:mod:`lwmm_lab.zoo.recipe`): ``strategies``, all
fine-tuned from one source model (decoder included), and ``independent``, sharing only the
pre-trained encoder. A claim is measured on each family it applies to; the claims about other
heads and decoders only on the encoder-only models (where those models belong), the
multi-target one only on the one-source models (where the multi-target runs are), and the
alignment claim only on the independent family.

A claim function takes the context and a family and returns a :class:`Measurement`: our figure,
whether the claim holds there (``yes``, ``partly`` or ``no``), and why, written from the numbers.
A claim that does not hold is a result, not a failure. "Keeps the anchor" allows :data:`KEEP`
mIoU points, about what a 100-image val resolves. Adding a claim is one decorated function;
:mod:`lwmm_lab.analysis.findings` measures them and writes the tables.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lwmm_lab.analysis.comparison import (
    add_one_at_a_time,
    compare,
    heads_and_decoders,
    merge_split,
    multi_target,
    semantic_into_panoptic,
)
from lwmm_lab.analysis.discrepancy import KINDS, LEARNED, Discrepancy, discrepancy
from lwmm_lab.analysis.regimes import family_merges
from lwmm_lab.analysis.sweeps import grid, run_sweep
from lwmm_lab.engine.pool import Pool
from lwmm_lab.zoo.manifest import family_run, final, preset, scenario_checkpoints, select
from lwmm_lab.zoo.recipe import STRATEGY_RUNS

FAMILIES = ("strategies", "independent")
#: Column titles of the findings table.
FAMILY_TITLES = {"strategies": "one source model", "independent": "independent decoders"}
UDA = STRATEGY_RUNS[1:]
ADVERSARIAL, ENTROPY = ("advent", "adaptsegnet"), ("minent", "maxsquare")
TAU = 20.0
KEEP = 0.25


@dataclass
class Measurement:
    """One claim measured on one family: our figure, the verdict, and why."""

    ours: str
    holds: str
    why: str
    details: dict[str, Any] = field(default_factory=dict)
    #: The figure the verdict rests on, named (what builds of the zoo are compared by).
    key: tuple[str, float] | None = None


@dataclass
class Context:
    """What every claim needs: the zoo's manifest and the evaluation settings."""

    manifest: dict[str, Any]
    images: int
    resolution: tuple[int, int]
    val_seed: int = 0

    def final(self, strategy: str, family: str = "strategies") -> str:
        """The final checkpoint of ``strategy`` in ``family``."""
        return final(self.manifest, family_run(family, strategy))

    def runs(self, family: str) -> list[str]:
        """The family's strategy runs that this zoo has."""
        names = [family_run(family, s) for s in STRATEGY_RUNS]
        return [r for r in names if select(self.manifest, run=r)]

    def settings(self) -> dict[str, Any]:
        return {"images": self.images, "resolution": self.resolution, "val_seed": self.val_seed}


@dataclass(frozen=True)
class Claim:
    """A registered claim: its text, the paper's figure, where it applies, how it is measured."""

    number: int
    claim: str
    source: str
    paper: str
    families: tuple[str, ...]
    measure: Callable[[Context, str], Measurement]


CLAIMS: dict[int, Claim] = {}


def claim(
    number: int, text: str, source: str, paper: str, families: tuple[str, ...] = FAMILIES
) -> Callable[[Callable[[Context, str], Measurement]], Callable[[Context, str], Measurement]]:
    """Register ``fn(context, family) -> Measurement`` as claim ``number``."""

    def add(fn: Callable[[Context, str], Measurement]) -> Callable[[Context, str], Measurement]:
        CLAIMS[number] = Claim(number, text, source, paper, families, fn)
        return fn

    return add


def _verdict(full: bool, partial: bool = False) -> str:
    return "yes" if full else "partly" if partial else "no"


def _composition(d: Discrepancy) -> dict[str, Any]:
    """Of the tensors above 1/tau, the shares in the head or BN statistics and in the decoder's
    learned weights; median distances by part."""
    above = d.above(TAU)

    def share(keep: Callable[[dict[str, Any]], bool]) -> float:
        return sum(map(keep, above)) / len(above) if above else 0.0

    return {
        "above": len(above),
        "head_or_bn": share(lambda r: r["region"] == "head" or r["kind"].startswith("BN")),
        "decoder_weights": share(lambda r: r["region"] == "decoder" and r["kind"] in LEARNED),
        "encoder_weights": d.median(("encoder",), ("weight",)),
        "bn_statistics": d.median(kinds=KINDS[4:]),
        "decoder": d.median(("decoder",)),
        "head": d.median(("head",)),
    }


@claim(
    1,
    "Checkpoints of one run differ mostly in the head and in BN running statistics; "
    "backbone weights change little.",
    "Fig. 2a",
    "head conv weights and BN mean/var change most; backbone weights slightly",
)
def checkpoints_differ_in_head_and_bn(ctx: Context, family: str) -> Measurement:
    runs = ctx.runs(family)
    stats = []
    for run in runs:
        reference, others = preset(ctx.manifest, "checkpoint", run=run)
        stats.append(_composition(discrepancy(Pool([reference, *others], device="cpu"))))
    share = statistics.mean(s["head_or_bn"] for s in stats)
    enc, bn, dec, head = (
        statistics.median(s[k] for s in stats)
        for k in ("encoder_weights", "bn_statistics", "decoder", "head")
    )
    small_backbone = enc < bn and enc < head
    why = (
        f"The encoder's weights move {head / max(enc, 1e-12):.0f}x less than the head's: the "
        "head learns 10x faster, and BN running statistics follow every batch of target images."
    )
    if family == "independent":
        why += (
            f" Here the whole decoder is young (fresh at step 0), so it keeps moving between "
            f"checkpoints too (median {dec:.3f})."
        )
    return Measurement(
        f"{share:.0%} of the tensors above 1/tau (tau = {TAU:g}) are head or BN statistics; "
        f"median relative change: encoder weights {enc:.4f}, BN statistics {bn:.4f}, "
        f"decoder {dec:.4f}, head {head:.4f} ({len(runs)} runs, first checkpoint vs the later)",
        _verdict(share >= 0.5 and small_backbone, small_backbone),
        why,
        {"runs": runs, "per_run": stats},
        key=("head or BN share of the tensors above 1/tau, %", 100 * share),
    )


def _layer_distances(pool: Pool, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """Per shared tensor, the mean relative L2 distance over the given pairs of models."""
    per_pair = []
    for a, b in pairs:
        x, y = pool.flat[a], pool.flat[b]
        distances = [
            (y[c] - x[c]).norm() / x[c].norm().clamp_min(1e-12) for c in pool.columns.values()
        ]
        per_pair.append(torch.stack(distances))
    return torch.stack(per_pair).mean(0)


@claim(
    2,
    "Models from different strategies differ more than checkpoints of one run, again mostly "
    "in the head and BN statistics.",
    "Fig. 2b",
    "discrepancy between UDA methods concentrates in the last layers and BN statistics",
)
def strategies_differ_more(ctx: Context, family: str) -> Measurement:
    chains = [
        [e["path"] for e in sorted(select(ctx.manifest, run=r), key=lambda e: e["step"])]
        for r in ctx.runs(family)
    ]
    paths = [p for chain in chains for p in chain]
    index = {p: i for i, p in enumerate(paths)}
    pool = Pool(paths, device="cpu")
    within = [(index[a], index[b]) for chain in chains for a, b in itertools.pairwise(chain)]
    across = list(itertools.combinations([index[chain[-1]] for chain in chains], 2))
    d_within, d_across = _layer_distances(pool, within), _layer_distances(pool, across)
    more = float((d_across > d_within).float().mean())
    reference, others = preset(ctx.manifest, "heterogeneous", family=family)
    composition = _composition(discrepancy(Pool([reference, *others], device="cpu")))
    ratio = float(d_across.median() / d_within.median().clamp_min(1e-12))
    why = f"Strategies are {ratio:.1f}x further apart than consecutive checkpoints (median). "
    if family == "independent":
        why += (
            f"Of the tensors above 1/tau, {composition['head_or_bn']:.0%} are head or BN "
            f"statistics and {composition['decoder_weights']:.0%} decoder weights, and "
            f"strategies differ more than checkpoints in {more:.0%} of the layers: decoders "
            "initialised apart stay apart."
        )
    else:
        why += (
            f"Only {composition['head_or_bn']:.0%} of the tensors above 1/tau are head or BN "
            "statistics: much of the rest are small encoder biases and norm parameters, which "
            "the different target losses move relatively more than the head, since every "
            "strategy shares the source loss that drives the head."
        )
    return Measurement(
        f"strategies differ more in {more:.0%} of the layers (median per-layer distance "
        f"{float(d_across.median()):.4f} vs {float(d_within.median()):.4f} within a run); "
        f"{composition['head_or_bn']:.0%} of the tensors above 1/tau are head or BN statistics",
        _verdict(more > 0.5 and composition["head_or_bn"] >= 0.5, more > 0.5),
        why,
        {"share_of_layers": more, "composition": composition},
        key=("layers where strategies differ more than checkpoints, %", 100 * more),
    )


@claim(
    3,
    "Merging the checkpoints of one run: layerwise >= isotropic, and layerwise does not fall "
    "below the anchor as more checkpoints are added.",
    "Fig. 3, Table 2",
    "layer-wise above isotropic and above the final checkpoint (DeepLabV2, AdvEnt)",
)
def checkpoint_merging(ctx: Context, family: str) -> Measurement:
    rows = []
    for run in ctx.runs(family):
        chain = sorted(select(ctx.manifest, run=run), key=lambda e: -e["step"])
        if len(chain) < 2:
            continue
        paths = [e["path"] for e in chain]
        table = add_one_at_a_time(paths, methods=("isotropic", "layerwise"), **ctx.settings())
        rows.append(
            {
                "run": run,
                "anchor": table[0]["layerwise"],
                "isotropic": table[-1]["isotropic"],
                "layerwise": table[-1]["layerwise"],
                "layerwise_min": min(r["layerwise"] for r in table),
            }
        )
    n = len(rows)
    beats = sum(r["layerwise"] >= r["isotropic"] for r in rows)
    keeps = sum(r["layerwise_min"] >= r["anchor"] - KEEP for r in rows)
    gain = statistics.mean(r["layerwise"] - r["anchor"] for r in rows)
    iso_gain = statistics.mean(r["isotropic"] - r["anchor"] for r in rows)
    below = [r["run"] for r in rows if r["layerwise_min"] < r["anchor"] - KEEP]
    if iso_gain < -KEEP:
        why = (
            f"Isotropic loses {-iso_gain:.2f} on average: these decoders start from random "
            "weights and move far between checkpoints (claim 1), so averaging the early "
            "checkpoints in mixes a half-trained decoder into the final one; layer-wise keeps "
            f"the final decoder and changes the anchor by {gain:+.2f}."
        )
    else:
        why = (
            f"Checkpoints of one run lie in one basin, so both merges act like stochastic weight "
            f"averaging (mean gains {gain:+.2f} and {iso_gain:+.2f}); they differ where "
            "layer-wise keeps the final checkpoint's values, the head and BN statistics."
        )
    if below:
        why += f" Layer-wise falls more than {KEEP} below the anchor in {', '.join(below)}."
    return Measurement(
        f"with 4 checkpoints, layerwise >= isotropic in {beats}/{n} runs; layerwise never below "
        f"the anchor (the final checkpoint) in {keeps}/{n} runs; mean gain over the anchor: "
        f"layerwise {gain:+.2f}, isotropic {iso_gain:+.2f} mIoU",
        _verdict(beats == n and keeps == n, keeps == n),
        why,
        {"runs": rows},
        key=("layerwise minus the anchor, mean over runs", gain),
    )


@claim(
    4,
    "Merging models of different strategies: layerwise beats isotropic and fisher, and beats "
    "the anchor.",
    "Tables 2, 3",
    "CNN models: ours 49.6-51.8 vs isotropic 47.7-50.7, fisher 46.8-47.3, anchor 46.9",
)
def strategy_merging(ctx: Context, family: str) -> Measurement:
    finals = [select(ctx.manifest, run=family_run(family, r), fraction=1.0)[0]
              for r in UDA]  # fmt: skip
    finals.sort(key=lambda e: -e["miou"]["real"])
    rows = add_one_at_a_time([e["path"] for e in finals], **ctx.settings())
    anchor, merged, last = rows[0]["layerwise"], rows[1:], rows[-1]
    wins = {m: sum(r["layerwise"] >= r[m] for r in merged) for m in ("isotropic", "fisher")}
    above = sum(r["layerwise"] > anchor for r in merged)
    k = len(merged)
    if last["isotropic"] < anchor - 5:
        why = (
            f"Isotropic and Fisher collapse ({last['isotropic']:.1f}, {last['fisher']:.1f}): "
            "independently initialised decoders are not even permutations of one another "
            "(claim 12), so averaging them mixes unrelated weights. Layer-wise gets "
            f"{last['layerwise']:.1f} of the anchor's {anchor:.1f}: its schedule still averages "
            "the decoder's early layers, which carry a large share of the depth index (aligning "
            "them first does not change that, claim 12)."
        )
    else:
        why = (
            "Models fine-tuned from one source model stay in one basin, so every weight average "
            "works; layer-wise keeps the best model's deep layers and so stays on top as weaker "
            "models are added."
        )
    return Measurement(
        f"with 2-{k + 1} models: layerwise >= isotropic in {wins['isotropic']}/{k}, >= fisher "
        f"in {wins['fisher']}/{k}, above the anchor ({anchor:.2f}) in {above}/{k}; with all "
        f"{k + 1}: layerwise {last['layerwise']:.2f}, isotropic {last['isotropic']:.2f}, "
        f"fisher {last['fisher']:.2f}, ensemble {last['ensemble']:.2f}",
        _verdict(
            min(wins.values()) == k and above == k, min(wins.values()) > k / 2 or above > k / 2
        ),
        why,
        {"rows": rows},
        key=("layerwise minus the anchor, all models", last["layerwise"] - anchor),
    )


@claim(
    5,
    "Combining different kinds of strategy (adversarial + entropy) gains more than combining "
    "two of one kind.",
    "Table 3",
    "e.g. FADA + MinEnt 48.2 vs two adversarial methods 45.3-47.1 (layer-wise)",
)
def kinds_of_strategy(ctx: Context, family: str) -> Measurement:
    mixed = [(a, e) for a in ADVERSARIAL for e in ENTROPY]
    same = [ADVERSARIAL, ENTROPY]
    pairs = [list(p) for p in mixed + same]
    groups = [[ctx.final(n, family) for n in pair] for pair in pairs]
    rows = compare(groups, methods=("layerwise",), **ctx.settings())
    gains = [r["layerwise"] - r["best_single"] for r in rows]
    g_mixed = statistics.mean(gains[: len(mixed)])
    g_same = statistics.mean(gains[len(mixed) :])
    if min(gains) < -1:
        kept = [r["layerwise"] - r["anchor_miou"] for r in rows]
        worse = [k for k, r in enumerate(rows) if r["best_single"] > r["anchor_miou"]]
        why = (
            f"Every pair falls below its better model ({min(gains):+.2f} to {max(gains):+.2f}; "
            f"{' + '.join(pairs[gains.index(min(gains))])} loses most). Layer-wise keeps the "
            "decoder of its anchor (the first named) and mixes the other's into its first "
            f"layers only, which moves the anchor by {min(kept):+.2f} to {max(kept):+.2f}: two "
            "independently trained decoders do not average well, whatever their kinds. "
        )
        if worse:
            fell = _span(-gains[k] for k in worse)
            gaps = _span(rows[k]["best_single"] - rows[k]["anchor_miou"] for k in worse)
            why += (
                f"Where the better model is the other one "
                f"({', '.join(' + '.join(pairs[k]) for k in worse)}), the merge keeps the weaker "
                f"decoder: those pairs fall by {fell} below the better model, whose lead over "
                f"the anchor is {gaps}. "
            )
        why += (
            "The difference between the kinds "
            f"({g_mixed - g_same:+.2f}) is smaller than the spread over the pairs "
            f"({max(gains) - min(gains):.2f}), so this verdict rests on few, noisy pairs."
        )
    else:
        why = (
            f"Every two-model merge lands within {max(map(abs, gains)):.2f} points of the better "
            "model: after 120 steps from one model, our adversarial and entropy models make "
            "nearly the same mistakes (our AdvEnt is itself adversarial on entropy maps)."
        )
    return Measurement(
        f"layerwise gain over the better model of each pair: adversarial + entropy "
        f"{g_mixed:+.2f}, same kind {g_same:+.2f} (means of {len(mixed)} and {len(same)} pairs)",
        _verdict(g_mixed > g_same),
        why,
        {"pairs": [" + ".join(p) for p in pairs], "gains": gains},
        key=("mixed-kind minus same-kind gain", g_mixed - g_same),
    )


def _anchor_and_merges(rows: list[dict[str, Any]]) -> dict[str, float]:
    values = {r["name"]: r["miou"] for r in rows if r["kind"] == "merged"}
    times = {r["name"]: r["ms_per_image"] for r in rows if r["kind"] == "merged"}
    values |= {"anchor": rows[0]["miou"], "anchor_ms": rows[0]["ms_per_image"]}
    values |= {f"{name}_ms": ms for name, ms in times.items()}
    return values


def _other_models(ctx: Context, scenario: str) -> dict[str, float]:
    """The scenario's anchor alone and every method merging it with the scenario's others."""
    anchor, *others = scenario_checkpoints(ctx.manifest, scenario)
    return _anchor_and_merges(heads_and_decoders(anchor, others, **ctx.settings()))


@claim(
    6,
    "Different class sets: isotropic and fisher fail, or collapse when restricted to shared "
    "tensors; layerwise keeps or improves the anchor.",
    "Table 4a",
    "isotropic 9.7, fisher 12.2, ensemble 64.3, ours 75.7 vs anchor 73.8",
    families=("independent",),
)
def different_class_sets(ctx: Context, family: str) -> Measurement:
    v = _other_models(ctx, "other-classes")
    keeps = v["layerwise"] >= v["anchor"] - KEEP
    collapse = min(v["isotropic"], v["fisher"]) < v["anchor"] - 5
    return Measurement(
        f"19-class anchor {v['anchor']:.2f}; with the 16-class model: isotropic "
        f"{v['isotropic']:.2f}, fisher {v['fisher']:.2f}, ensemble {v['ensemble']:.2f}, "
        f"layerwise {v['layerwise']:.2f}",
        _verdict(keeps and collapse, keeps),
        f"Both models share only the pre-trained encoder; their decoders were trained from "
        f"different seeds. Isotropic and Fisher average those decoders tensor by tensor and "
        f"lose {v['anchor'] - v['isotropic']:.1f} and {v['anchor'] - v['fisher']:.1f} points; "
        f"layer-wise changes the anchor by {v['layerwise'] - v['anchor']:+.1f}: it averages the "
        "shallow layers and hands the decoder more and more to the anchor.",
        v,
        key=("layerwise minus the anchor", v["layerwise"] - v["anchor"]),
    )


@claim(
    7,
    "Different decoders sharing an encoder: layerwise keeps the anchor's speed and keeps or "
    "improves its mIoU; isotropic over the shared tensors collapses.",
    "Tables 4b, 5",
    "isotropic 6.0, fisher 7.3, ours 76.2 vs anchor 75.9; the merge at the anchor's speed",
    families=("independent",),
)
def different_decoders(ctx: Context, family: str) -> Measurement:
    v = _other_models(ctx, "other-decoders")
    speed = v["layerwise_ms"] <= 1.3 * v["anchor_ms"]
    keeps = v["layerwise"] >= v["anchor"] - KEEP
    collapse = v["isotropic"] < v["anchor"] - 5
    return Measurement(
        f"Unet anchor {v['anchor']:.2f} ({v['anchor_ms']:.1f} ms/image); with FPN and "
        f"DeepLabV3+: layerwise {v['layerwise']:.2f} ({v['layerwise_ms']:.1f} ms), isotropic "
        f"{v['isotropic']:.2f}, fisher {v['fisher']:.2f}, ensemble {v['ensemble']:.2f} "
        f"({v['ensemble_ms']:.1f} ms)",
        _verdict(speed and keeps and collapse, speed and keeps),
        f"FPN and DeepLabV3+ share no decoder tensor with the Unet, only the encoder, and the "
        f"three encoders stay close to the pre-trained one: isotropic changes the anchor by "
        f"{v['isotropic'] - v['anchor']:+.1f}, layer-wise by {v['layerwise'] - v['anchor']:+.2f}"
        ", at the anchor's speed (the merge is the anchor's architecture; the ms differ by timing"
        " noise). The paper's DAFormer and HRDA share decoder tensors trained apart, which is "
        "what collapses (claim 6). The ensemble is best here because the FPN and DeepLabV3+ "
        "models are better than the anchor alone.",
        v,
        key=("layerwise minus the anchor", v["layerwise"] - v["anchor"]),
    )


def _two_model_sweep(
    ctx: Context, family: str, starts: list[float], alphas: list[float]
) -> list[dict]:
    pair = [ctx.final("advent", family), ctx.final("minent", family)]
    cells = grid(pair, starts=starts, alphas=alphas, domains=("real", "synthetic"),
                 **ctx.settings())  # fmt: skip
    return run_sweep(cells, progress=False).results


@claim(
    8,
    "Starting the decay later hurts target mIoU, while source mIoU stays stable.",
    "Fig. 5b",
    "target mIoU falls as the starting layer moves deeper; source mIoU stays flat",
)
def later_start_hurts_target(ctx: Context, family: str) -> Measurement:
    results = _two_model_sweep(ctx, family, [k / 10 for k in range(11)], [0.5])
    results.sort(key=lambda r: r["start"])
    target = [r["miou"]["real"] for r in results]
    source = [r["miou"]["synthetic"] for r in results]
    starts = torch.tensor([float(r["start"]) for r in results])
    slope = float(torch.corrcoef(torch.stack([starts, torch.tensor(target)]))[0, 1])
    t_range, s_range = max(target) - min(target), max(source) - min(source)
    drop = target[0] - target[-1]
    stable = s_range <= max(t_range, 1e-9)
    if t_range < 1:
        why = (
            f"Flat: over all s the merge moves by {t_range:.2f} points on the target and "
            f"{s_range:.2f} on the source, below what 100 images resolve. Two models "
            "fine-tuned from one model are nearly interchangeable, so it hardly matters where "
            "the anchor takes over."
        )
    else:
        why = (
            f"The start layer bites: the target moves by {t_range:.1f} points over s "
            f"({target[0]:.1f} at s = 1, {target[-1]:.1f} at s = Np) and the source by "
            f"{s_range:.1f}. A late start averages the unaligned decoders at alpha = 0.5, "
            "which costs both domains alike; an early start hands them to the anchor."
        )
    return Measurement(
        f"advent + minent, alpha 0.5: target {target[0]:.2f} at s = 1 and {target[-1]:.2f} at "
        f"s = Np (correlation with s {slope:+.2f}); ranges over s: target {t_range:.2f}, "
        f"source {s_range:.2f}",
        _verdict(drop > 0 and slope < 0 and stable, drop > 0 or stable),
        why,
        {"start": starts.tolist(), "target": target, "source": source},
        key=("target at s = 1 minus at s = Np", drop),
    )


@claim(
    9,
    "alpha = 0.5 for two models is at or near the best.",
    "Fig. 5c",
    "alpha = 0.5 (equal weights in the first layer) gives the best target mIoU",
)
def half_alpha_is_best(ctx: Context, family: str) -> Measurement:
    results = _two_model_sweep(ctx, family, [0.0], [k / 10 for k in range(11)])
    target = {round(r["alpha"], 2): r["miou"]["real"] for r in results}
    best = max(target, key=target.get)
    gap = target[best] - target[0.5]
    spread = max(target.values()) - min(target.values())
    return Measurement(
        f"advent + minent, s = 1: best alpha {best:.1f} ({target[best]:.2f}); alpha 0.5 gives "
        f"{target[0.5]:.2f} ({gap:.2f} below the best)",
        _verdict(abs(best - 0.5) <= 0.1 or gap <= KEEP, gap <= 3 * KEEP),
        f"Over alpha the target mIoU spans {spread:.2f} points"
        + (
            ": at s = 1 the anchor's share grows from alpha at the first layer to 1 at the "
            "last, so alpha weighs mostly the encoder, which every model keeps close to the "
            "pre-trained one (claim 1), and barely reaches the decoder, where they differ."
            if spread < 1
            else f"; the best is alpha = {best:.1f}"
            + (" (the anchor alone)" if best == 1.0 else "")
            + f", and alpha 0.5 costs {gap:.2f}: the decoders' early layers average poorly."
        ),
        {"alpha": list(target), "target": list(target.values())},
        key=("alpha 0.5 below the best alpha", gap),
    )


@claim(
    10,
    "Merging models adapted to different targets with Gaussian BN merging beats linear BN "
    "merging, and comes close to the model adapted on the union of the targets.",
    "multi-target paper",
    "Gaussian BN merging beats linear; on par with data-combination training",
    families=("strategies",),
)
def gaussian_bn_for_multi_target(ctx: Context, family: str) -> Measurement:
    adapted = scenario_checkpoints(ctx.manifest, "multi-target")
    rows = multi_target(adapted, final(ctx.manifest, "minent-union"), **ctx.settings())
    by = {r["name"]: r["mean"] for r in rows}
    gaussian = max(by["merge, BN gaussian"], by["merge, BN gaussian-counts"])
    rule = {r["name"]: r for r in rows}
    domains = ("real", "foggy", "night")
    gains = {d: rule["merge, BN gaussian"][d] - rule["merge, BN linear"][d] for d in domains}
    top = max(gains, key=gains.get)
    linear, union = by["merge, BN linear"], by["union of targets"]
    close = gaussian >= union - 1.0
    return Measurement(
        f"mean mIoU over real, foggy, night: Gaussian BN {gaussian:.2f} vs linear "
        f"{linear:.2f}; the union-trained model {union:.2f}",
        _verdict(gaussian > linear and close, gaussian > linear or close),
        f"Gaussian merging adds the spread between the domains' means to the variances; it gains "
        f"most on {top} ({gains[top]:+.2f}). gaussian-counts equals gaussian when every run saw "
        "the same number of batches, as here.",
        {"rows": rows},
        key=("Gaussian minus linear BN, mean mIoU", gaussian - linear),
    )


@claim(
    11,
    "Output ensembling costs M times the inference; a merge costs one.",
    "Table 1",
    "ensemble O(M) at inference, weight merging O(1)",
)
def ensemble_costs_m_times(ctx: Context, family: str) -> Measurement:
    paths = [ctx.final(r, family) for r in UDA]
    methods = ("ensemble", "layerwise")
    v = _anchor_and_merges(
        heads_and_decoders(paths[0], paths[1:], methods=methods, **ctx.settings())
    )
    ratio = v["ensemble_ms"] / v["layerwise_ms"]
    m = len(paths)
    return Measurement(
        f"M = {m}: ensemble {v['ensemble_ms']:.1f} ms per image, merged model "
        f"{v['layerwise_ms']:.1f} ms ({ratio:.1f}x)",
        _verdict(0.7 * m <= ratio <= 1.3 * m, ratio > 1.5),
        "Measured on the CPU in batches of 16 images: the ensemble runs all M models, the merge "
        "one model of the anchor's architecture.",
        v,
        key=("ensemble / merged time", ratio),
    )


@claim(
    12,
    "On independently trained decoders, aligning the channels first (weight matching) lets "
    "isotropic and layer-wise merging recover from the collapse.",
    "ours (Git Re-Basin applied to LWMM)",
    "not in the papers: they merge models that share their pre-training, and do not align",
    families=("independent",),
)
def alignment_recovers(ctx: Context, family: str) -> Measurement:
    v = family_merges(ctx.manifest, family, **ctx.settings())
    paths = scenario_checkpoints(ctx.manifest, family)
    distance = {
        aligned: discrepancy(Pool(paths, device="cpu", align=0 if aligned else None)).median(
            ("decoder", "head"), LEARNED
        )
        for aligned in (False, True)
    }
    one_source = discrepancy(Pool(scenario_checkpoints(ctx.manifest, "strategies"), device="cpu"))
    anchor, methods = v["anchor"], ("isotropic", "layerwise")
    gained = {m: v[f"{m}, aligned"] - v[m] for m in methods}
    short = {m: anchor - v[f"{m}, aligned"] for m in methods}
    recovered = [m for m in methods if short[m] <= 1.0]
    why = (
        f"Weight matching moves isotropic by {gained['isotropic']:+.1f} and layer-wise by "
        f"{gained['layerwise']:+.1f} points ({short['isotropic']:.1f} and {short['layerwise']:.1f}"
        f" below the anchor, aligned). The median relative distance of the decoder weights to "
        f"the anchor's goes from {distance[False]:.2f} to {distance[True]:.2f} when aligned, "
        f"against {one_source.median(('decoder', 'head'), LEARNED):.2f} between one-source "
        "strategies (and about 1.41 for unrelated tensors of equal norm)"
    )
    if len(recovered) < len(methods):
        why += (
            ": these decoders are not permutations of one another. Trained for 120 steps from "
            "different seeds, they hold different features, not the same ones in another order"
        )
    return Measurement(
        f"all {v['models']} models, anchor {anchor:.2f}: isotropic {v['isotropic']:.2f} -> "
        f"{v['isotropic, aligned']:.2f} aligned, layerwise {v['layerwise']:.2f} -> "
        f"{v['layerwise, aligned']:.2f} aligned; decoder distance to the anchor "
        f"{distance[False]:.2f} -> {distance[True]:.2f}",
        _verdict(len(recovered) == len(methods), max(gained.values()) >= 5),
        why + ".",
        v | {"decoder_distance": distance[False], "decoder_distance_aligned": distance[True]},
        key=("aligned layerwise minus the anchor", v["layerwise, aligned"] - anchor),
    )


@claim(
    13,
    "Merging a semantic model into a panoptic one raises mPQ (layer-wise; isotropic and Fisher "
    "as the baselines).",
    "Table 6",
    "EDAPS 41.2 mPQ -> 44.1 merged with HRDA (+2.9 mPQ, +1.4 mSQ, +3.0 mRQ)",
    families=("independent",),
)
def semantic_raises_pq(ctx: Context, family: str) -> Measurement:
    anchor, *others = scenario_checkpoints(ctx.manifest, "panoptic")
    rows = semantic_into_panoptic(anchor, others, **ctx.settings())
    base = rows[0]
    merged = {r["name"]: r for r in rows[1:]}
    layerwise = [r for r in rows if r["method"] == "layerwise"]
    best = max(layerwise, key=lambda r: r["pq"])
    baselines = {m: max(r["pq"] for r in rows if r["method"] == m) for m in ("isotropic", "fisher")}
    raises = best["pq"] >= base["pq"] + KEEP
    beats = best["pq"] > max(baselines.values())
    lost = {k: best[k] - base[k] for k in ("stuff", "things", "miou")}
    partner = others[-1]
    split = merge_split(anchor, [partner], reestimate=ctx.images, **ctx.settings())
    name = Path(partner).parent.name
    encoder_kept = base["pq"] - split["encoder_pq"] < (base["pq"] - split["pq"]) / 2
    fresh = _remeasured(split, "pq")
    if split["pq"] - split["anchor_pq"] > -KEEP:
        cause = ""
    elif fresh > -KEEP:
        cause = ": the loss was in the stale statistics, not in the weights"
    else:
        cause = ": measured anew, the merge still loses, so its weights cost PQ too"
    where = (
        f"With {name}, the merge's encoder under the anchor's decoder and heads has PQ "
        f"{split['encoder_pq']:.2f} and the whole merge {split['pq']:.2f}: most of the change "
        f"comes from merging the {'decoder' if encoder_kept else 'encoder'}. The schedule "
        f"gives {name} {split['decoder_share']:.0%} of the decoder's first tensor, less after, "
        f"and the merge changes the class of {split['changed']:.1%} of the anchor's pixels "
        f"({_turned(split)}). In the merge, the decoder's BatchNorm layers see inputs with "
        f"{split['variance_ratio']:.2f} of the variance their merged statistics assume (the "
        f"anchor's {split['anchor_variance_ratio']:.2f}): a decoder trained apart, averaged in, "
        f"shrinks the features. With the statistics of both measured anew on {ctx.images} "
        f"unlabelled real train images (AdaBN), the merge has PQ {split['reestimated_pq']:.2f} "
        f"against the anchor's {split['anchor_reestimated_pq']:.2f} ({fresh:+.2f}){cause}."
        f"{_variances_alone(split)}"
    )
    if len(others) > 1:
        control = merge_split(others[0], [partner], reestimate=ctx.images, **ctx.settings())
        where += (
            f" A semantic anchor, {Path(others[0]).parent.name}: the same merge with {name} "
            f"changes {control['changed']:.1%} of its pixels ({_turned(control)}) and its mIoU "
            f"by {control['miou'] - control['anchor_miou']:+.2f}; with statistics measured "
            f"anew, by {_remeasured(control, 'miou'):+.2f}."
        )
    return Measurement(
        f"panoptic anchor PQ {base['pq']:.2f} (SQ {base['sq']:.2f}, RQ {base['rq']:.2f}); "
        + "; ".join(f"{r['name']} {r['pq']:.2f}" for r in layerwise)
        + f"; best isotropic {baselines['isotropic']:.2f}, best fisher {baselines['fisher']:.2f}"
        + f"; BN statistics measured on the target: anchor {split['anchor_reestimated_pq']:.2f}, "
        f"layerwise + {name} {split['reestimated_pq']:.2f}",
        _verdict(raises and beats, beats),
        f"The semantic models share the encoder with the panoptic one and nothing else trained "
        f"together (their decoders come from other seeds, the independent regime), and its "
        f"instance heads are the anchor's alone. The best layer-wise merge ({best['name']}) "
        f"changes PQ by {best['pq'] - base['pq']:+.2f}: stuff PQ by {lost['stuff']:+.2f}, things "
        f"PQ by {lost['things']:+.2f} and the semantic mIoU by {lost['miou']:+.2f}, so the "
        f"change is in the semantic branch; things PQ is {base['things']:.2f} for the anchor, "
        "so the instance side of the claim cannot be seen on this small zoo. Isotropic and Fisher "
        "average decoders trained apart and fall to "
        f"{baselines['isotropic']:.2f} and {baselines['fisher']:.2f}. {where}",
        {"rows": rows, **{k: merged[k]["pq"] for k in merged}, "anchor": base["pq"], **split},
        key=("best layerwise PQ minus the anchor's", best["pq"] - base["pq"]),
    )


def _span(values: Iterable[float]) -> str:
    """``lo-hi`` of some figures, to two decimals (one figure alone when they are equal)."""
    values = sorted(values)
    lo, hi = f"{values[0]:.2f}", f"{values[-1]:.2f}"
    return lo if lo == hi else f"{lo}-{hi}"


def _remeasured(split: dict[str, float], score: str) -> float:
    """The merge's ``score`` minus the anchor's, both with their BN statistics measured anew."""
    return split[f"reestimated_{score}"] - split[f"anchor_reestimated_{score}"]


def _variances_alone(split: dict[str, float]) -> str:
    """What a :func:`merge_split` says the merge's variances alone, measured anew, give back."""
    merged, alone, both = (split[k] for k in ("pq", "variance_reestimated_pq", "reestimated_pq"))
    said = f" With only its variances measured so, its means as merged, it has PQ {alone:.2f}"
    if both - merged > KEEP:
        share = (alone - merged) / (both - merged)
        said += f": the variances give back {share:.0%} of what both statistics do"
    return said + "."


def _turned(split: dict[str, float]) -> str:
    """What a :func:`merge_split` says the merge did to the labelled pixels, in words."""
    return (
        f"{split['turned_wrong']:.1%} of the labelled ones turned wrong, "
        f"{split['turned_right']:.1%} right"
    )
