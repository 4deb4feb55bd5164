"""The papers' claims, measured on the zoo: one small function per claim, registered in order.

Each returns a :class:`Finding`: the claim, the paper's figure, ours, whether it holds
(``yes``, ``partly`` or ``no``), what we think explains it, and the command that reproduces it.
A claim that does not hold on our zoo is a result: the zoo is small models trained for minutes
on synthetic scenes, and the explanation says where that matters. "Keeps the anchor" allows
:data:`KEEP` mIoU points, about what a 100-image val resolves.
"""

from __future__ import annotations

import itertools
import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from lwmm_lab.analysis.comparison import (
    add_one_at_a_time,
    compare,
    heads_and_decoders,
    multi_target,
)
from lwmm_lab.analysis.discrepancy import Discrepancy, discrepancy
from lwmm_lab.analysis.sweeps import grid, run_sweep
from lwmm_lab.engine.pool import Pool
from lwmm_lab.zoo.manifest import find_zoo, load_manifest, preset, select

STRATEGIES = ("source_only", "minent", "maxsquare", "advent", "adaptsegnet", "selftrain")
UDA = STRATEGIES[1:]
ADVERSARIAL, ENTROPY = ("advent", "adaptsegnet"), ("minent", "maxsquare")
TAU = 20.0
KEEP = 0.25


@dataclass
class Finding:
    """One claim measured on the zoo."""

    number: int
    claim: str
    source: str
    paper: str
    ours: str
    holds: str
    explanation: str
    command: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What every claim needs: the zoo's manifest and the evaluation settings."""

    manifest: dict[str, Any]
    images: int
    resolution: tuple[int, int]

    def final(self, run: str) -> str:
        (entry,) = select(self.manifest, run=run, fraction=1.0)
        return entry["path"]

    def settings(self) -> dict[str, Any]:
        return {"images": self.images, "resolution": self.resolution}


Claim = Callable[[Context], Finding]
CLAIMS: dict[int, Claim] = {}


def claim(number: int) -> Callable[[Claim], Claim]:
    """Register a claim under its number (the order of the findings table)."""

    def add(fn: Claim) -> Claim:
        CLAIMS[number] = fn
        return fn

    return add


def measure(
    zoo: str | os.PathLike | None = None, images: int = 100, only: list[int] | None = None
) -> list[Finding]:
    """Measure the claims (all, or the numbers in ``only``) on the zoo."""
    manifest = load_manifest(zoo or find_zoo())
    context = Context(manifest, images, tuple(manifest["config"]["resolution"]))
    return [CLAIMS[n](context) for n in sorted(CLAIMS) if only is None or n in only]


def _verdict(full: bool, partial: bool = False) -> str:
    return "yes" if full else "partly" if partial else "no"


def _command(number: int) -> str:
    return f"lwmm findings --only {number}"


def _composition(d: Discrepancy) -> dict[str, Any]:
    """Of the tensors above 1/tau, the share in the head or BN statistics; median distances."""
    above = d.above(TAU)

    def median(keep: Callable[[dict[str, Any]], bool]) -> float:
        return statistics.median([r["relative_l2"] for r in d.rows if keep(r)] or [0.0])

    head_or_bn = [r["region"] == "head" or r["kind"].startswith("BN") for r in above]
    return {
        "above": len(above),
        "head_or_bn": sum(head_or_bn) / len(above) if above else 0.0,
        "encoder_weights": median(lambda r: r["region"] == "encoder" and r["kind"] == "weight"),
        "bn_statistics": median(lambda r: r["kind"].startswith("BN")),
        "head": median(lambda r: r["region"] == "head"),
    }


@claim(1)
def checkpoints_differ_in_head_and_bn(ctx: Context) -> Finding:
    runs = [r for r in STRATEGIES if select(ctx.manifest, run=r)]
    stats = []
    for run in runs:
        reference, others = preset(ctx.manifest, "checkpoint", run=run)
        stats.append(_composition(discrepancy(Pool([reference, *others], device="cpu"))))
    share = statistics.mean(s["head_or_bn"] for s in stats)
    enc, bn, head = (
        statistics.median(s[k] for s in stats) for k in ("encoder_weights", "bn_statistics", "head")
    )
    small_backbone = enc < bn and enc < head
    return Finding(
        1,
        "Checkpoints of one run differ mostly in the head and in BN running statistics; "
        "backbone weights change little.",
        "Fig. 2a",
        "head conv weights and BN mean/var change most; backbone weights slightly",
        f"{share:.0%} of the tensors above 1/tau (tau = {TAU:g}) are head or BN statistics; "
        f"median relative change: encoder weights {enc:.4f}, BN statistics {bn:.4f}, "
        f"head {head:.4f} ({len(runs)} runs, first checkpoint vs the later ones)",
        _verdict(share >= 0.5 and small_backbone, small_backbone),
        "As in the paper: the head learns 10x faster, and BN running statistics track every "
        "batch of target images, while the encoder's weights move an order of magnitude less.",
        "lwmm discrepancy --preset checkpoint --run advent --tau 20",
        {"runs": runs, "per_run": stats},
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


@claim(2)
def strategies_differ_more(ctx: Context) -> Finding:
    runs = [r for r in STRATEGIES if select(ctx.manifest, run=r)]
    chains = [
        [e["path"] for e in sorted(select(ctx.manifest, run=r), key=lambda e: e["step"])]
        for r in runs
    ]
    paths = [p for chain in chains for p in chain]
    index = {p: i for i, p in enumerate(paths)}
    pool = Pool(paths, device="cpu")
    within = [(index[a], index[b]) for chain in chains for a, b in itertools.pairwise(chain)]
    across = list(itertools.combinations([index[chain[-1]] for chain in chains], 2))
    d_within, d_across = _layer_distances(pool, within), _layer_distances(pool, across)
    more = float((d_across > d_within).float().mean())
    reference, others = preset(ctx.manifest, "heterogeneous")
    composition = _composition(discrepancy(Pool([reference, *others], device="cpu")))
    return Finding(
        2,
        "Models from different strategies differ more than checkpoints of one run, again mostly "
        "in the head and BN statistics.",
        "Fig. 2b",
        "discrepancy between UDA methods concentrates in the last layers and BN statistics",
        f"strategies differ more in {more:.0%} of the layers (median per-layer distance "
        f"{float(d_across.median()):.4f} vs {float(d_within.median()):.4f} within a run); "
        f"{composition['head_or_bn']:.0%} of the tensors above 1/tau are head or BN statistics",
        _verdict(more > 0.5 and composition["head_or_bn"] >= 0.5, more > 0.5),
        "The first half holds per layer. The second only partly: half of the strategies' "
        "discrepant tensors are small encoder biases and norm parameters, which the different "
        "target losses move relatively more than the head, since every strategy shares the "
        "source loss that drives the head.",
        "lwmm discrepancy --preset heterogeneous --tau 20",
        {"share_of_layers": more, "composition": composition},
    )


@claim(3)
def checkpoint_merging(ctx: Context) -> Finding:
    rows = []
    for run in STRATEGIES:
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
    return Finding(
        3,
        "Merging the checkpoints of one run: layerwise >= isotropic, and layerwise does not fall "
        "below the anchor as more checkpoints are added.",
        "Fig. 3, Table 2",
        "layer-wise above isotropic and above the final checkpoint (DeepLabV2, AdvEnt)",
        f"with 4 checkpoints, layerwise >= isotropic in {beats}/{n} runs; layerwise never below "
        f"the anchor (the final checkpoint) in {keeps}/{n} runs; mean gain over the anchor: "
        f"layerwise {gain:+.2f}, isotropic {iso_gain:+.2f} mIoU",
        _verdict(beats == n and keeps == n, keeps == n),
        _checkpoint_explanation(rows),
        _command(3),
        {"runs": rows},
    )


def _checkpoint_explanation(rows: list[dict[str, Any]]) -> str:
    """Why layer-wise and isotropic compare as they do on checkpoints, from the measured runs."""
    worse = [r["run"] for r in rows if r["layerwise"] < r["isotropic"]]
    text = (
        "Layer-wise never falls below the final checkpoint. Against isotropic, the runs differ "
        "by a few tenths of a point, about what 100 val images resolve: averaging checkpoints "
        "acts like stochastic weight averaging, and checkpoints differ exactly where layer-wise "
        "keeps the final one's values, in the head and BN statistics (claim 1)."
    )
    if worse:
        text += (
            f" Isotropic wins clearly in {', '.join(worse)}, whose checkpoints change most "
            "(no target loss slows it): averaging its BN statistics along the run helps most."
        )
    return text


@claim(4)
def strategy_merging(ctx: Context) -> Finding:
    finals = [select(ctx.manifest, run=r, fraction=1.0)[0] for r in UDA]
    finals.sort(key=lambda e: -e["miou"]["real"])
    rows = add_one_at_a_time([e["path"] for e in finals], **ctx.settings())
    anchor, merged, last = rows[0]["layerwise"], rows[1:], rows[-1]
    wins = {m: sum(r["layerwise"] >= r[m] for r in merged) for m in ("isotropic", "fisher")}
    above = sum(r["layerwise"] > anchor for r in merged)
    k = len(merged)
    return Finding(
        4,
        "Merging models of different strategies: layerwise beats isotropic and fisher, and beats "
        "the anchor.",
        "Tables 2, 3",
        "CNN models: ours 49.6-51.8 vs isotropic 47.7-50.7, fisher 46.8-47.3, anchor 46.9",
        f"with 2-{k + 1} models: layerwise >= isotropic in {wins['isotropic']}/{k}, >= fisher in "
        f"{wins['fisher']}/{k}, above the anchor ({anchor:.2f}) in {above}/{k}; with all "
        f"{k + 1}: layerwise {last['layerwise']:.2f}, isotropic {last['isotropic']:.2f}, "
        f"fisher {last['fisher']:.2f}, ensemble {last['ensemble']:.2f}",
        _verdict(
            min(wins.values()) == k and above == k, min(wins.values()) > k / 2 or above > k / 2
        ),
        "The paper's headline holds here: averaging the shallow layers of five strategies and "
        "keeping the best one's deep layers beats every single model and every other method, "
        "and it does not degrade as weaker models are added.",
        _command(4),
        {"rows": rows},
    )


@claim(5)
def kinds_of_strategy(ctx: Context) -> Finding:
    mixed = [(a, e) for a in ADVERSARIAL for e in ENTROPY]
    same = [ADVERSARIAL, ENTROPY]
    pairs = [list(p) for p in mixed + same]
    groups = [[ctx.final(n) for n in pair] for pair in pairs]
    rows = compare(groups, methods=("layerwise",), **ctx.settings())
    gains = [r["layerwise"] - r["best_single"] for r in rows]
    g_mixed = statistics.mean(gains[: len(mixed)])
    g_same = statistics.mean(gains[len(mixed) :])
    return Finding(
        5,
        "Combining different kinds of strategy (adversarial + entropy) gains more than combining "
        "two of one kind.",
        "Table 3",
        "e.g. FADA + MinEnt 48.2 vs two adversarial methods 45.3-47.1 (layer-wise)",
        f"layerwise gain over the better model of each pair: adversarial + entropy "
        f"{g_mixed:+.2f}, same kind {g_same:+.2f} (means of {len(mixed)} and {len(same)} pairs)",
        _verdict(g_mixed > g_same),
        f"Every two-model merge lands within {max(map(abs, gains)):.2f} points of the better "
        "model: after 120 steps from one base, our adversarial and entropy models make nearly "
        "the same mistakes (our AdvEnt is itself adversarial on entropy maps), so a pair has "
        "little to combine. Five models together do gain (claim 4).",
        _command(5),
        {"pairs": [" + ".join(p) for p in pairs], "gains": gains},
    )


def _anchor_and_merges(rows: list[dict[str, Any]]) -> dict[str, float]:
    values = {r["name"]: r["miou"] for r in rows if r["kind"] == "merged"}
    times = {r["name"]: r["ms_per_image"] for r in rows if r["kind"] == "merged"}
    values |= {"anchor": rows[0]["miou"], "anchor_ms": rows[0]["ms_per_image"]}
    values |= {f"{name}_ms": ms for name, ms in times.items()}
    return values


@claim(6)
def different_class_sets(ctx: Context) -> Finding:
    rows = heads_and_decoders(
        ctx.final("minent"), [ctx.final("synthia16-minent")], **ctx.settings()
    )
    v = _anchor_and_merges(rows)
    keeps = v["layerwise"] >= v["anchor"] - KEEP
    collapse = min(v["isotropic"], v["fisher"]) < v["anchor"] - 5
    return Finding(
        6,
        "Different class sets: isotropic and fisher fail, or collapse when restricted to shared "
        "tensors; layerwise keeps or improves the anchor.",
        "Table 4a",
        "isotropic 9.7, fisher 12.2, ensemble 64.3, ours 75.7 vs anchor 73.8",
        f"19-class anchor {v['anchor']:.2f}; with the 16-class model: isotropic "
        f"{v['isotropic']:.2f}, fisher {v['fisher']:.2f}, ensemble {v['ensemble']:.2f}, "
        f"layerwise {v['layerwise']:.2f}",
        _verdict(keeps and collapse, keeps),
        f"Layer-wise changes the anchor by {v['layerwise'] - v['anchor']:+.1f} points; isotropic "
        f"and Fisher lose {v['anchor'] - v['isotropic']:.1f} and {v['anchor'] - v['fisher']:.1f} "
        "but do not collapse: the two models share the whole Unet but its last conv, start from "
        "one base and adapt briefly, so averaging their decoders stays in one basin. The paper's "
        "models were trained far longer on different datasets.",
        _command(6),
        v,
    )


@claim(7)
def different_decoders(ctx: Context) -> Finding:
    others = [ctx.final("fpn-minent"), ctx.final("deeplabv3plus-minent")]
    v = _anchor_and_merges(heads_and_decoders(ctx.final("minent"), others, **ctx.settings()))
    speed = v["layerwise_ms"] <= 1.3 * v["anchor_ms"]
    keeps = v["layerwise"] >= v["anchor"] - KEEP
    collapse = v["isotropic"] < v["anchor"] - 5
    return Finding(
        7,
        "Different decoders sharing an encoder: layerwise keeps the anchor's speed and keeps or "
        "improves its mIoU; isotropic over the shared tensors collapses.",
        "Tables 4b, 5",
        "isotropic 6.0, fisher 7.3, ours 76.2 vs anchor 75.9; the merge at the anchor's speed",
        f"Unet anchor {v['anchor']:.2f} ({v['anchor_ms']:.1f} ms/image); with FPN and "
        f"DeepLabV3+: layerwise {v['layerwise']:.2f} ({v['layerwise_ms']:.1f} ms), isotropic "
        f"{v['isotropic']:.2f}, fisher {v['fisher']:.2f}, ensemble {v['ensemble']:.2f} "
        f"({v['ensemble_ms']:.1f} ms)",
        _verdict(speed and keeps and collapse, speed and keeps),
        f"Layer-wise changes the anchor's mIoU by {v['layerwise'] - v['anchor']:+.2f} and keeps "
        "its speed: the merge is the anchor's architecture (the ms differ by timing noise). "
        "Isotropic does not collapse: only the encoders are shared, and all three stay close to "
        "the common base. The ensemble, at 3x the cost, scores best here.",
        _command(7),
        v,
    )


def _two_model_sweep(ctx: Context, starts: list[float], alphas: list[float]) -> list[dict]:
    pair = [ctx.final("advent"), ctx.final("minent")]
    domains = ("real", "synthetic")
    cells = grid(pair, starts=starts, alphas=alphas, domains=domains, **ctx.settings())
    return run_sweep(cells, progress=False).results


@claim(8)
def later_start_hurts_target(ctx: Context) -> Finding:
    results = _two_model_sweep(ctx, [k / 10 for k in range(11)], [0.5])
    results.sort(key=lambda r: r["start"])
    target = [r["miou"]["real"] for r in results]
    source = [r["miou"]["synthetic"] for r in results]
    starts = torch.tensor([float(r["start"]) for r in results])
    slope = float(torch.corrcoef(torch.stack([starts, torch.tensor(target)]))[0, 1])
    t_range, s_range = max(target) - min(target), max(source) - min(source)
    drop = target[0] - target[-1]
    stable = s_range <= max(t_range, 1e-9)
    return Finding(
        8,
        "Starting the decay later hurts target mIoU, while source mIoU stays stable.",
        "Fig. 5b",
        "target mIoU falls as the starting layer moves deeper; source mIoU stays flat",
        f"advent + minent, alpha 0.5: target {target[0]:.2f} at s = 1 and {target[-1]:.2f} at "
        f"s = Np (correlation with s {slope:+.2f}); ranges over s: target {t_range:.2f}, "
        f"source {s_range:.2f}",
        _verdict(drop > 0 and slope < 0 and stable, drop > 0 or stable),
        f"Flat: over all s, the merge of our AdvEnt and MinEnt models moves by {t_range:.2f} "
        f"points on the target and {s_range:.2f} on the source, below what 100 images resolve. "
        "The two models are too alike for the start layer to matter (see claim 5); the paper "
        "merged FADA with MinEnt after full-length training.",
        _command(8),
        {"start": starts.tolist(), "target": target, "source": source},
    )


@claim(9)
def half_alpha_is_best(ctx: Context) -> Finding:
    results = _two_model_sweep(ctx, [0.0], [k / 10 for k in range(11)])
    target = {round(r["alpha"], 2): r["miou"]["real"] for r in results}
    best = max(target, key=target.get)
    gap = target[best] - target[0.5]
    return Finding(
        9,
        "alpha = 0.5 for two models is at or near the best.",
        "Fig. 5c",
        "alpha = 0.5 (equal weights in the first layer) gives the best target mIoU",
        f"advent + minent, s = 1: best alpha {best:.1f} ({target[best]:.2f}); alpha 0.5 gives "
        f"{target[0.5]:.2f} ({gap:.2f} below the best)",
        _verdict(abs(best - 0.5) <= 0.1 or gap <= KEEP, gap <= 3 * KEEP),
        f"Holds, but weakly: over alpha the target mIoU moves by "
        f"{max(target.values()) - min(target.values()):.2f} points, so alpha = 0.5 is as good "
        "as any (the same two near-identical models as in claim 8).",
        _command(9),
        {"alpha": list(target), "target": list(target.values())},
    )


@claim(10)
def gaussian_bn_for_multi_target(ctx: Context) -> Finding:
    adapted = [ctx.final(r) for r in ("minent", "minent-foggy", "minent-night")]
    rows = multi_target(adapted, ctx.final("minent-union"), **ctx.settings())
    by = {r["name"]: r["mean"] for r in rows}
    gaussian = max(by["merge, BN gaussian"], by["merge, BN gaussian-counts"])
    linear, union = by["merge, BN linear"], by["union of targets"]
    close = gaussian >= union - 1.0
    return Finding(
        10,
        "Merging models adapted to different targets with Gaussian BN merging beats linear BN "
        "merging, and comes close to the model adapted on the union of the targets.",
        "multi-target paper",
        "Gaussian BN merging beats linear; on par with data-combination training",
        f"mean mIoU over real, foggy, night: Gaussian BN {gaussian:.2f} vs linear "
        f"{linear:.2f}; the union-trained model {union:.2f}",
        _verdict(gaussian > linear and close, gaussian > linear or close),
        "Gaussian merging adds the spread between the domains' means to the variances; it helps "
        "most on night, whose statistics are furthest from the others. gaussian-counts equals "
        "gaussian here: every run saw the same number of batches. All models nearly fail on "
        "night, which caps every mean.",
        _command(10),
        {"rows": rows},
    )


@claim(11)
def ensemble_costs_m_times(ctx: Context) -> Finding:
    paths = [ctx.final(r) for r in UDA]
    methods = ("ensemble", "layerwise")
    v = _anchor_and_merges(
        heads_and_decoders(paths[0], paths[1:], methods=methods, **ctx.settings())
    )
    ratio = v["ensemble_ms"] / v["layerwise_ms"]
    m = len(paths)
    return Finding(
        11,
        "Output ensembling costs M times the inference; a merge costs one.",
        "Table 1",
        "ensemble O(M) at inference, weight merging O(1)",
        f"M = {m}: ensemble {v['ensemble_ms']:.1f} ms per image, merged model "
        f"{v['layerwise_ms']:.1f} ms ({ratio:.1f}x)",
        _verdict(0.7 * m <= ratio <= 1.3 * m, ratio > 1.5),
        "Measured on the CPU in batches of 16 images: the ensemble runs all M models, the merge "
        "one model of the anchor's architecture.",
        _command(11),
        v,
    )


def table(findings: list[Finding]) -> str:
    """The findings as a Markdown table (the README's)."""
    lines = ["| # | claim | paper | ours | holds | reproduce |", "|---|---|---|---|---|---|"]
    for f in findings:
        cells = [str(f.number), f"{f.claim} ({f.source})", f.paper, f.ours, f"**{f.holds}**",
                 f"`{f.command}`"]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def to_json(findings: list[Finding]) -> list[dict[str, Any]]:
    return [asdict(f) for f in findings]
