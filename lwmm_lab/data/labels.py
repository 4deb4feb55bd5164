"""The Cityscapes label conventions: 19 train classes, colours, id mappings, class subsets.

Labels everywhere in lwmm_lab are Cityscapes *trainIds* (0..18) with 255 = ignore. A model
trained on a subset of the classes (SYNTHIA-16) predicts indices into its own class list;
:func:`to_model_index` and ``classes[...]`` translate between the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE = 255

CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

#: The standard Cityscapes colours, one RGB row per trainId.
COLORS = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)  # fmt: skip

#: Classes with instances (Cityscapes "things").
THINGS = frozenset({PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE})

#: Class subsets, as tuples of trainIds: a model's output channel k is class ``subset[k]``.
CLASS_SETS: dict[str, tuple[int, ...]] = {
    "cityscapes-19": tuple(range(19)),
    "synthia-16": tuple(c for c in range(19) if c not in (TERRAIN, TRUCK, TRAIN)),
    "synthia-13": tuple(
        c for c in range(19) if c not in (WALL, FENCE, POLE, TERRAIN, TRUCK, TRAIN)
    ),
}

# Cityscapes label ids (gtFine_labelIds, also GTA5's labels) -> trainIds.
_CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
# SYNTHIA-RAND-CITYSCAPES ids (README of the dataset) -> trainIds; terrain, truck, train absent.
_SYNTHIA_IDS = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12,
                8: 13, 19: 15, 12: 17, 11: 18}  # fmt: skip


def _lookup(pairs: dict[int, int], size: int) -> np.ndarray:
    table = np.full(size, IGNORE, dtype=np.uint8)
    for source, train_id in pairs.items():
        table[source] = train_id
    return table


#: ``CITYSCAPES_TO_TRAIN[label_id]`` is the trainId (255 for void and unused ids).
CITYSCAPES_TO_TRAIN = _lookup({i: t for t, i in enumerate(_CITYSCAPES_IDS)}, 256)
#: ``SYNTHIA_TO_TRAIN[synthia_id]`` is the trainId (255 for void and unused ids).
SYNTHIA_TO_TRAIN = _lookup(_SYNTHIA_IDS, 65536)


def restrict(label: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """The label with every class outside ``classes`` set to ignore (255)."""
    keep = np.zeros(256, dtype=bool)
    keep[list(classes)] = True
    return np.where(keep[label], label, IGNORE).astype(np.uint8)


def to_model_index(classes: Sequence[int]) -> np.ndarray:
    """A 256-entry table mapping trainIds to a model's output index (255 outside ``classes``)."""
    return _lookup({c: k for k, c in enumerate(classes)}, 256)


#: :data:`COLORS` for every uint8 trainId (ignore and the unused ids black): the palette of a
#: label map shown as an indexed image.
PALETTE = np.zeros((256, 3), dtype=np.uint8)
PALETTE[: len(COLORS)] = COLORS


def colorize(label: np.ndarray) -> np.ndarray:
    """RGB image of a trainId label map in Cityscapes colours; ignore is black."""
    return PALETTE[label]


def colorize_panoptic(category: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """RGB image of a panoptic map: each segment in its class colour, every instance of a thing
    shaded apart (a brightness from its id) and outlined in white; void is black."""
    rgb = colorize(category).astype(np.float32)
    things = instance > 0
    shade = 0.45 + 0.55 * ((instance.astype(np.float64) * 0.6180339887) % 1.0)
    rgb[things] *= shade[things, None]
    key = category.astype(np.int64) * (1 << 16) + instance
    edge = np.zeros(category.shape, dtype=bool)
    edge[:-1] |= key[:-1] != key[1:]
    edge[:, :-1] |= key[:, :-1] != key[:, 1:]
    rgb[edge & things] = 255
    return rgb.astype(np.uint8)
