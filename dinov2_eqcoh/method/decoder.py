# SPDX-License-Identifier: Apache-2.0
"""Reconstruction decoders D_k: equivariant patch features of two views -> one intermediate image u_k.

"[...] K independent decoders D_k, each one linear layer followed by four convolutional layers" [0]. They are
deliberately weak, so that the transformation has to be encoded by the backbone, not worked out by the decoder.

- [0]: Wang et al., Self-Supervised Learning Based on Transformed Image Reconstruction for Equivariance-Coherent
  Feature Representation, AAAI-26, https://arxiv.org/abs/2503.18753

Torch only (no dinov2 import). Parameter names avoid the substrings DINOv2's optimiser set-up reads by name
(`last_layer`, `blocks`, `norm`, `gamma`, `patch_embed`), so the decoders get the plain lr and weight decay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

UPSAMPLING_STAGES = 4  # four (upsampling, conv) stages; the convolutions run at G/8, G/4, G/2 and G pixels


class ReconstructionDecoder(nn.Module):
    """One decoder D_k: per-token Linear(d_in -> C), token grid, 4 × (upsampling, conv3x3, GELU) -> RGB image.

    Channels go C -> C/2 -> C/4 -> C/8 -> 3; the last convolution has no activation (the targets are normalised
    pixels, unbounded). There is no normalisation layer at all (DINOv2's FSDP set-up refuses BatchNorm).

    Resolutions: the first upsampling takes the G/p token grid straight to G/8, then three ×2 upsamplings land
    exactly on the crop size G. For patch size 16 the first step is the paper's ×2 (G/16 -> G/8); for any other p
    the four convolutions still run at G/8, G/4, G/2 and G, so the decoder does the work of the paper's patch-16
    setting and needs no final resize (e.g. 224/14: 16 -> 28 -> 56 -> 112 -> 224). This departs from METHOD.md's
    project default "resize at the end when the patch size is not 16", which would decode 16·G/p px (256 for
    224/14) and resize. Only when G is not a multiple of 8 (e.g. DINOv2's 518 px crops) the grid goes to ⌈G/8⌉,
    the decoder ends at 8·⌈G/8⌉ and a final bilinear resize to G follows.

    Args:
        d_in: Channels per token of the input, 2·d_equi for [z_equi(v1); z_equi(v2)].
        dim: C, channels after the linear layer; at least 8 and divisible by 8.
        patch_size: Backbone patch size p.
        img_size: Crop side G of the images to reconstruct; divisible by p.
    """

    def __init__(self, d_in: int, dim: int, patch_size: int, img_size: int) -> None:
        super().__init__()
        if dim < 8 or dim % 8:
            raise ValueError(f"decoder dim C={dim} must be >= 8 and divisible by 8 (channels C, C/2, C/4, C/8)")
        if img_size % patch_size:
            raise ValueError(f"crop size {img_size} is not divisible by the patch size {patch_size}")
        self.grid_size = img_size // patch_size
        self.img_size = img_size
        first_size = -(-img_size // 2 ** (UPSAMPLING_STAGES - 1))  # ⌈G/8⌉: G/8 when G is a multiple of 8
        self.embed = nn.Linear(d_in, dim)
        widths = [dim, dim // 2, dim // 4, dim // 8, 3]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            upsample = (
                nn.Upsample(size=first_size, mode="bilinear", align_corners=False)  # G/p -> G/8
                if i == 0
                else nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            )
            layers += [upsample, nn.Conv2d(c_in, c_out, 3, 1, 1)]
            if i < UPSAMPLING_STAGES - 1:
                layers.append(nn.GELU())
        self.convs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode one image per sample.

        Args:
            z: (B, N, d_in) patch tokens in raster order, N = (G/p)².

        Returns:
            (B, 3, G, G) reconstruction in the normalised pixel space of the network input.
        """
        b, n, _ = z.shape
        h = self.grid_size
        if n != h * h:
            raise ValueError(f"expected {h * h} patch tokens ({h}x{h} grid), got {n}")
        x = self.embed(z)  # (B, N, C)
        x = x.transpose(1, 2).reshape(b, -1, h, h)  # (B, C, G/p, G/p)
        x = self.convs(x)  # (B, 3, G, G); (B, 3, 8·⌈G/8⌉, 8·⌈G/8⌉) when G is not a multiple of 8
        if x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return x  # (B, 3, G, G)


class EqCohDecoders(nn.Module):
    """The K independent decoders D_1..D_K, one per intermediate state θ_k = kθ/(K+1).

    All K run in one `forward` call, so that an FSDP wrapper around this container sees every use of its
    parameters (calling a wrapped sub-module directly would bypass FSDP's unsharding).

    Args:
        n_intermediate: K, number of decoders.
        d_in: Channels per token of the input (2·d_equi).
        dim: C, channels after each decoder's linear layer.
        patch_size: Backbone patch size p.
        img_size: Crop side G.
    """

    def __init__(self, n_intermediate: int, d_in: int, dim: int, patch_size: int, img_size: int) -> None:
        super().__init__()
        if n_intermediate < 1:
            raise ValueError(f"K (n_intermediate) = {n_intermediate} must be >= 1")
        self.decoders = nn.ModuleList(
            ReconstructionDecoder(d_in, dim, patch_size, img_size) for _ in range(n_intermediate)
        )

    def __len__(self) -> int:
        return len(self.decoders)

    def __getitem__(self, k: int) -> ReconstructionDecoder:
        return self.decoders[k]

    def __iter__(self):
        return iter(self.decoders)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Run every D_k on the same features.

        Args:
            z: (B, N, d_in) concatenated equivariant patch tokens [z_equi(v1); z_equi(v2)].

        Returns:
            (K, B, 3, G, G): D_k(z) for k = 1..K, to compare with the targets u_k.
        """
        return torch.stack([decoder(z) for decoder in self.decoders])
