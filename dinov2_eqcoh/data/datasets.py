"""Datasets selectable through DINOv2's `train.dataset_path` strings (`Name:key=value:...`).

- `Synthetic:n=<images>:size=<px>:classes=<C>:seed=<s>`: the built-in dataset, no download. Procedural images
  whose class is the identity of an asymmetric glyph (and its colour scheme), drawn at a random orientation,
  position and scale on a textured, non-symmetric background. Deterministic by (seed, index), any resolution.
  Rotation and position of the content are identifiable (no glyph is rotation-symmetric), so both invariant
  (class) and equivariant (angle, position) information can be learned from it.
- `ImageFolder:root=<dir>`: a user's own images, `root/<class>/<image>` as in torchvision (or a flat folder,
  one class).
- `ImageNet:...` / `ImageNet22k:...`: passed to DINOv2's own `make_dataset` unchanged.

`make_dataset` has DINOv2's signature, so `train.dataset_builder: dinov2_eqcoh.data.datasets:make_dataset`
plugs it into DINOv2's training loop.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger("dinov2")

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Asymmetric glyphs in unit coordinates (centred near 0, extent about [-1, 1]); none has a rotation symmetry.
GLYPHS = {
    "L": [(-0.6, -1.0), (-0.1, -1.0), (-0.1, 0.5), (0.7, 0.5), (0.7, 1.0), (-0.6, 1.0)],
    "F": [(-0.6, -1.0), (0.8, -1.0), (0.8, -0.55), (-0.1, -0.55), (-0.1, -0.15), (0.5, -0.15), (0.5, 0.3),
          (-0.1, 0.3), (-0.1, 1.0), (-0.6, 1.0)],
    "arrow": [(-1.0, -0.25), (0.2, -0.25), (0.2, -0.7), (1.0, 0.0), (0.2, 0.7), (0.2, 0.25), (-1.0, 0.25)],
    "seven": [(-0.7, -1.0), (0.8, -1.0), (0.8, -0.6), (0.0, 1.0), (-0.5, 1.0), (0.25, -0.6), (-0.7, -0.6)],
    "P": [(-0.6, -1.0), (0.5, -1.0), (0.8, -0.7), (0.8, -0.1), (0.5, 0.2), (-0.1, 0.2), (-0.1, 1.0),
          (-0.6, 1.0)],
    "flag": [(-0.7, -1.0), (0.8, -0.6), (-0.3, -0.2), (-0.3, 1.0), (-0.7, 1.0)],
    "step": [(-1.0, 1.0), (-1.0, 0.2), (-0.35, 0.2), (-0.35, -0.4), (0.3, -0.4), (0.3, -1.0), (1.0, -1.0),
             (1.0, 1.0)],
    "hook": [(-0.8, -1.0), (-0.3, -1.0), (-0.3, 0.5), (0.4, 0.5), (0.4, 0.0), (0.9, 0.0), (0.9, 1.0),
             (-0.8, 1.0)],
    "wedge": [(-1.0, -0.8), (1.0, 0.0), (-1.0, 0.8), (-0.5, 0.0)],
    "key": [(-1.0, -0.45), (-0.2, -0.45), (-0.2, -0.15), (1.0, -0.15), (1.0, 0.45), (0.7, 0.45), (0.7, 0.15),
            (-0.2, 0.15), (-0.2, 0.45), (-1.0, 0.45)],
}
PALETTES = [  # (glyph colour, accent colour)
    ((230, 60, 40), (250, 210, 30)),
    ((40, 90, 220), (250, 250, 250)),
    ((30, 170, 80), (200, 40, 160)),
]


class SyntheticGlyphs:
    """The built-in procedural dataset. Class c = glyph c % 10 with palette c // 10 (up to 30 classes).

    Each image: a two-colour linear gradient background at a random angle with a few soft blobs, one large
    glyph (the class) at a random angle in [0, 360), position and scale, with a small accent dot on one of
    its arms (which also breaks mirror symmetry), and a few small distractor discs.
    """

    def __init__(self, n=2000, size=224, classes=10, seed=0, transform=None, target_transform=None):
        if not 1 <= classes <= len(GLYPHS) * len(PALETTES):
            raise ValueError(f"Synthetic: classes={classes} is out of range; allowed 1..{len(GLYPHS) * len(PALETTES)}")
        if n < 1 or size < 8:
            raise ValueError(f"Synthetic: need n >= 1 and size >= 8, got n={n}, size={size}")
        self.n, self.size, self.classes, self.seed = int(n), int(size), int(classes), int(seed)
        self.transform, self.target_transform = transform, target_transform
        self._glyphs = list(GLYPHS.values())

    def __len__(self):
        return self.n

    def get_target(self, index):
        return int(index) % self.classes

    def get_targets(self):
        return np.arange(self.n) % self.classes

    def render(self, index: int) -> Image.Image:
        index = int(index)  # DINOv2's samplers yield numpy integers
        rng = np.random.default_rng([self.seed, index])
        label = self.get_target(index)
        s = self.size
        # background: gradient between two random dull colours along a random direction, plus soft blobs
        c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:s, 0:s] / max(s - 1, 1)
        t = np.clip((np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)) + 0.5, 0, 1)[..., None]
        bg = (1 - t) * c0 + t * c1
        img = Image.fromarray(bg.astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            cx, cy, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.05, 0.15) * s
            col = tuple(int(v) for v in rng.uniform(60, 180, 3))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        # the glyph: class identity; random rotation, scale, position (kept inside the image)
        glyph = np.asarray(self._glyphs[label % len(self._glyphs)], dtype=np.float64)
        colour, accent = PALETTES[(label // len(self._glyphs)) % len(PALETTES)]
        jitter = rng.uniform(-25, 25, 3)
        colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter))
        phi = rng.uniform(0, 2 * math.pi)
        scale = rng.uniform(0.22, 0.32) * s
        centre = rng.uniform(0.35, 0.65, 2) * s
        rot = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
        pts = glyph @ rot.T * scale + centre
        draw.polygon([tuple(p) for p in pts], fill=colour, outline=(20, 20, 20))
        dot = (glyph[0] * 0.75) @ rot.T * scale + centre
        r = 0.06 * s
        draw.ellipse([dot[0] - r, dot[1] - r, dot[0] + r, dot[1] + r], fill=accent)
        for _ in range(2):  # distractors
            cx, cy, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.02, 0.04) * s
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
        return img

    def __getitem__(self, index):
        image, target = self.render(index), self.get_target(index)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


class ImageFolder:
    """`root/<class>/<image>` (classes sorted by name) or a flat `root/<image>` folder (one class)."""

    def __init__(self, root, transform=None, target_transform=None):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"ImageFolder: root={root} is not a directory")
        classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        samples = []
        if classes:
            for ci, c in enumerate(classes):
                for dirpath, _, files in sorted(os.walk(os.path.join(root, c))):
                    samples += [(os.path.join(dirpath, f), ci) for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
        else:
            samples = [(os.path.join(root, f), 0) for f in sorted(os.listdir(root)) if f.lower().endswith(IMG_EXTENSIONS)]
        if not samples:
            raise FileNotFoundError(
                f"ImageFolder: no images under root={root} (looked for {', '.join(IMG_EXTENSIONS)} files "
                "in root/<class>/ or directly in root)"
            )
        self.root, self.classes, self.samples = root, classes or ["images"], samples
        self.transform, self.target_transform = transform, target_transform

    def __len__(self):
        return len(self.samples)

    def get_target(self, index):
        return self.samples[int(index)][1]

    def get_targets(self):
        return np.array([t for _, t in self.samples])

    def load(self, index) -> Image.Image:
        path = self.samples[int(index)][0]
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
        return img.convert("RGB")

    def __getitem__(self, index):
        image, target = self.load(index), self.get_target(index)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


_BUILDERS = {
    "Synthetic": (SyntheticGlyphs, {"n": int, "size": int, "classes": int, "seed": int}),
    "ImageFolder": (ImageFolder, {"root": str}),
}
_DINOV2_NAMES = ("ImageNet", "ImageNet22k")


def parse_dataset_str(dataset_str: str):
    """`Name:key=value:...` -> (name, kwargs), with a clear error for unknown names and keys."""
    name, *tokens = dataset_str.split(":")
    if name not in _BUILDERS and name not in _DINOV2_NAMES:
        raise ValueError(
            f"train.dataset_path: unknown dataset '{name}' in '{dataset_str}'; "
            f"allowed: {', '.join(list(_BUILDERS) + list(_DINOV2_NAMES))}"
        )
    kwargs = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"train.dataset_path: '{token}' in '{dataset_str}' is not key=value")
        kwargs[key] = value
    if name in _BUILDERS:
        allowed = _BUILDERS[name][1]
        for key, value in list(kwargs.items()):
            if key not in allowed:
                raise ValueError(f"train.dataset_path: unknown key '{key}' for {name}; allowed: {', '.join(allowed)}")
            try:
                kwargs[key] = allowed[key](value)
            except ValueError:
                raise ValueError(f"train.dataset_path: {name} key '{key}={value}' is not a valid {allowed[key].__name__}")
    return name, kwargs


def make_dataset(
    *,
    dataset_str: str,
    transform: Optional[Callable] = None,
    target_transform: Optional[Callable] = None,
):
    """Drop-in for `dinov2.data.make_dataset` that also knows `Synthetic` and `ImageFolder`."""
    name, kwargs = parse_dataset_str(dataset_str)
    if name in _DINOV2_NAMES:
        from dinov2.data.loaders import make_dataset as dinov2_make_dataset

        return dinov2_make_dataset(dataset_str=dataset_str, transform=transform, target_transform=target_transform)
    dataset = _BUILDERS[name][0](**kwargs, transform=transform, target_transform=target_transform)
    logger.info(f"# of dataset samples: {len(dataset):,d} ({dataset_str})")
    return dataset
