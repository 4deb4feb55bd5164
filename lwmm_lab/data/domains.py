"""Five domains that render the same kind of street scene differently.

- ``synthetic`` (source, GTA-like): flat, saturated colours, simple shading, crisp edges.
- ``synthetic-16`` (second source, SYNTHIA-like): another style (tinted palette, hard light,
  posterised colours, dark outlines) and labels limited to the SYNTHIA-16 classes.
- ``real`` (target, Cityscapes-like): muted colours with material textures, cast shadows,
  a colour cast and exposure per image, blur, vignetting, sensor noise, JPEG artefacts.
- ``foggy`` (second target): the ``real`` scenes with fog before the sensor,
  ``I = R t + L (1 - t)``, ``t = exp(-beta d)``, d the scene depth (as Foggy Cityscapes).
- ``night`` (third target): low, bluish ambient light, lit lamps and windows with glow,
  strong noise.

:func:`generate` gives one scene; (domain, split, index, seed) fixes it on every machine.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from lwmm_lab.data import labels as L
from lwmm_lab.data import raster as R
from lwmm_lab.data.layout import Draw, Layout, sample_layout
from lwmm_lab.data.street import draw
from lwmm_lab.errors import (
    LwmmError,
    check_count,
    check_image_size,
    check_name,
    check_names,
    check_seed,
    check_whole,
)
from lwmm_lab.files import atomic_path, output_path

DOMAINS = ("synthetic", "synthetic-16", "real", "foggy", "night")
SOURCE_DOMAINS = ("synthetic", "synthetic-16")
TARGET_DOMAINS = ("real", "foggy", "night")
SPLITS = ("train", "val", "test")
#: The classes each domain labels; the others are ignore (255) in its labels.
DOMAIN_CLASSES = {d: L.CLASS_SETS["cityscapes-19"] for d in DOMAINS} | {
    "synthetic-16": L.CLASS_SETS["synthia-16"]
}
# Fixed codes (never hash(): it is salted per process). foggy renders the real domain's scenes.
_SCENE_STREAM = {"synthetic": 1, "synthetic-16": 2, "real": 3, "foggy": 3, "night": 5}
_TILE = 128


@dataclass(frozen=True)
class Scene:
    """One generated image with its labels (trainIds), instance ids (0: none) and depth (m)."""

    image: np.ndarray
    label: np.ndarray
    instances: np.ndarray
    depth: np.ndarray
    domain: str


def check_domain(domain: str) -> str:
    """``domain`` when it is one of :data:`DOMAINS`; else an :class:`LwmmError` naming it."""
    return check_name(domain, DOMAINS, "domain")


def generate(
    domain: str,
    split: str = "train",
    index: int = 0,
    seed: int = 0,
    size: tuple[int, int] = (128, 256),
) -> Scene:
    """The scene ``index`` of ``domain``'s ``split`` at ``size`` = (height, width)."""
    check_domain(domain)
    check_name(split, SPLITS, "split")
    if check_whole("index", index) < 0:  # numpy's seed sequences take no negative entropy
        raise LwmmError(f"index={index}: give 0 or a positive whole number")
    words = (check_seed(seed), SPLITS.index(split), int(index), _SCENE_STREAM[domain])
    layout = sample_layout(Draw(*words, 0), DOMAIN_CLASSES[domain])
    drawing = draw(layout, *check_image_size(size))
    image = render(drawing, layout, domain, words)
    return Scene(image, drawing.label, drawing.instances, drawing.depth, domain)


def render(
    drawing: R.Drawing, layout: Layout, domain: str, words: tuple[int, ...] = (0,)
) -> np.ndarray:
    """The RGB uint8 image of a drawing in ``domain``'s style.

    ``words`` seed the image's own draws (exposure, noise, fog); the fog has its own stream,
    so a ``foggy`` image is exactly the ``real`` one with fog before the sensor.
    """
    look = Draw(*words, 1)
    if domain == "synthetic":
        return _quantize(_synthetic(drawing, layout))
    if domain == "synthetic-16":
        return _quantize(_synthia_like(drawing, layout))
    if domain == "night":
        return _sensor(_night(drawing, layout, look), look, noise=(0.03, 0.06), quality=(35, 60))
    radiance = _real(drawing, layout, look)
    if domain == "foggy":
        fog = Draw(*words, 2)
        radiance = apply_fog(
            radiance, drawing.depth, fog.uniform(0.02, 0.06), fog.uniform(0.72, 0.88)
        )
    return _sensor(radiance, look, noise=(0.01, 0.03), quality=(40, 80))


def apply_fog(radiance: np.ndarray, depth: np.ndarray, beta: float, airlight: float) -> np.ndarray:
    """Koschmieder's law: ``I = R t + L (1 - t)`` with transmission ``t = exp(-beta depth)``."""
    t = np.exp(-beta * depth)[..., None].astype(np.float32)
    light = np.array([airlight, airlight, min(1.0, airlight * 1.04)], dtype=np.float32)
    return radiance * t + light * (1.0 - t)


def gallery(
    scenes: int = 3,
    seed: int = 0,
    size: tuple[int, int] = (128, 256),
    domains: tuple[str, ...] = DOMAINS,
) -> np.ndarray:
    """One row per domain: the same ``scenes`` in each domain's style, image then label overlay.

    Labels are those the domain keeps (SYNTHIA-16 drops terrain, truck and train: black).
    Returns an RGB uint8 array with the domain names in a left margin. ``domains`` is a list
    of names, or one.
    """
    scenes, size = check_count("scenes", scenes), check_image_size(size)
    seed, domains = check_seed(seed), check_names(domains, DOMAINS, "domain")
    gap, margin = 2, 96
    layouts = [sample_layout(Draw(seed, 1, i, 99, 0)) for i in range(scenes)]
    drawings = [draw(layout, *size) for layout in layouts]
    rows = []
    for domain in domains:
        tiles = []
        for i, (layout, drawing) in enumerate(zip(layouts, drawings, strict=True)):
            image = render(drawing, layout, domain, (seed, 1, i, 99))
            label = L.restrict(drawing.label, DOMAIN_CLASSES[domain])
            overlay = (0.4 * image + 0.6 * L.colorize(label)).astype(np.uint8)
            tiles += [image, overlay]
        rows.append(_join(tiles, axis=1, gap=gap))
    grid = _join(rows, axis=0, gap=gap)
    canvas = Image.new("RGB", (grid.shape[1] + margin, grid.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (margin, 0))
    pen = ImageDraw.Draw(canvas)
    for k, domain in enumerate(domains):
        pen.text((6, k * (size[0] + gap) + size[0] // 2 - 6), domain, fill=(0, 0, 0))
    return np.asarray(canvas)


def save_gallery(path: str | os.PathLike, **options: object) -> Path:
    """Write :func:`gallery` as a PNG, atomically."""
    path = output_path(path, "the gallery", ".png")
    image = Image.fromarray(gallery(**options))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _join(arrays: list[np.ndarray], axis: int, gap: int) -> np.ndarray:
    """Concatenate images along ``axis`` with white gaps between them."""
    shape = list(arrays[0].shape)
    shape[axis] = gap
    white = np.full(shape, 255, dtype=np.uint8)
    parts = [p for a in arrays for p in (a, white)][:-1]
    return np.concatenate(parts, axis)


# ------------------------------------------------------------------------------ the styles


def _shade(drawing: R.Drawing, layout: Layout, strength: float) -> np.ndarray:
    """Per-material brightness from the facing: walls towards the sun are lit, others not."""
    sun_side = layout.sun[1]
    lit = {R.GROUND: 1.0, R.FRONT: 0.92, R.SKYWARD: 1.0}
    lit[R.FACING_LEFT if sun_side > 0 else R.FACING_RIGHT] = 0.72
    lit[R.FACING_RIGHT if sun_side > 0 else R.FACING_LEFT] = 1.0
    table = np.array([lit[f] for f in drawing.facing], dtype=np.float32)
    return 1.0 - strength * (1.0 - table)


def _blend_sky(
    image: np.ndarray,
    drawing: R.Drawing,
    layout: Layout,
    whiten: float,
    color: np.ndarray | float,
) -> None:
    """Blend the sky towards ``color`` in place, more so near the horizon (sky is above it)."""
    horizon = max(1.0, layout.camera.horizon * image.shape[0])
    top = min(image.shape[0], int(np.ceil(horizon)) + 1)
    rows = np.minimum(np.arange(top, dtype=np.float32) / horizon, 1.0)[:, None] ** 2
    weight = whiten * rows * (drawing.cls[drawing.material[:top]] == L.SKY)
    image[:top] += weight[..., None] * (color - image[:top])


def _synthetic(drawing: R.Drawing, layout: Layout) -> np.ndarray:
    colors = _saturate(drawing.color, 1.5) * 1.05 * _shade(drawing, layout, 0.8)[:, None]
    image = colors[drawing.material]
    _blend_sky(image, drawing, layout, 0.35, 1.0)
    return image


def _synthia_like(drawing: R.Drawing, layout: Layout) -> np.ndarray:
    tint = np.array([[0.95, 0.08, 0.0], [0.0, 0.85, 0.12], [0.1, 0.05, 1.0]], dtype=np.float32)
    colors = (_saturate(drawing.color @ tint.T, 0.8) * 0.95 + 0.04) * _shade(drawing, layout, 1.6)[
        :, None
    ]
    image = (
        colors[drawing.material] * np.where(drawing.shadow, 0.7, 1.0).astype(np.float32)[..., None]
    )
    _blend_sky(image, drawing, layout, 0.55, np.array([0.9, 0.95, 1.0], dtype=np.float32))
    levels = 7.0
    image = np.round(np.clip(image, 0, 1) * levels) / levels
    m = drawing.material
    edge = np.zeros(m.shape, dtype=bool)
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    edge[1:, :] |= m[1:, :] != m[:-1, :]
    return image * np.where(edge, 0.45, 1.0).astype(np.float32)[..., None]


def _real(drawing: R.Drawing, layout: Layout, look: Draw) -> np.ndarray:
    """Muted, textured colours under one illuminant, with shadows, blur and vignetting."""
    overcast = look.chance(0.3)
    warm = look.uniform(-0.08, 0.08)
    illuminant = np.array([1 + warm, 1.0, 1 - warm], np.float32) * look.uniform(0.8, 1.15)
    colors = _saturate(drawing.color, 0.7) + (look.array(*drawing.color.shape) - 0.5) * 0.08
    colors *= _shade(drawing, layout, 0.25 if overcast else 0.9)[:, None] * illuminant
    factor = 1.0 + _texture(drawing, look)
    if not overcast:
        factor *= np.where(drawing.shadow, 0.52, 1.0)
    factor *= _vignette(drawing.material.shape, look.uniform(0.1, 0.35))
    image = colors[drawing.material] * factor[..., None]
    _blend_sky(image, drawing, layout, 0.6, 0.95 * illuminant)
    return _blur3(_blur3(image)) if look.chance(0.5) else _blur3(image)


def _night(drawing: R.Drawing, layout: Layout, look: Draw) -> np.ndarray:
    """Dim bluish ambient light; lamps, head- and tail-lights glow; some windows are lit."""
    m = drawing.material
    ambient = np.array([0.75, 0.85, 1.1], np.float32) * look.uniform(0.16, 0.28)
    colors = _saturate(drawing.color, 0.6) * ambient
    colors[drawing.cls == L.SKY] = (0.03, 0.04, 0.09)
    lamp_light = np.where(drawing.lamp[:, None], drawing.color * 1.3, 0.0).astype(np.float32)
    factor = (1.0 + _texture(drawing, look)) * _vignette(m.shape, 0.35)
    image = colors[m] * factor[..., None]
    _blend_sky(image, drawing, layout, 0.5, np.array([0.25, 0.16, 0.1], np.float32))
    lamps = lamp_light[m]
    image += lamps + 4.0 * _glow(lamps)
    rows, cols = _lit_windows(drawing)
    image[rows, cols] += np.array([0.6, 0.48, 0.28], np.float32)
    return _blur3(image)


def _lit_windows(drawing: R.Drawing) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of the windows that are lit at night: a coin per window from the noise tile."""
    window = (drawing.texture == R.GLASS)[drawing.material] & np.isfinite(drawing.tex_u)
    rows, cols = np.nonzero(window)
    cell_u = np.floor(drawing.tex_u[rows, cols] / 2.5).astype(np.int64) % _TILE
    cell_v = np.floor(drawing.tex_v[rows, cols] / 3.0).astype(np.int64) % _TILE
    lit = _tiles()[0, cell_v, cell_u] > 0.5
    return rows[lit], cols[lit]


def _glow(light: np.ndarray) -> np.ndarray:
    """Light spread around lamps, taller than wide: it also lights the ground below them."""
    r = max(1, light.shape[1] // 50)
    spread = cv2.blur(light, (2 * r + 1, 6 * r + 1), borderType=cv2.BORDER_REPLICATE)
    return cv2.blur(spread, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REPLICATE)


def _sensor(
    image: np.ndarray, look: Draw, noise: tuple[float, float], quality: tuple[int, int]
) -> np.ndarray:
    """Sensor noise, 8-bit quantisation and JPEG compression."""
    h, w = image.shape[:2]
    field = _noise_field(h, w)
    oy, ox = look.integer(0, h - 1), look.integer(0, w - 1)
    rgb = _quantize(image + field[oy : oy + h, ox : ox + w] * look.uniform(*noise))
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=look.integer(*quality))
    return np.array(Image.open(buffer).convert("RGB"))


# ----------------------------------------------------------------------------------- helpers

# Per texture kind: amplitude, and metres per tile cell (0: screen space).
_TEXTURE = {
    R.FLAT: (0.0, 1.0), R.ASPHALT: (0.18, 0.05), R.PAVING: (0.14, 0.08), R.GRASS: (0.3, 0.06),
    R.LEAVES: (0.45, 0.12), R.FACADE: (0.12, 0.2), R.CONCRETE: (0.1, 0.08), R.FABRIC: (0.15, 0.03),
    R.PAINT: (0.05, 0.1), R.GLASS: (0.25, 0.4), R.METAL: (0.08, 0.05), R.CLOUDS: (0.3, 0.0),
}  # fmt: skip
_AMPLITUDE = np.array([_TEXTURE[k][0] for k in sorted(_TEXTURE)], np.float32)
_CELL = np.array([_TEXTURE[k][1] or 1.0 for k in sorted(_TEXTURE)], np.float32)
_COARSE = np.array([k in (R.LEAVES, R.CLOUDS) for k in sorted(_TEXTURE)])


@lru_cache(maxsize=1)
def _tiles() -> np.ndarray:
    """Two fixed noise tiles in [-1, 1], stacked: fine grain, and a smooth, blotchy one."""
    draw = Draw(20240915)
    fine = draw.array(_TILE, _TILE) * 2 - 1
    coarse = draw.array(_TILE, _TILE)
    for _ in range(4):  # smooth, wrapping around so that the tile repeats seamlessly
        for axis in (0, 1):
            coarse = 0.5 * coarse + 0.25 * (np.roll(coarse, 1, axis) + np.roll(coarse, -1, axis))
    coarse = (coarse - coarse.mean()) / (coarse.std() + 1e-6) * 0.5
    return np.stack([fine, np.clip(coarse, -1, 1)]).astype(np.float32)


@lru_cache(maxsize=8)
def _noise_field(h: int, w: int) -> np.ndarray:
    """A fixed field of unit Gaussian noise, twice the image size: images take a window of it."""
    return Draw(20240916, h, w).normal(2 * h, 2 * w, 3)


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return ys, xs


def _texture(drawing: R.Drawing, look: Draw) -> np.ndarray:
    """Relative brightness change per pixel from each material's texture.

    Surfaces with coordinates in metres (ground, facades) get textures that shrink with
    distance; sprites and the sky use screen coordinates over their pixels per metre.
    """
    m = drawing.material
    kind = drawing.texture[m]
    ys, xs = _grid(*m.shape)
    inv_scale = 1.0 / np.maximum(drawing.scale, 1e-3)
    on_surface = np.isfinite(drawing.tex_u)
    u = np.where(on_surface, drawing.tex_u, xs * inv_scale[m])
    v = np.where(on_surface, drawing.tex_v, ys * inv_scale[m])
    cell = _CELL[kind]
    ou, ov = look.integer(0, _TILE - 1), look.integer(0, _TILE - 1)
    iu = (np.floor(u / cell).astype(np.int64) + ou) % _TILE
    iv = (np.floor(v / cell).astype(np.int64) + ov) % _TILE
    grain = _tiles()[_COARSE[kind].astype(np.intp), iv, iu]
    return _AMPLITUDE[kind] * grain


def _saturate(colors: np.ndarray, factor: float) -> np.ndarray:
    gray = colors.mean(-1, keepdims=True)
    return np.clip(gray + (colors - gray) * factor, 0, 1)


def _blur3(image: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur along both image axes, edges repeated."""
    return cv2.GaussianBlur(image, (3, 3), 0, borderType=cv2.BORDER_REPLICATE)


@lru_cache(maxsize=8)
def _radius2(h: int, w: int) -> np.ndarray:
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    return (xs[None, :] ** 2 + ys[:, None] ** 2) / 2


def _vignette(shape: tuple[int, int], strength: float) -> np.ndarray:
    """Brightness falling off towards the corners (H, W)."""
    return 1.0 - strength * _radius2(*shape)


def _quantize(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
