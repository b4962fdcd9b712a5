# SPDX-License-Identifier: Apache-2.0
"""Shared pieces of the evaluations: a frozen backbone from any checkpoint, eval images, batched features.

A "backbone" here is anything with DINOv2's `forward_features(x) -> {"x_norm_clstoken": (B, D),
"x_norm_patchtokens": (B, N, D), ...}` (a DinoVisionTransformer, or a known-answer encoder in the tests).
Feature kinds:

    cls        x_norm_clstoken                                  (B, D)
    avgpool    mean of x_norm_patchtokens over the tokens       (B, D)
    concat     [cls, avgpool], as DINOv2's linear eval with avgpool  (B, 2D)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from dinov2_eqcoh.method.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from dinov2_eqcoh.weights.checkpoints import find_run_config, load_backbone

logger = logging.getLogger("dinov2.eqcoh")

FEATURE_KINDS = ("cls", "avgpool", "concat")
FEATURE_ALIASES = {"both": ("cls", "avgpool")}

__all__ = [
    "FEATURE_KINDS",
    "draw",
    "RawPixels",
    "load_backbone",
    "eval_transform",
    "make_eval_dataset",
    "default_device",
    "parse_feature_kinds",
    "backbone_features",
    "extract_features",
    "progress",
    "add_backbone_args",
    "backbone_from_args",
]


def draw(plot: Callable[..., Any], path: str, *args, **kwargs) -> bool:
    """Call `plot(..., path, ...)` to draw a picture whose numbers are already written; without matplotlib, warn
    and go on (the JSON has everything). Returns whether the picture was drawn."""
    try:
        plot(*args, path, **kwargs) if args else plot(path, **kwargs)
    except ImportError as e:
        logger.warning(f"{path} not drawn ({e}); the figures are in the JSON next to it. pip install matplotlib")
        return False
    return True


class RawPixels(nn.Module):
    """Raw pixels as a "backbone": the reference every probe is read against (what needs no learning at all).

    `forward_features(x)` with x (B, 3, S, S) normalised returns
        x_norm_clstoken     (B, 3·S²)     the whole image, flattened (a linear probe on pixels)
        x_norm_patchtokens  (B, N, 3·p²)  each p×p patch's pixels, N = (S/p)², row-major like a ViT's tokens
    so the global probes (CLS, avgpool, concat) and the dense probes (patch maps of side S/p) read it unchanged.
    """

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = int(patch_size)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.patch_size
        if x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(f"RawPixels: image side {tuple(x.shape[-2:])} is not a multiple of patch_size {p}")
        patches = torch.nn.functional.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (B, N, 3·p²)
        return {"x_norm_clstoken": x.flatten(1), "x_norm_patchtokens": patches}


def parse_feature_kinds(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`"cls,avgpool"` / `"both"` / `["cls"]` -> a tuple of FEATURE_KINDS (error naming the unknown ones)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    kinds: list[str] = []
    for item in (i.strip() for i in items if i.strip()):
        for kind in FEATURE_ALIASES.get(item, (item,)):
            if kind not in FEATURE_KINDS:
                raise ValueError(f"--features: unknown kind {kind!r}; allowed: {', '.join(FEATURE_KINDS)}, both")
            if kind not in kinds:
                kinds.append(kind)
    if not kinds:
        raise ValueError(f"--features: no feature kind given; allowed: {', '.join(FEATURE_KINDS)}, both")
    return tuple(kinds)


def eval_transform(image_size: int) -> Callable:
    """PIL image -> (3, S, S) tensor: resize the short side to S (bicubic), centre-crop S, ImageNet-normalise."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(int(image_size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(int(image_size)),
        transforms.ToTensor(),
        transforms.Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
    ])


def make_eval_dataset(dataset_str: str, image_size: int):
    """A `Synthetic:...` / `ImageFolder:root=...` / DINOv2 dataset whose items are (eval tensor, class label)."""
    from dinov2_eqcoh.data.datasets import make_dataset

    return make_dataset(dataset_str=dataset_str, transform=eval_transform(image_size), target_transform=None)


def default_device() -> torch.device:
    """The accelerator when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def progress(iterable: Iterable, total: int | None = None, desc: str = "") -> Iterator:
    """Iterate with a progress display on stderr: tqdm on a terminal, a logged counter (every ~10 %) otherwise."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)
        return
    start, step, next_log = time.time(), max(1, (total or 10) // 10), 0
    for i, item in enumerate(iterable):
        if i >= next_log:
            logger.info(f"{desc}: {i}/{total if total is not None else '?'} ({time.time() - start:.1f} s)")
            next_log += step
        yield item
    logger.info(f"{desc}: done ({time.time() - start:.1f} s)")


def backbone_features(backbone: nn.Module, images: torch.Tensor, kinds: Sequence[str]) -> dict[str, torch.Tensor]:
    """Features of one batch (no grad; the caller moves `images` to the backbone's device).

    Args:
        backbone: has `forward_features` as DinoVisionTransformer.
        images: (B, 3, S, S), normalised.
        kinds: FEATURE_KINDS entries.

    Returns:
        {kind: (B, D) float32} ((B, 2D) for concat).
    """
    with torch.no_grad():
        out = backbone.forward_features(images)
        cls = out["x_norm_clstoken"].float()  # (B, D)
        avg = out["x_norm_patchtokens"].float().mean(dim=1)  # (B, N, D) -> (B, D)
    table = {"cls": cls, "avgpool": avg}
    return {k: torch.cat([cls, avg], dim=1) if k == "concat" else table[k] for k in kinds}


def _batches(dataset, indices: Sequence[int], batch_size: int, num_workers: int):
    subset = torch.utils.data.Subset(dataset, list(indices))
    return torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def extract_features(
    backbone: nn.Module,
    dataset,
    indices: Sequence[int] | None = None,
    kinds: Sequence[str] = ("cls",),
    batch_size: int = 64,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    desc: str = "features",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Frozen features of dataset items (image, label), batched under no_grad on `device`.

    Returns:
        ({kind: (N, D) float32 on the CPU}, labels (N,) int64).
    """
    device = torch.device(device) if device is not None else default_device()
    backbone = backbone.to(device).eval()
    indices = range(len(dataset)) if indices is None else indices
    loader = _batches(dataset, indices, batch_size, num_workers)
    feats: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
    labels = []
    for images, targets in progress(loader, total=len(loader), desc=desc):
        for k, v in backbone_features(backbone, images.to(device, non_blocking=True), kinds).items():
            feats[k].append(v.cpu())
        labels.append(torch.as_tensor(targets).long())
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels)


# --------------------------------------------------------------------------------------------------------------
# command-line plumbing shared by the eval entry points
# --------------------------------------------------------------------------------------------------------------


def add_backbone_args(parser: argparse.ArgumentParser, image_size_help: str | None = None) -> None:
    """--weights (or DINOv2's --pretrained-weights, or --checkpoint as in export), --config-file, --allow-pickle,
    --image-size (`image_size_help`: where a CLI has its own default), --device, --batch-size, --num-workers, --seed,
    --output-dir, opts."""
    parser.add_argument("--weights", "--pretrained-weights", "--checkpoint", dest="weights", required=True,
                        help="model_*.rank_0.pth, eval/*/teacher_checkpoint.pth, an export or a released DINOv2 file, "
                             "an HF folder or .safetensors file, a timm checkpoint")
    parser.add_argument("--config-file", default=None,
                        help="the run's config.yaml or a YAML with student.* options (default: the run's config next "
                             "to the weights, else inferred from the weights)")
    parser.add_argument("--allow-pickle", action="store_true", help="allow full unpickling (trusted files only)")
    parser.add_argument("--image-size", type=int, default=None, help=image_size_help or
                        "eval crop size in px (default: the config's crops.global_crops_size; 224 without one)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per feature batch (default 64)")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading workers (default 0: in process)")
    parser.add_argument("--seed", type=int, default=0, help="probe seed: image subset, initialisation (default 0)")
    parser.add_argument("--output-dir", required=True, help="where the JSON and the picture are written")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. student.arch=vit_small")


def backbone_from_args(args: argparse.Namespace) -> tuple[nn.Module, int]:
    """Load the backbone the arguments name; returns (backbone, eval image size, a multiple of the patch size)."""
    backbone, cfg = load_backbone(args.weights, args.config_file, args.opts, allow_pickle=args.allow_pickle)
    has_config = args.config_file is not None or find_run_config(args.weights) is not None
    image_size = args.image_size or (int(cfg.crops.global_crops_size) if has_config else 224)
    check_image_size(image_size, backbone)
    return backbone, image_size


def check_image_size(image_size: int, backbone: nn.Module) -> None:
    """The eval crop must be a whole number of patches."""
    patch = int(getattr(backbone, "patch_size", 1))
    if image_size <= 0 or image_size % patch:
        raise ValueError(f"--image-size {image_size} must be a positive multiple of the patch size {patch}")


def setup_cli_logging(output_dir: str) -> None:
    """Log to stderr and to <output_dir>/log.txt."""
    os.makedirs(output_dir, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(os.path.join(output_dir, "log.txt"))):
        handler.setFormatter(fmt)
        root.addHandler(handler)
