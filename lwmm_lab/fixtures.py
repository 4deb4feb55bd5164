"""Small stand-ins for what users bring: real-dataset folders and foreign checkpoint files.

``07_bring_your_own`` runs on them when you have no Cityscapes or DAFormer checkpoints at hand,
and the tests use them. Each is written in the exact layout of the real thing:

- :func:`cityscapes_folder`: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
  ``gtFine/.../*_gtFine_labelIds.png`` (Cityscapes label ids), from ``real`` scenes;
- :func:`daformer_checkpoint`: an mmseg/DAFormer ``.pth`` with ``meta``, ``state_dict``
  (``model.`` / ``ema_model.`` / ``imnet_model.`` prefixes) and ``optimizer``;
- :func:`smp_directory`: what smp's ``save_pretrained`` writes (config.json, model.safetensors).

Each is written only where nothing is yet (a missing path or an empty folder): a stand-in
never replaces the user's files.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from lwmm_lab.data import labels as L
from lwmm_lab.data.domains import generate
from lwmm_lab.engine.checkpoints import load_checkpoint
from lwmm_lab.engine.model import load_model
from lwmm_lab.errors import LwmmError
from lwmm_lab.files import atomic_path

_CITYSCAPES_IDS = np.array(
    [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
)


def cityscapes_folder(
    root: str | os.PathLike,
    images: int = 6,
    size: tuple[int, int] = (128, 256),
    split: str = "val",
    seed: int = 0,
) -> Path:
    """A Cityscapes-layout folder of ``real`` scenes (two cities), labels as label ids."""
    root = _nothing_at(root)
    to_ids = np.zeros(256, dtype=np.uint8)  # trainId -> Cityscapes label id; ignore -> 0
    to_ids[: len(_CITYSCAPES_IDS)] = _CITYSCAPES_IDS
    for i in range(images):
        city = ("aachen", "bochum")[i % 2]
        stem = f"{city}_{i:06d}_000019"
        scene = generate("real", split, i, seed, size)
        image_dir = root / "leftImg8bit" / split / city
        label_dir = root / "gtFine" / split / city
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str(image_dir / f"{stem}_leftImg8bit.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR)
        )
        label = to_ids[scene.label]
        label[scene.label == L.IGNORE] = 0
        cv2.imwrite(str(label_dir / f"{stem}_gtFine_labelIds.png"), label)
    return root


def daformer_checkpoint(
    path: str | os.PathLike, student: str | os.PathLike, teacher: str | os.PathLike | None = None
) -> Path:
    """An mmseg/DAFormer-style ``.pth``: ``model.`` (student), ``ema_model.``, ``imnet_model.``."""
    path = _nothing_at(path)
    subs = {"model": student, "ema_model": teacher or student, "imnet_model": student}
    state = {}
    for prefix, source in subs.items():
        for name, tensor in load_checkpoint(source).tensors.items():
            state[f"{prefix}.{name}"] = tensor.clone()
    meta = {"iter": 40000, "mmseg_version": "0.16.0", "CLASSES": L.CLASSES}
    optimizer = {"state": {}, "param_groups": [{"lr": 6e-05, "weight_decay": 0.01}]}
    with atomic_path(path) as tmp:
        torch.save({"meta": meta, "state_dict": state, "optimizer": optimizer}, tmp)
    return path


def smp_directory(path: str | os.PathLike, checkpoint: str | os.PathLike) -> Path:
    """The checkpoint's model written by smp's ``save_pretrained`` into a directory."""
    path = _nothing_at(path)
    load_model(checkpoint, "cpu").save_pretrained(str(path))
    return path


def _nothing_at(path: str | os.PathLike) -> Path:
    """``path`` when nothing is there yet (or an empty folder); else an :class:`LwmmError`
    naming it, before a stand-in is written over what is there."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise LwmmError(f"{path}: already exists; a stand-in is written only where nothing is")
    return path
