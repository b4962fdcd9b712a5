# SPDX-License-Identifier: Apache-2.0
"""Homography estimation from frozen patch tokens: DeTone et al. (2016)'s synthetic protocol (the paper's S-COCO).

    python -m dinov2_eqcoh.eval.homography --weights <ckpt> --output-dir <dir> \
        [--dataset Synthetic:... | ImageFolder:root=/data/coco/val2014] [--image-size 64] [--n-train 1200 --n-test 400] \
        [--rho <px>] [--epochs 40 --patience 5]

Protocol (DeTone, Malisiewicz, Rabinovich, "Deep Image Homography Estimation", 2016, §4): every image is resized to
2.5 S x 1.875 S (their 320 x 240 for a patch side S = 128); a square patch A of side S is cut at a random position
p that keeps a margin ρ (default S / 4: their 32 px of 128) to the border; its four corners are displaced by
independent offsets uniform in [-ρ, ρ]²; the homography H_AB that maps the corners to the displaced ones defines the
warped patch B(x) = I(H_AB x) (their: H_BA = H_AB⁻¹ applied to the image, then the same crop), so B shows the
displaced quadrilateral of the image. The frozen backbone's patch-token maps of A and B (D x S/p x S/p each,
ImageNet-normalised RGB inputs) are concatenated and a three-layer convolutional head (1x1 conv 2D -> 64, ReLU,
3x3 conv 64 -> 64, ReLU, a conv over the whole grid 64 -> 8) regresses the 8 corner offsets (in units of ρ, MSE,
Adam lr 1e-3, early-stopped on a held-back tenth of the training pairs). Score: the Mean Corner Error (MCE), the
mean Euclidean distance in pixels (at side S) between predicted and true corners on held-out images (lower is
better), next to the MCE of predicting zero offsets (mce_zero, about 0.77 ρ). The paper leaves the head open
(PAPER_NOTES.md); DeTone regress from the two grey patches with a VGG-like network. Writes homography.json and
homography.png (true quadrilateral green, predicted red).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dinov2_eqcoh.eval.features import (
    add_backbone_args,
    backbone_from_args,
    check_image_size,
    default_device,
    draw,
    progress,
    setup_cli_logging,
)
from dinov2_eqcoh.eval.patch_maps import DEFAULT_SIZE, normalise, patch_token_maps

logger = logging.getLogger("dinov2.eqcoh")

WIDTH_RATIO, HEIGHT_RATIO = 2.5, 1.875  # DeTone: 320 x 240 images for 128 px patches


def image_shape(size: int) -> tuple[int, int]:
    """(H, W) every source image is resized to for patch side `size`."""
    return int(round(HEIGHT_RATIO * size)), int(round(WIDTH_RATIO * size))


def homography_from_corners(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The homographies that map 4 points to 4 points (DLT with h33 = 1), float64.

    Args:
        src, dst: (N, 4, 2) points (x, y).

    Returns:
        (N, 3, 3) H with dst ~ H [src; 1].
    """
    src, dst = src.double(), dst.double()
    x, y, u, v = src[..., 0], src[..., 1], dst[..., 0], dst[..., 1]  # (N, 4)
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -x * u, -y * u], dim=-1)  # (N, 4, 8)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -x * v, -y * v], dim=-1)
    A = torch.cat([rows_u, rows_v], dim=1)  # (N, 8, 8)
    b = torch.cat([u, v], dim=1)  # (N, 8)
    h = torch.linalg.solve(A, b)
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1).reshape(-1, 3, 3)


def square_corners(size: int) -> torch.Tensor:
    """(4, 2) corners of the S x S patch in its continuous pixel coordinates: TL, TR, BR, BL."""
    s = float(size)
    return torch.tensor([[0.0, 0.0], [s, 0.0], [s, s], [0.0, s]])


def make_pairs(images: torch.Tensor, size: int, rho: float, generator: torch.Generator,
               translation_only: bool = False) -> dict[str, torch.Tensor]:
    """DeTone pairs from a batch of source images.

    Args:
        images: (N, 3, H, W) in [0, 1], H, W >= size + 2 ρ (from `image_shape`).
        size: patch side S.
        rho: maximal corner displacement in px.
        translation_only: one offset for all four corners (a pure translation; for tests).

    Returns:
        {"a": (N, 3, S, S), "b": (N, 3, S, S) in [0, 1], "offsets": (N, 4, 2) px, "position": (N, 2) (x, y) of A}.
    """
    N, _, H, W = images.shape
    margin = int(math.ceil(rho))
    if W < size + 2 * margin or H < size + 2 * margin:
        raise ValueError(f"homography: source images of {W}x{H} px are too small for {size} px patches with ρ = {rho}")
    px = torch.randint(margin, W - size - margin + 1, (N,), generator=generator)
    py = torch.randint(margin, H - size - margin + 1, (N,), generator=generator)
    if translation_only:
        offsets = (torch.rand(N, 1, 2, generator=generator) * 2 - 1).expand(N, 4, 2) * rho
    else:
        offsets = (torch.rand(N, 4, 2, generator=generator) * 2 - 1) * rho
    corners = square_corners(size)
    position = torch.stack([px, py], dim=1).float()  # (N, 2)
    Hm = homography_from_corners(corners.expand(N, 4, 2), corners + position[:, None] + offsets)  # local -> image
    # B(u, v) = I(H_AB (u + 0.5, v + 0.5)): sample the source at the mapped pixel centres
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float64) + 0.5, torch.arange(size, dtype=torch.float64) + 0.5,
                          indexing="ij")
    pts = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(1, -1, 3)  # (1, S², 3)
    mapped = pts @ Hm.transpose(1, 2)  # (N, S², 3)
    xy = mapped[..., :2] / mapped[..., 2:]
    grid = torch.stack([2 * xy[..., 0] / W - 1, 2 * xy[..., 1] / H - 1], dim=-1).reshape(N, size, size, 2)
    b = F.grid_sample(images.float(), grid.float(), mode="bilinear", padding_mode="border", align_corners=False)
    idx = torch.arange(size)
    rows = (py[:, None] + idx[None]).long()  # (N, S)
    cols = (px[:, None] + idx[None]).long()
    a = images[torch.arange(N)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return {"a": a.float(), "b": b, "offsets": offsets.float(), "position": position}


class HomographyHead(nn.Module):
    """Three conv layers: [tokens(A); tokens(B)] (B, 2D, h, w) -> 1x1 -> 3x3 -> whole-grid conv -> (B, 8) offsets / ρ."""

    def __init__(self, in_dim: int, grid: tuple[int, int], hidden: int = 64):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_dim, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, 8, kernel_size=grid),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2D, h, w) -> (B, 8): (dx, dy) of the TL, TR, BR, BL corners in units of ρ."""
        return self.layers(x).flatten(1)


def mean_corner_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over images and the 4 corners of the Euclidean distance between (N, 4, 2) corner offsets (px)."""
    return float((pred - target).norm(dim=-1).mean())


def _to_tensor01(item) -> torch.Tensor:
    image = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(image, torch.Tensor):
        return image.float()
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(image.convert("RGB")).float().div(255.0)


def load_source_images(dataset, indices: Sequence[int], size: int) -> torch.Tensor:
    """(N, 3, H, W) uint8 source images, each resized (bilinear) to `image_shape(size)`."""
    H, W = image_shape(size)
    out = torch.empty(len(indices), 3, H, W, dtype=torch.uint8)
    for n, i in enumerate(indices):
        img = _to_tensor01(dataset[i])[None]
        if img.shape[-2:] != (H, W):
            img = F.interpolate(img, size=(H, W), mode="bilinear", align_corners=False, antialias=True)
        out[n] = (img[0].clamp(0, 1) * 255).round().to(torch.uint8)
    return out


def synthetic_homography_images(n: int, size: int, seed: int = 1):
    """The built-in scenes, rendered at 2.5 S px (squeezed to 1.875 S in height like DeTone's COCO resize)."""
    from dinov2_eqcoh.data.datasets import SyntheticGlyphs

    return SyntheticGlyphs(n=n, size=image_shape(size)[1], classes=10, seed=seed)


@torch.no_grad()
def pair_features(backbone, sources: torch.Tensor, size: int, rho: float, generator: torch.Generator, device,
                  batch_size: int, translation_only: bool = False, desc: str = "pairs"):
    """Token maps of A and B for every source image.

    Returns:
        ((N, 2D, h, w) [A; B] channels, (N, 4, 2) corner offsets in px, (N, 2) patch positions (x, y) in px).
    """
    feats, offsets, positions = [], [], []
    starts = range(0, len(sources), batch_size)
    for start in progress(starts, total=len(starts), desc=desc):
        batch = sources[start:start + batch_size].float().div(255.0)
        pairs = make_pairs(batch, size, rho, generator, translation_only)
        x = normalise(torch.cat([pairs["a"], pairs["b"]]).to(device))
        maps = patch_token_maps(backbone, x)  # (2B, D, h, w)
        a, b = maps.chunk(2)
        feats.append(torch.cat([a, b], dim=1).cpu())
        offsets.append(pairs["offsets"])
        positions.append(pairs["position"])
    return torch.cat(feats), torch.cat(offsets), torch.cat(positions)


def fit_head(x_train, y_train, x_test, y_test, rho, epochs=40, patience=5, batch_size=64, lr=1e-3, seed=0,
             device=None, hidden=64, val_fraction=0.1) -> dict:
    """Train the head on (N, 2D, h, w) -> (N, 4, 2) px; early stopping on a held-back tenth; MCE on the test pairs."""
    device = torch.device(device) if device is not None else default_device()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n_val = max(1, int(round(val_fraction * len(x_train))))
    perm = torch.randperm(len(x_train), generator=gen)
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    head = HomographyHead(x_train.shape[1], tuple(x_train.shape[-2:]), hidden).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    y_scaled = (y_train / rho).reshape(len(y_train), 8)

    def predict(x):
        head.eval()
        with torch.no_grad():
            out = [head(x[i:i + 256].to(device)).cpu() for i in range(0, len(x), 256)]
        return torch.cat(out).reshape(-1, 4, 2) * rho

    best = {"val_mce": float("inf"), "state": None, "epoch": 0}
    epoch, bad = 0, 0
    for epoch in range(1, epochs + 1):
        head.train()
        order = fit_idx[torch.randperm(len(fit_idx), generator=gen)]
        total = torch.zeros((), device=device)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = F.mse_loss(head(x_train[idx].to(device)), y_scaled[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        val_mce = mean_corner_error(predict(x_train[val_idx]), y_train[val_idx])
        if val_mce < best["val_mce"]:
            best = {"val_mce": val_mce, "state": copy.deepcopy(head.state_dict()), "epoch": epoch,
                    "train_mse": float(total) / len(order)}
            bad = 0
        else:
            bad += 1
        if epoch == 1 or epoch % max(1, epochs // 10) == 0:
            logger.info(f"homography head epoch {epoch}/{epochs}: train MSE {float(total) / len(order):.4f}, "
                        f"val MCE {val_mce:.3f} px")
        if bad >= patience:
            break
    head.load_state_dict(best["state"])
    pred = predict(x_test)
    return {"mce": mean_corner_error(pred, y_test), "mce_zero": mean_corner_error(torch.zeros_like(y_test), y_test),
            "val_mce": best["val_mce"], "best_epoch": best["epoch"], "epochs_run": epoch, "pred": pred, "head": head}


def evaluate_homography(
    backbone: nn.Module,
    dataset,
    size: int = DEFAULT_SIZE,
    n_train: int = 1200,
    n_test: int = 400,
    rho: float | None = None,
    epochs: int = 40,
    patience: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    hidden: int = 64,
    seed: int = 0,
    device=None,
    translation_only: bool = False,
    keep_examples: int = 6,
) -> dict:
    """MCE of the homography head on held-out pairs (see the module docstring).

    Args:
        dataset: items PIL images, (PIL image, label) or (3, H, W) tensors in [0, 1]; any size (resized to
            2.5 S x 1.875 S). The first n_train + n_test of a seeded permutation are used, n_train for fitting.
        size: patch side S in px (a multiple of the patch size): the backbone sees S x S inputs.
        rho: corner displacement range in px (default S / 4, DeTone's).
        translation_only: all four corners moved alike (a known-answer setting).

    Returns:
        {"mce", "mce_zero" (px at S), "mce_frac" (MCE / S), "val_mce", "best_epoch", "epochs_run", settings,
         "examples": [...] (not JSON)}.
    """
    check_image_size(size, backbone)
    if n_train < 10 or n_test < 1:
        raise ValueError(f"homography: need n_train >= 10 and n_test >= 1, got n_train={n_train}, n_test={n_test}")
    if n_train + n_test > len(dataset):
        raise ValueError(f"homography: n_train + n_test = {n_train + n_test} exceeds the {len(dataset)} images of the "
                         "dataset")
    rho = float(size) / 4 if rho is None else float(rho)
    device = torch.device(device) if device is not None else default_device()
    backbone = backbone.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=gen)[: n_train + n_test].tolist()
    sources = load_source_images(dataset, indices, size)
    x, y, positions = pair_features(backbone, sources, size, rho, gen, device, batch_size, translation_only,
                         desc=f"homography features ({len(indices)} pairs)")
    fit = fit_head(x[:n_train], y[:n_train], x[n_train:], y[n_train:], rho, epochs, patience, batch_size, lr, seed,
                   device, hidden)
    logger.info(f"homography: MCE {fit['mce']:.3f} px (zero offsets {fit['mce_zero']:.3f} px) at {size} px, ρ {rho:g}")
    examples = []  # a few test pairs for the picture
    for k in range(min(keep_examples, n_test)):
        examples.append({"source": sources[n_train + k].float().div(255.0), "offsets": y[n_train + k],
                         "pred": fit["pred"][k], "position": positions[n_train + k]})
    return {
        "mce": fit["mce"], "mce_zero": fit["mce_zero"], "mce_frac": fit["mce"] / size, "val_mce": fit["val_mce"],
        "best_epoch": fit["best_epoch"], "epochs_run": fit["epochs_run"], "n_train": n_train, "n_test": n_test,
        "image_size": size, "rho": rho, "source_shape": list(image_shape(size)), "translation_only": translation_only,
        "epochs": epochs, "patience": patience, "seed": seed, "examples": examples,
    }


def plot_homography(results: dict, path: str, title: str = "") -> None:
    """Held-out source images with patch A (white), the true (green) and the predicted (red) displaced corners."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = results["examples"]
    size = results["image_size"]
    fig, axes = plt.subplots(1, len(ex), figsize=(2.2 * len(ex), 2.0), squeeze=False)
    for ax, e in zip(axes[0], ex):
        src = e["source"]
        ax.imshow(src.permute(1, 2, 0).numpy())
        sq = square_corners(size) + e["position"]
        for pts, style in ((sq, dict(color="white", lw=0.8)), (sq + e["offsets"], dict(color="lime", lw=1.2)),
                           (sq + e["pred"], dict(color="red", lw=1.0, ls="--"))):
            closed = torch.cat([pts, pts[:1]])
            ax.plot(closed[:, 0], closed[:, 1], **style)
        err = float((e["pred"] - e["offsets"]).norm(dim=-1).mean())
        ax.set_title(f"corner error {err:.1f} px", fontsize=7)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title or f"homography: true (green) and predicted (red) corners, MCE {results['mce']:.2f} px",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("dinov2_eqcoh.eval.homography", description=__doc__.split("\n\n")[0])
    add_backbone_args(parser, image_size_help=f"probe size in px: patch and image side (default {DEFAULT_SIZE}; the backbone's crop size is not used)")
    parser.add_argument("--dataset", default=None,
                        help="Synthetic:n=..:size=..:classes=..:seed=.. or ImageFolder:root=<any image folder, e.g. "
                             "COCO val2014> (default: the built-in scenes, seed 1)")
    parser.add_argument("--n-train", type=int, default=1200, help="image pairs the head is fitted on (default 1200)")
    parser.add_argument("--n-test", type=int, default=400, help="held-out pairs it is scored on (default 400)")
    parser.add_argument("--rho", type=float, default=None, help="corner displacement range in px (default: S / 4)")
    parser.add_argument("--epochs", type=int, default=40, help="at most this many head epochs (default 40)")
    parser.add_argument("--patience", type=int, default=5, help="early stopping: epochs without a better val MCE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_cli_logging(args.output_dir)
    backbone, _ = backbone_from_args(args)
    size = args.image_size or DEFAULT_SIZE
    check_image_size(size, backbone)
    if args.dataset:
        from dinov2_eqcoh.data.datasets import make_dataset

        dataset_str = args.dataset
        dataset = make_dataset(dataset_str=dataset_str, transform=None, target_transform=None)
    else:
        dataset_str = f"Synthetic:n={args.n_train + args.n_test}:size={image_shape(size)[1]}:classes=10:seed=1"
        dataset = synthetic_homography_images(args.n_train + args.n_test, size, seed=1)
    results = evaluate_homography(backbone, dataset, size=size, n_train=args.n_train, n_test=args.n_test, rho=args.rho,
                                  epochs=args.epochs, patience=args.patience, batch_size=args.batch_size,
                                  seed=args.seed, device=args.device)
    drawn = dict(results)
    results = {k: v for k, v in results.items() if k != "examples"}
    results.update({"weights": os.path.abspath(args.weights), "dataset": dataset_str})
    with open(os.path.join(args.output_dir, "homography.json"), "w") as f:  # the numbers first, then the picture
        json.dump(results, f, indent=2)
    draw(plot_homography, os.path.join(args.output_dir, "homography.png"), drawn)
    print(f"homography ({args.output_dir}/homography.json): MCE {results['mce']:.3f} px at {size} px "
          f"(zero offsets {results['mce_zero']:.3f} px, ρ {results['rho']:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
