"""What is in a street scene: a domain-free :class:`Layout` in metres, sampled from one stream.

A layout is the world of one scene: the camera, a curving road with lanes, sidewalks, grass
strips, building blocks with windows, walls and fences, and things on the ground (cars, trucks,
buses, trams, persons, riders on bicycles and motorcycles, poles with traffic lights and signs,
trees). :mod:`lwmm_lab.data.street` rasterises it; the domains (:mod:`lwmm_lab.data.domains`)
decide how it looks.

Everything is drawn from one seeded stream of uniform numbers, so (seed, split, index) gives
the same scene on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from lwmm_lab.data import labels as L

Color = tuple[float, float, float]
T = TypeVar("T")

FAR = 120.0  # metres: nothing is placed beyond this
SIGN_SHAPES = ("circle", "square", "triangle", "diamond")
VEHICLE_CLASS = {"car": L.CAR, "truck": L.TRUCK, "bus": L.BUS, "train": L.TRAIN}


class Draw:
    """Uniform numbers from one seeded stream (only ``random()``: stable across numpy versions)."""

    def __init__(self, *words: int) -> None:
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(words))))

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(self._rng.random())

    def integer(self, lo: int, hi: int) -> int:
        """A whole number in lo..hi, both included."""
        return min(hi, lo + int(self._rng.random() * (hi - lo + 1)))

    def chance(self, p: float) -> bool:
        return float(self._rng.random()) < p

    def pick(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]

    def jitter(self, color: Color, amount: float) -> Color:
        return tuple(min(1.0, max(0.0, c + self.uniform(-amount, amount))) for c in color)

    def array(self, *shape: int) -> np.ndarray:
        return self._rng.random(shape, dtype=np.float32)

    def normal(self, *shape: int) -> np.ndarray:
        return self._rng.standard_normal(shape, dtype=np.float32)


# ------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class Camera:
    """A pinhole camera on the road: horizon row and principal point as fractions of the image."""

    horizon: float
    height: float
    focal: float
    center: float


@dataclass(frozen=True)
class Block:
    """A building (or a row of trees) along one side, between two depths."""

    start: float
    end: float
    height: float
    kind: str  # "building" | "trees"
    color: Color
    window_color: Color = (0.15, 0.2, 0.28)
    pitch: float = 3.0  # window spacing along the street, metres
    floor: float = 3.2  # storey height, metres


@dataclass(frozen=True)
class Barrier:
    """A wall or a fence along the outer edge of a sidewalk, between two depths."""

    kind: str  # "wall" | "fence"
    start: float
    end: float
    height: float
    color: Color


@dataclass(frozen=True)
class Side:
    """One side of the street, from the curb outwards."""

    sidewalk: float
    strip: float  # grass strip behind the sidewalk (0: none)
    setback: float  # gap between the strip and the building line
    blocks: tuple[Block, ...]
    barriers: tuple[Barrier, ...]


@dataclass(frozen=True)
class Thing:
    """An object standing on the ground at lateral position ``u`` and depth ``d`` (metres)."""

    kind: str
    u: float
    d: float
    view: str  # "back" | "front" | "side"
    size: float
    colors: tuple[Color, ...]
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    """One scene's world, independent of how a domain renders it."""

    camera: Camera
    road_half: float
    curvature: float
    offset: float
    lanes: int
    crosswalk: tuple[float, float] | None
    sides: tuple[Side, Side]
    skyline: tuple[tuple[float, float, float], ...]
    things: tuple[Thing, ...]
    colors: dict[str, Color]
    sun: tuple[float, int]  # elevation in degrees, side the sun is on (-1 left, +1 right)
    classes: tuple[int, ...] = L.CLASS_SETS["cityscapes-19"]

    def center(self, d: np.ndarray | float) -> np.ndarray | float:
        """Lateral position of the road's centre line at depth ``d`` (camera frame)."""
        return self.curvature * d * d - self.offset

    def edge(self, side: int) -> float:
        """Lateral offset of a side's outer sidewalk edge from the centre line (signed)."""
        return side * (self.road_half + self.sides[(side + 1) // 2].sidewalk)

    def building_line(self, side: int) -> float:
        s = self.sides[(side + 1) // 2]
        return side * (self.road_half + s.sidewalk + s.strip + s.setback)


_BUILDING_COLORS = (
    (0.72, 0.66, 0.55),
    (0.62, 0.36, 0.28),
    (0.55, 0.55, 0.56),
    (0.82, 0.8, 0.74),
    (0.45, 0.5, 0.58),
    (0.7, 0.58, 0.42),
    (0.5, 0.44, 0.4),
)
_CAR_COLORS = (
    (0.9, 0.9, 0.9),
    (0.1, 0.1, 0.12),
    (0.6, 0.62, 0.65),
    (0.65, 0.1, 0.1),
    (0.12, 0.22, 0.55),
    (0.2, 0.35, 0.25),
    (0.85, 0.75, 0.3),
    (0.35, 0.35, 0.38),
)
_CLOTHES = (
    (0.1, 0.1, 0.15),
    (0.75, 0.2, 0.2),
    (0.2, 0.3, 0.6),
    (0.85, 0.85, 0.8),
    (0.4, 0.4, 0.42),
    (0.25, 0.45, 0.3),
    (0.8, 0.6, 0.2),
    (0.5, 0.3, 0.5),
)
_SKIN = ((0.95, 0.78, 0.65), (0.78, 0.57, 0.42), (0.5, 0.35, 0.25), (0.88, 0.7, 0.55))


_ROAD_COLORS = ((0.32, 0.32, 0.34), (0.38, 0.36, 0.34), (0.26, 0.27, 0.3))
_SIDEWALK_COLORS = ((0.62, 0.6, 0.58), (0.7, 0.64, 0.55), (0.55, 0.52, 0.55))
_TERRAIN_COLORS = ((0.38, 0.52, 0.22), (0.52, 0.5, 0.3), (0.3, 0.45, 0.2))
_SKY_COLORS = ((0.45, 0.65, 0.92), (0.6, 0.75, 0.9), (0.72, 0.74, 0.78))
_POLE_COLORS = ((0.45, 0.46, 0.48), (0.3, 0.32, 0.3), (0.6, 0.6, 0.6))
_SIGN_COLORS = ((0.8, 0.1, 0.1), (0.1, 0.3, 0.75), (0.95, 0.85, 0.15), (0.95, 0.95, 0.95))
_WALL_COLORS = ((0.6, 0.58, 0.55), (0.55, 0.38, 0.3), (0.7, 0.7, 0.68))
_FENCE_COLORS = ((0.35, 0.38, 0.35), (0.5, 0.4, 0.28), (0.2, 0.32, 0.25))
_TRAIN_COLORS = ((0.85, 0.85, 0.8), (0.8, 0.2, 0.15), (0.9, 0.8, 0.2))


def sample_layout(draw: Draw, classes: tuple[int, ...] = L.CLASS_SETS["cityscapes-19"]) -> Layout:
    """A random street scene. Things of classes outside ``classes`` are not placed."""
    camera = Camera(
        horizon=draw.uniform(0.36, 0.5),
        height=draw.uniform(1.2, 2.0),
        focal=draw.uniform(0.45, 0.62),
        center=0.5 + draw.uniform(-0.04, 0.04),
    )
    road_half = draw.uniform(3.2, 7.5)
    lanes = max(1, round(2 * road_half / 3.4))
    sides = (_sample_side(draw), _sample_side(draw))
    colors = {
        "road": draw.jitter(draw.pick(_ROAD_COLORS), 0.04),
        "marking": draw.pick(((0.92, 0.92, 0.9), (0.92, 0.92, 0.9), (0.9, 0.78, 0.2))),
        "sidewalk": draw.jitter(draw.pick(_SIDEWALK_COLORS), 0.05),
        "curb": draw.jitter((0.72, 0.72, 0.7), 0.05),
        "terrain": draw.jitter(draw.pick(_TERRAIN_COLORS), 0.05),
        "sky": draw.jitter(draw.pick(_SKY_COLORS), 0.04),
        "far": draw.jitter((0.55, 0.58, 0.64), 0.06),
        "pole": draw.jitter(draw.pick(_POLE_COLORS), 0.04),
    }
    skyline, x = [], 0.0
    while draw.chance(0.8) and x < 1.0:
        width = draw.uniform(0.03, 0.12)
        skyline.append((x, x + width, draw.uniform(0.02, 0.14)))
        x += width
    crosswalk = None
    if draw.chance(0.25):
        near = draw.uniform(8, 30)
        crosswalk = (near, near + draw.uniform(3, 5))
    return Layout(
        camera=camera,
        road_half=road_half,
        curvature=draw.uniform(-0.004, 0.004) if draw.chance(0.7) else 0.0,
        offset=draw.uniform(-road_half + 1.6, road_half - 1.6),
        lanes=lanes,
        crosswalk=crosswalk,
        sides=sides,
        skyline=tuple(skyline),
        things=_sample_things(draw, road_half, lanes, sides, classes),
        colors=colors,
        sun=(draw.uniform(15, 65), draw.pick((-1, 1))),
        classes=tuple(classes),
    )


def _sample_side(draw: Draw) -> Side:
    sidewalk = draw.uniform(1.5, 4.5)
    strip = draw.uniform(1.0, 4.0) if draw.chance(0.45) else 0.0
    blocks, d = [], draw.uniform(-5.0, 4.0)
    while d < FAR:
        length = draw.uniform(8, 28)
        if draw.chance(0.12):  # a gap between buildings
            d += length * 0.6
            continue
        if draw.chance(0.15):
            color = draw.jitter((0.2, 0.38, 0.14), 0.06)
            blocks.append(Block(d, d + length, draw.uniform(5, 10), "trees", color))
        else:
            blocks.append(
                Block(
                    d,
                    d + length,
                    draw.uniform(5, 30),
                    "building",
                    draw.jitter(draw.pick(_BUILDING_COLORS), 0.06),
                    window_color=draw.jitter((0.15, 0.2, 0.28), 0.06),
                    pitch=draw.uniform(2.2, 4.0),
                    floor=draw.uniform(2.8, 3.8),
                )
            )
        d += length
    barriers = []
    for kind, palette in (("wall", _WALL_COLORS), ("fence", _FENCE_COLORS)):
        if draw.chance(0.35):
            start = draw.uniform(0, 40)
            end, height = start + draw.uniform(8, 40), draw.uniform(0.8, 2.2)
            barriers.append(
                Barrier(kind, start, end, height, draw.jitter(draw.pick(palette), 0.05))
            )
    return Side(sidewalk, strip, draw.uniform(0.0, 1.5), tuple(blocks), tuple(barriers))


def _sample_things(
    draw: Draw, road_half: float, lanes: int, sides: tuple[Side, Side], classes: tuple[int, ...]
) -> tuple[Thing, ...]:
    things: list[Thing] = []
    lane_width = 2 * road_half / lanes

    def lane_center() -> float:
        return (
            -road_half + lane_width * (draw.integer(0, lanes - 1) + 0.5) + draw.uniform(-0.3, 0.3)
        )

    def on_sidewalk() -> float:
        side = draw.pick((-1, 1))
        width = sides[(side + 1) // 2].sidewalk
        return side * (road_half + draw.uniform(0.4, max(0.5, width - 0.3)))

    def size() -> float:
        return draw.uniform(0.9, 1.1)

    vehicles = [k for k, c in VEHICLE_CLASS.items() if c in classes and k != "train"]
    for _ in range(draw.integer(1, 8)):
        kind = draw.pick(vehicles) if draw.chance(0.3) else "car"
        color = (draw.pick(_CAR_COLORS),)
        if draw.chance(0.3):  # parked along the curb
            u = draw.pick((-1, 1)) * (road_half - 1.1)
            things.append(Thing(kind, u, draw.uniform(6, 45), "back", size(), color))
        elif draw.chance(0.12):  # crossing further ahead, seen from the side
            things.append(Thing(kind, lane_center(), draw.uniform(15, 50), "side", size(), color))
        else:
            u = lane_center()
            view = "front" if u < 0 and lanes > 1 and draw.chance(0.6) else "back"
            things.append(Thing(kind, u, draw.uniform(5, 60), view, size(), color))
    if L.TRAIN in classes and draw.chance(0.08):
        color = (draw.pick(_TRAIN_COLORS),)
        things.append(Thing("train", lane_center(), draw.uniform(12, 35), "side", 1.0, color))
    for _ in range(draw.integer(0, 8)):
        u = on_sidewalk() if draw.chance(0.8) else draw.uniform(-road_half, road_half)
        view = draw.pick(("back", "front", "side"))
        colors = (draw.pick(_CLOTHES), draw.pick(_CLOTHES), draw.pick(_SKIN))
        things.append(Thing("person", u, draw.uniform(4, 40), view, size(), colors))
    for _ in range(draw.integer(0, 3)):
        vehicle = "bicycle" if draw.chance(0.6) else "motorcycle"
        u = draw.pick((-1, 1)) * (road_half - draw.uniform(0.6, 1.6))
        colors = (
            draw.pick(_CLOTHES),
            draw.pick(_CLOTHES),
            draw.pick(_SKIN),
            draw.pick(_CAR_COLORS),
        )
        view = draw.pick(("back", "side"))
        things.append(Thing("rider", u, draw.uniform(5, 35), view, size(), colors, (vehicle,)))
    if draw.chance(0.2):
        color = (draw.pick(_CAR_COLORS),)
        things.append(Thing("bicycle", on_sidewalk(), draw.uniform(4, 20), "side", 1.0, color))
    d = draw.uniform(3, 12)
    while d < 70:
        extra = []
        if draw.chance(0.3):
            extra.append("light")
        if draw.chance(0.4):
            extra.append(draw.pick(SIGN_SHAPES))
        if not extra and draw.chance(0.5):
            extra.append("lamp")
        u = draw.pick((-1, 1)) * (road_half + 0.35)
        color = (draw.pick(_SIGN_COLORS),)
        things.append(Thing("pole", u, d, "front", draw.uniform(0.8, 1.2), color, tuple(extra)))
        d += draw.uniform(8, 25)
    for _ in range(draw.integer(0, 7)):
        side = draw.pick((-1, 1))
        s = sides[(side + 1) // 2]
        u = side * (road_half + s.sidewalk + (s.strip / 2 if s.strip else -0.5))
        colors = (draw.jitter((0.22, 0.4, 0.15), 0.07), draw.jitter((0.35, 0.25, 0.18), 0.05))
        kind = draw.pick(("tree", "tree", "bush"))
        things.append(Thing(kind, u, draw.uniform(5, 60), "front", draw.uniform(0.7, 1.4), colors))
    return tuple(things)
