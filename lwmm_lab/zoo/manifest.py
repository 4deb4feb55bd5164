"""A built zoo's manifest: where the zoo is, and which of its checkpoints to take.

``manifest.json`` has one entry per checkpoint: its run, strategy, scenarios, architecture,
classes, source and targets, step, and its mIoU on the source val and every target val.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lwmm_lab.errors import LwmmError
from lwmm_lab.files import data_dir

MANIFEST = "manifest.json"


def default_zoo_dir(quick: bool = False) -> Path:
    """``data/zoo`` (``data/zoo-quick`` for the quick zoo, so it never replaces the real one)."""
    return data_dir() / ("zoo-quick" if quick else "zoo")


def find_zoo() -> Path:
    """The zoo the lab uses: ``$LWMM_ZOO``, else ``data/zoo``, else ``data/zoo-quick``."""
    if os.environ.get("LWMM_ZOO"):
        return Path(os.environ["LWMM_ZOO"])
    for quick in (False, True):
        if (default_zoo_dir(quick) / MANIFEST).is_file():
            return default_zoo_dir(quick)
    raise LwmmError("no model zoo found: build it with `lwmm zoo build` (or set LWMM_ZOO)")


def load_manifest(zoo: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a built zoo, with each entry's path made absolute."""
    zoo = Path(zoo)
    manifest = read_manifest(zoo)
    if not manifest:
        raise LwmmError(f"{zoo / MANIFEST}: no zoo manifest (build one with: lwmm zoo build)")
    for entry in manifest["checkpoints"]:
        entry["path"] = str(zoo / entry["path"])
    return manifest


def select(manifest: dict[str, Any], **where: Any) -> list[dict[str, Any]]:
    """Manifest entries matching every ``key=value`` (``scenario=`` tests membership)."""
    picked = []
    for entry in manifest["checkpoints"]:
        if all(
            value in entry["scenarios"] if key == "scenario" else entry.get(key) == value
            for key, value in where.items()
        ):
            picked.append(entry)
    return picked


PRESETS = ("checkpoint", "heterogeneous")


def preset(
    manifest: dict[str, Any], name: str, run: str = "advent", domain: str = "real"
) -> tuple[str, list[str]]:
    """A reference checkpoint and the ones to compare with it (the paper's Fig. 2 scenarios).

    ``checkpoint``: the first checkpoint of ``run`` against its later ones (Fig. 2a).
    ``heterogeneous``: the best final strategy on ``domain`` against each other one (Fig. 2b).
    """
    if name == "checkpoint":
        entries = sorted(select(manifest, run=run), key=lambda e: e["step"])
        if len(entries) < 2:
            raise LwmmError(f"run '{run}' has fewer than two checkpoints in this zoo")
        return entries[0]["path"], [e["path"] for e in entries[1:]]
    if name == "heterogeneous":
        finals = select(manifest, scenario="strategies", fraction=1.0)
        finals.sort(key=lambda e: -e["miou"][domain])
        return finals[0]["path"], [e["path"] for e in finals[1:]]
    raise LwmmError(f"preset '{name}' is not one of {', '.join(PRESETS)}")


def base_checkpoint(manifest: dict[str, Any]) -> str:
    """The path of the zoo's shared pre-trained base model."""
    (entry,) = select(manifest, run="base")
    return entry["path"]


def read_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise LwmmError(f"{path}: not valid JSON ({e})") from None
