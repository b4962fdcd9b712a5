# SPDX-License-Identifier: Apache-2.0
"""The eqcoh head: one linear layer on every backbone token, split along channels into [z_inv, z_equi]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EqCohHead(nn.Module):
    """The linear eqcoh head: every backbone token -> d_patch features, split along channels [z_inv, z_equi].

    "A linear head on top of the backbone gives d_patch features per token, split along channels into z_inv
    (d_inv) and z_equi (d_equi)" (METHOD.md, after [0]). The head sits outside the backbone, which stays a plain
    DINOv2 ViT that every DINOv2 consumer loads unchanged.

    Args:
        embed_dim: Backbone token width D.
        d_patch: Output width, d_inv + d_equi.
        d_equi: Width of z_equi (the last d_equi channels).
    """

    def __init__(self, embed_dim: int, d_patch: int, d_equi: int) -> None:
        super().__init__()
        if not 0 < d_equi < d_patch:
            raise ValueError(f"need 0 < d_equi < d_patch, got d_equi={d_equi}, d_patch={d_patch}")
        self.d_inv = d_patch - d_equi
        self.proj = nn.Linear(embed_dim, d_patch)  # named `proj` so its bias gets no weight decay in DINOv2's groups
        nn.init.trunc_normal_(self.proj.weight, std=0.02)  # as DINOHead initialises its linear layers
        nn.init.zeros_(self.proj.bias)

    def forward(
        self, x: torch.Tensor, with_z_equi: bool = True, x_equi: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Project and split.

        Args:
            x: (T, D) tokens.
            with_z_equi: False computes only the z_inv rows of the projection (weight[:d_inv], bias[:d_inv]), for
                callers that never read z_equi (the teacher). Keywords of `forward`, not separate methods, so that
                an FSDP wrapper around this module unshards the weight for them too.
            x_equi: (T', D) other tokens whose z_equi is wanted: then z_inv is computed for x only and z_equi for
                x_equi only (the z_equi rows of the weight), so that no row is projected that nobody reads.

        Returns:
            z_inv (T, d_inv) and z_equi (T, d_equi) (of x_equi: (T', d_equi)), or None without `with_z_equi`.
        """
        if x_equi is not None or not with_z_equi:
            z_inv = F.linear(x, self.proj.weight[: self.d_inv], self.proj.bias[: self.d_inv])  # (T, d_inv)
            if x_equi is None or not with_z_equi:
                return z_inv, None
            return z_inv, F.linear(x_equi, self.proj.weight[self.d_inv :], self.proj.bias[self.d_inv :])
        z = self.proj(x)  # (T, d_patch)
        return z[..., : self.d_inv], z[..., self.d_inv :]
