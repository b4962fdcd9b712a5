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

import torch
from torch import nn

from dinov2_eqcoh.eval.features import default_device
from dinov2_eqcoh.eval.patch_maps import (  # noqa: F401 - shared pieces, importable from here too
    DEFAULT_SIZE,
    normalise,
    parse_spec,
    patch_size_of,
    patch_token_maps,
    to_normalised_tensor,
)

logger = logging.getLogger("dinov2.eqcoh")


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
