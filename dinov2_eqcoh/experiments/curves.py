# SPDX-License-Identifier: Apache-2.0
"""Learning curves: does a gap open with training? One long run per model, probed at
log-spaced iterations, against the untrained backbone and raw pixels.

Models (the study's definitions, `experiments.registry.MODELS`), each trained once through DINOv2's own loop in the
mechanism regime (`experiments.registry.REGIME`: the demo config, decoder width 256, unmasked z_equi):

- `dinov2`, `dinov2_aug` (DINOv2 + g_θ on the second view), `eqcoh` (λ 1, K 2),
- `eqcoh_head_only`: EqCoh's head split with λ 0, which separates the loss from the extra head.

Each run keeps its teacher every `gcd(points)` iterations (`evaluation.eval_period_iterations`); at every point
the teacher backbone is probed: R² of the five transformation tasks on the CLS token and on CLS + pooled patches
(`concat`), k-NN and linear top-1 on the CLS token, and the homography probe's Mean Corner Error (the geometric
dense probe); EqCoh's runs add the decoders' diagnostics logged nearest that iteration. References, probed once:
`untrained` (the runs' architecture as DINOv2 initialises it for the seed: the curves' iteration 0) and
`raw_pixels` (`eval.features.RawPixels`).

Writes `curves.json` (every figure, the coverage), `curves.md` and `curves.png` after each probe. Resumable after
any interruption: an interrupted run resumes from its last DINOv2 checkpoint (every 150 iterations), probed points
are skipped. The folder belongs to one configuration (`curves_config.json`); another is refused by field, and a
second process into a folder one holds stops at once, naming the holder (`experiments.runner.hold_folder`).

    python -m dinov2_eqcoh.experiments.curves [--output-dir out/curves] [--models dinov2_aug,eqcoh,...]
        [--iterations 2000] [--points 50,100,200,400,800,2000] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from dinov2_eqcoh.experiments.identity import check_identity, config_fingerprint
from dinov2_eqcoh.experiments.registry import MODELS as STUDY_MODELS
from dinov2_eqcoh.experiments.registry import REGIME
from dinov2_eqcoh.experiments.runner import (
    dino_trajectory,
    hold_folder,
    logged_train_seconds,
    run_training,
    shown,
    teacher_at,
    train_command,
)
from dinov2_eqcoh.experiments.stats import get_metric

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/demo/eqcoh_demo.yaml"
MODELS = ("dinov2_aug", "eqcoh", "eqcoh_head_only", "dinov2")  # training order: the baselines' gap first
REFERENCES = ("untrained", "raw_pixels")
R2_TASKS = ("rot", "color", "blur", "trans", "se2")
# (key in a score record, label, lower is better)
PANELS = (("r2.cls.rot", "R²(rot), CLS", False), ("r2.concat.rot", "R²(rot), CLS + pooled patches", False),
          ("r2.cls.mean", "mean R², CLS", False), ("knn_top1", "k-NN top-1", False),
          ("homography.mce", "homography MCE (px)", True),
          ("dino_ratio", "DINO loss / ln K", True))


def parse_points(spec: str, iterations: int) -> list[int]:
    """'50,100,2000' -> [50, 100, 2000]: distinct, increasing, within (0, iterations], the last = iterations."""
    try:
        points = sorted({int(p) for p in spec.split(",") if p.strip()})
    except ValueError:
        raise SystemExit(f"--points {spec!r}: a comma list of iteration counts") from None
    if not points or points[0] <= 0 or points[-1] != iterations:
        raise SystemExit(f"--points {spec!r}: positive iteration counts ending at --iterations {iterations}")
    return points


def train(model: str, run_dir: Path, args, epochs: int, period: int) -> None:
    """The model's one long run through DINOv2's loop; a folder left by an interrupted run is resumed by DINOv2."""
    cmd = train_command(args.config_file, run_dir, [*REGIME, *STUDY_MODELS[model], f"train.seed={args.seed}",
                                                    f"optim.epochs={epochs}",
                                                    f"evaluation.eval_period_iterations={period}", *args.opts])
    state = "resuming" if any(run_dir.glob("last_checkpoint*")) else "training"
    print(f"[curves] {state} {model}: {' '.join(cmd[3:])}", flush=True)
    # appended: a resumed run keeps its earlier segments' log
    run_training("[curves]", model, cmd, run_dir.parent / f"{model}.train.log", append=True)


def diagnostics_at(run_dir: Path, point: int) -> dict:
    """The decoders' diagnostics of the last record logged at or before iteration point - 1 ({} for λ = 0)."""
    from dinov2_eqcoh.eval.reconstruction import training_records

    records = [r for r in training_records(run_dir) if r["iteration"] <= point - 1]
    if not records:
        return {}
    last = records[-1]
    return {"iteration": last["iteration"], **{k: v for k, v in last.items() if k.startswith("eqcoh_diag_")}}


def dino_ratio_at(run_dir: Path, point: int, n_prototypes: int, iterations: int) -> float | None:
    """DINOv2's image-level DINO term over ln K (`study.dino_trajectory`) at the last record before `point`."""

    ratio = {int(k): v for k, v in dino_trajectory(run_dir, n_prototypes, iterations).get("dino_ratio", {}).items()}
    before = [it for it in ratio if it <= point - 1]
    return ratio[max(before)] if before else None


def probe(backbone, size: int, args) -> dict:
    """R² (CLS and concat), k-NN / linear (CLS) on held-out built-in images, homography MCE; probe seed 0."""
    from dinov2_eqcoh.eval.dense import DEFAULT_SIZE
    from dinov2_eqcoh.eval.equivariance import evaluate_equivariance
    from dinov2_eqcoh.eval.features import make_eval_dataset
    from dinov2_eqcoh.eval.homography import evaluate_homography, synthetic_homography_images
    from dinov2_eqcoh.eval.invariance import evaluate_invariance, split_dataset

    seconds = {}
    t0 = time.time()
    eval_ds = make_eval_dataset(f"Synthetic:n={max(args.eval_images, args.class_images)}:size={size}:classes=10:seed=1",
                                size)
    eq = evaluate_equivariance(backbone, eval_ds, tasks=R2_TASKS, features=("cls", "concat"),
                               n_train=args.eval_images - args.eval_images // 3, n_test=args.eval_images // 3,
                               epochs=args.probe_epochs, seed=0)
    seconds["r2"] = time.time() - t0
    t0 = time.time()
    train_ds, test_ds = split_dataset(torch.utils.data.Subset(eval_ds, range(args.class_images)),
                                      test_fraction=1 / 3, seed=0)
    inv = evaluate_invariance(backbone, train_ds, test_ds, features=("cls",))
    seconds["knn_linear"] = time.time() - t0
    t0 = time.time()
    n_train, n_test = args.homography_pairs - args.homography_pairs // 4, args.homography_pairs // 4
    h = evaluate_homography(backbone, synthetic_homography_images(n_train + n_test, DEFAULT_SIZE, seed=1),
                            size=DEFAULT_SIZE, n_train=n_train, n_test=n_test, seed=0)
    seconds["homography"] = time.time() - t0
    return {"r2": {kind: {t: eq["r2"][kind][t] for t in (*R2_TASKS, "mean")} for kind in ("cls", "concat")},
            "knn_top1": inv["knn"]["cls"], "linear_top1": inv["linear"]["cls"],
            "homography": {"mce": h["mce"], "mce_zero": h["mce_zero"], "n_train": n_train, "n_test": n_test,
                           "size": DEFAULT_SIZE},
            "probe_seconds": seconds}


def scored(path: Path, make_backbone, size: int, args, extra: dict) -> dict:
    """The score at `path`, probing (and writing it atomically) only when it is not there yet."""
    if path.exists():
        return json.loads(path.read_text())
    print(f"[curves] probing {path.stem}", flush=True)
    score = {**extra, **probe(make_backbone(), size, args)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(score, indent=1) + "\n")
    os.replace(tmp, path)
    return score


def untrained_backbone(args):
    from dinov2.models import build_model_from_cfg

    from dinov2_eqcoh.method.config import load_config

    cfg = load_config(args.config_file, [*REGIME, *args.opts])
    torch.manual_seed(args.seed)  # as DINOv2 initialises a run of this seed (rank 0)
    return build_model_from_cfg(cfg, only_teacher=True)[0], cfg


# --- outputs ----------------------------------------------------------------------------------------------------

def write_outputs(out: Path, curves: dict) -> None:
    (out / "curves.json").write_text(json.dumps(curves, indent=1) + "\n")
    (out / "curves.md").write_text(report(curves))
    plot(curves, out / "curves.png")


def fmt(key: str, v) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" if key == "homography.mce" else f"{v:.3f}"  # R², k-NN fraction, DINO / ln K


def report(curves: dict) -> str:
    keys = [k for k, _, _ in PANELS]
    config = curves["config"]["config_file"]
    config = config[len(str(REPO)) + 1:] if config.startswith(str(REPO) + "/") else config
    lines = [f"# Learning curves ({config} + {' '.join(curves['config']['regime'])})", "",
             f"Command: `{curves['command']}`", "",
             f"Coverage: {curves['coverage']}", "",
             "| model | iteration | " + " | ".join(label for _, label, _ in PANELS) + " | diagnostics: D_k MSE (path) |",
             "|---|---|" + "---|" * (len(PANELS) + 1)]
    for name, ref in curves["references"].items():
        lines.append(f"| {name} | – | " + " | ".join(fmt(k, get_metric(ref, k)) for k in keys) + " | |")
    for model, points in curves["models"].items():
        for point, score in sorted(points.items(), key=lambda kv: int(kv[0])):
            diag = score.get("diagnostics", {})
            ks = sorted({int(k.split("_k")[1].split("_")[0]) for k in diag if k.startswith("eqcoh_diag_k")})
            d = ", ".join(f"D{k} {diag[f'eqcoh_diag_k{k}_mse']:.3f} ({diag[f'eqcoh_diag_k{k}_path']:.2f})" for k in ks)
            lines.append(f"| {model} | {point} | " + " | ".join(fmt(k, get_metric(score, k)) for k in keys)
                         + f" | {d} |")
    lines += ["", "Probes: " + curves["config"]["probes"], ""]
    return "\n".join(lines)


def plot(curves: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cols = math.ceil(len(PANELS) / 2)
    fig, grid = plt.subplots(2, cols, figsize=(4.2 * cols, 6.4), squeeze=False)
    axes = list(grid.flat)
    for ax, (key, label, lower) in zip(axes, PANELS):
        for model, points in curves["models"].items():
            xs = sorted(int(p) for p in points)
            ys = [get_metric(points[str(x)], key) for x in xs]
            ax.plot(xs, ys, marker="o", label=model)
        for name, style in zip(curves["references"], ("--", ":")):
            v = get_metric(curves["references"][name], key)
            if v is not None:
                ax.axhline(v, color="grey", linestyle=style, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("iteration")
        ax.set_title(label + (" ↓" if lower else ""), fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- main -------------------------------------------------------------------------------------------------------

def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("dinov2_eqcoh.experiments.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="out/curves", help="the folder of runs/, scores/, curves.json/.md/.png (default out/curves)")
    p.add_argument("--config-file", default=str(REPO / CONFIG), help="base config (the regime's overrides follow)")
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}, trained in this order")
    p.add_argument("--iterations", type=int, default=2000, help="length of each run (10× the quick demo's 200)")
    p.add_argument("--points", default="50,100,200,400,800,2000", help="iterations at which the teacher is probed")
    p.add_argument("--seed", type=int, default=0, help="training seed (train.seed) of every run")
    p.add_argument("--eval-images", type=int, default=1500, help="held-out images for the R² probes")
    p.add_argument("--class-images", type=int, default=3000, help="held-out images for k-NN and linear")
    p.add_argument("--probe-epochs", type=int, default=100, help="epochs of each R² probe")
    p.add_argument("--homography-pairs", type=int, default=800, help="image pairs of the homography probe (3/4 fit)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run, key=value")
    return p


def main(argv=None) -> int:
    from dinov2_eqcoh.method.config import load_config

    args = get_args_parser().parse_args(argv)
    out = Path(args.output_dir).resolve()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise SystemExit(f"--models: unknown {unknown or 'none given'}; allowed: {', '.join(MODELS)}")
    points = parse_points(args.points, args.iterations)
    cfg = load_config(args.config_file, [*REGIME, *args.opts])
    epoch = int(cfg.train.OFFICIAL_EPOCH_LENGTH)
    if args.iterations % epoch:
        raise SystemExit(f"--iterations {args.iterations}: a multiple of train.OFFICIAL_EPOCH_LENGTH = {epoch}")
    period = math.gcd(*points)
    identity = {"config_file": shown(args.config_file),
                **config_fingerprint(args.config_file),
                "regime": list(REGIME), "opts": list(args.opts), "iterations": args.iterations, "seed": args.seed,
                "eval_images": args.eval_images, "class_images": args.class_images, "probe_epochs": args.probe_epochs,
                "homography_pairs": args.homography_pairs}
    check_identity(out, identity, name="curves")
    hold_folder(out, "curves")
    size = int(cfg.crops.global_crops_size)
    probes = (f"R² of {', '.join(R2_TASKS)} ({args.eval_images} held-out images, 2/3 fit, {args.probe_epochs} epochs) "
              f"on CLS and CLS + pooled patches; k-NN / linear top-1 on CLS ({args.class_images} images, 1/3 scored); "
              f"homography MCE ({args.homography_pairs} pairs, 1/4 scored); probe seed 0, one training seed "
              f"({args.seed}): single runs, no interval")
    curves = {"command": " ".join(["python -m dinov2_eqcoh.experiments.curves", *(argv if argv is not None else sys.argv[1:])]),
              "config": {**identity, "probes": probes, "points": points}, "references": {}, "models": {},
              "train_seconds": {}}

    def save(coverage: str) -> None:
        curves["coverage"] = coverage
        write_outputs(out, curves)

    backbone_cfg = {}
    curves["references"]["untrained"] = scored(
        out / "scores" / "untrained.json", lambda: backbone_cfg.setdefault("b", untrained_backbone(args))[0], size,
        args, {"model": "untrained", "seed": args.seed})
    from dinov2_eqcoh.eval.features import RawPixels

    curves["references"]["raw_pixels"] = scored(out / "scores" / "raw_pixels.json",
                                                lambda: RawPixels(int(cfg.student.patch_size)), size, args,
                                                {"model": "raw_pixels"})
    done = lambda: sum(len(v) for v in curves["models"].values())  # noqa: E731
    total = len(models) * len(points)
    for i, model in enumerate(models):
        run_dir = out / "runs" / model
        final = run_dir / "model_final.rank_0.pth"
        if not final.exists():
            save(f"{done()} of {total} points probed; training {model} ({i + 1}/{len(models)})")
            train(model, run_dir, args, args.iterations // epoch, period)
        curves["train_seconds"][model] = logged_train_seconds(run_dir)  # over all its segments
        from dinov2_eqcoh.weights.checkpoints import load_backbone

        for point in points:
            path = out / "scores" / f"{model}_{point}.json"
            make = lambda p=point, d=run_dir: load_backbone(teacher_at(d, p), config_file=d / "config.yaml")[0]  # noqa: E731
            extra = {"model": model, "iteration": point, "diagnostics": diagnostics_at(run_dir, point),
                     "dino_ratio": dino_ratio_at(run_dir, point, int(cfg.dino.head_n_prototypes), args.iterations)}
            score = scored(path, make, size, args, extra)
            curves["models"].setdefault(model, {})[str(point)] = score
            save(f"{done()} of {total} points probed")
    save(f"complete: {total} points ({', '.join(models)} at {', '.join(map(str, points))} iterations)")
    print(f"[curves] wrote {out / 'curves.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
