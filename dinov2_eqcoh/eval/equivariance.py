# SPDX-License-Identifier: Apache-2.0
"""The paper's synthetic equivariance tasks: how well θ can be read off the frozen features of I and g_θ(I).

    python -m dinov2_eqcoh.eval.equivariance --weights <ckpt> --output-dir <dir> \
        [--config-file <run>/config.yaml] [--dataset Synthetic:...|ImageFolder:root=...] \
        [--tasks rot,color,blur,trans,se2] [--features cls|avgpool|both] [--n-train 1000 --n-test 500 --epochs 100 --patience 10]

Protocol (METHOD.md, "How the paper measures equivariance"; the MLP as in SIE's scripts): for each image I
(resized and centre-cropped to the eval size, ImageNet-normalised) and each task, draw θ uniformly from the
paper's fixed ranges (Table 2; EVAL_RANGES, independent of the training config), render g_θ(I) with
`dinov2_eqcoh.method.transforms.render` (the same g as training), take the frozen features f(I), f(g_θ(I)) and fit an MLP
probe [f(I); f(g_θ(I))] (2d) -> 1024 -> 1024 -> θ (P), ReLU, MSE on standardised targets, Adam lr 1e-3, on
`n_train` images, early-stopped on a held-back tenth of them (the weights of the best validation epoch are kept). The score is R² = 1 - RSS/TSS on `n_test` held-out images, over all θ components at once with one
global mean (as SIE does), in standardised target units so that components in different units (degrees, crop
fractions) weigh alike. The summary is the mean R² over the paper's tasks among those run (rot, color, blur,
trans; over all tasks run when none of them is). Outputs equivariance.json and equivariance.png.

Tasks (θ as `dinov2_eqcoh.method.transforms`): rot [φ], φ ∈ [-45°, 45°]; color [b, c, s, h], b, c, s ∈ [-0.4, 0.4],
h ∈ [-0.1, 0.1]; blur [σ], σ ∈ [0.1, 2] px of the probed image (see BLUR_SIGMA_UNITS); trans [t_x, t_y] ∈ ±10 px
at 224 px (as fractions of the crop); se2 = rot + trans. The paper's mean is over rot, color, blur, trans.

Blur σ. The paper probes at 224 px with σ ∈ [0.1, 2] px. Scaled to a 32 px probe image that range would be
σ ≤ 0.29 px, which no encoder can resolve (R²(blur) ≈ 0 for every model, untrained included). By default
(`blur_sigma_units="probe_px"`) σ is therefore in pixels of the image the probe sees, whatever its size: at 224 px
that is exactly the paper's definition, at smaller sizes the blur is proportionally stronger and resolvable.
`blur_sigma_units="px_at_224"` keeps σ in pixels at 224 px, scaled with the eval size (the training convention of
`eqcoh.ranges.blur_sigma`).

Length: the task renderer, the θ probe with its early stopping, the feature extraction and the CLI are one
protocol (the paper's Table 4), kept together so that every setting of a reported R² is read in one place.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from typing import Mapping, Sequence

import torch
from torch import nn

from dinov2_eqcoh.eval.features import (
    add_backbone_args,
    backbone_features,
    backbone_from_args,
    check_image_size,
    default_device,
    draw,
    make_eval_dataset,
    parse_feature_kinds,
    progress,
    setup_cli_logging,
)
from dinov2_eqcoh.method.transforms import (
    BLUR_REFERENCE_SIZE,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    THETA_NAMES,
    corner_factor,
    render,
    sample_theta,
)

logger = logging.getLogger("dinov2.eqcoh")

# task name -> transform name in dinov2_eqcoh.method.transforms
TASKS = {"rot": "rotation", "color": "color", "blur": "blur", "trans": "translation", "se2": "se2"}
PAPER_TASKS = ("rot", "color", "blur", "trans")
# the paper's fixed evaluation ranges (Table 2), in `eqcoh.ranges` units
EVAL_RANGES = {
    "rotation": (-45.0, 45.0),
    "translation": (-10.0 / 224.0, 10.0 / 224.0),
    "brightness": (-0.4, 0.4),
    "contrast": (-0.4, 0.4),
    "saturation": (-0.4, 0.4),
    "hue": (-0.1, 0.1),
    "blur_sigma": (0.1, 2.0),
}
# how the blur task's σ range is read (module docstring): pixels of the probed image, or pixels at 224 px
BLUR_SIGMA_UNITS = ("probe_px", "px_at_224")


def render_theta(task: str, theta: torch.Tensor, image_size: int, blur_sigma_units: str = "probe_px") -> torch.Tensor:
    """θ as `transforms.render` reads it, from the θ the probe regresses: (N, P) -> (N, P).

    Only blur differs: render() takes σ in pixels at 224 px and scales it by S/224, so σ in pixels of an S px probe
    image is passed as σ·224/S.
    """
    if task == "blur" and blur_sigma_units == "probe_px":
        return theta * (BLUR_REFERENCE_SIZE / image_size)
    return theta


def fill_free_size(crop: int, ranges: Mapping = EVAL_RANGES) -> int:
    """The smallest canvas L (px) whose rendering g_θ covers the centred `crop` px square with image content for
    every θ in `ranges` (rotation about the centre, then a shift): no fill of uncovered corners reaches the crop.

    A centred square of side C rotated by φ needs C·(|cos φ| + |sin φ|) ≤ L; a shift by t (fraction of the crop
    C) adds 2·|t|·C on each axis, itself rotated: L = ceil(C·f·(1 + 2·t_max)) + 2 (interpolation border), with
    f = `corner_factor` of the φ range (√2 once it reaches 45°). `fill_free_zoom` is the same bound for training.
    """
    f = corner_factor(*ranges["rotation"])
    t = max(abs(v) for v in ranges["translation"])
    return math.ceil(crop * f * (1 + 2 * t)) + 2


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centred size x size square of (..., L, L) images."""
    top = (images.shape[-1] - size) // 2
    return images[..., top : top + size, top : top + size]


def blur_sigma_definition(units: str, image_size: int) -> str:
    """One sentence for reports: what σ of the blur task means at this probe size."""
    lo, hi = EVAL_RANGES["blur_sigma"]
    if units == "probe_px":
        return (f"σ ∈ [{lo:g}, {hi:g}] px of the {image_size} px probe image (the paper's range in pixels of the "
                "probed image; equal to the paper's definition at 224 px)")
    return (f"σ ∈ [{lo:g}, {hi:g}] px at 224 px, i.e. [{lo * image_size / 224:.3g}, {hi * image_size / 224:.3g}] px "
            f"of the {image_size} px probe image")


def parse_tasks(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`"rot,color"` or a list -> task names, with an error naming unknown ones."""
    tasks = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"--tasks: unknown or no task {unknown or spec!r}; allowed: {', '.join(TASKS)}")
    return tuple(dict.fromkeys(tasks))


class ThetaProbe(nn.Sequential):
    """The regression probe: [f(I); f(g_θ(I))] (B, 2d) -> 1024 -> 1024 -> θ (B, P), ReLU."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 1024):
        super().__init__(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
        )


def r2_score(pred: torch.Tensor, target: torch.Tensor) -> float:
    """R² = 1 - RSS/TSS over all entries of (N, P) tensors, TSS around one global mean of `target`."""
    rss = (pred - target).pow(2).sum()
    tss = (target - target.mean()).pow(2).sum()
    return float(1.0 - rss / tss.clamp(min=1e-12))


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(dim=0, keepdim=True), train.std(dim=0, keepdim=True).clamp(min=1e-6)
    return (train - mean) / std, (test - mean) / std


def fit_theta_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    device: torch.device | str | None = None,
    val_fraction: float = 0.1,
    patience: int | None = 10,
) -> dict:
    """Fit the MLP probe on (x_train, y_train) and score R² on the held-out (x_test, y_test).

    Inputs and targets are standardised with the training split's per-dimension mean and std. A seeded
    `val_fraction` of the training split is held back for early stopping: the probe keeps the weights of the epoch
    with the lowest validation MSE and stops after `patience` epochs without improvement (at most `epochs`;
    `patience=None`: no early stopping, all `epochs` run and the last weights are kept). The
    1024-wide probe otherwise fits noise when the pairs are few (R² < 0 on held-out images even for informative
    features). The test split is used once, at the end.

    Args:
        x_train, x_test: (N, 2d) pair features.
        y_train, y_test: (N, P) θ.

    Returns:
        {"r2": R² over all components (one global mean), "r2_per_dim": [R² of each component],
        "train_mse": training MSE at the kept epoch, "val_mse": its validation MSE (standardised units),
        "best_epoch": the kept epoch (1-based), "epochs_run": epochs trained}.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    device = torch.device(device) if device is not None else default_device()
    x_train, x_test = _standardise(x_train.float(), x_test.float())
    y_train, y_test = _standardise(y_train.float(), y_test.float())
    gen = torch.Generator().manual_seed(seed)
    n_val = max(1, int(round(val_fraction * x_train.shape[0])))
    perm = torch.randperm(x_train.shape[0], generator=gen)
    x_val, y_val = x_train[perm[:n_val]].to(device), y_train[perm[:n_val]].to(device)
    x_fit, y_fit = x_train[perm[n_val:]].to(device), y_train[perm[n_val:]].to(device)
    torch.manual_seed(seed)
    probe = ThetaProbe(x_train.shape[1], y_train.shape[1]).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    n = x_fit.shape[0]
    best = {"val_mse": float("inf"), "train_mse": float("nan"), "best_epoch": 0, "state": None}
    epoch = 0
    for epoch in range(1, epochs + 1):
        total = torch.zeros((), device=device)  # summed on the device: no host sync per batch
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            idx = idx.to(device)
            loss = nn.functional.mse_loss(probe(x_fit[idx]), y_fit[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * idx.numel()
        with torch.no_grad():
            val_mse = nn.functional.mse_loss(probe(x_val), y_val).item()
        if val_mse < best["val_mse"] or patience is None:
            state = {k: v.detach().clone() for k, v in probe.state_dict().items()}
            best = {"val_mse": val_mse, "train_mse": total.item() / n, "best_epoch": epoch, "state": state}
        elif epoch - best["best_epoch"] >= patience:
            break
    probe.load_state_dict(best["state"])
    with torch.no_grad():
        pred = probe(x_test.to(device)).cpu()
    per_dim = [r2_score(pred[:, j], y_test[:, j]) for j in range(y_test.shape[1])]
    return {"r2": r2_score(pred, y_test), "r2_per_dim": per_dim, "train_mse": best["train_mse"],
            "val_mse": best["val_mse"], "best_epoch": best["best_epoch"], "epochs_run": epoch}


def equivariance_features(
    backbone: nn.Module,
    dataset,
    indices: Sequence[int],
    thetas: Mapping[str, torch.Tensor],
    kinds: Sequence[str],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    crop: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Frozen features of I and of g_θ(I) for every task, batched under no_grad.

    Args:
        dataset: items (image (3, S, S) normalised, label).
        indices: the dataset items to use, N of them.
        thetas: {task: (N, P) θ} as `render` reads them on the dataset's S px images, row n for image indices[n].
        crop: fill-free rendering: g_θ is rendered on the whole S px image and the backbone sees the centred
            crop x crop square of I and of g_θ(I) (S ≥ `fill_free_size(crop)`: no fill inside it).

    Returns:
        ({kind: (N, D) features of I}, {task: {kind: (N, D) features of g_θ(I)}}), float32 on the CPU.
    """
    device = torch.device(device) if device is not None else default_device()
    backbone = backbone.to(device).eval()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    base: dict[str, list] = {k: [] for k in kinds}
    moved: dict[str, dict[str, list]] = {t: {k: [] for k in kinds} for t in thetas}
    start = 0
    for images, _ in progress(loader, total=len(loader), desc=f"equivariance features ({len(indices)} images)"):
        images = images.to(device, non_blocking=True)  # (B, 3, S, S)
        stop = start + images.shape[0]
        seen = (lambda x: x) if crop is None else (lambda x: center_crop(x, crop))  # (B, 3, crop, crop)
        for k, v in backbone_features(backbone, seen(images), kinds).items():
            base[k].append(v.cpu())
        for task, theta in thetas.items():
            with torch.no_grad():
                g_images = render(images, TASKS[task], theta[start:stop].to(device), mean, std)  # (B, 3, S, S)
            for k, v in backbone_features(backbone, seen(g_images), kinds).items():
                moved[task][k].append(v.cpu())
        start = stop
    return (
        {k: torch.cat(v) for k, v in base.items()},
        {t: {k: torch.cat(v) for k, v in per.items()} for t, per in moved.items()},
    )


def evaluate_equivariance(
    backbone: nn.Module,
    dataset,
    tasks: Sequence[str] = PAPER_TASKS,
    features: str | Sequence[str] = ("cls", "avgpool"),
    n_train: int = 1000,
    n_test: int = 500,
    epochs: int = 100,
    patience: int = 10,
    batch_size: int = 64,
    probe_batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    ranges: Mapping = EVAL_RANGES,
    blur_sigma_units: str = "probe_px",
    crop: int | None = None,
) -> dict:
    """R² of the θ-regression probe per task and feature kind (see the module docstring).

    Args:
        backbone: frozen encoder with DINOv2's `forward_features`.
        dataset: items (image (3, S, S) ImageNet-normalised, label); `make_eval_dataset` builds one.
        tasks: names from TASKS.
        features: kinds from FEATURE_KINDS (or "both").
        n_train, n_test: images for fitting the probe and for scoring it (a seeded random subset of the dataset;
            a dataset with fewer images is split 2/3 fit, 1/3 score instead, with a warning).
        epochs, patience, probe_batch_size, lr: probe training (at most `epochs`; early stopping, see
            `fit_theta_probe`).
        batch_size, num_workers: feature extraction.
        seed: image subset, θ draws and probe initialisation.
        ranges: θ ranges (default: the paper's EVAL_RANGES).
        blur_sigma_units: "probe_px" (σ in pixels of the probed image; default) or "px_at_224" (module docstring).
        crop: fill-free rendering (module docstring): the dataset's images are a larger canvas L ≥
            `fill_free_size(crop)`, g_θ is rendered on it and the backbone sees the centred crop px of I and g_θ(I),
            so no fill of uncovered corners is seen. θ keeps its meaning (a shift is a fraction of the crop, σ in
            pixels of the probed crop). None: the backbone sees the whole rendered image (corners filled).

    Returns:
        {"r2": {kind: {task: R², ..., "mean": mean over the paper's tasks among `tasks`}}, "mean_tasks": [...],
        "r2_per_dim": {kind: {task: [...]}},
        "tasks": {task: {"transform", "theta"}}, and the settings used}.
    """
    tasks = parse_tasks(tasks)
    kinds = parse_feature_kinds(features)
    if blur_sigma_units not in BLUR_SIGMA_UNITS:
        raise ValueError(f"blur_sigma_units={blur_sigma_units!r}: allowed {', '.join(BLUR_SIGMA_UNITS)}")
    if n_train < 2 or n_test < 2:
        raise ValueError(f"n_train and n_test must be >= 2, got n_train={n_train}, n_test={n_test}")
    if n_train + n_test > len(dataset):  # a small folder: size the splits to it
        if len(dataset) < 4:
            raise ValueError(f"the dataset has {len(dataset)} images; the R² probe needs at least 4 (2 fit, 2 score)")
        requested = (n_train, n_test)
        n_train = 2 * len(dataset) // 3
        n_test = len(dataset) - n_train
        logger.warning(f"n_train + n_test = {sum(requested)} ({requested[0]} + {requested[1]}) exceeds the "
                       f"{len(dataset)} images of the dataset: fitting the R² probe on {n_train} images (2/3) and "
                       f"scoring it on the other {n_test} (1/3)")
    image = dataset[0][0]
    canvas = int(image.shape[-1])
    if crop is not None and canvas < fill_free_size(crop, ranges):
        raise ValueError(f"fill-free probing at {crop} px needs images of at least {fill_free_size(crop, ranges)} px "
                         f"for these ranges, the dataset's are {canvas} px")
    image_size = canvas if crop is None else int(crop)  # what the backbone sees
    check_image_size(image_size, backbone)
    device = torch.device(device) if device is not None else default_device()

    gen = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=gen)[: n_train + n_test].tolist()
    thetas = {
        t: torch.stack([sample_theta(TASKS[t], ranges, gen) for _ in indices]) for t in tasks
    }  # {task: (N, P)}; the probe regresses these
    render_thetas = {t: render_theta(t, theta, image_size, blur_sigma_units) for t, theta in thetas.items()}
    if crop is not None:  # θ as render reads it on the canvas: shifts are fractions of the canvas, σ scales with it
        render_thetas = {t: _to_canvas(t, theta, crop, canvas) for t, theta in render_thetas.items()}
    base, moved = equivariance_features(backbone, dataset, indices, render_thetas, kinds, batch_size, device,
                                        num_workers, crop=crop)

    # the paper's mean is over rot, color, blur, trans; se2 (or any other extra task) is reported, not averaged
    mean_tasks = [t for t in tasks if t in PAPER_TASKS] or list(tasks)
    r2: dict[str, dict[str, float]] = {}
    best_epochs: dict[str, dict[str, int]] = {}
    per_dim: dict[str, dict[str, list]] = {}
    for kind in kinds:
        r2[kind], per_dim[kind] = {}, {}
        for task in tasks:
            pairs = torch.cat([base[kind], moved[task][kind]], dim=1)  # (N, 2d)
            fit = fit_theta_probe(
                pairs[:n_train], thetas[task][:n_train], pairs[n_train:], thetas[task][n_train:],
                epochs=epochs, batch_size=probe_batch_size, lr=lr, seed=seed, device=device, patience=patience,
            )
            best_epochs.setdefault(kind, {})[task] = fit["best_epoch"]
            r2[kind][task], per_dim[kind][task] = fit["r2"], fit["r2_per_dim"]
            logger.info(f"equivariance {kind:8s} R²({task}) = {fit['r2']:.4f} (train MSE {fit['train_mse']:.4f}, "
                        f"val MSE {fit['val_mse']:.4f}, epoch {fit['best_epoch']} of {fit['epochs_run']})")
        r2[kind]["mean"] = sum(r2[kind][t] for t in mean_tasks) / len(mean_tasks)
        logger.info(f"equivariance {kind:8s} mean R² over {','.join(mean_tasks)} = {r2[kind]['mean']:.4f}")
    return {
        "r2": r2,
        "r2_per_dim": per_dim,
        "mean_tasks": mean_tasks,
        "tasks": {t: {"transform": TASKS[t], "theta": list(THETA_NAMES[TASKS[t]])} for t in tasks},
        "ranges": {k: list(v) for k, v in ranges.items()},
        "features": list(kinds),
        "n_train": n_train,
        "n_test": n_test,
        "epochs": epochs,
        "patience": patience,
        "best_epochs": best_epochs,
        "image_size": image_size,
        "blur_sigma_units": blur_sigma_units,
        "blur_sigma_definition": blur_sigma_definition(blur_sigma_units, image_size),
        "rendering": (f"fill-free: rendered on {canvas} px, the centred {crop} px seen" if crop is not None
                      else "corners uncovered by a rotation or shift filled with zeros (mean grey)"),
        "seed": seed,
    }


def _to_canvas(task: str, theta: torch.Tensor, crop: int, canvas: int) -> torch.Tensor:
    """θ for `render` on a canvas px image such that the centred crop px show g_θ of the crop. `render` reads
    shifts as fractions of the image and σ in pixels at 224 px scaled by image/224: both are given for a crop px
    image, so both scale by crop/canvas (the same pixels); angles and colour do not change."""
    theta = theta.clone()
    for i, name in enumerate(THETA_NAMES[TASKS[task]]):
        if name in ("t_x", "t_y", "sigma_px_at_224"):
            theta[:, i] *= crop / canvas
    return theta


def plot_equivariance(results: Mapping, path: str, title: str = "") -> None:
    """Bar chart of R² per task (and the mean), one bar per feature kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(results["r2"])
    labels = list(results["r2"][kinds[0]])
    width = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(labels), 3.2))
    for i, kind in enumerate(kinds):
        xs = [j + (i - (len(kinds) - 1) / 2) * width for j in range(len(labels))]
        values = [results["r2"][kind][t] for t in labels]
        bars = ax.bar(xs, values, width, label=kind)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(labels)), [f"R²({t})" if t != "mean" else "mean" for t in labels])
    ax.set_ylim(min(0.0, min(min(results["r2"][k].values()) for k in kinds)) - 0.12, 1.08)
    ax.axhline(0.0, color="k", linewidth=0.6)
    ax.set_ylabel("R² (held-out)")
    ax.set_title(title or f"equivariance probes ({results['n_train']} train / {results['n_test']} test images)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("dinov2_eqcoh.eval.equivariance", description=__doc__.split("\n\n")[0])
    add_backbone_args(parser)
    parser.add_argument("--dataset", default=None,
                        help="Synthetic:n=..:size=..:classes=..:seed=.., ImageFolder:root=.. or DINOv2's "
                             "ImageNet:split=VAL:root=..:extra=.. (default: Synthetic, seed 1, n_train + n_test images "
                             "at the eval size)")
    parser.add_argument("--tasks", default=",".join(PAPER_TASKS), help=f"comma list of {', '.join(TASKS)}")
    parser.add_argument("--features", default="both", help="cls, avgpool, concat or both (= cls,avgpool); comma list")
    parser.add_argument("--n-train", type=int, default=1000, help="images the probe is fitted on (default 1000)")
    parser.add_argument("--n-test", type=int, default=500, help="held-out images it is scored on (default 500)")
    parser.add_argument("--epochs", type=int, default=100, help="at most this many probe epochs (default 100)")
    parser.add_argument("--patience", type=int, default=10, help="early stopping: epochs without a better validation MSE")
    parser.add_argument("--blur-sigma-units", default="probe_px", choices=BLUR_SIGMA_UNITS,
                        help="blur task: σ ∈ [0.1, 2] px of the probed image (probe_px, default; the paper's "
                             "definition at 224 px) or px at 224 px scaled to the eval size (px_at_224)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_cli_logging(args.output_dir)
    backbone, image_size = backbone_from_args(args)
    dataset_str = args.dataset or f"Synthetic:n={args.n_train + args.n_test}:size={image_size}:classes=10:seed=1"
    dataset = make_eval_dataset(dataset_str, image_size)
    results = evaluate_equivariance(
        backbone, dataset, tasks=parse_tasks(args.tasks), features=args.features, n_train=args.n_train,
        n_test=args.n_test, epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, seed=args.seed, device=args.device,
        num_workers=args.num_workers, blur_sigma_units=args.blur_sigma_units,
    )
    results.update({"weights": os.path.abspath(args.weights), "dataset": dataset_str})
    with open(os.path.join(args.output_dir, "equivariance.json"), "w") as f:
        json.dump(results, f, indent=2)
    draw(plot_equivariance, os.path.join(args.output_dir, "equivariance.png"), results)
    summary = ", ".join(f"{k}: " + " ".join(f"{t}={v:.3f}" for t, v in r.items()) for k, r in results["r2"].items())
    print(f"equivariance R² ({args.output_dir}/equivariance.json): {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
