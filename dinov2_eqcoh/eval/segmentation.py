# SPDX-License-Identifier: Apache-2.0
"""Semantic segmentation with a linear probe on frozen patch tokens (mIoU), on the built-in scenes or ADE20K.

    python -m dinov2_eqcoh.eval.segmentation --weights <ckpt> --output-dir <dir> \
        [--dataset SyntheticSeg:n=800:size=64:classes=10:seed=1 | ADE20K:root=/data/ADEChallengeData2016[:classes=150]] \
        [--image-size 64] [--n-train 600 --n-test 200] [--epochs 30 --lr 3e-3]

Probe (DINOv2's and DINOv3's "linear" head): BatchNorm over the D token channels, a 1x1 convolution D -> C, logits
upsampled bilinearly to the label resolution, cross-entropy with label 0 ignored (ADE20K's "other"; labels 1..C are
the classes, "reduce_zero_label"), AdamW on the frozen features. Images: the short side resized (bicubic) to S and
centre-cropped to S x S (the labels nearest-resized the same way); the built-in scenes are rendered at S. Score:
mIoU on held-out images as mmsegmentation computes it: per class IoU = TP / (TP + FP + FN) summed over all test
pixels, classes with no pixel in ground truth or prediction left out (NaN), the mean over the rest; also pixel
accuracy. Built-in data: 1 sky, 2 ground, 3 sun, 4 disc, 5.. the glyph classes (`data.synthetic_dense`); its
n_train + n_test images are one seeded split. ADE20K: `images/training/*.jpg` + `annotations/training/*.png` to fit
(the first n_train of a seeded permutation), `images/validation` + `annotations/validation` to score (the first
n_test, all with --n-test 0). Writes segmentation.json and segmentation.png (images, truth, prediction).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dinov2_eqcoh.data.dense_folders import ADE20KFolder
from dinov2_eqcoh.eval.features import (
    add_backbone_args,
    backbone_from_args,
    check_image_size,
    default_device,
    draw,
    progress,
    setup_cli_logging,
)
from dinov2_eqcoh.eval.patch_maps import (
    DEFAULT_SIZE,
    parse_spec,
    patch_token_maps,
    to_normalised_tensor,
)

logger = logging.getLogger("dinov2.eqcoh")

IGNORE_LABEL = 0  # in the label maps; the probe's targets use -1


class LinearSegHead(nn.Module):
    """BatchNorm + 1x1 conv: (B, D, h, w) tokens -> (B, C, h, w) logits for labels 1..C."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.conv = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, C, h, w)."""
        return self.conv(self.bn(x))


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts [true, predicted] over pixels with target in 0..C-1 (others, e.g. -1 = ignore, skipped)."""
    keep = (target >= 0) & (target < num_classes)
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou_from_confusion(conf: torch.Tensor) -> dict:
    """{"miou", "iou" (per class, NaN when the class is in neither truth nor prediction), "pixel_acc"}."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    valid = ~torch.isnan(iou)
    return {"miou": float(iou[valid].mean()) if valid.any() else float("nan"), "iou": iou.tolist(),
            "pixel_acc": float(tp.sum() / conf.sum().clamp(min=1))}


# --------------------------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------------------------


DATASETS = {
    "SyntheticSeg": {"n": int, "size": int, "classes": int, "seed": int},
    "SyntheticShapes": {"n": int, "size": int, "seed": int},
    "SyntheticTextures": {"n": int, "size": int, "seed": int},
    "ADE20K": {"root": str, "classes": int},
}


def make_segmentation_datasets(spec: str, size: int, n_train: int, n_test: int):
    """(train dataset, test dataset or None (= split the train one), num_classes, class names or None)."""
    name, kwargs = parse_spec(spec, DATASETS)
    if name == "ADE20K":
        if "root" not in kwargs:
            raise ValueError(f"--dataset {spec}: ADE20K needs root=<folder with images/ and annotations/>")
        classes = kwargs.get("classes", 150)
        return (ADE20KFolder(kwargs["root"], "training", size, classes, transform=to_normalised_tensor),
                ADE20KFolder(kwargs["root"], "validation", size, classes, transform=to_normalised_tensor), classes, None)
    from dinov2_eqcoh.data.synthetic_dense import SyntheticSegmentation, SyntheticShapes, SyntheticTextures

    if name in ("SyntheticShapes", "SyntheticTextures"):  # classes by shape / texture, colours random per instance
        ds = (SyntheticShapes if name == "SyntheticShapes" else SyntheticTextures)(**{"n": n_train + n_test, "size": size, "seed": 1, **kwargs}, transform=to_normalised_tensor)
        if ds.size != size:
            raise ValueError(f"--dataset {spec}: size={ds.size} differs from the probe size {size} (--image-size)")
        return ds, None, ds.num_classes, ds.class_names
    ds = SyntheticSegmentation(**{"n": n_train + n_test, "size": size, "classes": 10, "seed": 1, **kwargs},
                               transform=to_normalised_tensor)
    if ds.size != size:
        raise ValueError(f"--dataset {spec}: size={ds.size} differs from the probe size {size} (--image-size)")
    return ds, None, ds.num_classes, ds.class_names


@torch.no_grad()
def token_features(backbone, dataset, indices: Sequence[int], device, batch_size: int = 64, desc: str = "features"):
    """((N, D, h, w) frozen token maps, (N, S, S) int64 labels) on the CPU."""
    feats, labels = [], []
    starts = range(0, len(indices), batch_size)
    for start in progress(starts, total=len(starts), desc=desc):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        images = torch.stack([im for im, _ in items]).to(device)
        feats.append(patch_token_maps(backbone, images).cpu())
        labels.append(torch.stack([lab for _, lab in items]))
    return torch.cat(feats), torch.cat(labels)


def fit_linear_seg(x_train, y_train, num_classes: int, epochs: int = 30, batch_size: int = 32, lr: float = 3e-3,
                   weight_decay: float = 1e-4, seed: int = 0, device=None) -> LinearSegHead:
    """Fit the probe on (N, D, h, w) features and (N, S, S) labels (0 ignored, 1..C the classes)."""
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head = LinearSegHead(x_train.shape[1], num_classes).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, (len(x_train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.randperm(len(x_train), generator=gen)
        total, count = torch.zeros((), device=device), 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            target = y_train[idx].to(device) - 1  # 0 (ignore) -> -1
            logits = F.interpolate(head(x_train[idx].to(device)), size=target.shape[-2:], mode="bilinear",
                                   align_corners=False)
            loss = F.cross_entropy(logits, target, ignore_index=-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(idx)
            count += len(idx)
        if epoch == 1 or epoch % max(1, epochs // 5) == 0:
            logger.info(f"segmentation probe epoch {epoch}/{epochs}: train CE {float(total) / count:.4f}")
    return head.eval()


@torch.no_grad()
def predict_seg(head, x, size, device, batch_size: int = 64) -> torch.Tensor:
    """(N, D, h, w) -> (N, S, S) int64 labels 1..C."""
    out = []
    for i in range(0, len(x), batch_size):
        logits = F.interpolate(head(x[i:i + batch_size].to(device)), size=size, mode="bilinear", align_corners=False)
        out.append(logits.argmax(1).cpu() + 1)
    return torch.cat(out)


def evaluate_segmentation(
    backbone: nn.Module,
    dataset,
    n_train: int = 600,
    n_test: int = 200,
    num_classes: int | None = None,
    test_dataset=None,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    device=None,
    feature_batch_size: int = 64,
    keep_examples: int = 4,
    class_names: Sequence[str] | None = None,
) -> dict:
    """mIoU of the linear probe (see the module docstring).

    Args:
        dataset: items ((3, S, S) normalised image, (S, S) int64 labels, 0 = ignore, 1..num_classes).
        test_dataset: held-out items of the same kind (default: the n_test images after the n_train of a seeded
            permutation of `dataset`); n_test 0 = all of it.
        num_classes: C (default: dataset.num_classes).

    Returns:
        {"miou", "pixel_acc", "iou" {name: IoU or None}, "n_train", "n_test", settings, "examples" (not JSON)}.
    """
    num_classes = int(num_classes or dataset.num_classes)
    image = dataset[0][0]
    check_image_size(int(image.shape[-1]), backbone)
    device = torch.device(device) if device is not None else default_device()
    backbone = backbone.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    if test_dataset is None:
        if n_train + n_test > len(dataset):
            raise ValueError(f"segmentation: n_train + n_test = {n_train + n_test} exceeds the {len(dataset)} images")
        perm = torch.randperm(len(dataset), generator=gen).tolist()
        train_idx, test_idx, test_dataset = perm[:n_train], perm[n_train:n_train + n_test], dataset
    else:
        if n_train > len(dataset):
            raise ValueError(f"segmentation: n_train = {n_train} exceeds the {len(dataset)} training images")
        train_idx = torch.randperm(len(dataset), generator=gen)[:n_train].tolist()
        test_idx = list(range(len(test_dataset) if not n_test else min(n_test, len(test_dataset))))
    x_train, y_train = token_features(backbone, dataset, train_idx, device, feature_batch_size,
                                      desc=f"segmentation features ({len(train_idx)} train images)")
    x_test, y_test = token_features(backbone, test_dataset, test_idx, device, feature_batch_size,
                                    desc=f"segmentation features ({len(test_idx)} test images)")
    head = fit_linear_seg(x_train, y_train, num_classes, epochs, batch_size, lr, seed=seed, device=device)
    pred = predict_seg(head, x_test, tuple(y_test.shape[-2:]), device)
    scores = miou_from_confusion(confusion(pred - 1, y_test - 1, num_classes))
    names = list(class_names[1:]) if class_names is not None else [str(c) for c in range(1, num_classes + 1)]
    logger.info(f"segmentation: mIoU {scores['miou']:.4f}, pixel accuracy {scores['pixel_acc']:.4f} "
                f"({len(test_idx)} test images, {num_classes} classes)")
    examples = [(test_dataset[test_idx[k]][0], y_test[k], pred[k]) for k in range(min(keep_examples, len(test_idx)))]
    return {
        "miou": scores["miou"], "pixel_acc": scores["pixel_acc"],
        "iou": {n: (None if np.isnan(v) else v) for n, v in zip(names, scores["iou"])},
        "num_classes": num_classes, "n_train": len(train_idx), "n_test": len(test_idx),
        "image_size": int(image.shape[-1]), "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
        "examples": examples,
    }


def plot_segmentation(results: dict, path: str, num_classes: int, title: str = "") -> None:
    """Columns: image, ground truth, prediction; one row per example."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dinov2_eqcoh.method.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    ex = results["examples"]
    fig, axes = plt.subplots(len(ex), 3, figsize=(4.8, 1.6 * len(ex)), squeeze=False)
    cmap = plt.get_cmap("tab20", max(num_classes + 1, 2))
    for r, (image, truth, pred) in enumerate(ex):
        axes[r, 0].imshow((image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
        axes[r, 1].imshow(truth.numpy(), cmap=cmap, vmin=0, vmax=num_classes, interpolation="nearest")
        axes[r, 2].imshow(pred.numpy(), cmap=cmap, vmin=0, vmax=num_classes, interpolation="nearest")
        for c, name in enumerate(("image", "truth", "prediction")):
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
    fig.suptitle(title or f"linear segmentation probe: mIoU {results['miou']:.3f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("dinov2_eqcoh.eval.segmentation", description=__doc__.split("\n\n")[0])
    add_backbone_args(parser, image_size_help=f"probe size in px (default {DEFAULT_SIZE}; the backbone's crop size is not used)")
    parser.add_argument("--dataset", default=None,
                        help="SyntheticSeg:n=..:size=..:classes=..:seed=.. or ADE20K:root=..[:classes=150] (default: "
                             "SyntheticSeg, seed 1, n_train + n_test images at the probe size)")
    parser.add_argument("--n-train", type=int, default=600, help="images the linear probe is fitted on (default 600)")
    parser.add_argument("--n-test", type=int, default=200, help="held-out images (ADE20K: 0 = all validation images)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the linear probe (default 30)")
    parser.add_argument("--lr", type=float, default=3e-3, help="its learning rate (Adam, default 3e-3)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_cli_logging(args.output_dir)
    backbone, _ = backbone_from_args(args)
    size = args.image_size or DEFAULT_SIZE
    check_image_size(size, backbone)
    dataset_str = args.dataset or f"SyntheticSeg:n={args.n_train + args.n_test}:size={size}:classes=10:seed=1"
    train_ds, test_ds, num_classes, names = make_segmentation_datasets(dataset_str, size, args.n_train, args.n_test)
    results = evaluate_segmentation(backbone, train_ds, n_train=args.n_train, n_test=args.n_test,
                                    num_classes=num_classes, test_dataset=test_ds, epochs=args.epochs, lr=args.lr,
                                    seed=args.seed, device=args.device, feature_batch_size=args.batch_size,
                                    class_names=names)
    drawn = dict(results)
    results.pop("examples")
    results.update({"weights": os.path.abspath(args.weights), "dataset": dataset_str})
    with open(os.path.join(args.output_dir, "segmentation.json"), "w") as f:  # the numbers first, then the picture
        json.dump(results, f, indent=2)
    draw(plot_segmentation, os.path.join(args.output_dir, "segmentation.png"), drawn, num_classes=num_classes)
    print(f"segmentation ({args.output_dir}/segmentation.json): mIoU {results['miou']:.4f}, pixel accuracy "
          f"{results['pixel_acc']:.4f} on {results['n_test']} images, {num_classes} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
