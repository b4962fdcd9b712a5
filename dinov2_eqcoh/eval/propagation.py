# SPDX-License-Identifier: Apache-2.0
"""Semi-supervised video object segmentation by label propagation on frozen patch features (DAVIS-2017 protocol).

    python -m dinov2_eqcoh.eval.propagation --weights <ckpt> --output-dir <dir> \
        [--dataset SyntheticVideo:n=8:frames=12:size=64:seed=1 | DAVIS:root=/data/DAVIS[:resolution=480p][:sequences=<list file or a,b,c>]] \
        [--image-size <short side px>] [--n-last-frames 7 --size-mask-neighborhood 12 --topk 5 --temperature 0.1] [--save-masks]

Propagation, as DINO's `eval_video_segmentation.py` (facebookresearch/dino, whose defaults these are): each frame
is resized so that its short side is `--image-size` (DINO: 480) and its long side the largest multiple of the patch
size below the aspect-preserving length (DINO: of 64); the frozen backbone's normalised last-layer patch tokens are
L2-normalised; the first frame's mask, nearest-resized to the token grid, is one-hot. For every later frame the
affinity to each context frame (the first frame and the `n_last_frames` previous ones, with their soft
propagated labels) is exp(cos / temperature) (DINO hard-codes 0.1), restricted to a (2r + 1)² box of token
positions around the query (r = `size_mask_neighborhood`), then only the `topk` largest affinities over all context
tokens are kept per query, normalised to sum 1, and the labels are their weighted sum. The result is upsampled
bilinearly by the patch size, each non-constant channel min-max normalised, arg-maxed and nearest-resized to the annotation.

Scores, as davis2017-evaluation (semi-supervised): for each object (the palette indices of the first frame) and
each frame but the first and the last, J = region IoU (1 when both masks are empty) and F = boundary F-measure
(boundaries as `_seg2bmap`, matched within ceil(0.008 · image diagonal) px); per object the mean over its frames;
J-mean and F-mean over all objects of all sequences, J&F-mean their average. Void (255) pixels count as
background, as in that code. Writes propagation.json (per object and sequence too) and propagation.png
(frames, ground truth and prediction); `--save-masks` also writes the predictions as DAVIS palette PNGs
(`masks/<sequence>/<frame>.png`, the results layout davis2017-evaluation reads).

Length: DAVIS' J and F are re-implemented here figure for figure (davis2017-evaluation's region IoU, boundary
maps and matching) beside DINO's propagation, so the scores can be checked against that code in one file.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dinov2_eqcoh.data.dense_folders import VOID, DavisFolder, default_palette
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
    patch_size_of,
    patch_token_maps,
    to_normalised_tensor,
)

logger = logging.getLogger("dinov2.eqcoh")

# DINO's eval_video_segmentation.py defaults (its affinity temperature is a constant 0.1 in label_propagation)
N_LAST_FRAMES, SIZE_MASK_NEIGHBORHOOD, TOPK, TEMPERATURE = 7, 12, 5, 0.1
BOUND_TH = 0.008  # davis2017-evaluation's db_eval_boundary default
DAVIS_SHORT_SIDE = 480


# --------------------------------------------------------------------------------------------------------------
# DAVIS' J and F (davis2017-evaluation, davis2017/metrics.py)
# --------------------------------------------------------------------------------------------------------------


def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray, void_pixels: np.ndarray | None = None) -> float:
    """Region similarity J: |A ∩ S| / |A ∪ S| over the non-void pixels of two (H, W) binary masks; 1 if both empty."""
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} differ in size")
    a, s = annotation.astype(bool), segmentation.astype(bool)
    keep = ~void_pixels.astype(bool) if void_pixels is not None else np.ones_like(a)
    inter, union = np.sum(a & s & keep), np.sum((a | s) & keep)
    return 1.0 if union == 0 else float(inter / union)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary (H, W) mask (offset half a pixel toward the origin), as DAVIS'.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour; on the last row only
    the right neighbour counts, on the last column only the lower one, and the last pixel is never a boundary.
    """
    seg = seg.astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk: the (2r + 1)² structuring element x² + y² <= r²."""
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (xx * xx + yy * yy <= r * r).astype(np.uint8)


def dilate(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Binary dilation (cv2.dilate with a centred kernel; pixels outside the image add nothing)."""
    if kernel.shape == (1, 1):
        return mask.astype(bool)
    r = kernel.shape[0] // 2
    x = torch.from_numpy(mask.astype(np.float32))[None, None]
    k = torch.from_numpy(kernel.astype(np.float32))[None, None]
    return (F.conv2d(x, k, padding=r)[0, 0] > 0.5).numpy()


def f_measure(foreground_mask: np.ndarray, gt_mask: np.ndarray, void_pixels: np.ndarray | None = None,
              bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure of a predicted against a ground-truth (H, W) binary mask, as DAVIS' f_measure.

    Boundary pixels match when within `bound_pix` = bound_th if bound_th >= 1 else ceil(bound_th · ‖(H, W)‖) px
    (a disk); precision = matched predicted / predicted boundary pixels, recall = matched true / true boundary
    pixels; F = 2PR / (P + R) (0 when P + R = 0). No boundary in either: P = R = 1; only in one: F = 0.
    """
    if foreground_mask.shape != gt_mask.shape:
        raise ValueError(f"prediction {foreground_mask.shape} and annotation {gt_mask.shape} differ in size")
    keep = ~void_pixels.astype(bool) if void_pixels is not None else np.ones(gt_mask.shape, bool)
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    fg_boundary = seg2bmap(foreground_mask.astype(bool) & keep)
    gt_boundary = seg2bmap(gt_mask.astype(bool) & keep)
    kernel = disk(bound_pix)
    fg_dil, gt_dil = dilate(fg_boundary, kernel), dilate(gt_boundary, kernel)
    n_fg, n_gt = int(fg_boundary.sum()), int(gt_boundary.sum())
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = float((fg_boundary & gt_dil).sum()) / n_fg
        recall = float((gt_boundary & fg_dil).sum()) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def score_sequence(gt_masks: Sequence[np.ndarray], pred_masks: Sequence[np.ndarray], objects: Sequence[int],
                   bound_th: float = BOUND_TH) -> dict[int, dict[str, float]]:
    """{object: {"J": mean J, "F": mean F, "J_per_frame": [...], "F_per_frame": [...]}} over frames 1..T-2."""
    if len(gt_masks) != len(pred_masks):
        raise ValueError(f"{len(pred_masks)} predicted masks for {len(gt_masks)} annotated frames")
    frames = range(1, len(gt_masks) - 1)
    out = {}
    for o in objects:
        js, fs = [], []
        for t in frames:
            gt = gt_masks[t]
            gt = np.where(gt == VOID, 0, gt)  # davis2017-evaluation: void pixels become background
            js.append(db_eval_iou(gt == o, pred_masks[t] == o))
            fs.append(f_measure(pred_masks[t] == o, gt == o, bound_th=bound_th))
        out[int(o)] = {"J": float(np.mean(js)) if js else float("nan"), "F": float(np.mean(fs)) if fs else float("nan"),
                       "J_per_frame": js, "F_per_frame": fs}
    return out


# --------------------------------------------------------------------------------------------------------------
# label propagation (DINO's eval_video_segmentation.py)
# --------------------------------------------------------------------------------------------------------------


def restrict_neighborhood(h: int, w: int, radius: int, device=None) -> torch.Tensor:
    """(h·w, h·w) 0/1: query token (i, j) may read source token (i', j') iff |i - i'| <= r and |j - j'| <= r."""
    ii, jj = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    near = ((ii[:, None] - ii[None, :]).abs() <= radius) & ((jj[:, None] - jj[None, :]).abs() <= radius)
    return near.float()


def label_propagation(feat_tar: torch.Tensor, feat_sources: torch.Tensor, segs: torch.Tensor,
                      mask_neighborhood: torch.Tensor | None, topk: int = TOPK,
                      temperature: float = TEMPERATURE) -> torch.Tensor:
    """Soft labels of a target frame from its context frames.

    Args:
        feat_tar: (h·w, D) target-frame patch features.
        feat_sources: (n, h·w, D) features of the n context frames.
        segs: (n, C, h, w) their (soft) labels, C = objects + 1 (background).
        mask_neighborhood: (h·w, h·w) 0/1 local window or None (all positions).

    Returns:
        (C, h, w) soft labels: per query the affinity-weighted sum of the labels of its `topk` context tokens.
    """
    n, C, h, w = segs.shape
    tar = F.normalize(feat_tar, dim=1, p=2)
    src = F.normalize(feat_sources, dim=2, p=2)
    aff = torch.exp(torch.einsum("qd,nkd->nqk", tar, src) / temperature)  # (n, query, key)
    if mask_neighborhood is not None:
        aff = aff * mask_neighborhood
    aff = aff.transpose(2, 1).reshape(n * h * w, h * w)  # (n·key, query)
    tk_val, _ = torch.topk(aff, dim=0, k=min(topk, aff.shape[0]))
    aff = torch.where(aff < tk_val.min(dim=0).values, torch.zeros_like(aff), aff)
    aff = aff / aff.sum(dim=0, keepdim=True)
    labels = segs.reshape(n, C, h * w).transpose(2, 1).reshape(n * h * w, C).T  # (C, n·key)
    return (labels @ aff).reshape(C, h, w)


def norm_mask(mask: torch.Tensor) -> torch.Tensor:
    """(C, H, W): each channel with a positive maximum min-max normalised to [0, 1] (DINO's norm_mask).

    A constant channel is left as it is (DINO's code divides 0 by 0 there, and the NaN wins the argmax).
    """
    mask = mask.clone()
    for c in range(mask.shape[0]):
        if mask[c].max() > 0 and mask[c].max() > mask[c].min():
            mask[c] = mask[c] - mask[c].min()
            mask[c] = mask[c] / mask[c].max()
    return mask


def resize_frame(image: Image.Image, short_side: int, patch: int) -> Image.Image:
    """Short side to `short_side`, long side to the largest multiple of `patch` at or below its scaled length."""
    w, h = image.size
    if h > w:
        tw, th = short_side, int((short_side * h / w) // patch) * patch
    else:
        th, tw = short_side, int((short_side * w / h) // patch) * patch
    return image if (tw, th) == (w, h) else image.resize((tw, th), Image.BILINEAR)


@torch.no_grad()
def propagate_video(backbone: nn.Module, frames: Sequence[Image.Image], first_mask: np.ndarray, objects: Sequence[int],
                    short_side: int, n_last_frames: int = N_LAST_FRAMES,
                    size_mask_neighborhood: int = SIZE_MASK_NEIGHBORHOOD, topk: int = TOPK,
                    temperature: float = TEMPERATURE, device=None, batch_size: int = 16) -> list[np.ndarray]:
    """Propagate `first_mask` ((H0, W0) palette indices) along `frames`: [(H0, W0) uint8 index maps], frame 0 = it.

    Objects are relabelled 1..N internally (channel 0 background) and written back with their palette indices.
    """
    device = torch.device(device) if device is not None else default_device()
    p = patch_size_of(backbone)
    H0, W0 = first_mask.shape
    sized = [resize_frame(f, short_side, p) for f in frames]
    tw, th = sized[0].size
    h, w = th // p, tw // p
    feats = []  # per frame (h·w, D)
    for start in range(0, len(sized), batch_size):
        batch = torch.stack([to_normalised_tensor(f) for f in sized[start:start + batch_size]]).to(device)
        maps = patch_token_maps(backbone, batch)  # (B, D, h, w)
        feats += list(maps.flatten(2).transpose(1, 2))
    index_of = {int(o): i + 1 for i, o in enumerate(objects)}
    palette_of = np.zeros(len(objects) + 1, dtype=np.uint8)
    palette_of[1:] = list(objects)
    small = np.asarray(Image.fromarray(first_mask).resize((w, h), Image.NEAREST))
    small_idx = np.zeros_like(small, dtype=np.int64)
    for o, i in index_of.items():
        small_idx[small == o] = i
    first_seg = F.one_hot(torch.from_numpy(small_idx), len(objects) + 1).permute(2, 0, 1).float().to(device)
    neighborhood = restrict_neighborhood(h, w, size_mask_neighborhood, device) if size_mask_neighborhood > 0 else None
    queue: list[tuple[torch.Tensor, torch.Tensor]] = []
    preds = [first_mask.copy()]
    for t in range(1, len(frames)):
        ctx_feats = torch.stack([feats[0]] + [f for f, _ in queue])
        ctx_segs = torch.stack([first_seg] + [s for _, s in queue])
        seg = label_propagation(feats[t], ctx_feats, ctx_segs, neighborhood, topk, temperature)  # (C, h, w)
        if len(queue) == n_last_frames:
            queue.pop(0)
        if n_last_frames > 0:
            queue.append((feats[t], seg))
        up = F.interpolate(seg[None], scale_factor=p, mode="bilinear", align_corners=False)[0]  # (C, th, tw)
        labels = norm_mask(up).argmax(dim=0).to(torch.uint8).cpu().numpy()
        labels = np.asarray(Image.fromarray(labels).resize((W0, H0), Image.NEAREST))
        preds.append(palette_of[labels])
    return preds


# --------------------------------------------------------------------------------------------------------------
# readers: DAVIS-2017 folders and the built-in videos
# --------------------------------------------------------------------------------------------------------------


DATASETS = {
    "SyntheticVideo": {"n": int, "frames": int, "size": int, "classes": int, "seed": int, "photometric": float},
    "DAVIS": {"root": str, "resolution": str, "sequences": str},
}


def make_video_dataset(spec: str, size: int = DEFAULT_SIZE):
    """`SyntheticVideo:...` (default size: the probe size) or `DAVIS:root=...` -> a reader with `sequence(i)`."""
    name, kwargs = parse_spec(spec, DATASETS)
    if name == "DAVIS":
        if "root" not in kwargs:
            raise ValueError(f"--dataset {spec}: DAVIS needs root=<folder with JPEGImages/ and Annotations/>")
        return DavisFolder(**kwargs)
    from dinov2_eqcoh.data.synthetic_dense import SyntheticVideos

    return SyntheticVideos(**{"size": size, **kwargs})


def _objects_of(first_mask: np.ndarray) -> list[int]:
    return sorted(set(np.unique(first_mask).tolist()) - {0, VOID})


def evaluate_propagation(
    backbone: nn.Module,
    videos,
    size: int = DEFAULT_SIZE,
    n_last_frames: int = N_LAST_FRAMES,
    size_mask_neighborhood: int = SIZE_MASK_NEIGHBORHOOD,
    topk: int = TOPK,
    temperature: float = TEMPERATURE,
    bound_th: float = BOUND_TH,
    device=None,
    batch_size: int = 16,
    keep_predictions: int = 3,
    mask_writer=None,
) -> dict:
    """J, F and J&F mean of label propagation over every sequence of `videos` (see the module docstring).

    Args:
        videos: `sequence(i)` -> (name, [PIL frames], [(H, W) uint8 index masks]) and len(); SyntheticVideos or
            DavisFolder.
        size: short side in px the frames are resized to (a multiple of the patch size).
        keep_predictions: how many sequences' frames and masks to return for the picture.
        mask_writer: optional callable(name, index, preds) (e.g. to save DAVIS PNGs).

    Returns:
        {"jf_mean", "j_mean", "f_mean", "per_object": {"<seq>_<obj>": {"J", "F"}}, "per_sequence": {seq: {"J", "F"}},
         "n_sequences", "n_objects", settings, "examples": [(name, frames, gt, pred)] (not JSON)}.
    """
    check_image_size(size, backbone)
    device = torch.device(device) if device is not None else default_device()
    backbone = backbone.to(device).eval()
    per_object, per_sequence, examples = {}, {}, []
    for i in progress(range(len(videos)), total=len(videos), desc=f"propagation ({len(videos)} sequences)"):
        name, frames, masks = videos.sequence(i)
        objects = _objects_of(masks[0])
        preds = propagate_video(backbone, frames, masks[0], objects, size, n_last_frames, size_mask_neighborhood,
                                topk, temperature, device, batch_size)
        if mask_writer is not None:
            mask_writer(name, i, preds)
        scores = score_sequence(masks, preds, objects, bound_th)
        for o, s in scores.items():
            per_object[f"{name}_{o}"] = {"J": s["J"], "F": s["F"]}
        per_sequence[name] = {"J": float(np.mean([s["J"] for s in scores.values()])),
                              "F": float(np.mean([s["F"] for s in scores.values()])), "objects": len(objects),
                              "frames": len(frames)}
        logger.info(f"propagation [{i + 1}/{len(videos)}] {name}: {len(frames)} frames, {len(objects)} objects, "
                    f"J {per_sequence[name]['J']:.3f} F {per_sequence[name]['F']:.3f}")
        if len(examples) < keep_predictions:
            examples.append((name, frames, masks, preds))
    j_mean = float(np.nanmean([v["J"] for v in per_object.values()]))
    f_mean = float(np.nanmean([v["F"] for v in per_object.values()]))
    return {
        "jf_mean": (j_mean + f_mean) / 2, "j_mean": j_mean, "f_mean": f_mean,
        "per_object": per_object, "per_sequence": per_sequence,
        "n_sequences": len(per_sequence), "n_objects": len(per_object),
        "image_size": size, "n_last_frames": n_last_frames, "size_mask_neighborhood": size_mask_neighborhood,
        "topk": topk, "temperature": temperature, "bound_th": bound_th,
        "examples": examples,
    }


def overlay(image: Image.Image, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """(H, W, 3) float in [0, 1]: the frame with the objects of `mask` tinted in their palette colours."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    colours = palette[mask].astype(np.float32) / 255.0
    on = (mask > 0)[..., None]
    return np.where(on, (1 - alpha) * rgb + alpha * colours, rgb)


def plot_propagation(examples, path: str, palette: np.ndarray | None = None, n_cols: int = 6, title: str = "") -> None:
    """Per example sequence two rows (ground truth, prediction) over up to n_cols frames from first to last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = palette if palette is not None else default_palette()
    rows = [(name, kind, frames, m) for name, frames, gt, pred in examples for kind, m in (("truth", gt), ("pred", pred))]
    n_frames = min(len(e[1]) for e in examples)
    cols = sorted(set(np.linspace(0, n_frames - 1, min(n_cols, n_frames)).round().astype(int).tolist()))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.6 * len(cols), 1.6 * len(rows) * 0.9), squeeze=False)
    for r, (name, kind, frames, masks) in enumerate(rows):
        for c, t in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(overlay(frames[t], masks[t], palette))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {t}", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{name}\n{kind}", fontsize=6)
    fig.suptitle(title or "label propagation: ground truth and prediction (frame 0 given)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("dinov2_eqcoh.eval.propagation", description=__doc__.split("\n\n")[0])
    add_backbone_args(parser, image_size_help=f"short side of the frames in px (default {DAVIS_SHORT_SIDE} for DAVIS as DINO, {DEFAULT_SIZE} for the built-in videos)")
    parser.add_argument("--dataset", default=None,
                        help="SyntheticVideo:n=..:frames=..:size=..:classes=..:seed=.. or DAVIS:root=..[:resolution=480p]"
                             "[:sequences=<list file or a,b,c>] (default: SyntheticVideo:n=8:frames=12:seed=1 at the "
                             "probe size)")
    parser.add_argument("--n-last-frames", type=int, default=N_LAST_FRAMES, help="context: previous frames (DINO: 7)")
    parser.add_argument("--size-mask-neighborhood", type=int, default=SIZE_MASK_NEIGHBORHOOD,
                        help="local window radius in tokens, 0 = none (DINO: 12)")
    parser.add_argument("--topk", type=int, default=TOPK, help="labels from the k most similar context tokens (DINO: 5)")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="affinity temperature (DINO: 0.1)")
    parser.add_argument("--bound-th", type=float, default=BOUND_TH, help="F boundary tolerance (DAVIS: 0.008)")
    parser.add_argument("--save-masks", action="store_true",
                        help="write the predictions as palette PNGs to <output-dir>/masks/<sequence>/<frame>.png")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_cli_logging(args.output_dir)
    torch.manual_seed(args.seed)
    backbone, _ = backbone_from_args(args)
    dataset_str = args.dataset or "SyntheticVideo:n=8:frames=12:seed=1"
    is_davis = dataset_str.startswith("DAVIS")
    size = args.image_size or (DAVIS_SHORT_SIDE if is_davis else DEFAULT_SIZE)
    check_image_size(size, backbone)
    videos = make_video_dataset(dataset_str, size)
    writer = None
    if args.save_masks:
        def writer(name, index, preds):
            out = Path(args.output_dir) / "masks" / name
            out.mkdir(parents=True, exist_ok=True)
            names = videos.frame_names(index) if is_davis else [f"{t:05d}" for t in range(len(preds))]
            palette = getattr(videos, "palette", None)
            palette = palette if palette is not None else default_palette()
            for stem, pred in zip(names, preds):
                im = Image.fromarray(pred.astype(np.uint8), mode="P")
                im.putpalette(palette.reshape(-1).tolist())
                im.save(out / f"{stem}.png")
    results = evaluate_propagation(
        backbone, videos, size=size, n_last_frames=args.n_last_frames, size_mask_neighborhood=args.size_mask_neighborhood,
        topk=args.topk, temperature=args.temperature, bound_th=args.bound_th, device=args.device,
        batch_size=args.batch_size, mask_writer=writer,
    )
    examples = results.pop("examples")
    results.update({"weights": os.path.abspath(args.weights), "dataset": dataset_str})
    with open(os.path.join(args.output_dir, "propagation.json"), "w") as f:
        json.dump(results, f, indent=2)
    draw(plot_propagation, os.path.join(args.output_dir, "propagation.png"), examples,
         palette=getattr(videos, "palette", None),
         title=f"label propagation at {size} px: J&F {results['jf_mean']:.3f} (J {results['j_mean']:.3f}, "
                           f"F {results['f_mean']:.3f}), {results['n_objects']} objects")
    print(f"propagation ({args.output_dir}/propagation.json): J&F-mean {results['jf_mean']:.4f}, "
          f"J-mean {results['j_mean']:.4f}, F-mean {results['f_mean']:.4f} over {results['n_objects']} objects in "
          f"{results['n_sequences']} sequences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
