# SPDX-License-Identifier: Apache-2.0
"""The probes the experiments run on a frozen backbone, in groups a study scores one at a time:

- `global`: R² of θ for each task (`eval.equivariance`), k-NN and linear classification (`eval.invariance`) on
  held-out built-in images (`probe_backbone`);
- `dense`: homography MCE, label-propagation J&F, segmentation mIoU (`eval.dense`);
- `fill_free`: R² of the geometric tasks with no uncovered corner shown (`fill_free_r2`, docs/fill_leak);
- `reconstruction`: the decoders' diagnostics of a run trained with λ > 0 (`eval.reconstruction`);
- `frozen_reconstruction`: fresh decoders trained on the frozen backbone to reconstruct the path between two views
  (`eval.reconstruction_probe`; about 5 min per backbone at the mechanism regime's width on 2 cores).

Each group is `group(name, backbone, size, args, run_dir) -> dict` (the score record's entries); `args` carries
`eval_images`, `class_images`, `probe_epochs`, `features` and `dense_scale`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

R2_TASKS = ("rot", "color", "blur", "trans", "se2")
FILL_FREE_TASKS = ("rot", "trans", "se2")  # the tasks whose rendering uncovers corners (docs/fill_leak)


def probe_backbone(name: str, backbone, size: int, args) -> dict:
    """Equivariance (R² per task) and invariance (k-NN, linear) probes of one frozen backbone on held-out images."""
    from dinov2_eqcoh.eval.equivariance import evaluate_equivariance
    from dinov2_eqcoh.eval.features import make_eval_dataset
    from dinov2_eqcoh.eval.invariance import evaluate_invariance, split_dataset

    # held-out images: the same generator with another seed than training's. The class probes need one forward
    # per image, so they get more images (a smaller standard error) than the R² probes, which need six per image
    n_images = max(args.eval_images, args.class_images)
    eval_ds = make_eval_dataset(f"Synthetic:n={n_images}:size={size}:classes=10:seed=1", size)
    print(f"[probe] evaluating {name}: equivariance ({', '.join(R2_TASKS)}) on {args.eval_images} held-out images",
          flush=True)
    eq = evaluate_equivariance(backbone, eval_ds, tasks=R2_TASKS, features=(args.features,),
                               n_train=args.eval_images - args.eval_images // 3, n_test=args.eval_images // 3,
                               epochs=args.probe_epochs, seed=0)
    print(f"[probe] evaluating {name}: k-NN and linear probe on {args.class_images} held-out images", flush=True)
    class_ds = torch.utils.data.Subset(eval_ds, range(args.class_images))
    train_ds, test_ds = split_dataset(class_ds, test_fraction=1 / 3, seed=0)
    inv = evaluate_invariance(backbone, train_ds, test_ds, features=("cls",))
    r2 = dict(eq["r2"][args.features])
    dense = {}
    if getattr(args, "dense", True):
        from dinov2_eqcoh.eval.dense import DEFAULT_SIZE, dense_probes, headline

        print(f"[probe] evaluating {name}: dense probes (homography, propagation, segmentation) at {DEFAULT_SIZE} px",
              flush=True)
        dense = {"dense": headline(dense_probes(backbone, size=DEFAULT_SIZE, seed=0,
                                                scale=args.dense_scale))}
    fill_free = fill_free_r2(name, backbone, size, args) if getattr(args, "fill_free", True) else {}
    return {
        **dense,
        **fill_free,
        "r2": {t: r2[t] for t in (*R2_TASKS, "mean")},
        "knn_top1": inv["knn"]["cls"],
        "linear_top1": inv["linear"]["cls"],
        "equivariance": eq,
        "invariance": inv,
    }


def fill_free_r2(name: str, backbone, size: int, args) -> dict:
    """R² of the geometric tasks without the fill: held-out images drawn at `fill_free_size(size)` px,
    g_θ rendered on them, the backbone shown their centred `size` px, so no corner a rotation or shift uncovers is
    seen (docs/fill_leak). Same images (seed 1), probe and features as `probe_backbone`'s R².

    Returns:
        {"r2_fill_free": {task: R², ...}, "fill_free_canvas": px}.
    """
    from dinov2_eqcoh.eval.equivariance import evaluate_equivariance, fill_free_size
    from dinov2_eqcoh.eval.features import make_eval_dataset

    canvas = fill_free_size(size)
    ds = make_eval_dataset(f"Synthetic:n={args.eval_images}:size={canvas}:classes=10:seed=1", canvas)
    print(f"[probe] evaluating {name}: fill-free R² ({', '.join(FILL_FREE_TASKS)}; {size} px of {canvas} px images)",
          flush=True)
    eq = evaluate_equivariance(backbone, ds, tasks=FILL_FREE_TASKS, features=(args.features,), crop=size,
                               n_train=args.eval_images - args.eval_images // 3, n_test=args.eval_images // 3,
                               epochs=args.probe_epochs, seed=0)
    r2 = eq["r2"][args.features]
    return {"r2_fill_free": {t: r2[t] for t in FILL_FREE_TASKS}, "fill_free_canvas": canvas}


def probe_args(args) -> argparse.Namespace:
    return argparse.Namespace(eval_images=args.eval_images, class_images=args.class_images,
                              probe_epochs=args.probe_epochs, features=args.features, dense=False, fill_free=False)


def global_probes(name: str, backbone, size: int, args, run_dir: Path | None = None) -> dict:
    """R² tasks, k-NN and linear on held-out built-in images (probe seed 0 for every run)."""
    out = probe_backbone(name, backbone, size, probe_args(args))
    return {"r2": out["r2"], "knn_top1": out["knn_top1"], "linear_top1": out["linear_top1"],
            "blur_sigma_definition": out["equivariance"].get("blur_sigma_definition")}


def dense_group(name: str, backbone, size: int, args, run_dir: Path | None = None) -> dict:
    """The dense probes (homography MCE, label-propagation J&F, segmentation mIoU) at DENSE_SIZE px, built-in data."""
    from dinov2_eqcoh.eval.dense import DEFAULT_SIZE, dense_probes, headline

    return {"dense": headline(dense_probes(backbone, size=DEFAULT_SIZE, seed=0, scale=args.dense_scale))}


def fill_free_group(name: str, backbone, size: int, args, run_dir: Path | None = None) -> dict:
    """R² of rot, trans, se2 without the fill (`fill_free_r2`, docs/fill_leak)."""
    return fill_free_r2(name, backbone, size, probe_args(args))


def reconstruction_group(name: str, backbone, size: int, args, run_dir: Path | None = None) -> dict:
    """The decoders' diagnostics (`eval.reconstruction.diagnose`: each D_k's MSE against copy v2 and v2 pooled to the
    token grid, where it lands on the path, the gradient ratio) on the final student of a run trained with λ > 0,
    DIAGNOSTIC_IMAGES fresh built-in images, and the first iteration from which the training logs meet the mechanism criteria's
    target to the end (`acting_since`). Runs without decoders (λ 0) and the references have none: nothing."""
    from dinov2_eqcoh.method.config import load_config

    if run_dir is None or float(load_config(run_dir / "config.yaml").eqcoh.loss_weight) <= 0:
        return {}
    from dinov2_eqcoh.eval.reconstruction import acting_since, diagnose, training_records

    report = diagnose(run_dir / "model_final.rank_0.pth", n=DIAGNOSTIC_IMAGES)
    return {"reconstruction": {**report, "acting_since": acting_since(training_records(run_dir))}}


def frozen_reconstruction_group(name: str, backbone, size: int, args, run_dir: Path | None = None) -> dict:
    """The frozen reconstruction probe (`eval.reconstruction_probe`, v1 given, its default budget) on the pipeline of
    the run's config (the references: the experiment's config file and overrides)."""
    from dinov2_eqcoh.eval.reconstruction_probe import headline, probe_backbone
    from dinov2_eqcoh.method.config import load_config

    cfg = load_config(run_dir / "config.yaml") if run_dir is not None else load_config(args.config_file, args.opts)
    report = probe_backbone(backbone, cfg, seed=0)
    return {"frozen_reconstruction": {**headline(report), "per_k": report["per_k"]}}


PROBE_GROUPS = {"global": global_probes, "dense": dense_group, "fill_free": fill_free_group,
                "reconstruction": reconstruction_group, "frozen_reconstruction": frozen_reconstruction_group}
DIAGNOSTIC_IMAGES = 256
