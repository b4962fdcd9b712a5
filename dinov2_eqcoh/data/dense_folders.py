# SPDX-License-Identifier: Apache-2.0
"""Dense-task datasets on disk, read as their own tools lay them out, with errors that name the file and the fix:

- `DavisFolder`: DAVIS-2017 (`JPEGImages/<res>/<seq>/*.jpg`, `Annotations/<res>/<seq>/*.png` palette PNGs), for
  label propagation (`eval.propagation`);
- `ADE20KFolder`: ADE20K (`images/<split>/*.jpg`, `annotations/<split>/*.png` class-index PNGs), for the linear
  segmentation probe (`eval.segmentation`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

VOID = 255  # DAVIS' void label in annotations


def read_index_png(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """A DAVIS annotation: (H, W) uint8 palette indices and the (256, 3) palette (None for a grey PNG)."""
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # noqa: BLE001 - any decoding error is a bad annotation
        raise ValueError(f"annotation {path}: cannot be read ({type(e).__name__}: {e})") from None
    if img.mode not in ("P", "L"):
        raise ValueError(f"annotation {path}: mode {img.mode}, expected a palette (P) PNG of object indices as "
                         "DAVIS' (or a single-channel L PNG)")
    palette = img.getpalette()
    pal = np.asarray(palette[:768] + [0] * (768 - len(palette[:768])), dtype=np.uint8).reshape(256, 3) \
        if img.mode == "P" and palette else None
    return np.asarray(img, dtype=np.uint8).copy(), pal


def default_palette() -> np.ndarray:
    """DAVIS' palette: the PASCAL VOC bit-interleaved colour map ((256, 3) uint8)."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


class DavisFolder:
    """The DAVIS-2017 layout: `JPEGImages/<res>/<seq>/*.jpg`, `Annotations/<res>/<seq>/*.png` (palette PNGs).

    Sequences: `sequences` = a list file (one name a line, e.g. ImageSets/2017/val.txt) or comma-separated names;
    default: ImageSets/2017/val.txt when it exists, else every folder under JPEGImages/<res>. Every frame needs an
    annotation of the same name and size (DAVIS trainval has them); the objects are the non-zero, non-void (255)
    indices of the first annotation, and a later annotation with another index is an error.
    """

    def __init__(self, root: str, resolution: str = "480p", sequences: str | None = None):
        self.root = Path(root)
        self.images_dir = self.root / "JPEGImages" / resolution
        self.annotations_dir = self.root / "Annotations" / resolution
        for d in (self.images_dir, self.annotations_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"DAVIS: {d} is not a directory; expected the DAVIS-2017 layout "
                                        f"<root>/JPEGImages/{resolution}/<sequence>/*.jpg and "
                                        f"<root>/Annotations/{resolution}/<sequence>/*.png")
        self.names = self._sequence_names(sequences)
        self.frame_files: dict[str, list[Path]] = {}
        for name in self.names:
            seq_dir = self.images_dir / name
            if not seq_dir.is_dir():
                raise FileNotFoundError(f"DAVIS: sequence '{name}' has no folder {seq_dir}")
            frames = sorted(p for p in seq_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if len(frames) < 3:
                raise ValueError(f"DAVIS: sequence '{name}' has {len(frames)} frames in {seq_dir}; expected at least 3 "
                                 "(DAVIS scores every frame but the first and the last)")
            for f in frames:
                ann = self.annotations_dir / name / (f.stem + ".png")
                if not ann.is_file():
                    raise FileNotFoundError(f"DAVIS: frame {f} has no annotation; expected {ann}")
            self.frame_files[name] = frames

    def _sequence_names(self, sequences: str | None) -> list[str]:
        source = None
        if sequences is None:
            default = self.root / "ImageSets" / "2017" / "val.txt"
            if default.is_file():
                sequences, source = str(default), str(default)
        if sequences is None:
            names = sorted(d.name for d in self.images_dir.iterdir() if d.is_dir())
            source = str(self.images_dir)
        elif os.path.isfile(sequences) or os.path.isfile(self.root / sequences):
            source = sequences if os.path.isfile(sequences) else str(self.root / sequences)
            names = [line.strip() for line in Path(source).read_text().splitlines() if line.strip()]
        elif "/" in sequences or sequences.endswith(".txt"):
            raise FileNotFoundError(f"DAVIS: sequence list {sequences} does not exist")
        else:
            names, source = [s.strip() for s in sequences.split(",") if s.strip()], f"sequences={sequences}"
        if not names:
            raise ValueError(f"DAVIS: the sequence list {source} is empty; expected one sequence name a line "
                             "(e.g. ImageSets/2017/val.txt)")
        return names

    def __len__(self):
        return len(self.names)

    def sequence(self, index: int) -> tuple[str, list, list]:
        """(name, [PIL RGB frames], [(H, W) uint8 index masks]); checks sizes and object indices."""
        name = self.names[index]
        frames, masks, objects = [], [], None
        for f in self.frame_files[name]:
            ann_path = self.annotations_dir / name / (f.stem + ".png")
            with Image.open(f) as im:
                image = im.convert("RGB")
            mask, palette = read_index_png(ann_path)
            if mask.shape != (image.height, image.width):
                raise ValueError(f"DAVIS: {f} is {image.width}x{image.height} but its annotation {ann_path} is "
                                 f"{mask.shape[1]}x{mask.shape[0]}; expected the same size")
            found = set(np.unique(mask).tolist()) - {0, VOID}
            if objects is None:
                objects = sorted(found)
                if not objects:
                    raise ValueError(f"DAVIS: the first annotation of '{name}', {ann_path}, has no object (only "
                                     "index 0); expected the objects to track as palette indices 1, 2, ...")
                self.palette = palette if palette is not None else default_palette()
            elif not found <= set(objects):
                raise ValueError(f"DAVIS: {ann_path} has palette index(es) {sorted(found - set(objects))} that are "
                                 f"not objects of the first frame of '{name}' (objects {objects})")
            frames.append(image)
            masks.append(mask)
        self.objects = objects
        return name, frames, masks

    def frame_names(self, index: int) -> list[str]:
        return [f.stem for f in self.frame_files[self.names[index]]]


# --------------------------------------------------------------------------------------------------------------


def resize_crop_pair(image: Image.Image, labels: np.ndarray, size: int) -> tuple[Image.Image, np.ndarray]:
    """Short side to `size` (image bicubic, labels nearest), centre crop size x size."""
    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        tw, th = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((tw, th), Image.BICUBIC)
        labels = np.asarray(Image.fromarray(labels).resize((tw, th), Image.NEAREST))
        left, top = (tw - size) // 2, (th - size) // 2
        image = image.crop((left, top, left + size, top + size))
        labels = labels[top:top + size, left:left + size]
    return image, labels


class ADE20KFolder(torch.utils.data.Dataset):
    """The ADE20K layout: `images/<split>/*.jpg` and `annotations/<split>/<same name>.png` (class-index PNGs).

    Items: (transform(image resized and cropped to S x S), (S, S) int64 labels, 0 = other/ignore, 1..classes).
    """

    def __init__(self, root: str, split: str, size: int, classes: int = 150,
                 transform: Callable[[Image.Image], Any] = lambda image: image):
        self.root, self.split, self.size, self.num_classes = Path(root), split, int(size), int(classes)
        self.transform = transform
        images_dir, ann_dir = self.root / "images" / split, self.root / "annotations" / split
        for d in (images_dir, ann_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"ADE20K: {d} is not a directory; expected the ADE20K layout "
                                        f"<root>/images/{split}/*.jpg and <root>/annotations/{split}/*.png")
        self.images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not self.images:
            raise FileNotFoundError(f"ADE20K: no images (.jpg/.png) in {images_dir}")
        self.annotations = []
        for p in self.images:
            ann = ann_dir / (p.stem + ".png")
            if not ann.is_file():
                raise FileNotFoundError(f"ADE20K: image {p} has no annotation; expected {ann}")
            self.annotations.append(ann)

    def __len__(self):
        return len(self.images)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        img_path, ann_path = self.images[index], self.annotations[index]
        with Image.open(img_path) as im:
            image = im.convert("RGB")
        with Image.open(ann_path) as ann:
            if ann.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"ADE20K: annotation {ann_path} has mode {ann.mode}; expected a single-channel PNG "
                                 "of class indices (0 = other, 1..150)")
            labels = np.asarray(ann).astype(np.int64)
        if labels.shape != (image.height, image.width):
            raise ValueError(f"ADE20K: {img_path} is {image.width}x{image.height} but its annotation {ann_path} is "
                             f"{labels.shape[1]}x{labels.shape[0]}; expected the same size")
        if labels.max() > self.num_classes:
            raise ValueError(f"ADE20K: annotation {ann_path} has class index {int(labels.max())}; expected 0..{self.num_classes} "
                             "(set classes=<C> in the dataset string for another label set)")
        return image, labels.astype(np.uint8 if self.num_classes < 256 else np.int32)

    def __getitem__(self, index):
        image, labels = resize_crop_pair(*self.load(int(index)), self.size)
        return self.transform(image), torch.from_numpy(np.asarray(labels).astype(np.int64))
