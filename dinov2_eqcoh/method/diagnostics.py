# SPDX-License-Identifier: Apache-2.0
"""Diagnostics of the auxiliary task: is D_k's output u_k, or a θ-blind guess? (issue 29, MECHANISM_NOTES.md)

Pure tensor functions, used by the CLI `python -m dinov2_eqcoh.eval.reconstruction` (any run folder) and by
`EqCohSSLMetaArch` during training (`step_diagnostics`, every `eqcoh.diagnostics_every` iterations, logged with
the losses by patches/0010). All MSEs are in the crops' normalised pixel space.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dinov2_eqcoh.method.transforms import render

PATH_STEPS = 12  # f in {0, 1/12, ..., 1}: holds 1/3, 2/3 (K = 2), 1/2 (K = 1), 1/4 ... (K = 3)
TOLERANCE = 1 / 6  # issue 29: "landing within 1/6 of k/(K+1)"


def pool_to_grid(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Average-pool images to a grid x grid map and upsample bilinearly back: what survives at the token grid.

    Args:
        x: (..., C, H, W).
        grid: the token grid side (H / patch size).

    Returns:
        (..., C, H, W), float32.
    """
    lead, (C, H, W) = x.shape[:-3], x.shape[-3:]
    flat = x.reshape(-1, C, H, W).float()
    pooled = F.adaptive_avg_pool2d(flat, grid)
    return F.interpolate(pooled, size=(H, W), mode="bilinear", align_corners=False).reshape(*lead, C, H, W)


def path_states(u: torch.Tensor, theta: torch.Tensor, transform: str, steps: int = PATH_STEPS,
                max_blur_sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """g_{fθ}(u) for f = 0, 1/steps, ..., 1.

    Args:
        u: (B, 3, G, G) normalised images; theta: (B, P).

    Returns:
        (fractions (S,), states (B, S, 3, G, G)) with S = steps + 1.
    """
    fractions = torch.linspace(0, 1, steps + 1)
    thetas = theta.float()[:, None, :] * fractions.to(theta.device)[None, :, None]  # (B, S, P)
    return fractions, render(u.float(), transform, thetas, max_blur_sigma=max_blur_sigma)


def path_position(pred: torch.Tensor, fractions: torch.Tensor, states: torch.Tensor, grid: int) -> float:
    """The f whose state g_{fθ}(u) is closest (batch MSE) to `pred`, both average-pooled to the token grid.

    Compared at full resolution, a blurry output would be pulled along the path by its blur (MECHANISM_NOTES.md);
    at the grid, an output that equals u_k at the grid's resolution lands exactly at k/(K+1).

    Args:
        pred: (B, 3, G, G) a decoder's output; fractions (S,), states (B, S, 3, G, G) from `path_states`.
    """
    B, S = states.shape[:2]
    p = F.adaptive_avg_pool2d(pred.float(), grid)[:, None]  # (B, 1, 3, g, g)
    s = F.adaptive_avg_pool2d(states.float().flatten(0, 1), grid).unflatten(0, (B, S))  # (B, S, 3, g, g)
    mse = ((p - s) ** 2).mean(dim=(0, 2, 3, 4))  # (S,)
    return float(fractions[int(mse.argmin())])


def summarize_outputs(
    pred: torch.Tensor,
    targets: torch.Tensor,
    v2: torch.Tensor,
    fractions: torch.Tensor,
    states: torch.Tensor,
    grid: int,
    pred_shuffled: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The per-k diagnostics of decoder outputs against their targets and the θ-blind predictors.

    Args:
        pred: (K, B, 3, G, G) D_k([z_equi(v1); z_equi(v2)]).
        targets: (K, B, 3, G, G) u_k.
        v2: (B, 3, G, G) g_θ(u).
        fractions, states: `path_states(u, θ)`.
        grid: token grid side.
        pred_shuffled: (K, B, 3, G, G) the decoders with z_equi(v1) permuted across the batch, or None.

    Returns:
        {"K", "grid", "per_k": [{k, mse, copy_v2, pooled_v2, grid_floor, shuffled_v1, path_position,
        target_position, below_copy_v2, below_pooled_v2, on_path}], "decoder_gap": [MSE(D_k, D_k+1)], "acts"}.
    """
    K = pred.shape[0]
    pred, targets, v2 = pred.float(), targets.float(), v2.float()
    pooled_v2 = pool_to_grid(v2, grid)
    rows = []
    for k in range(K):
        u_k = targets[k]
        row = {
            "k": k + 1,
            "mse": F.mse_loss(pred[k], u_k).item(),
            "copy_v2": F.mse_loss(v2, u_k).item(),
            "pooled_v2": F.mse_loss(pooled_v2, u_k).item(),
            "grid_floor": F.mse_loss(pool_to_grid(u_k, grid), u_k).item(),
            "shuffled_v1": F.mse_loss(pred_shuffled[k].float(), u_k).item() if pred_shuffled is not None else None,
            "path_position": path_position(pred[k], fractions, states, grid),
            "target_position": (k + 1) / (K + 1),
        }
        row["below_copy_v2"] = row["mse"] < row["copy_v2"]
        row["below_pooled_v2"] = row["mse"] < row["pooled_v2"]
        row["on_path"] = abs(row["path_position"] - row["target_position"]) <= TOLERANCE + 1e-9
        rows.append(row)
    gaps = [F.mse_loss(pred[k], pred[k + 1]).item() for k in range(K - 1)]
    acts = all(r["below_copy_v2"] and r["below_pooled_v2"] and r["on_path"] for r in rows)
    return {"K": K, "grid": grid, "per_k": rows, "decoder_gap": gaps, "acts": acts}


@torch.no_grad()
def step_diagnostics(
    recon: torch.Tensor,
    recon_shuffled: torch.Tensor | None,
    targets: torch.Tensor,
    v2: torch.Tensor,
    u: torch.Tensor,
    theta: torch.Tensor,
    transform: str,
    grid: int,
    steps: int = PATH_STEPS,
    max_blur_sigma: float | None = None,
) -> dict[str, torch.Tensor]:
    """`summarize_outputs`'s figures as 0-d tensors on the batch's device (nothing is read back to the host).

    Args:
        recon, recon_shuffled, targets: (K, B, 3, G, G); v2, u: (B, 3, G, G); theta: (B, P).

    Returns:
        {"eqcoh_diag_k{k}_{mse,copy_v2,pooled_v2,grid_floor,shuffled_v1,path}", "eqcoh_diag_gap_k{k}"} with
        k = 1..K (gap: MSE(D_k, D_k+1), k < K).
    """
    recon, targets, v2 = recon.detach().float(), targets.float(), v2.float()
    K = recon.shape[0]
    pooled_v2 = pool_to_grid(v2, grid)
    fractions = torch.linspace(0, 1, steps + 1, device=u.device)
    # one state at a time, pooled at once: the diagnosed step holds B images more, not (steps + 1)·B
    s = torch.stack([
        F.adaptive_avg_pool2d(render(u.float(), transform, theta.float() * f, max_blur_sigma=max_blur_sigma), grid)
        for f in fractions.unbind()
    ], dim=1)  # (B, S, 3, g, g)
    out = {}
    for k in range(K):
        u_k = targets[k]
        out[f"eqcoh_diag_k{k + 1}_mse"] = F.mse_loss(recon[k], u_k)
        out[f"eqcoh_diag_k{k + 1}_copy_v2"] = F.mse_loss(v2, u_k)
        out[f"eqcoh_diag_k{k + 1}_pooled_v2"] = F.mse_loss(pooled_v2, u_k)
        out[f"eqcoh_diag_k{k + 1}_grid_floor"] = F.mse_loss(pool_to_grid(u_k, grid), u_k)
        if recon_shuffled is not None:
            out[f"eqcoh_diag_k{k + 1}_shuffled_v1"] = F.mse_loss(recon_shuffled[k].float(), u_k)
        p = F.adaptive_avg_pool2d(recon[k], grid)[:, None]
        best = ((p - s) ** 2).mean(dim=(0, 2, 3, 4)).argmin()  # 0-d index on the device
        out[f"eqcoh_diag_k{k + 1}_path"] = fractions.gather(0, best.view(1))[0]  # (indexing with it reads it back)
    for k in range(K - 1):
        out[f"eqcoh_diag_gap_k{k + 1}"] = F.mse_loss(recon[k], recon[k + 1])
    return out
