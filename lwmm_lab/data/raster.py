"""The raster a layout is drawn into: per-pixel materials in a z-buffer, and the material table.

Every pixel gets a *material* (class, instance, base colour, texture, facing, lamp); labels and
instance ids are lookups into the material table. Primitives (rectangles, ellipses, convex
polygons) take pixel coordinates and write only where they are nearer than what is there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lwmm_lab.data.layout import Color

SKY_DEPTH = 1000.0

# Texture kinds (see domains.py) and facings (for shading).
FLAT, ASPHALT, PAVING, GRASS, LEAVES, FACADE, CONCRETE, FABRIC, PAINT, GLASS, METAL, CLOUDS = range(
    12
)
GROUND, FACING_RIGHT, FACING_LEFT, FRONT, SKYWARD = range(5)


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


class Canvas:
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
        self,
        region: tuple[slice, slice],
        mask: np.ndarray | bool,
        mat: int | np.ndarray,
        depth: float | np.ndarray,
    ) -> None:
        """Write ``mat`` where ``mask`` is set and nearer than what is there."""
        old = self.depth[region]
        write = (depth < old) & mask
        np.copyto(old, depth, where=write)
        np.copyto(self.material[region], mat, where=write)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice] | None:
        """The (rows, cols) slices of the pixels whose centres lie in the box, clipped to the
        canvas; None when none do."""
        c0, c1 = max(0, int(np.floor(x0 + 0.5))), min(self.w, int(np.floor(x1 + 0.5)))
        r0, r1 = max(0, int(np.floor(y0 + 0.5))), min(self.h, int(np.floor(y1 + 0.5)))
        if c1 <= c0 or r1 <= r0:
            return None
        return slice(r0, r1), slice(c0, c1)

    def rect(self, x0: float, y0: float, x1: float, y1: float, mat: int, depth: float) -> None:
        """An axis-aligned rectangle of material ``mat`` at ``depth``."""
        region = self.box(x0, y0, x1, y1)
        if region is not None:
            self.fill(region, True, mat, depth)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, mat: int, depth: float) -> None:
        """An axis-aligned ellipse (centre, radii) of material ``mat`` at ``depth``."""
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
