# SPDX-License-Identifier: Apache-2.0
"""Built-in data for the dense probes: the procedural scenes of `datasets.SyntheticGlyphs`, with exact labels.

- `SyntheticSegmentation` (`SyntheticSeg:n=<images>:size=<px>:classes=<C>:seed=<s>`): the very images of
  `SyntheticGlyphs` with the same (seed, index) (pixel for pixel), each with a per-pixel class map drawn with the
  same primitives: 1 sky, 2 ground, 3 sun, 4 distractor disc, 5 + c the glyph of class c (its accent dot included).
  0 is the ignore label (not produced here; ADE20K's "other").
- `SyntheticVideos` (`SyntheticVideo:n=<videos>:frames=<T>:size=<px>:classes=<C>:seed=<s>`): DAVIS-like sequences.
  The background is a `SyntheticGlyphs` scene (sky, tilted horizon, sun, discs); two glyph objects (1: the scene's
  class glyph, 2: a smaller glyph of another class, drawn on top: it may occlude object 1) move along straight
  paths and rotate at a constant rate over the frames. The instance masks are exact (the same polygons drawn into
  a label image), and both objects are visible in every frame.

Everything is deterministic by (seed, index) and renders at any resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from dinov2_eqcoh.data.datasets import GLYPHS, PALETTES, SyntheticGlyphs

SKY, GROUND, SUN, DISC, GLYPH0 = 1, 2, 3, 4, 5
IGNORE = 0


def class_names(classes: int) -> list[str]:
    """Names of the segmentation labels 1..4 + classes (index 0 = ignore)."""
    names = list(GLYPHS)
    return ["ignore", "sky", "ground", "sun", "disc"] + [
        f"glyph {names[c % len(names)]}" + (f"/{c // len(names)}" if c >= len(names) else "") for c in range(classes)
    ]


@dataclass
class Glyph:
    """One glyph object: class, centre (fractions of the side), tilt φ (degrees), scale (fraction of the side)."""

    label: int
    centre: np.ndarray
    phi: float
    scale: float
    colour: tuple
    accent: tuple


@dataclass
class Scene:
    """The parameters of one `SyntheticGlyphs` scene, in fractions of the side (any resolution)."""

    sky_top: np.ndarray
    sky_low: np.ndarray
    ground_near: np.ndarray
    ground_far: np.ndarray
    horizon: float
    tilt: float
    sun: tuple  # (cx, cy, r) fractions, colour
    sun_colour: tuple
    glyph: Glyph
    discs: list = field(default_factory=list)  # [(cx, cy, r) fractions, colour]


def sample_scene(seed: int, index: int, classes: int) -> Scene:
    """The parameters `SyntheticGlyphs(seed=seed, classes=classes).render(index)` draws, in its order of draws."""
    rng = np.random.default_rng([int(seed), int(index)])
    label = int(index) % classes
    sky_top, sky_low = rng.uniform([110, 150, 200], [190, 220, 255]), rng.uniform([170, 190, 210], [235, 240, 255])
    ground_near, ground_far = rng.uniform([40, 50, 20], [110, 120, 60]), rng.uniform([80, 100, 40], [150, 160, 90])
    horizon = rng.uniform(0.55, 0.78)
    tilt = rng.uniform(-SyntheticGlyphs.MAX_HORIZON_TILT, SyntheticGlyphs.MAX_HORIZON_TILT)
    sun = (rng.uniform(0.1, 0.9), rng.uniform(0.06, 0.25), rng.uniform(0.04, 0.07))
    sun_colour = tuple(int(v) for v in rng.uniform([235, 200, 60], [255, 240, 140]))
    colour, accent = PALETTES[(label // len(GLYPHS)) % len(PALETTES)]
    jitter = rng.uniform(-25, 25, 3)
    colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter))
    phi = rng.uniform(-SyntheticGlyphs.MAX_GLYPH_TILT, SyntheticGlyphs.MAX_GLYPH_TILT)
    scale = rng.uniform(0.22, 0.32)
    centre = rng.uniform(0.35, 0.65, 2)
    discs = []
    for _ in range(2):
        disc = (rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.02, 0.04))
        discs.append((disc, tuple(int(v) for v in rng.uniform(0, 255, 3))))
    return Scene(sky_top, sky_low, ground_near, ground_far, horizon, tilt, sun, sun_colour,
                 Glyph(label, centre, phi, scale, colour, accent), discs)


def _glyph_points(g: Glyph, s: int) -> tuple[list, np.ndarray, float]:
    shape = np.asarray(list(GLYPHS.values())[g.label % len(GLYPHS)], dtype=np.float64)
    phi = math.radians(g.phi)
    rot = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
    scale, centre = g.scale * s, g.centre * s
    pts = shape @ rot.T * scale + centre
    dot = (shape[0] * 0.75) @ rot.T * scale + centre
    return [tuple(p) for p in pts], dot, 0.06 * s


def draw_glyph(draws: list, g: Glyph, s: int, label_values: list) -> None:
    """Draw glyph g (polygon with an outline, accent dot) into each (ImageDraw, value) pair.

    value None: the RGB image (the glyph's colours); an int: a label image (the same pixels, that value).
    """
    pts, dot, r = _glyph_points(g, s)
    box = [dot[0] - r, dot[1] - r, dot[0] + r, dot[1] + r]
    for draw, value in zip(draws, label_values):
        if draw is None:
            continue
        if value is None:  # the RGB image: SyntheticGlyphs' colours
            draw.polygon(pts, fill=g.colour, outline=(20, 20, 20))
            draw.ellipse(box, fill=g.accent)
        else:  # a label image: the same pixels, one value
            draw.polygon(pts, fill=value, outline=value)
            draw.ellipse(box, fill=value)


def draw_background(scene: Scene, s: int) -> tuple[Image.Image, np.ndarray]:
    """Sky, ground and sun as `SyntheticGlyphs.render`: (RGB image, (s, s) uint8 class map)."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    horizon = scene.horizon * s
    slope = math.tan(math.radians(scene.tilt))
    line = horizon + slope * (xx - s / 2)
    t_sky = np.clip(yy / np.maximum(line, 1), 0, 1)[..., None]
    t_ground = np.clip((yy - line) / np.maximum(s - line, 1), 0, 1)[..., None]
    sky = (1 - t_sky) * scene.sky_top + t_sky * scene.sky_low
    ground = (1 - t_ground) * scene.ground_far + t_ground * scene.ground_near
    is_sky = yy < line
    img = Image.fromarray(np.where(is_sky[..., None], sky, ground).astype(np.uint8))
    labels = Image.fromarray(np.where(is_sky, SKY, GROUND).astype(np.uint8))
    cx, cy, r = scene.sun[0] * s, scene.sun[1] * s, scene.sun[2] * s
    ImageDraw.Draw(img).ellipse([cx - r, cy - r, cx + r, cy + r], fill=scene.sun_colour)
    ImageDraw.Draw(labels).ellipse([cx - r, cy - r, cx + r, cy + r], fill=SUN)
    return img, np.asarray(labels).copy()


def draw_discs(draws: list, scene: Scene, s: int, values: list) -> None:
    for (fx, fy, fr), colour in scene.discs:
        cx, cy, r = fx * s, fy * s, fr * s
        for draw, value in zip(draws, values):
            if draw is not None:
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour if value is None else value)


def render_segmentation(scene: Scene, s: int) -> tuple[Image.Image, np.ndarray]:
    """(the SyntheticGlyphs image, (s, s) uint8 class map: 1 sky, 2 ground, 3 sun, 4 disc, 5 + c glyph c)."""
    img, labels = draw_background(scene, s)
    label_img = Image.fromarray(labels)
    draws = [ImageDraw.Draw(img), ImageDraw.Draw(label_img)]
    draw_glyph(draws, scene.glyph, s, [None, GLYPH0 + scene.glyph.label])
    draw_discs(draws, scene, s, [None, DISC])
    return img, np.asarray(label_img).copy()


class SyntheticSegmentation(torch.utils.data.Dataset):
    """`SyntheticGlyphs` images with exact per-pixel class maps. Items: (transform(image), (S, S) int64 labels).

    Labels: 0 ignore (unused here), 1 sky, 2 ground, 3 sun, 4 disc, 5 + c glyph of class c: `num_classes` = 4 + classes
    (labels 1..num_classes).
    """

    def __init__(self, n=500, size=64, classes=10, seed=0, transform: Optional[Callable] = None):
        SyntheticGlyphs(n=n, size=size, classes=classes, seed=seed)  # the same argument checks
        self.n, self.size, self.classes, self.seed, self.transform = int(n), int(size), int(classes), int(seed), transform
        self.num_classes = 4 + self.classes
        self.class_names = class_names(self.classes)

    def __len__(self):
        return self.n

    def render(self, index: int) -> tuple[Image.Image, np.ndarray]:
        return render_segmentation(sample_scene(self.seed, index, self.classes), self.size)

    def __getitem__(self, index):
        image, labels = self.render(int(index))
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.from_numpy(labels.astype(np.int64))


class SyntheticVideos:
    """DAVIS-like videos of the built-in scenes: two glyph objects that move and rotate, exact instance masks.

    `sequence(i)` -> (name, [PIL RGB frames], [(S, S) uint8 masks: 0 background, 1, 2]). Per video, object 1 (the
    scene's class glyph, scale 0.22-0.32 of the side) moves by up to 0.25 of the side and object 2 (another class,
    scale 0.14-0.2, on top) by up to 0.3, each turning by up to ±60° over the video; paths are redrawn (up to 50
    tries) until each object keeps at least 40 % of its own area visible in every frame.
    """

    MIN_VISIBLE = 0.4

    def __init__(self, n=8, frames=12, size=64, classes=10, seed=0, photometric: float = 0.0):
        if n < 1 or frames < 3 or size < 16:
            raise ValueError(f"SyntheticVideo: need n >= 1, frames >= 3 (DAVIS scores frames 1..T-2), size >= 16; got "
                             f"n={n}, frames={frames}, size={size}")
        if not 0.0 <= photometric <= 1.0:
            raise ValueError(f"SyntheticVideo: photometric={photometric} must lie in 0..1")
        SyntheticGlyphs(n=n, size=size, classes=classes, seed=seed)
        self.n, self.frames, self.size, self.classes, self.seed = int(n), int(frames), int(size), int(classes), int(seed)
        # illumination / colour drift over each video (0 = none): by the last frame every channel is scaled
        # by a factor in [1 - p, 1 + p] and shifted by up to ±p/2 of the range, drawn per video; frame t gets t/(T-1)
        # of it. Raw-pixel matching across frames suffers, features invariant to colour jitter need not
        self.photometric = float(photometric)
        self.names = [f"synthetic{i:03d}" for i in range(self.n)]

    def __len__(self):
        return self.n

    def _paths(self, index: int):
        scene = sample_scene(self.seed, index, self.classes)
        rng = np.random.default_rng([self.seed, int(index), 1])
        g = scene.glyph
        other = (g.label + 1 + int(rng.integers(0, max(1, self.classes - 1)))) % self.classes
        colour2, accent2 = PALETTES[(other // len(GLYPHS)) % len(PALETTES)]
        for _ in range(50):
            step1 = rng.uniform(-0.25, 0.25, 2)
            start1 = np.clip(g.centre - step1 / 2, 0.3, 0.7)
            end1 = np.clip(start1 + step1, 0.3, 0.7)
            start2, end2 = rng.uniform(0.25, 0.75, 2), rng.uniform(0.25, 0.75, 2)
            if np.linalg.norm(end2 - start2) > 0.3:
                end2 = start2 + (end2 - start2) * 0.3 / np.linalg.norm(end2 - start2)
            turn1, turn2 = rng.uniform(-60, 60), rng.uniform(-60, 60)
            scale2, phi2 = rng.uniform(0.14, 0.2), rng.uniform(-10, 10)
            objects = []
            for t in np.linspace(0.0, 1.0, self.frames):
                objects.append((
                    Glyph(g.label, start1 + t * (end1 - start1), g.phi + t * turn1, g.scale, g.colour, g.accent),
                    Glyph(other, start2 + t * (end2 - start2), phi2 + t * turn2, scale2, colour2, accent2),
                ))
            if all(self._visible(o, self.size) for o in objects):
                return scene, objects
        return scene, objects  # pragma: no cover - 50 failed draws do not happen at these ranges

    def _visible(self, objects, s) -> bool:
        masks = []
        for g in objects:
            m = Image.new("L", (s, s), 0)
            draw_glyph([None, ImageDraw.Draw(m)], g, s, [None, 1])
            masks.append(np.asarray(m) > 0)
        own1, own2 = masks[0].sum(), masks[1].sum()
        return own2 > 0 and (masks[0] & ~masks[1]).sum() >= self.MIN_VISIBLE * own1 and own1 > 0

    def sequence(self, index: int) -> tuple[str, list, list]:
        scene, objects = self._paths(int(index))
        s = self.size
        frames, masks = [], []
        for g1, g2 in objects:
            img, _ = draw_background(scene, s)
            mask = Image.new("L", (s, s), 0)
            draws = [ImageDraw.Draw(img), ImageDraw.Draw(mask)]
            draw_discs(draws, scene, s, [None, 0])
            draw_glyph(draws, g1, s, [None, 1])
            draw_glyph(draws, g2, s, [None, 2])
            frames.append(img)
            masks.append(np.asarray(mask).copy())
        if self.photometric > 0:
            rng = np.random.default_rng([self.seed, int(index), 3])
            p = self.photometric
            gain, shift = rng.uniform(1 - p, 1 + p, 3), rng.uniform(-p / 2, p / 2, 3) * 255
            frames = [Image.fromarray((np.asarray(f, np.float64) * (1 + t * (gain - 1)) + t * shift).clip(0, 255)
                                      .astype(np.uint8)) for t, f in zip(np.linspace(0, 1, len(frames)), frames)]
        return self.names[int(index)], frames, masks


# ---------------------------------------------------------------------------------------------------------------
# shapes whose colour says nothing: segmentation classes defined by shape alone
# ---------------------------------------------------------------------------------------------------------------

SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar")


def _shape_polygons(kind: str, cx: float, cy: float, r: float, angle: float) -> list[list[tuple[float, float]]]:
    """Polygons (outer first; a ring's inner hole second) of one shape of radius r, rotated by `angle` rad."""
    def rot(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    if kind == "disc":
        return [rot([(r * math.cos(t), r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)])]
    if kind == "ring":
        outer = [(r * math.cos(t), r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)]
        return [rot(outer), rot([(0.55 * x, 0.55 * y) for x, y in outer])]
    if kind == "square":
        a = r / math.sqrt(2)
        return [rot([(-a, -a), (a, -a), (a, a), (-a, a)])]
    if kind == "triangle":
        return [rot([(r * math.cos(t), r * math.sin(t)) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])]
    if kind == "cross":
        w = 0.3 * r
        return [rot([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w),
                     (-r, -w), (-w, -w)])]
    if kind == "bar":
        return [rot([(-r, -0.28 * r), (r, -0.28 * r), (r, 0.28 * r), (-r, 0.28 * r)])]
    raise ValueError(f"unknown shape {kind!r}; allowed: {', '.join(SHAPES)}")


class SyntheticShapes(torch.utils.data.Dataset):
    """Segmentation that colour cannot solve (`SyntheticShapes:n=<images>:size=<px>:seed=<s>`).

    Each image: a smooth random-colour texture as background, then 2-4 shapes (disc, square, triangle, cross, ring,
    bar; radius 0.18-0.32 of the side, a few patch tokens across at the probes' 64 px, any rotation) each filled with its own uniformly random colour and a little
    noise, drawn in random order (later ones occlude). Labels: 1 background, 2 + k shape k: `num_classes` = 7. Every
    colour is drawn independently of the class, so a pixel's (or a patch's) colour says nothing about its label:
    the class is in the outline. Items: (transform(image), (S, S) int64 labels); deterministic by (seed, index).
    """

    def __init__(self, n=500, size=64, seed=0, transform: Optional[Callable] = None):
        if n < 1 or size < 8:
            raise ValueError(f"SyntheticShapes: n={n} must be >= 1 and size={size} >= 8")
        self.n, self.size, self.seed, self.transform = int(n), int(size), int(seed), transform
        self.num_classes = 1 + len(SHAPES)
        self.class_names = ["ignore", "background", *SHAPES]

    def __len__(self):
        return self.n

    def render(self, index: int) -> tuple[Image.Image, np.ndarray]:
        s = self.size
        rng = np.random.default_rng([self.seed, int(index), 21])
        coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)  # smooth random-colour background
        img = Image.fromarray(coarse).resize((s, s), Image.BICUBIC)
        labels = Image.new("L", (s, s), 1)
        draw, lab = ImageDraw.Draw(img), ImageDraw.Draw(labels)
        for _ in range(int(rng.integers(2, 5))):
            k = int(rng.integers(len(SHAPES)))
            r = float(rng.uniform(0.18, 0.32)) * s
            cx, cy = (float(v) * s for v in rng.uniform(0.2, 0.8, size=2))
            polys = _shape_polygons(SHAPES[k], cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            before = (img.copy(), labels.copy()) if len(polys) > 1 else None
            draw.polygon(polys[0], fill=colour)
            lab.polygon(polys[0], fill=2 + k)
            if before is not None:  # a ring's hole shows what lay below it
                hole = Image.new("L", (s, s), 0)
                ImageDraw.Draw(hole).polygon(polys[1], fill=255)
                img.paste(before[0], mask=hole)
                labels.paste(before[1], mask=hole)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, size=(s, s, 3))
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8)), np.asarray(labels).copy()

    def __getitem__(self, index):
        image, labels = self.render(int(index))
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.from_numpy(labels.astype(np.int64))


TEXTURES = ("stripes_h", "stripes_v", "stripes_d", "checker", "dots", "noise")


def _texture(kind: str, s: int, rng: np.random.Generator) -> np.ndarray:
    """(s, s) values in [0, 1] of one texture with random period (4-8 px) and phase."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    period, phase = float(rng.uniform(4, 8)), float(rng.uniform(0, 2 * math.pi))
    w = 2 * math.pi / period
    if kind == "stripes_h":
        return 0.5 + 0.5 * np.sign(np.sin(w * yy + phase))
    if kind == "stripes_v":
        return 0.5 + 0.5 * np.sign(np.sin(w * xx + phase))
    if kind == "stripes_d":
        return 0.5 + 0.5 * np.sign(np.sin(w * (xx + yy) / math.sqrt(2) + phase))
    if kind == "checker":
        return 0.5 + 0.5 * np.sign(np.sin(w * xx + phase) * np.sin(w * yy + phase))
    if kind == "dots":
        return ((np.sin(w * xx + phase) > 0.6) & (np.sin(w * yy + phase) > 0.6)).astype(np.float64)
    if kind == "noise":
        return (rng.uniform(size=(s, s)) > 0.5).astype(np.float64)
    raise ValueError(f"unknown texture {kind!r}; allowed: {', '.join(TEXTURES)}")


class SyntheticTextures(torch.utils.data.Dataset):
    """Segmentation by texture, colour random (`SyntheticTextures:n=<images>:size=<px>:seed=<s>`).

    Each image: a background texture and 2-3 large shapes (radius 0.2-0.35 of the side) each with its own texture,
    one of six (horizontal, vertical, diagonal stripes, checker, dots, binary noise; period 4-8 px, random phase),
    painted in two uniformly random colours. Every pixel's label is the texture class of its region (1 + k,
    `num_classes` = 6): no background majority, and neither a colour nor a single pixel says the class; a region's
    texture does, within a patch token.
    """

    def __init__(self, n=500, size=64, seed=0, transform: Optional[Callable] = None):
        if n < 1 or size < 8:
            raise ValueError(f"SyntheticTextures: n={n} must be >= 1 and size={size} >= 8")
        self.n, self.size, self.seed, self.transform = int(n), int(size), int(seed), transform
        self.num_classes = len(TEXTURES)
        self.class_names = ["ignore", *TEXTURES]

    def __len__(self):
        return self.n

    def render(self, index: int) -> tuple[Image.Image, np.ndarray]:
        s = self.size
        rng = np.random.default_rng([self.seed, int(index), 22])
        image = np.zeros((s, s, 3))
        labels = np.zeros((s, s), np.uint8)
        regions = [np.ones((s, s), bool)]
        kinds = [int(rng.integers(len(TEXTURES)))]
        for _ in range(int(rng.integers(2, 4))):
            mask = Image.new("L", (s, s), 0)
            cx, cy = (float(v) * s for v in rng.uniform(0.2, 0.8, size=2))
            poly = _shape_polygons(SHAPES[int(rng.integers(len(SHAPES) - 2))], cx, cy,
                                   float(rng.uniform(0.2, 0.35)) * s, float(rng.uniform(0, 2 * math.pi)))[0]
            ImageDraw.Draw(mask).polygon(poly, fill=255)
            regions.append(np.asarray(mask) > 0)
            kinds.append(int(rng.integers(len(TEXTURES))))
        for region, k in zip(regions, kinds):
            t = _texture(TEXTURES[k], s, rng)[..., None]
            a, b = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
            image[region] = (t * a + (1 - t) * b)[region]
            labels[region] = 1 + k
        image += rng.normal(0, 6, size=image.shape)
        return Image.fromarray(image.clip(0, 255).astype(np.uint8)), labels

    def __getitem__(self, index):
        image, labels = self.render(int(index))
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.from_numpy(labels.astype(np.int64))
