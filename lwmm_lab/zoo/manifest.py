"""A built zoo's manifest: where the zoo is, and which of its checkpoints to take.

``manifest.json`` has one entry per checkpoint: its run, strategy, scenarios, architecture,
classes, source and targets, step, and its mIoU on the source val and every target val.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lwmm_lab.data import labels as L
from lwmm_lab.data.domains import SOURCE_DOMAINS, TARGET_DOMAINS, check_domain
from lwmm_lab.errors import LwmmError, check_name
from lwmm_lab.files import data_dir
from lwmm_lab.markdown import markdown_table
from lwmm_lab.zoo.recipe import FAMILIES, SCENARIOS

MANIFEST = "manifest.json"


def default_zoo_dir(quick: bool = False, seed: int = 0) -> Path:
    """``data/zoo`` (``data/zoo-quick`` for the quick zoo, so it never replaces the real one;
    ``-seedK`` added for a zoo of another seed)."""
    return data_dir() / ("zoo" + ("-quick" if quick else "") + (f"-seed{seed}" if seed else ""))


def find_zoo() -> Path:
    """The zoo the lab uses: ``$LWMM_ZOO``, else ``data/zoo``, else ``data/zoo-quick``."""
    if os.environ.get("LWMM_ZOO"):
        return Path(os.environ["LWMM_ZOO"])
    for quick in (False, True):
        if (default_zoo_dir(quick) / MANIFEST).is_file():
            return default_zoo_dir(quick)
    raise LwmmError("no model zoo found: build it with `lwmm zoo build` (or set LWMM_ZOO)")


def load_manifest(zoo: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a built zoo (its folder, or its manifest.json), with each entry's path
    made absolute."""
    zoo = Path(zoo)
    if zoo.name == MANIFEST and zoo.is_file():
        zoo = zoo.parent
    manifest = read_manifest(zoo)
    if not manifest:
        raise LwmmError(f"{zoo / MANIFEST}: no zoo manifest (build one with: lwmm zoo build)")
    for entry in manifest["checkpoints"]:
        entry["path"] = str(zoo / entry["path"])
    return manifest


def select(manifest: dict[str, Any], **where: Any) -> list[dict[str, Any]]:
    """Manifest entries matching every ``key=value`` (``scenario=`` tests membership). A key
    no entry has is refused, naming the fields: a misspelt one matched nothing, silently."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("checkpoints"), list):
        raise LwmmError(
            f"manifest: a {type(manifest).__name__} is not a zoo's manifest; "
            "load_manifest(zoo) reads one"
        )
    fields = {"scenario"}.union(*(entry.keys() for entry in manifest["checkpoints"]))
    if unknown := sorted(set(where) - fields):
        raise LwmmError(
            f"'{unknown[0]}' is not a field of the zoo's entries ({', '.join(sorted(fields))})"
        )
    picked = []
    for entry in manifest["checkpoints"]:
        if all(
            value in entry["scenarios"] if key == "scenario" else entry.get(key) == value
            for key, value in where.items()
        ):
            picked.append(entry)
    return picked


PRESETS = ("checkpoint", "heterogeneous")
#: What the lab calls each scenario.
SCENARIO_LABELS = {
    "independent": "independent strategies",
    "strategies": "one-source strategies",
    "checkpoints": "checkpoints of one run",
    "other-classes": "other classes",
    "other-decoders": "other decoders",
    "multi-target": "multi-target",
    "seeds": "seeds",
    "panoptic": "semantic into panoptic",
}


def preset(
    manifest: dict[str, Any],
    name: str,
    run: str = "advent",
    domain: str = "real",
    family: str = "strategies",
) -> tuple[str, list[str]]:
    """A reference checkpoint and the ones to compare with it (the paper's Fig. 2 scenarios).

    ``checkpoint``: the first checkpoint of ``run`` against its later ones (Fig. 2a).
    ``heterogeneous``: the best final strategy of ``family`` (``strategies``, from one source
    model, or ``independent``) on ``domain`` against each other one (Fig. 2b).
    """
    if check_name(name, PRESETS, "preset") == "checkpoint":
        entries = sorted(select(manifest, run=check_run(manifest, run)), key=lambda e: e["step"])
        if len(entries) < 2:
            raise LwmmError(f"run '{run}' has fewer than two checkpoints in this zoo")
        return entries[0]["path"], [e["path"] for e in entries[1:]]
    reference, *others = scenario_checkpoints(manifest, check_family(family), domain)
    return reference, others


def final(manifest: dict[str, Any], run: str) -> str:
    """The path of ``run``'s final checkpoint."""
    return select(manifest, run=check_run(manifest, run), fraction=1.0)[0]["path"]


def zoo_runs(manifest: dict[str, Any]) -> list[str]:
    """The zoo's runs, sorted (the shared base among them)."""
    return sorted({e["run"] for e in select(manifest)})


def check_run(manifest: dict[str, Any], run: str) -> str:
    """``run`` when the zoo has it; else an :class:`LwmmError` naming the closest of its runs."""
    return check_name(run, zoo_runs(manifest), "run")


def scenario_checkpoints(
    manifest: dict[str, Any], name: str, target: str = "real", run: str = "advent"
) -> list[str]:
    """The checkpoints of a scenario, the anchor first (what the MergeLab offers).

    ``independent`` / ``strategies``: the family's final models, best on ``target`` first;
    ``checkpoints``: the checkpoints of ``run``, the final one first; ``other-classes`` and
    ``other-decoders``: the independent MinEnt Unet (encoder-only, like them) with the 16-class
    model, or with the FPN and DeepLabV3+; ``multi-target``: MinEnt adapted to real, foggy and
    night; ``seeds``: MinEnt and its second seed; ``panoptic``: the panoptic model, then the
    16-class semantic model and the independent 19-class MinEnt (Table 6's cross-task merge).
    """
    check_name(name, SCENARIOS, "scenario")
    check_domain(target)
    if name in FAMILIES:
        finals = select(manifest, scenario=name, fraction=1.0)
        return [e["path"] for e in sorted(finals, key=lambda e: -e["miou"][target])]
    if name == "checkpoints":
        entries = sorted(select(manifest, run=check_run(manifest, run)), key=lambda e: -e["step"])
        if len(entries) < 2:
            raise LwmmError(f"run '{run}' has fewer than two checkpoints in this zoo")
        return [e["path"] for e in entries]
    if name == "panoptic":
        runs = ("panoptic-minent", "synthia16-minent", family_run("independent", "minent"))
        return [final(manifest, r) for r in runs]
    anchor = family_run("independent", "minent") if name.startswith("other") else "minent"
    others = [e["run"] for e in select(manifest, scenario=name, fraction=1.0)]
    if name == "multi-target":
        others = [r for r in others if r != "minent-union"]  # the baseline, not merged
    return [final(manifest, r) for r in (anchor, *(r for r in others if r != anchor))]


def family_run(family: str, strategy: str) -> str:
    """The run name of ``strategy`` in ``family`` (``strategies`` or ``independent``)."""
    return FAMILIES[check_family(family)].format(strategy)


def check_family(name: str) -> str:
    """``name`` when it is one of :data:`FAMILIES`; else an :class:`LwmmError` naming it."""
    return check_name(name, FAMILIES, "family")


def base_checkpoint(manifest: dict[str, Any]) -> str:
    """The path of the zoo's shared pre-trained base model."""
    (entry,) = select(manifest, run="base")
    return entry["path"]


def quality_table(manifest: dict[str, Any], entries: list[dict[str, Any]] | None = None) -> str:
    """The zoo's quality bars as a Markdown table (the README's): each checkpoint (default:
    every run's final one, the base first), what it starts from, and the mIoU the build
    recorded on each val set. A model of another source's class set gives its source figure in
    the first column, the domain named; a panoptic model its semantic mIoU."""
    columns = (SOURCE_DOMAINS[0], *TARGET_DOMAINS)
    rows = []
    for e in select(manifest, fraction=1.0) if entries is None else entries:
        name = e["run"] if e["fraction"] == 1.0 else f"{e['run']}@{e['step']}"
        if e["num_classes"] != len(L.CLASSES):  # not the full Cityscapes set
            name += f" ({e['num_classes']} classes)"
        cells = [f"{e['miou'][d]:.1f}" if d in e["miou"] else "" for d in columns]
        if e["source"] != columns[0] and e["source"] in e["miou"]:
            cells[0] = f"{e['miou'][e['source']]:.1f} ({e['source']})"
        rows.append([name, "-" if e["run"] == "base" else e["init"], *cells])
    header = ["model", "starts from", *columns]
    return "\n".join(markdown_table(header, rows, right=range(2, len(header))))


def read_manifest(out: Path) -> dict[str, Any]:
    """The zoo's manifest in ``out`` (empty when there is none yet). Bad JSON, or another
    program's ``manifest.json`` (which a build would overwrite), is refused in one line."""
    path = out / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise LwmmError(f"{path}: not valid JSON ({e})") from None
    if not (
        isinstance(manifest, dict)
        and isinstance(manifest.get("config"), dict)
        and isinstance(manifest.get("checkpoints"), list)
    ):
        raise LwmmError(
            f"{path}: not a zoo's manifest (a zoo's has a build config and a checkpoint list)"
        )
    return manifest
