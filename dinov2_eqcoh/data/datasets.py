"""Datasets selectable through DINOv2's `train.dataset_path` strings (`Name:key=value:...`).

- `Synthetic:n=<images>:size=<px>:classes=<C>:seed=<s>`: the built-in dataset, no download. Procedural scenes
  with a canonical "up" like photographs (sky above a horizon, ground below, a sun) and one upright asymmetric glyph
  whose identity (and colour scheme) is the class, at a random position and scale. Deterministic by (seed, index),
  any resolution. Rotation and position of the content are identifiable from the image (no glyph is
  rotation-symmetric, and the scene has an up), so both invariant (class) and equivariant (angle, position)
  information can be learned from it.
- `ImageFolder:root=<dir>[:max_bad_fraction=<0..1>]`: a user's own images, `root/<class>/<image>` as in
  torchvision (or a flat folder, one class). An unreadable image is skipped (the next readable one is used), logged
  and counted; the run stops when more than `max_bad_fraction` (default 0.01) of the loads fail.
- `ImageNet:...` / `ImageNet22k:...`: passed to DINOv2's own `make_dataset` unchanged.

`make_dataset` has DINOv2's signature, so `train.dataset_builder: dinov2_eqcoh.data.datasets:make_dataset`
plugs it into DINOv2's training loop.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

logger = logging.getLogger("dinov2")

# What PIL raises for a file it cannot read or decode (UnidentifiedImageError and truncation are OSErrors).
BAD_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
MIN_LOADS_FOR_FRACTION = 100  # the bad fraction is judged once this many loads happened ...
ALL_BAD_STOP = 10  # ... or at once when this many loads happened and every one of them failed
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

    Scenes have a canonical "up", as natural photographs do (a rotation of the image is then identifiable from the
    image itself, which the paper's rotation task relies on): a light sky above a darker ground, split by a horizon
    at a random height tilted by at most ±4°, a sun disc in the sky, one large upright glyph (the class; tilted by
    at most ±10°) at a random position and scale, with a small accent dot on one of its arms, and a few small
    distractor discs. Colours are random around the class palette, so the class is the glyph's shape.
    """

    MAX_GLYPH_TILT = 10.0  # degrees
    MAX_HORIZON_TILT = 4.0  # degrees

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
        # sky (light, top) and ground (darker, bottom), split by a slightly tilted horizon at a random height
        sky_top, sky_low = rng.uniform([110, 150, 200], [190, 220, 255]), rng.uniform([170, 190, 210], [235, 240, 255])
        ground_near, ground_far = rng.uniform([40, 50, 20], [110, 120, 60]), rng.uniform([80, 100, 40], [150, 160, 90])
        horizon = rng.uniform(0.55, 0.78) * s
        slope = math.tan(math.radians(rng.uniform(-self.MAX_HORIZON_TILT, self.MAX_HORIZON_TILT)))
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
        line = horizon + slope * (xx - s / 2)  # the horizon's y at every column
        t_sky = np.clip(yy / np.maximum(line, 1), 0, 1)[..., None]
        t_ground = np.clip((yy - line) / np.maximum(s - line, 1), 0, 1)[..., None]
        sky = (1 - t_sky) * sky_top + t_sky * sky_low
        ground = (1 - t_ground) * ground_far + t_ground * ground_near
        img = Image.fromarray(np.where((yy < line)[..., None], sky, ground).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        cx, cy, r = rng.uniform(0.1, 0.9) * s, rng.uniform(0.06, 0.25) * s, rng.uniform(0.04, 0.07) * s  # the sun
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.uniform([235, 200, 60], [255, 240, 140])))
        # the glyph: class identity; upright up to a small tilt, random scale and position (kept inside the image)
        glyph = np.asarray(self._glyphs[label % len(self._glyphs)], dtype=np.float64)
        colour, accent = PALETTES[(label // len(self._glyphs)) % len(PALETTES)]
        jitter = rng.uniform(-25, 25, 3)
        colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter))
        phi = math.radians(rng.uniform(-self.MAX_GLYPH_TILT, self.MAX_GLYPH_TILT))
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


class PhotoCrops:
    """Crops of a photograph bundled with a dependency: photographic texture, no colour coding.

    The photograph is matplotlib's sample `grace_hopper.jpg` (600 x 512 px; matplotlib is in the `dev` extra): item
    i is a 4:3 crop of it, `size` x 3/4·`size` px, whose width is uniform in [0.35, 0.9] of the photograph's and
    whose position is uniform, mirrored with probability 1/2, all drawn from (seed, i). Label 0 (no classes).
    """

    PHOTO = "grace_hopper.jpg"

    def __init__(self, n=1600, size=160, seed=0, transform=None, target_transform=None):
        if n < 1 or size < 8:
            raise ValueError(f"Photos: need n >= 1 and size >= 8, got n={n}, size={size}")
        try:
            from matplotlib import cbook
        except ImportError as e:
            raise ImportError(f"Photos: the photograph is matplotlib's sample {self.PHOTO}; pip install matplotlib "
                              f"({e})") from None
        self.photo = Image.open(cbook.get_sample_data(self.PHOTO, asfileobj=False)).convert("RGB")
        self.n, self.size, self.seed = int(n), int(size), int(seed)
        self.transform, self.target_transform = transform, target_transform

    def __len__(self):
        return self.n

    def render(self, index) -> Image.Image:
        rng = np.random.default_rng([self.seed, int(index)])
        W, H = self.photo.size
        w = rng.uniform(0.35, 0.9) * min(W, H * 4 / 3)
        h = 0.75 * w
        x0, y0 = rng.uniform(0, W - w), rng.uniform(0, H - h)
        crop = self.photo.resize((self.size, round(0.75 * self.size)), Image.BILINEAR, box=(x0, y0, x0 + w, y0 + h))
        return crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop

    def __getitem__(self, index):
        image, target = self.render(index), 0
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


def _is_image(filename: str) -> bool:
    return filename.lower().endswith(IMG_EXTENSIONS)


class ImageFolder:
    """`root/<class>/<image>` (classes sorted by name) or a flat `root/<image>` folder (one class).

    A file that cannot be read or decoded (missing, unreadable, truncated, not an image) is skipped: a warning names
    it with the running count ("bad images so far: n of m loads") on the "dinov2" logger, which DINOv2 writes to
    `<output_dir>/logs/log.txt`, and the next readable image in the list (index + 1, + 2, ...) is returned in its
    place, with that image's target. The counts are kept in shared memory, so DataLoader worker processes add to the
    same totals (`bad_images`, `loaded_images`). When more than `max_bad_fraction` of the loads have failed (judged
    once `MIN_LOADS_FOR_FRACTION` loads happened, or at once when the first `ALL_BAD_STOP` loads all failed),
    loading raises a RuntimeError that says how many of how many, the last bad file and the key to raise the limit.

    Args:
        root: the folder.
        transform, target_transform: applied to the PIL image (RGB) and the class index.
        max_bad_fraction: the fraction of failed loads tolerated, in [0, 1] (1: never stop).
    """

    def __init__(self, root, transform=None, target_transform=None, max_bad_fraction=0.01):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"ImageFolder: root={root} is not a directory")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(
                f"ImageFolder: max_bad_fraction={max_bad_fraction} is out of range; allowed 0..1 (the fraction of "
                "image loads that may fail before the run stops)"
            )
        classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        samples = []
        if classes:
            for ci, c in enumerate(classes):
                for dirpath, _, files in sorted(os.walk(os.path.join(root, c))):
                    samples += [(os.path.join(dirpath, f), ci) for f in sorted(files) if _is_image(f)]
        else:
            samples = [(os.path.join(root, f), 0) for f in sorted(os.listdir(root)) if _is_image(f)]
        if not samples:
            raise FileNotFoundError(
                f"ImageFolder: no images under root={root} (looked for {', '.join(IMG_EXTENSIONS)} files "
                "in root/<class>/ or directly in root)"
            )
        self.root, self.classes, self.samples = root, classes or ["images"], samples
        self.transform, self.target_transform = transform, target_transform
        self.max_bad_fraction = float(max_bad_fraction)
        # [failed loads, attempted loads] in shared memory: DataLoader workers (forked, or spawned with the dataset
        # pickled while spawning) inherit it and add to the same totals
        self._counts = multiprocessing.Array("q", 2)

    def __len__(self):
        return len(self.samples)

    @property
    def bad_images(self) -> int:
        """Loads that failed so far, in this process and its DataLoader workers (a bad file counts each time)."""
        return int(self._counts[0])

    @property
    def loaded_images(self) -> int:
        """Loads attempted so far (good and bad), in this process and its DataLoader workers."""
        return int(self._counts[1])

    def data_metrics(self) -> dict[str, int]:
        """Logged with the losses at every iteration by DINOv2's loop (patches/0007): training_metrics.json."""
        return {"bad_images": self.bad_images, "loaded_images": self.loaded_images}

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

    def _count_load(self, bad: bool) -> tuple[int, int]:
        with self._counts.get_lock():
            self._counts[0] += int(bad)
            self._counts[1] += 1
            return self._counts[0], self._counts[1]

    def _skip_bad_image(self, index: int, error: Exception) -> None:
        """Count and log a failed load; raise when the failures exceed `max_bad_fraction`."""
        path = self.samples[index][0]
        bad, attempted = self._count_load(bad=True)
        logger.warning(
            f"ImageFolder: skipped unreadable image {path} ({type(error).__name__}: {error}); "
            f"bad images so far: {bad} of {attempted} loads"
        )
        judged = attempted >= MIN_LOADS_FOR_FRACTION or bad == attempted >= ALL_BAD_STOP
        if judged and bad > self.max_bad_fraction * attempted:
            message = (
                f"ImageFolder: {bad} of {attempted} image loads under root={self.root} failed ({bad / attempted:.1%}), "
                f"more than max_bad_fraction={self.max_bad_fraction:g}; last bad file: {path} "
                f"({type(error).__name__}: {error}). Fix or remove the bad files, or raise the limit in the dataset "
                f"string, e.g. train.dataset_path=ImageFolder:root={self.root}:max_bad_fraction=0.05"
            )
            logger.error(message)
            raise RuntimeError(message)

    def __getitem__(self, index):
        index = int(index)  # DINOv2's samplers yield numpy integers
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            try:
                image = self.load(i)
            except BAD_IMAGE_ERRORS as e:
                self._skip_bad_image(i, e)
                continue
            self._count_load(bad=False)
            break
        else:
            raise RuntimeError(f"ImageFolder: none of the {len(self)} images under root={self.root} can be read")
        target = self.get_target(i)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


_BUILDERS = {
    "Synthetic": (SyntheticGlyphs, {"n": int, "size": int, "classes": int, "seed": int}),
    "ImageFolder": (ImageFolder, {"root": str, "max_bad_fraction": float}),
    "Photos": (PhotoCrops, {"n": int, "size": int, "seed": int}),
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
                kind = allowed[key].__name__
                raise ValueError(f"train.dataset_path: {name} key '{key}={value}' is not a valid {kind}") from None
    return name, kwargs


def check_dataset_str(dataset_str: str) -> None:
    """Check `train.dataset_path` up front, before a model is built: its syntax, and for `ImageFolder` the root.

    An `ImageFolder` root must be a directory holding at least one image (in `root/<class>/` or directly in root),
    and `max_bad_fraction` must lie in 0..1: the errors `ImageFolder` itself would raise once DINOv2's `do_train`
    builds the dataset, after the model, FSDP and the optimizer. Stops at the first image found (cheap on big
    folders). `Synthetic` and DINOv2's datasets are only parsed.

    Raises:
        ValueError: an unknown dataset, key or value (as `parse_dataset_str`).
        FileNotFoundError: an `ImageFolder` root that is not a directory, or holds no image.
    """
    name, kwargs = parse_dataset_str(dataset_str)
    if name in _DINOV2_NAMES:
        _check_dinov2_dataset(name, kwargs, dataset_str)
        return
    if name != "ImageFolder":
        return
    root = kwargs.get("root")
    if root is None:
        raise ValueError(f"train.dataset_path: ImageFolder needs root=<dir>, got '{dataset_str}'")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"ImageFolder: root={root} is not a directory (train.dataset_path={dataset_str})")
    max_bad_fraction = kwargs.get("max_bad_fraction", 0.01)
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"ImageFolder: max_bad_fraction={max_bad_fraction} is out of range; allowed 0..1")
    classes = [d.path for d in os.scandir(root) if d.is_dir() and not d.name.startswith(".")]
    if classes:
        found = any(_is_image(f) for c in classes for _, _, files in os.walk(c) for f in files)
    else:
        found = any(_is_image(f) for f in os.listdir(root))
    if not found:
        raise FileNotFoundError(
            f"ImageFolder: no images under root={root} (looked for {', '.join(IMG_EXTENSIONS)} files "
            "in root/<class>/ or directly in root)"
        )


def _extra_files(name: str, split: str) -> tuple[str, ...]:
    """The metadata files DINOv2's dataset reads from `extra` (`ImageNet._get_entries_path`, ...)."""
    if name == "ImageNet22k":
        return ("entries.npy", "class-ids.npy")
    return tuple(f"{kind}-{split.upper()}.npy" for kind in ("entries", "class-ids", "class-names"))


def _check_dinov2_dataset(name: str, kwargs: dict, dataset_str: str) -> None:
    """DINOv2's ImageNet / ImageNet22k: `root` and `extra` set (not the configs' `<set me>`), existing, and the
    metadata files in `extra`; the error gives the command that writes them (DINOv2's `dump_extra`)."""
    split = kwargs.get("split", "TRAIN")
    for key in ("root", "extra"):
        value = kwargs.get(key)
        if not value or ("<" in value and ">" in value):
            raise ValueError(
                f"train.dataset_path: {name} needs {key}=<dir>, got {key}={value!r} in '{dataset_str}'. Set it in the "
                f"config or on the command line, e.g. train.dataset_path={name}:split={split}:root=/data/imagenet:"
                "extra=/data/imagenet-extra (root holds train/ and val/; extra the metadata DINOv2 writes once)"
            )
    root, extra = kwargs["root"], kwargs["extra"]
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{name}: root={root} is not a directory (train.dataset_path={dataset_str})")
    missing = [f for f in _extra_files(name, split) if not os.path.isfile(os.path.join(extra, f))]
    if missing:
        make = (f"from dinov2.data.datasets import {name}; "
                + (f"{name}(root='{root}', extra='{extra}').dump_extra()" if name == "ImageNet22k" else
                   f"[{name}(split=s, root='{root}', extra='{extra}').dump_extra() for s in {name}.Split]"))
        raise FileNotFoundError(
            f"{name}: extra={extra} lacks {', '.join(missing)} (DINOv2's metadata of the {split} split). Write them "
            f"once (minutes, single process): mkdir -p {extra} && python -c \"{make}\"")


def check_training_dataset(cfg) -> None:
    """`check_dataset_str(cfg.train.dataset_path)` when the run builds its dataset with this module's `make_dataset`."""
    if cfg.train.get("dataset_builder", "") == f"{__name__}:make_dataset":
        check_dataset_str(cfg.train.dataset_path)


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
