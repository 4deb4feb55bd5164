"""The findings: every registered claim (:mod:`lwmm_lab.analysis.claims`) measured on the zoo,
as tables and plain data; and over several builds of the zoo, which separates the build-to-build
spread from evaluation noise.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from lwmm_lab.analysis.claims import (
    CLAIMS,
    FAMILIES,
    FAMILY_TITLES,
    Claim,
    Context,
    Measurement,
    claim,
)
from lwmm_lab.errors import LwmmError, check_count
from lwmm_lab.markdown import markdown_table
from lwmm_lab.progress import progress_bar
from lwmm_lab.zoo.build import build_zoo
from lwmm_lab.zoo.manifest import default_zoo_dir, find_zoo, load_manifest
from lwmm_lab.zoo.recipe import ZooConfig

__all__ = [
    "CLAIMS",
    "FAMILIES",
    "FAMILY_TITLES",
    "Claim",
    "Context",
    "Finding",
    "Measurement",
    "SeededFinding",
    "Spread",
    "claim",
    "explanations",
    "measure",
    "measure_seeds",
    "seeded_json",
    "seeded_table",
    "summary_rows",
    "table",
    "to_json",
]


@dataclass
class Finding:
    """One claim, measured on every family it applies to (``results``, by family)."""

    number: int
    claim: str
    source: str
    paper: str
    results: dict[str, Measurement]
    command: str


def measure(
    zoo: str | os.PathLike | None = None,
    images: int = 100,
    only: list[int] | int | None = None,
    val_seed: int = 0,
) -> list[Finding]:
    """Measure the claims (all, or the numbers in ``only``: a list, or one) on every family
    they apply to; ``val_seed`` picks the val sets (another seed: other scenes of the same
    size)."""
    only = _check_request(images, only)
    manifest = load_manifest(zoo or find_zoo())
    context = Context(manifest, images, tuple(manifest["config"]["resolution"]), val_seed)
    numbers = [n for n in sorted(CLAIMS) if only is None or n in only]
    findings = []
    for number in progress_bar(numbers, desc="findings", unit="claim", delay=1.0):
        c = CLAIMS[number]
        results = {family: c.measure(context, family) for family in c.families}
        findings.append(
            Finding(number, c.claim, c.source, c.paper, results, f"lwmm findings --only {number}")
        )
    return findings


def _check_request(images: int, only: list[int] | int | None) -> list[int] | None:
    """``only`` as a list (one claim number may be given alone), once the image count and
    every claim number are good: refused before any zoo is read or built, as is an empty
    list (it measured nothing, without a word)."""
    check_count("images", images)
    if only is None:
        return None
    only = [only] if isinstance(only, int) else list(only)
    if not only:
        raise LwmmError(f"no claim given (the claims are {min(CLAIMS)}..{max(CLAIMS)})")
    unknown = sorted(set(only) - set(CLAIMS), key=str)
    if unknown:
        raise LwmmError(
            f"claim {', '.join(map(str, unknown))} is not one of {min(CLAIMS)}..{max(CLAIMS)}"
        )
    return only


def _row(f: Finding | SeededFinding, cells: dict[str, str]) -> list[str]:
    """A claim's number, text and paper figure, then its cell in each family ("n/a" where the
    claim does not apply)."""
    return [
        str(f.number),
        f"{f.claim} ({f.source})",
        f.paper,
        *(cells.get(k, "n/a") for k in FAMILIES),
    ]


def table(findings: list[Finding]) -> str:
    """The findings as a Markdown table (the README's): one column per family."""
    header = ["#", "claim", "paper", *(FAMILY_TITLES[f] for f in FAMILIES), "reproduce"]
    rows = [
        [*_row(f, {k: f"**{r.holds}**: {r.ours}" for k, r in f.results.items()}), f"`{f.command}`"]
        for f in findings
    ]
    return "\n".join(markdown_table(header, rows))


def explanations(findings: list[Finding]) -> str:
    """Why each claim comes out as it does, family by family, as Markdown."""
    lines = []
    for f in findings:
        parts = [
            f"{FAMILY_TITLES[family]}: **{r.holds}**. {r.why}" for family, r in f.results.items()
        ]
        lines.append(f"{f.number}. " + " ".join(parts))
    return "\n".join(lines)


def summary_rows(findings: list[Finding]) -> list[dict[str, str]]:
    """One flat row per claim (number, figure, and the verdict and figure per family)."""
    rows = []
    for f in findings:
        row = {"#": str(f.number), "paper's": f.source}
        for family in FAMILIES:
            r = f.results.get(family)
            row[FAMILY_TITLES[family]] = "n/a" if r is None else f"{r.holds}: {r.ours}"
        rows.append(row)
    return rows


def to_json(findings: list[Finding]) -> list[dict[str, Any]]:
    """The findings as plain data (``lwmm findings --json``)."""
    return [asdict(f) for f in findings]


# ------------------------------------------------------------------------ several builds


@dataclass
class Spread:
    """One claim on one family over several builds of the zoo: each build's verdict and key
    figure, and the key figure on a second, disjoint val set of the first build."""

    name: str
    values: list[float]
    verdicts: list[str]
    other_val_set: float | None = None

    @property
    def mean(self) -> float:
        return statistics.mean(self.values)

    @property
    def sd(self) -> float:
        """The build-to-build standard deviation (0 for one build)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def eval_noise(self) -> float | None:
        """How far the first build's figure moves on another val set of the same size."""
        return None if self.other_val_set is None else abs(self.other_val_set - self.values[0])

    @property
    def verdict(self) -> str:
        """The builds' verdict when every build gives it; "within noise" when they disagree:
        the difference the verdict rests on does not exceed its spread over the builds."""
        return self.verdicts[0] if len(set(self.verdicts)) == 1 else "within noise"

    def text(self) -> str:
        noise = "" if self.eval_noise is None else f"; another val set: {self.eval_noise:.2f}"
        return (
            f"{self.name} {self.mean:+.2f} ± {self.sd:.2f} (builds: "
            f"{', '.join(f'{v:+.2f}' for v in self.values)}; verdicts "
            f"{'/'.join(self.verdicts)}{noise})"
        )


@dataclass
class SeededFinding:
    """A claim measured on several builds of the zoo: its :class:`Spread` per family."""

    number: int
    claim: str
    source: str
    paper: str
    spreads: dict[str, Spread]


def measure_seeds(
    seeds: list[int],
    images: int = 100,
    only: list[int] | int | None = None,
    device: str = "auto",
    build: Callable[[int], os.PathLike] | None = None,
) -> tuple[list[SeededFinding], dict[str, Any]]:
    """Every claim on one default zoo per seed (built, or finished, in ``data/zoo`` for seed 0
    and ``data/zoo-seedK`` for the others), and on the first seed's zoo once more with another
    val set: what separates build noise from evaluation noise. Returns the findings and the
    header facts (seeds, folders, images)."""
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise LwmmError(f"--seeds {' '.join(map(str, seeds))}: give distinct whole numbers >= 0")
    only = _check_request(images, only)
    build = build or (lambda seed: _built_zoo(seed, device))
    folders = [build(seed) for seed in seeds]
    runs = [measure(folder, images, only) for folder in folders]
    again = {f.number: f for f in measure(folders[0], images, only, val_seed=1)}
    result = []
    for number, findings in zip([f.number for f in runs[0]], zip(*runs, strict=True), strict=True):
        first = findings[0]
        spreads = {}
        for family in first.results:
            measured = [f.results[family] for f in findings]
            other = again[number].results[family].key
            spreads[family] = Spread(
                measured[0].key[0] if measured[0].key else "",
                [m.key[1] if m.key else float("nan") for m in measured],
                [m.holds for m in measured],
                other[1] if other else None,
            )
        result.append(SeededFinding(number, first.claim, first.source, first.paper, spreads))
    facts = {"seeds": seeds, "zoos": [str(f) for f in folders], "images": images}
    return result, facts


def _built_zoo(seed: int, device: str) -> os.PathLike:
    """The default zoo of ``seed``, built or finished first (resumable)."""
    folder = default_zoo_dir(False, seed)
    build_zoo(folder, ZooConfig(seed=seed), device=device, log=lambda line: None)
    return folder


def seeded_table(findings: list[SeededFinding], facts: dict[str, Any]) -> str:
    """The findings over several builds as Markdown: a header with the builds and the val set
    size, then per claim and family the verdict and the key figure's mean ± standard deviation
    over the builds, each build's value and how far another val set moves it."""
    header = ["#", "claim", "paper", *(FAMILY_TITLES[f] for f in FAMILIES)]
    rows = [
        _row(f, {k: f"**{r.verdict}**: {r.text()}" for k, r in f.spreads.items()}) for f in findings
    ]
    intro = (
        f"{len(facts['seeds'])} builds of the default zoo (seeds "
        f"{', '.join(map(str, facts['seeds']))}), {facts['images']} real val images per score; a "
        "verdict only where every build gives it, else *within noise*."
    )
    return "\n".join([intro, "", *markdown_table(header, rows)])


def seeded_json(findings: list[SeededFinding], facts: dict[str, Any]) -> dict[str, Any]:
    """The findings over several builds as plain data (``lwmm findings --seeds ... --json``)."""
    return {
        **facts,
        "claims": [
            {
                "number": f.number,
                "claim": f.claim,
                "source": f.source,
                "paper": f.paper,
                "results": {
                    family: asdict(r)
                    | {"verdict": r.verdict, "mean": r.mean, "sd": r.sd, "eval_noise": r.eval_noise}
                    for family, r in f.spreads.items()
                },
            }
            for f in findings
        ],
    }
