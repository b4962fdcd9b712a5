# SPDX-License-Identifier: Apache-2.0
"""Dense and geometric probes of a frozen backbone: shared pieces and `dense_probes`, all three at once.

    homography    DeTone et al.'s S-COCO protocol: Mean Corner Error of a 3-layer conv head on the frozen patch-token
                  maps of a patch and its warped twin (`dinov2_eqcoh.eval.homography`)
    propagation   DAVIS-2017 semi-supervised label propagation as DINO's eval_video_segmentation.py, J and F as
                  davis2017-evaluation (`dinov2_eqcoh.eval.propagation`)
    segmentation  linear probe on frozen patch tokens, mIoU (`dinov2_eqcoh.eval.segmentation`)

`dense_probes(backbone, size=64, ...)` runs the three on the built-in data (`dinov2_eqcoh.data.synthetic_dense`)
and returns their headline numbers; the study and the demo call it once per model.
"""

from __future__ import annotations

import logging
import time
from typing import Mapping

import torch
from torch import nn

from dinov2_eqcoh.eval.features import default_device
from dinov2_eqcoh.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

logger = logging.getLogger("dinov2.eqcoh")

# The probe resolution of `dense_probes` (and the CLIs' default on the built-in data): the demo trains at 32 px
# crops with patch 8 (a 4x4 token grid); the frozen backbone runs at 64 px (8x8 tokens; DINOv2 interpolates the
# position embeddings), where objects are 2-4 tokens wide. At the demo's budget no resolution from 32 to 128 px
# separated trained from untrained backbones on these probes (README, "Dense probes").
DEFAULT_SIZE = 64


def patch_size_of(backbone: nn.Module) -> int:
    return int(getattr(backbone, "patch_size", 1))


def patch_token_maps(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The frozen, normalised last-layer patch tokens as a map (no grad).

    Args:
        backbone: DINOv2's `forward_features` interface (x_norm_patchtokens: (B, h·w, D), registers excluded).
        images: (B, 3, H, W) normalised, H and W multiples of the patch size.

    Returns:
        (B, D, h, w) float32, h = H / patch, w = W / patch.
    """
    p = patch_size_of(backbone)
    B, _, H, W = images.shape
    h, w = H // p, W // p
    with torch.no_grad():
        tokens = backbone.forward_features(images)["x_norm_patchtokens"].float()  # (B, h·w, D)
    if tokens.shape[1] != h * w:
        raise ValueError(f"backbone returned {tokens.shape[1]} patch tokens for a {H}x{W} input with patch {p}; "
                         f"expected {h}x{w} = {h * w}")
    return tokens.transpose(1, 2).reshape(B, tokens.shape[2], h, w)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def to_normalised_tensor(image) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) ImageNet-normalised float32 (no resize)."""
    from torchvision.transforms.functional import pil_to_tensor

    return normalise(pil_to_tensor(image.convert("RGB")).float().div(255.0)[None])[0]


def parse_spec(spec: str, builders: Mapping[str, Mapping[str, type]], option: str = "--dataset") -> tuple[str, dict]:
    """`Name:key=value:...` -> (name, typed kwargs), with errors that name the unknown name, key or bad value."""
    name, *tokens = spec.split(":")
    if name not in builders:
        raise ValueError(f"{option}: unknown dataset '{name}' in '{spec}'; allowed: {', '.join(builders)}")
    kwargs = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"{option}: '{token}' in '{spec}' is not key=value")
        if key not in builders[name]:
            raise ValueError(f"{option}: unknown key '{key}' for {name}; allowed: {', '.join(builders[name])}")
        try:
            kwargs[key] = builders[name][key](value)
        except ValueError:
            raise ValueError(f"{option}: {name} key '{key}={value}' is not a valid {builders[name][key].__name__}") from None
    return name, kwargs


def dense_probes(
    backbone: nn.Module,
    *,
    size: int = DEFAULT_SIZE,
    device: torch.device | str | None = None,
    seed: int = 0,
    scale: float = 1.0,
) -> dict:
    """The three dense probes of one frozen backbone on the built-in data (held-out scenes, data seed 1).

    scale=1 (the demo / study setting, about a minute per demo-sized backbone on one CPU core):
        homography 1200 train / 400 test pairs, propagation 8 videos x 12 frames, segmentation 600 / 200 images;
    other scales multiply the image and video counts (at least 1 video, 8 train and 4 test images per probe).

    Args:
        backbone: frozen encoder with DINOv2's `forward_features` (patch tokens); not modified.
        size: the probe resolution in px (patch and frame side; a multiple of the patch size).
        device: where features and probes run (default: cuda when available).
        seed: probe initialisation, pair sampling and train/test order.
        scale: multiplies the number of images and videos (> 0).

    Returns:
        {"homography": {"mce", "mce_zero"}, "propagation": {"jf_mean", "j_mean", "f_mean"},
         "segmentation": {"miou", "pixel_acc"}, "size", "seconds": {probe: s}, "settings": {...}}.
    """
    from dinov2_eqcoh.data.synthetic_dense import SyntheticSegmentation, SyntheticVideos
    from dinov2_eqcoh.eval.homography import evaluate_homography, synthetic_homography_images
    from dinov2_eqcoh.eval.propagation import evaluate_propagation
    from dinov2_eqcoh.eval.segmentation import evaluate_segmentation

    device = torch.device(device) if device is not None else default_device()
    if not scale > 0:
        raise ValueError(f"dense_probes: scale {scale} must be > 0")
    n = lambda base, least: max(least, round(base * scale))  # noqa: E731
    settings = {
        "homography": {"n_train": n(1200, 8), "n_test": n(400, 4)},
        "propagation": {"videos": n(8, 1), "frames": 12},
        "segmentation": {"n_train": n(600, 8), "n_test": n(200, 4)},
    }
    out: dict = {"size": size, "seconds": {}, "settings": settings, "scale": scale, "seed": seed}

    t0 = time.time()
    hs = settings["homography"]
    images = synthetic_homography_images(hs["n_train"] + hs["n_test"], size, seed=1)
    h = evaluate_homography(backbone, images, size=size, n_train=hs["n_train"], n_test=hs["n_test"], seed=seed,
                            device=device)
    out["homography"] = {"mce": h["mce"], "mce_zero": h["mce_zero"]}
    out["seconds"]["homography"] = time.time() - t0

    t0 = time.time()
    ps = settings["propagation"]
    videos = SyntheticVideos(n=ps["videos"], frames=ps["frames"], size=size, seed=1)
    p = evaluate_propagation(backbone, videos, size=size, device=device)
    out["propagation"] = {"jf_mean": p["jf_mean"], "j_mean": p["j_mean"], "f_mean": p["f_mean"]}
    out["seconds"]["propagation"] = time.time() - t0

    t0 = time.time()
    ss = settings["segmentation"]
    seg = SyntheticSegmentation(n=ss["n_train"] + ss["n_test"], size=size, seed=1, transform=to_normalised_tensor)
    s = evaluate_segmentation(backbone, seg, n_train=ss["n_train"], n_test=ss["n_test"], num_classes=seg.num_classes,
                              seed=seed, device=device)
    out["segmentation"] = {"miou": s["miou"], "pixel_acc": s["pixel_acc"]}
    out["seconds"]["segmentation"] = time.time() - t0
    logger.info(
        f"dense probes at {size} px: MCE {out['homography']['mce']:.2f} px (zero {out['homography']['mce_zero']:.2f}), "
        f"J&F {out['propagation']['jf_mean']:.3f}, mIoU {out['segmentation']['miou']:.3f} "
        f"({sum(out['seconds'].values()):.0f} s)"
    )
    return out


def headline(out: dict) -> dict:
    """The figures a report keeps from `dense_probes(...)`: MCE (and its zero-offset baseline), J&F (J, F), mIoU."""
    return {"mce": out["homography"]["mce"], "mce_zero": out["homography"]["mce_zero"],
            "jf_mean": out["propagation"]["jf_mean"], "j_mean": out["propagation"]["j_mean"],
            "f_mean": out["propagation"]["f_mean"], "miou": out["segmentation"]["miou"],
            "size": out["size"], "settings": out["settings"]}


def describe_settings(settings: dict) -> str:
    """`dense_probes(...)["settings"]` in words, for reports."""
    h, p, g = settings["homography"], settings["propagation"], settings["segmentation"]
    return (f"homography {h['n_train']} train / {h['n_test']} test pairs, propagation {p['videos']} videos × "
            f"{p['frames']} frames, segmentation {g['n_train']} / {g['n_test']} images")


def describe(record: dict) -> str:
    """What a `headline(...)` record measures, in words, for the demo and study reports."""
    return (f"the frozen backbone at {record['size']} px on held-out built-in data (data seed 1; "
            f"{describe_settings(record['settings'])}): homography Mean Corner Error of a 3-layer conv head (DeTone's "
            "protocol, ρ = a quarter of the side; lower is better; predicting zero offsets scores "
            f"{record['mce_zero']:.2f} px), J&F of DINO's label propagation on synthetic videos, mIoU of a linear probe "
            "on the per-pixel labels")


__all__ = ["DEFAULT_SIZE", "dense_probes", "headline", "describe", "describe_settings", "patch_token_maps",
           "normalise", "parse_spec", "patch_size_of"]
