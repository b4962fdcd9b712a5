# SPDX-License-Identifier: Apache-2.0
"""Diagnostics of the auxiliary task: is D_k's output u_k, or a θ-blind guess? (the mechanism criteria)

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
TOLERANCE = 1 / 6  # the mechanism criterion: "landing within 1/6 of k/(K+1)"


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
                max_blur_sigma: float | None = None, zoom: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """g_{fθ}(u) for f = 0, 1/steps, ..., 1.

    Args:
        u: (B, 3, G, G) normalised images; theta: (B, P).
        max_blur_sigma, zoom: as the run renders its views (`dinov2_eqcoh.method.augmentation.render_options`).

    Returns:
        (fractions (S,), states (B, S, 3, G, G)) with S = steps + 1.
    """
    fractions = torch.linspace(0, 1, steps + 1, device=u.device)
    thetas = theta.float()[:, None, :] * fractions[None, :, None]  # (B, S, P)
    return fractions, render(u.float(), transform, thetas, max_blur_sigma=max_blur_sigma, zoom=zoom)


def pooled_path(u: torch.Tensor, theta: torch.Tensor, transform: str, grid: int, steps: int = PATH_STEPS,
                max_blur_sigma: float | None = None, zoom: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`path_states` average-pooled to the token grid, rendered one state at a time (a training step holds B
    images more, not (steps + 1)·B). Returns (fractions (S,), pooled states (B, S, 3, grid, grid))."""
    fractions = torch.linspace(0, 1, steps + 1, device=u.device)
    pooled = torch.stack([
        F.adaptive_avg_pool2d(
            render(u.float(), transform, theta.float() * f, max_blur_sigma=max_blur_sigma, zoom=zoom), grid)
        for f in fractions.unbind()
    ], dim=1)
    return fractions, pooled


def _pool_states(states: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, S, 3, G, G) -> (B, S, 3, grid, grid)."""
    B, S = states.shape[:2]
    return F.adaptive_avg_pool2d(states.float().flatten(0, 1), grid).unflatten(0, (B, S))


def _nearest_fraction(pred: torch.Tensor, fractions: torch.Tensor, pooled_states: torch.Tensor, grid: int) -> torch.Tensor:
    """0-d tensor: the f whose pooled state is closest (batch MSE) to `pred` pooled; nothing is read back."""
    p = F.adaptive_avg_pool2d(pred.float(), grid)[:, None]  # (B, 1, 3, g, g)
    best = ((p - pooled_states) ** 2).mean(dim=(0, 2, 3, 4)).argmin()  # 0-d index on the device
    return fractions.gather(0, best.view(1))[0]  # (indexing with `best` itself would read it back)


def path_position(pred: torch.Tensor, fractions: torch.Tensor, states: torch.Tensor, grid: int) -> float:
    """The f whose state g_{fθ}(u) is closest (batch MSE) to `pred`, both average-pooled to the token grid.

    Compared at full resolution, a blurry output would be pulled along the path by its blur (MECHANISM_NOTES.md);
    at the grid, an output that equals u_k at the grid's resolution lands exactly at k/(K+1).

    Args:
        pred: (B, 3, G, G) a decoder's output; fractions (S,), states (B, S, 3, G, G) from `path_states`.
    """
    return float(_nearest_fraction(pred, fractions, _pool_states(states, grid), grid))


def figures(
    recon: torch.Tensor,
    recon_shuffled: torch.Tensor | None,
    targets: torch.Tensor,
    v2: torch.Tensor,
    fractions: torch.Tensor,
    pooled_states: torch.Tensor,
    grid: int,
) -> dict[str, torch.Tensor]:
    """Every diagnostic as a 0-d tensor on the batch's device (nothing is read back to the host).

    Args:
        recon, recon_shuffled, targets: (K, B, 3, G, G); v2: (B, 3, G, G); fractions (S,) and pooled_states
        (B, S, 3, grid, grid): the path (`pooled_path`).

    Returns:
        {"eqcoh_diag_k{k}_{mse,copy_v2,pooled_v2,grid_floor,shuffled_v1,path}", "eqcoh_diag_gap_k{k}"} with
        k = 1..K (gap: MSE(D_k, D_k+1), k < K).
    """
    recon, targets, v2 = recon.detach().float(), targets.float(), v2.float()
    K = recon.shape[0]
    pooled_v2 = pool_to_grid(v2, grid)
    out = {}
    for k in range(K):
        u_k = targets[k]
        out[f"eqcoh_diag_k{k + 1}_mse"] = F.mse_loss(recon[k], u_k)
        out[f"eqcoh_diag_k{k + 1}_copy_v2"] = F.mse_loss(v2, u_k)
        out[f"eqcoh_diag_k{k + 1}_pooled_v2"] = F.mse_loss(pooled_v2, u_k)
        out[f"eqcoh_diag_k{k + 1}_grid_floor"] = F.mse_loss(pool_to_grid(u_k, grid), u_k)
        if recon_shuffled is not None:
            out[f"eqcoh_diag_k{k + 1}_shuffled_v1"] = F.mse_loss(recon_shuffled[k].detach().float(), u_k)
        out[f"eqcoh_diag_k{k + 1}_path"] = _nearest_fraction(recon[k], fractions, pooled_states, grid)
    for k in range(K - 1):
        out[f"eqcoh_diag_gap_k{k + 1}"] = F.mse_loss(recon[k], recon[k + 1])
    return out


def n_decoders(record: dict[str, Any]) -> int:
    """K of a diagnostics dict (`figures`, or a training_metrics.json record)."""
    return max(int(k.split("_k")[1].split("_")[0]) for k in record if k.startswith("eqcoh_diag_k"))


def on_path(path: float, k: int, K: int) -> bool:
    """The mechanism criterion: D_k lands within 1/6 of k/(K+1)."""
    return abs(path - k / (K + 1)) <= TOLERANCE + 1e-9


def record_acts(record: dict[str, Any]) -> bool:
    """The mechanism criteria on a diagnostics dict of numbers: every D_k below copy v2 and pooled v2, within 1/6 of
    k/(K+1)."""
    K = n_decoders(record)
    return all(
        record[f"eqcoh_diag_k{k}_mse"] < min(record[f"eqcoh_diag_k{k}_copy_v2"], record[f"eqcoh_diag_k{k}_pooled_v2"])
        and on_path(record[f"eqcoh_diag_k{k}_path"], k, K)
        for k in range(1, K + 1)
    )


def summarize_outputs(
    pred: torch.Tensor,
    targets: torch.Tensor,
    v2: torch.Tensor,
    fractions: torch.Tensor,
    states: torch.Tensor,
    grid: int,
    pred_shuffled: torch.Tensor | None = None,
) -> dict[str, Any]:
    """`figures` as numbers, one row per decoder (the CLI's and the reports' form).

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
    f = figures(pred, pred_shuffled, targets, v2, fractions, _pool_states(states, grid), grid)
    d = dict(zip(f, torch.stack(list(f.values())).tolist()))
    K = n_decoders(d)
    rows = []
    for k in range(1, K + 1):
        row = {"k": k, **{name: d[f"eqcoh_diag_k{k}_{name}"] for name in ("mse", "copy_v2", "pooled_v2", "grid_floor")},
               "shuffled_v1": d.get(f"eqcoh_diag_k{k}_shuffled_v1"), "path_position": d[f"eqcoh_diag_k{k}_path"],
               "target_position": k / (K + 1)}
        row["below_copy_v2"] = row["mse"] < row["copy_v2"]
        row["below_pooled_v2"] = row["mse"] < row["pooled_v2"]
        row["on_path"] = on_path(row["path_position"], k, K)
        rows.append(row)
    gaps = [d[f"eqcoh_diag_gap_k{k}"] for k in range(1, K)]
    return {"K": K, "grid": grid, "per_k": rows, "decoder_gap": gaps, "acts": record_acts(d)}


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
    zoom: float = 1.0,
) -> dict[str, torch.Tensor]:
    """`figures` of a training batch: the path rendered from u and θ (`pooled_path`), nothing read back.

    Args:
        recon, recon_shuffled, targets: (K, B, 3, G, G); v2, u: (B, 3, G, G); theta: (B, P).
        max_blur_sigma, zoom: `dinov2_eqcoh.method.augmentation.render_options` of the run.
    """
    fractions, pooled = pooled_path(u, theta, transform, grid, steps, max_blur_sigma, zoom)
    return figures(recon, recon_shuffled, targets, v2, fractions, pooled, grid)
