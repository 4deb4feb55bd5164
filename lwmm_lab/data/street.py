"""Drawing a layout: the sky line, the ground with its markings, the sides of the street
(facades with windows, tree rows, walls, fences), the things on it, and the buildings' shadow.

:func:`draw` projects a :class:`~lwmm_lab.data.layout.Layout` through a pinhole camera into a
:class:`~lwmm_lab.data.raster.Drawing`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lwmm_lab.data import labels as L
from lwmm_lab.data.layout import FAR, Barrier, Block, Layout
from lwmm_lab.data.raster import (
    ASPHALT,
    CLOUDS,
    CONCRETE,
    FACADE,
    FACING_LEFT,
    FACING_RIGHT,
    FRONT,
    GLASS,
    GRASS,
    GROUND,
    LEAVES,
    METAL,
    PAINT,
    PAVING,
    SKYWARD,
    Canvas,
    Drawing,
)
from lwmm_lab.data.things import draw_thing


def draw(layout: Layout, height: int, width: int) -> Drawing:
    """Rasterise ``layout`` at ``height`` x ``width`` pixels."""
    canvas = Canvas(height, width)
    cam = layout.camera
    f, cx, y_h = cam.focal * width, cam.center * width, cam.horizon * height
    sky = canvas.add(L.SKY, layout.colors["sky"], CLOUDS, SKYWARD, scale=2.5)
    canvas.material[:] = sky
    _draw_skyline(canvas, layout, f, y_h)
    _draw_ground(canvas, layout, f, cx, y_h)
    for side in (-1, 1):
        _draw_side(canvas, layout, side, f, cx, y_h)
    for thing in sorted(layout.things, key=lambda t: -t.d):
        draw_thing(canvas, layout, thing, f, cx, y_h)
    drawing = canvas.finish()
    drawing.cls[:] = np.where(np.isin(drawing.cls, layout.classes), drawing.cls, L.IGNORE)
    drawing.shadow = _shadow(layout, drawing, f, cx, y_h)
    return drawing


def _ground_coords(
    layout: Layout, f: float, cx: float, y_h: float, h: int, w: int
) -> tuple[int, np.ndarray, np.ndarray]:
    """The first ground row below the horizon, each row's distance and each pixel's lateral
    offset from the road's centre line (metres)."""
    top = max(0, int(np.floor(y_h)) + 1)
    rows = np.arange(top, h, dtype=np.float64) + 0.5
    d = f * layout.camera.height / (rows - y_h)
    x = np.arange(w, dtype=np.float64) + 0.5
    lateral = (x[None, :] - cx) * d[:, None] / f
    u = lateral - layout.center(d)[:, None]
    return top, d, u


def _draw_skyline(canvas: Canvas, layout: Layout, f: float, y_h: float) -> None:
    far = canvas.add(L.BUILDING, layout.colors["far"], FACADE, FRONT)
    for x0, x1, height in layout.skyline:
        canvas.rect(x0 * canvas.w, y_h - height * canvas.h, x1 * canvas.w, y_h + 1, far, FAR)


def _draw_ground(canvas: Canvas, layout: Layout, f: float, cx: float, y_h: float) -> None:
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
    canvas: Canvas,
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


def _draw_side(canvas: Canvas, layout: Layout, side: int, f: float, cx: float, y_h: float) -> None:
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
    canvas: Canvas, blocks: tuple[Block, ...], plane: _Plane, k: np.ndarray, facing: int
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


def _block_material(canvas: Canvas, block: Block, facing: int) -> int:
    if block.kind == "trees":
        return canvas.add(L.VEGETATION, block.color, LEAVES, facing)
    return canvas.add(L.BUILDING, block.color, FACADE, facing)


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
