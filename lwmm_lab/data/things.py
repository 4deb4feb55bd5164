"""Things on the ground, drawn as billboards at their depth: vehicles (seen from the back, the
front or the side), persons, riders on two-wheelers, poles with lights, lamps and signs, trees.

Each thing is drawn in metres around its foot point (a :class:`Sprite`); every vehicle,
person and two-wheeler gets its own instance id.
"""

from __future__ import annotations

from lwmm_lab.data import labels as L
from lwmm_lab.data.layout import SIGN_SHAPES, VEHICLE_CLASS, Color, Layout, Thing
from lwmm_lab.data.raster import FABRIC, FLAT, FRONT, GLASS, LEAVES, METAL, PAINT, Canvas

_SIDE_SIZE = {"car": (4.3, 1.45), "truck": (7.5, 3.4), "bus": (11.0, 3.1), "train": (20.0, 3.6)}
_BACK_SIZE = {"car": (1.8, 1.45), "truck": (2.4, 3.4), "bus": (2.5, 3.1), "train": (2.6, 3.6)}
_REACH = {"car": 2.5, "truck": 4.0, "bus": 6.0, "train": 11.0, "pole": 7.0, "tree": 6.5}


class Sprite:
    """Drawing in metres around a thing's foot point: x to the right, y up from the ground."""

    def __init__(
        self, canvas: Canvas, layout: Layout, t: Thing, f: float, cx: float, y_h: float
    ) -> None:
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


def draw_thing(canvas: Canvas, layout: Layout, t: Thing, f: float, cx: float, y_h: float) -> None:
    """Draw one thing as a billboard at its depth."""
    if t.d <= 1.0:
        return
    sp = Sprite(canvas, layout, t, f, cx, y_h)
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


def _vehicle(sp: Sprite, t: Thing, instance: int) -> None:
    cls = VEHICLE_CLASS[t.kind]
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


def _person(sp: Sprite, t: Thing, instance: int, cls: int, lift: float) -> None:
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


def _two_wheeler(sp: Sprite, t: Thing, instance: int, cls: int) -> None:
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


def _pole(sp: Sprite, t: Thing, color: Color) -> None:
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
