"""Procedural street scenes: a domain-free layout, rasterised into material, label and depth maps.

A :class:`Layout` is the world of one scene in metres: the camera, a curving road with lanes,
sidewalks, grass strips, building blocks with windows, walls and fences, and things on the
ground (cars, trucks, buses, trams, persons, riders on bicycles and motorcycles, poles with
traffic lights and signs, trees). :func:`draw` projects it through a pinhole camera with a
z-buffer. Every pixel gets a *material* (class, instance, base colour, texture, facing, lamp);
labels and instance ids are lookups into the material table, and the domains
(:mod:`lwmm_lab.domains`) decide how materials look.

Everything is drawn from one seeded stream of uniform numbers, so (seed, split, index) gives
the same scene on every machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lwmm_lab import labels as L

Color = tuple[float, float, float]

SKY_DEPTH = 1000.0
FAR = 120.0  # metres: nothing is placed beyond this

# Texture kinds (see domains.py) and facings (for shading).
FLAT, ASPHALT, PAVING, GRASS, LEAVES, FACADE, CONCRETE, FABRIC, PAINT, GLASS, METAL, CLOUDS = range(
    12
)
GROUND, FACING_RIGHT, FACING_LEFT, FRONT, SKYWARD = range(5)
SIGN_SHAPES = ("circle", "square", "triangle", "diamond")


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

    def pick(self, options):
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


_SIDE_SIZE = {"car": (4.3, 1.45), "truck": (7.5, 3.4), "bus": (11.0, 3.1), "train": (20.0, 3.6)}
_BACK_SIZE = {"car": (1.8, 1.45), "truck": (2.4, 3.4), "bus": (2.5, 3.1), "train": (2.6, 3.6)}
_REACH = {"car": 2.5, "truck": 4.0, "bus": 6.0, "train": 11.0, "pole": 7.0, "tree": 6.5}
_VEHICLE_CLASS = {"car": L.CAR, "truck": L.TRUCK, "bus": L.BUS, "train": L.TRAIN}


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

    vehicles = [k for k, c in _VEHICLE_CLASS.items() if c in classes and k != "train"]
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


# ------------------------------------------------------------------------------------ drawing


@dataclass
class Drawing:
    """A rasterised layout: per-pixel material, depth, texture coordinates; the material table.

    ``tex_u``/``tex_v`` are metres on the surface (NaN for sprites, whose texture is taken in
    screen space). Materials are columns: class id, instance id, colour, texture, facing, lamp.
    """

    material: np.ndarray
    depth: np.ndarray
    tex_u: np.ndarray
    tex_v: np.ndarray
    cls: np.ndarray
    instance: np.ndarray
    color: np.ndarray
    texture: np.ndarray
    facing: np.ndarray
    lamp: np.ndarray
    scale: np.ndarray  # pixels per metre, for screen-space textures of sprites
    shadow: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def label(self) -> np.ndarray:
        return self.cls[self.material]

    @property
    def instances(self) -> np.ndarray:
        return self.instance[self.material]


class _Canvas:
    """A z-buffered raster of materials; primitives take pixel coordinates."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.material = np.zeros((height, width), dtype=np.int32)
        self.depth = np.full((height, width), SKY_DEPTH, dtype=np.float32)
        self.tex_u = np.full((height, width), np.nan, dtype=np.float32)
        self.tex_v = np.full((height, width), np.nan, dtype=np.float32)
        self.rows: list[tuple] = []
        self.next_instance = 1

    def add(
        self,
        cls: int,
        color: Color,
        texture: int = FLAT,
        facing: int = FRONT,
        instance: int = 0,
        lamp: bool = False,
        scale: float = 1.0,
    ) -> int:
        """A new material; returns its id."""
        self.rows.append((cls, instance, color, texture, facing, lamp, scale))
        return len(self.rows) - 1

    def new_instance(self) -> int:
        self.next_instance += 1
        return self.next_instance - 1

    def fill(
        self, region: tuple[slice, slice], mask: np.ndarray | bool, mat: int | np.ndarray, depth
    ) -> None:
        """Write ``mat`` where ``mask`` is set and nearer than what is there."""
        old = self.depth[region]
        write = (depth < old) & mask
        np.copyto(old, depth, where=write)
        np.copyto(self.material[region], mat, where=write)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice] | None:
        c0, c1 = max(0, int(np.floor(x0 + 0.5))), min(self.w, int(np.floor(x1 + 0.5)))
        r0, r1 = max(0, int(np.floor(y0 + 0.5))), min(self.h, int(np.floor(y1 + 0.5)))
        if c1 <= c0 or r1 <= r0:
            return None
        return slice(r0, r1), slice(c0, c1)

    def rect(self, x0: float, y0: float, x1: float, y1: float, mat: int, depth: float) -> None:
        region = self.box(x0, y0, x1, y1)
        if region is not None:
            self.fill(region, True, mat, depth)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, mat: int, depth: float) -> None:
        region = self.box(cx - rx, cy - ry, cx + rx, cy + ry)
        if region is None:
            return
        ys = np.arange(region[0].start, region[0].stop, dtype=np.float32)[:, None] + 0.5
        xs = np.arange(region[1].start, region[1].stop, dtype=np.float32)[None, :] + 0.5
        self.fill(
            region,
            ((xs - cx) / max(rx, 0.5)) ** 2 + ((ys - cy) / max(ry, 0.5)) ** 2 <= 1.0,
            mat,
            depth,
        )

    def polygon(self, points: list[tuple[float, float]], mat: int, depth: float) -> None:
        """A convex polygon, vertices in order (either winding)."""
        xs_, ys_ = zip(*points, strict=True)
        region = self.box(min(xs_), min(ys_), max(xs_), max(ys_))
        if region is None:
            return
        ys = np.arange(region[0].start, region[0].stop, dtype=np.float32)[:, None] + 0.5
        xs = np.arange(region[1].start, region[1].stop, dtype=np.float32)[None, :] + 0.5
        inside_pos = np.ones((len(ys), xs.shape[1]), dtype=bool)
        inside_neg = inside_pos.copy()
        for (ax, ay), (bx, by) in zip(points, points[1:] + points[:1], strict=True):
            cross = (bx - ax) * (ys - ay) - (by - ay) * (xs - ax)
            inside_pos &= cross >= 0
            inside_neg &= cross <= 0
        self.fill(region, inside_pos | inside_neg, mat, depth)

    def finish(self) -> Drawing:
        cls, inst, color, texture, facing, lamp, scale = zip(*self.rows, strict=True)
        return Drawing(
            material=self.material,
            depth=self.depth,
            tex_u=self.tex_u,
            tex_v=self.tex_v,
            cls=np.array(cls, dtype=np.uint8),
            instance=np.array(inst, dtype=np.int32),
            color=np.array(color, dtype=np.float32),
            texture=np.array(texture, dtype=np.uint8),
            facing=np.array(facing, dtype=np.uint8),
            lamp=np.array(lamp, dtype=bool),
            scale=np.array(scale, dtype=np.float32),
        )


def draw(layout: Layout, height: int, width: int) -> Drawing:
    """Rasterise ``layout`` at ``height`` x ``width`` pixels."""
    canvas = _Canvas(height, width)
    cam = layout.camera
    f, cx, y_h = cam.focal * width, cam.center * width, cam.horizon * height
    sky = canvas.add(L.SKY, layout.colors["sky"], CLOUDS, SKYWARD, scale=2.5)
    canvas.material[:] = sky
    _draw_skyline(canvas, layout, f, y_h)
    _draw_ground(canvas, layout, f, cx, y_h)
    for side in (-1, 1):
        _draw_side(canvas, layout, side, f, cx, y_h)
    for thing in sorted(layout.things, key=lambda t: -t.d):
        _draw_thing(canvas, layout, thing, f, cx, y_h)
    drawing = canvas.finish()
    drawing.cls[:] = np.where(np.isin(drawing.cls, layout.classes), drawing.cls, L.IGNORE)
    drawing.shadow = _shadow(layout, drawing, f, cx, y_h)
    return drawing


def _ground_coords(layout: Layout, f: float, cx: float, y_h: float, h: int, w: int):
    top = max(0, int(np.floor(y_h)) + 1)
    rows = np.arange(top, h, dtype=np.float64) + 0.5
    d = f * layout.camera.height / (rows - y_h)
    x = np.arange(w, dtype=np.float64) + 0.5
    lateral = (x[None, :] - cx) * d[:, None] / f
    u = lateral - layout.center(d)[:, None]
    return top, d, u


def _draw_skyline(canvas: _Canvas, layout: Layout, f: float, y_h: float) -> None:
    far = canvas.add(L.BUILDING, layout.colors["far"], FACADE, FRONT)
    for x0, x1, height in layout.skyline:
        canvas.rect(x0 * canvas.w, y_h - height * canvas.h, x1 * canvas.w, y_h + 1, far, FAR)


def _draw_ground(canvas: _Canvas, layout: Layout, f: float, cx: float, y_h: float) -> None:
    top, d, u = _ground_coords(layout, f, cx, y_h, canvas.h, canvas.w)
    if top >= canvas.h:
        return
    c = layout.colors
    mats = {
        "road": canvas.add(L.ROAD, c["road"], ASPHALT, GROUND),
        "marking": canvas.add(L.ROAD, c["marking"], PAINT, GROUND),
        "sidewalk": canvas.add(L.SIDEWALK, c["sidewalk"], PAVING, GROUND),
        "curb": canvas.add(L.SIDEWALK, c["curb"], CONCRETE, GROUND),
        "terrain": canvas.add(L.TERRAIN, c["terrain"], GRASS, GROUND),
    }
    r = layout.road_half
    side = np.where(u < 0, 0, 1)
    au = np.abs(u)
    sidewalk = np.array([s.sidewalk for s in layout.sides])[side]
    material = np.full(u.shape, mats["terrain"], dtype=np.int32)
    material[au < r + sidewalk] = mats["sidewalk"]
    material[(au >= r) & (au < r + 0.25)] = mats["curb"]
    material[au < r] = mats["road"]
    lane = 2 * r / layout.lanes
    dd = d[:, None] * np.ones_like(u)
    dashed = (dd / 6.0) % 1.0 < 0.45
    for k in range(1, layout.lanes):
        solid = layout.lanes == 2 and k == 1  # a two-lane road has a solid centre line
        material[(np.abs(u - (-r + k * lane)) < 0.08) & (solid | dashed)] = mats["marking"]
    edge = (np.abs(au - (r - 0.35)) < 0.07) & (au < r)
    material[edge] = mats["marking"]
    if layout.crosswalk is not None:
        near, far = layout.crosswalk
        stripes = (dd > near) & (dd < far) & (au < r - 0.5) & ((u / 0.8) % 1.0 < 0.5)
        material[stripes] = mats["marking"]
    region = (slice(top, canvas.h), slice(0, canvas.w))
    canvas.fill(region, True, material, dd.astype(np.float32))
    canvas.tex_u[region] = u
    canvas.tex_v[region] = dd


def _plane_depth(layout: Layout, lateral: float, f: float, cx: float, w: int) -> np.ndarray:
    """Per column, the depth where a ray meets the vertical plane ``lateral`` from the centre."""
    a = (np.arange(w, dtype=np.float64) + 0.5 - cx) / f
    e = lateral - layout.offset
    k = layout.curvature
    if abs(k) < 1e-9:
        with np.errstate(divide="ignore", invalid="ignore"):
            d = e / a
    else:
        disc = a * a - 4 * k * e
        root = np.sqrt(np.maximum(disc, 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            d1, d2 = (a - root) / (2 * k), (a + root) / (2 * k)
        d = np.where((d1 > 0) & ((d1 < d2) | (d2 <= 0)), d1, d2)
        d = np.where(disc >= 0, d, np.inf)
    return np.where(np.isfinite(d) & (d > 0.5), d, np.inf)


@dataclass(frozen=True)
class _Plane:
    """The visible part of a vertical plane along the street: a region and its surface coords.

    ``d`` is the depth per column of the region; ``z`` the height in metres per pixel.
    """

    region: tuple[slice, slice]
    d: np.ndarray
    z: np.ndarray


def _plane(
    canvas: _Canvas,
    layout: Layout,
    lateral: float,
    depth_ok: Callable[[np.ndarray], np.ndarray],
    f: float,
    cx: float,
    y_h: float,
) -> _Plane | None:
    """The columns where the plane at ``lateral`` is within ``depth_ok(d)``, rows above ground."""
    d = _plane_depth(layout, lateral, f, cx, canvas.w)
    valid = np.isfinite(d) & depth_ok(np.where(np.isfinite(d), d, FAR))
    cols = np.flatnonzero(valid)
    if cols.size == 0:
        return None
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    dv = np.where(valid[c0:c1], d[c0:c1], np.inf)
    bottom = min(canvas.h, int(np.ceil(y_h + f * layout.camera.height / dv.min())) + 1)
    rows = np.arange(bottom, dtype=np.float64)[:, None] + 0.5
    with np.errstate(invalid="ignore"):
        z = layout.camera.height - (rows - y_h) * dv[None, :] / f
    z = np.where(np.isfinite(dv)[None, :], z, -1.0)
    return _Plane((slice(0, bottom), slice(c0, c1)), dv, z)


def _draw_side(canvas: _Canvas, layout: Layout, side: int, f: float, cx: float, y_h: float) -> None:
    """The buildings (or tree rows) of one side, then its walls and fences."""
    s = layout.sides[(side + 1) // 2]
    facing = FACING_RIGHT if side < 0 else FACING_LEFT
    if s.blocks:
        starts = np.array([b.start for b in s.blocks])
        ends = np.array([b.end for b in s.blocks])

        def block_of(d: np.ndarray) -> np.ndarray:
            return np.clip(np.searchsorted(starts, d, side="right") - 1, 0, len(s.blocks) - 1)

        def in_block(d: np.ndarray) -> np.ndarray:
            k = block_of(d)
            return (d >= starts[k]) & (d < ends[k]) & (d < FAR)

        plane = _plane(canvas, layout, layout.building_line(side), in_block, f, cx, y_h)
        if plane is not None:
            _draw_blocks(canvas, s.blocks, plane, block_of(np.minimum(plane.d, FAR)), facing)
    for barrier in s.barriers:

        def in_barrier(d: np.ndarray, b: Barrier = barrier) -> np.ndarray:
            return (d >= b.start) & (d < b.end)

        lateral = layout.edge(side) + side * 0.1
        plane = _plane(canvas, layout, lateral, in_barrier, f, cx, y_h)
        if plane is None:
            continue
        z, along = plane.z, np.minimum(plane.d, FAR)[None, :]
        inside = (z >= 0) & (z <= barrier.height)
        if barrier.kind == "fence":
            inside &= (
                ((along / 2.5) % 1.0 < 0.06)  # posts
                | (z > barrier.height - 0.1)  # top rail
                | (np.abs(z - 0.15) < 0.06)  # bottom rail
                | ((along / 0.25) % 1.0 < 0.22)  # mesh
                | ((z / 0.25) % 1.0 < 0.22)
            )
            mat = canvas.add(L.FENCE, barrier.color, METAL, facing)
        else:
            mat = canvas.add(L.WALL, barrier.color, CONCRETE, facing)
        depth = np.broadcast_to(along, z.shape).astype(np.float32)
        canvas.fill(plane.region, inside, mat, depth)


def _draw_blocks(
    canvas: _Canvas, blocks: tuple[Block, ...], plane: _Plane, k: np.ndarray, facing: int
) -> None:
    """Facades with windows (or tree rows with a wavy top) on a building-line plane."""
    d = np.minimum(plane.d, FAR)[None, :]
    z = plane.z
    trees = np.array([b.kind == "trees" for b in blocks])[k][None, :]
    heights = np.array([b.height for b in blocks])[k][None, :]
    heights = heights - trees * 2.0 * np.abs((d / 3.0) % 1.0 - 0.5)
    inside = (z >= 0) & (z <= heights)
    mats = np.array([_block_material(canvas, b, facing) for b in blocks])
    windows = np.array([canvas.add(L.BUILDING, b.window_color, GLASS, facing) for b in blocks])
    pitch = np.array([b.pitch for b in blocks])[k][None, :]
    storey = (z / np.array([b.floor for b in blocks])[k][None, :]) % 1.0
    is_window = (
        ((d / pitch) % 1.0 > 0.35)
        & (storey > 0.3)
        & (storey < 0.78)
        & (z > 3.0)
        & (z < heights - 1.0)
        & ~trees
    )
    material = np.where(is_window, windows[k][None, :], mats[k][None, :])
    depth = np.broadcast_to(d, z.shape).astype(np.float32)
    canvas.fill(plane.region, inside, material, depth)
    written = inside & (canvas.material[plane.region] == material)
    canvas.tex_u[plane.region] = np.where(written, depth, canvas.tex_u[plane.region])
    canvas.tex_v[plane.region] = np.where(written, z, canvas.tex_v[plane.region])


class _Sprite:
    """Drawing in metres around a thing's foot point: x to the right, y up from the ground."""

    def __init__(self, canvas: _Canvas, layout: Layout, t: Thing, f: float, cx: float, y_h: float):
        self.canvas, self.depth = canvas, t.d
        self.scale = f / t.d * t.size
        self.x0 = cx + f * (float(layout.center(t.d)) + t.u) / t.d
        self.y0 = y_h + f * layout.camera.height / t.d

    def _px(self, x: float, y: float) -> tuple[float, float]:
        return self.x0 + x * self.scale, self.y0 - y * self.scale

    def mat(
        self, cls: int, color: Color, texture: int = PAINT, instance: int = 0, lamp: bool = False
    ) -> int:
        return self.canvas.add(cls, color, texture, FRONT, instance, lamp, self.scale)

    def rect(self, xa: float, ya: float, xb: float, yb: float, mat: int) -> None:
        (pa, qa), (pb, qb) = self._px(xa, yb), self._px(xb, ya)
        self.canvas.rect(pa, qa, pb, qb, mat, self.depth)

    def ellipse(self, xc: float, yc: float, rx: float, ry: float, mat: int) -> None:
        pc, qc = self._px(xc, yc)
        self.canvas.ellipse(pc, qc, rx * self.scale, ry * self.scale, mat, self.depth)

    def polygon(self, points: list[tuple[float, float]], mat: int) -> None:
        self.canvas.polygon([self._px(x, y) for x, y in points], mat, self.depth)


def _block_material(canvas: _Canvas, block: Block, facing: int) -> int:
    if block.kind == "trees":
        return canvas.add(L.VEGETATION, block.color, LEAVES, facing)
    return canvas.add(L.BUILDING, block.color, FACADE, facing)


def _draw_thing(canvas: _Canvas, layout: Layout, t: Thing, f: float, cx: float, y_h: float) -> None:
    """Draw one thing as a billboard at its depth."""
    if t.d <= 1.0:
        return
    sp = _Sprite(canvas, layout, t, f, cx, y_h)
    reach = _REACH.get(t.kind, 2.5) * sp.scale  # generous half-width / height in pixels
    if reach < 2.0 or sp.x0 + reach < 0 or sp.x0 - reach > canvas.w or sp.y0 - reach > canvas.h:
        return
    if t.kind in ("car", "truck", "bus", "train"):
        _vehicle(sp, t, canvas.new_instance())
    elif t.kind == "person":
        _person(sp, t, canvas.new_instance(), L.PERSON, lift=0.0)
    elif t.kind == "rider":
        cls = L.BICYCLE if t.extra[0] == "bicycle" else L.MOTORCYCLE
        _two_wheeler(sp, t, canvas.new_instance(), cls)
        _person(sp, t, canvas.new_instance(), L.RIDER, lift=0.55)
    elif t.kind == "bicycle":
        _two_wheeler(sp, t, canvas.new_instance(), L.BICYCLE)
    elif t.kind == "pole":
        _pole(sp, t, layout.colors["pole"])
    else:
        leaves = sp.mat(L.VEGETATION, t.colors[0], LEAVES)
        if t.kind == "tree":
            sp.rect(-0.15, 0, 0.15, 3.0, sp.mat(L.VEGETATION, t.colors[1], FABRIC))
            sp.ellipse(0, 4.3, 1.8, 2.0, leaves)
        else:
            sp.ellipse(0, 0.5, 1.1, 0.6, leaves)


def _vehicle(sp: _Sprite, t: Thing, instance: int) -> None:
    cls = _VEHICLE_CLASS[t.kind]
    body = sp.mat(cls, t.colors[0], PAINT, instance)
    glass = sp.mat(cls, (0.12, 0.15, 0.2), GLASS, instance)
    tyre = sp.mat(cls, (0.06, 0.06, 0.06), FLAT, instance)
    if t.view == "side":
        length, height = _SIDE_SIZE[t.kind]
        half = length / 2
        if t.kind == "car":
            sp.rect(-half, 0.3, half, 0.9, body)
            sp.polygon([(-1.3, 0.9), (1.3, 0.9), (0.8, 1.45), (-0.9, 1.45)], body)
            sp.polygon([(-1.1, 0.95), (1.15, 0.95), (0.72, 1.38), (-0.8, 1.38)], glass)
        elif t.kind == "truck":
            sp.rect(-half, 0.5, half - 2.2, height, body)
            sp.rect(half - 2.1, 0.5, half, 2.6, sp.mat(cls, (0.85, 0.85, 0.85), PAINT, instance))
            sp.rect(half - 1.4, 1.6, half - 0.2, 2.4, glass)
        else:
            sp.rect(-half, 0.3, half, height, body)
            sp.rect(-half + 0.5, height * 0.55, half - 0.5, height * 0.85, glass)
        if t.kind == "train":
            sp.rect(
                -0.05, height, 0.05, height + 0.8, sp.mat(cls, (0.2, 0.2, 0.2), METAL, instance)
            )
            wheels = (-half + 2, -half + 3.5, half - 3.5, half - 2)
        else:
            wheels = (-half + 1.0, half - 1.0)
        for x in wheels:
            sp.ellipse(x, 0.33, 0.33, 0.33, tyre)
        return
    width, height = _BACK_SIZE[t.kind]
    half = width / 2
    lamp_color = (0.9, 0.1, 0.08) if t.view == "back" else (1.0, 0.95, 0.8)
    lamp = sp.mat(cls, lamp_color, FLAT, instance, lamp=True)
    if t.kind == "car":
        sp.rect(-half, 0.25, half, 0.95, body)
        sp.polygon([(-0.78, 0.95), (0.78, 0.95), (0.6, 1.45), (-0.6, 1.45)], body)
        sp.polygon([(-0.68, 1.0), (0.68, 1.0), (0.54, 1.38), (-0.54, 1.38)], glass)
    else:
        sp.rect(-half, 0.4, half, height, body)
        sp.rect(-half + 0.2, height * 0.6, half - 0.2, height * 0.9, glass)
    for xa in (-half + 0.05, half - 0.35):
        sp.rect(xa, 0.0, xa + 0.3, 0.35, tyre)
        sp.rect(xa, 0.62, xa + 0.3, 0.8, lamp)


def _person(sp: _Sprite, t: Thing, instance: int, cls: int, lift: float) -> None:
    """A standing person, or (``lift`` > 0) a rider seated above a two-wheeler."""
    shirt, trousers, skin = (sp.mat(cls, c, FABRIC, instance) for c in t.colors[:3])
    half = 0.17 if t.view == "side" else 0.24
    if lift:
        legs, y = 0.45, lift + 0.3
        sp.rect(-0.15, y, 0.15, y + legs, trousers)
    else:
        legs, y = 0.85, 0.0
        sp.rect(-half, 0, -0.03, legs, trousers)
        sp.rect(0.03, 0, half, legs, trousers)
    sp.rect(-half - 0.02, y + legs, half + 0.02, y + legs + 0.62, shirt)
    sp.ellipse(0, y + legs + 0.75, 0.12, 0.14, skin)


def _two_wheeler(sp: _Sprite, t: Thing, instance: int, cls: int) -> None:
    frame = sp.mat(cls, t.colors[3] if len(t.colors) > 3 else t.colors[0], METAL, instance)
    tyre = sp.mat(cls, (0.05, 0.05, 0.05), FLAT, instance)
    radius = 0.34 if cls == L.BICYCLE else 0.32
    if t.view == "side":
        for x in (-0.55, 0.55):
            sp.ellipse(x, radius, radius, radius, tyre)
        if cls == L.MOTORCYCLE:
            sp.polygon([(-0.6, 0.45), (0.6, 0.45), (0.45, 0.95), (-0.4, 0.95)], frame)
        else:
            sp.polygon([(-0.55, 0.34), (0.0, 0.85), (0.55, 0.34), (0.0, 0.45)], frame)
    else:
        half = 0.3 if cls == L.MOTORCYCLE else 0.08
        sp.rect(-0.05, 0, 0.05, 2 * radius, tyre)
        sp.rect(-half, 0.4, half, 0.95, frame)


def _pole(sp: _Sprite, t: Thing, color: Color) -> None:
    """A pole with, per ``t.extra``, a traffic light, a street lamp and/or a sign."""
    pole = sp.mat(L.POLE, color, METAL)
    height = 6.5 if "light" in t.extra or "lamp" in t.extra else 3.2
    sp.rect(-0.07, 0, 0.07, height, pole)
    if "light" in t.extra:
        sp.rect(-0.2, height - 1.05, 0.2, height, sp.mat(L.LIGHT, (0.15, 0.15, 0.12)))
        lit = 0 if t.d > 20 else 2
        for k, c in enumerate(((0.9, 0.1, 0.05), (0.95, 0.65, 0.05), (0.1, 0.8, 0.3))):
            sp.ellipse(
                0, height - 0.2 - 0.32 * k, 0.11, 0.11, sp.mat(L.LIGHT, c, FLAT, lamp=k == lit)
            )
    if "lamp" in t.extra:
        sp.rect(-0.07, height - 0.1, 0.9, height, pole)
        sp.rect(
            0.55,
            height - 0.25,
            0.95,
            height - 0.05,
            sp.mat(L.POLE, (0.95, 0.92, 0.8), FLAT, lamp=True),
        )
    shape = next((e for e in t.extra if e in SIGN_SHAPES), None)
    if shape is None:
        return
    sign, y = sp.mat(L.SIGN, t.colors[0]), 2.6
    if shape == "circle":
        sp.ellipse(0, y, 0.32, 0.32, sign)
    elif shape == "square":
        sp.rect(-0.3, y - 0.3, 0.3, y + 0.3, sign)
    elif shape == "triangle":
        sp.polygon([(-0.36, y + 0.3), (0.36, y + 0.3), (0, y - 0.32)], sign)
    else:
        sp.polygon([(0, y + 0.36), (0.36, y), (0, y - 0.36), (-0.36, y)], sign)


def _shadow(layout: Layout, drawing: Drawing, f: float, cx: float, y_h: float) -> np.ndarray:
    """Ground pixels in the shadow of the buildings on the sun's side."""
    elevation, sun_side = layout.sun
    h, w = drawing.material.shape
    shadow = np.zeros((h, w), dtype=bool)
    top, d, u = _ground_coords(layout, f, cx, y_h, h, w)
    s = layout.sides[(sun_side + 1) // 2]
    if top >= h or not s.blocks:
        return shadow
    starts = np.array([b.start for b in s.blocks])
    k = np.clip(np.searchsorted(starts, d, side="right") - 1, 0, len(s.blocks) - 1)
    covered = (d >= starts[k]) & (d < np.array([b.end for b in s.blocks])[k])
    reach = np.where(covered, np.array([b.height for b in s.blocks])[k], 0.0) / np.tan(
        np.radians(elevation)
    )
    line = abs(layout.building_line(sun_side))
    into_street = line - u * sun_side
    ground = drawing.facing[drawing.material[top:]] == GROUND
    shadow[top:] = ground & (into_street >= 0) & (into_street < reach[:, None] * 0.6)
    return shadow
