# SPDX-License-Identifier: Apache-2.0
"""What the three dense probes share: the probe resolution, frozen patch-token maps, normalisation, dataset specs.

Imported by `homography`, `propagation`, `segmentation` and `dense` (which runs all three); it imports none of them.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from dinov2_eqcoh.method.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

# The probe resolution of `dense_probes` (and the CLIs' default on the built-in data): the demo trains at 32 px
# crops with patch 8 (a 4x4 token grid); the frozen backbone runs at 64 px (8x8 tokens; DINOv2 interpolates the
# position embeddings), where objects are 2-4 tokens wide. At the demo's budget no resolution from 32 to 128 px
# separated trained from untrained backbones on these probes (docs/dense_probes.md).
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
