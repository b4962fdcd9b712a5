"""`make demo`: what the method buys, on any machine, in one command.

Trains three models of the same budget on the built-in dataset through DINOv2's own training loop
(`python -m dinov2_eqcoh.train`, one process each, launched by `experiments.runner`):

- `dinov2`:     vanilla DINOv2 (`eqcoh.loss_weight=0 eqcoh.apply_to_view=false`: exactly SSLMetaArch),
- `dinov2_aug`: DINOv2 with g_θ applied to the second view, no reconstruction (`eqcoh.loss_weight=0`),
- `eqcoh`:      DINOv2 + EqCoh (λ 1, K 2, SE(2)),

then probes each frozen teacher backbone: the paper's synthetic equivariance tasks (R² of θ regressed from the
features of I and g(I), per g) and k-NN / linear classification (invariance), on held-out images. The same probes
run on an untrained backbone of the same architecture (the `reference` entry: what the probes read before any
training), and each run's DINO loss at the end is reported against its uniform-solution value ln K (has the
invariance term learned anything?). Writes
`report.md`, `report.json`, `r2_bars.png` and `reconstructions.png` into the output folder.

    python -m dinov2_eqcoh.experiments.demo [--output-dir out/demo] [--preset quick|regime]
        [--config-file configs/demo/eqcoh_demo.yaml] [opts]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from dinov2_eqcoh.experiments.probes import FILL_FREE_TASKS, R2_TASKS, probe_backbone
from dinov2_eqcoh.experiments.runner import shown

logger = logging.getLogger("dinov2.eqcoh.demo")

REPO = Path(__file__).resolve().parents[2]
MODELS = {
    "dinov2": ["eqcoh.loss_weight=0", "eqcoh.apply_to_view=false"],
    "dinov2_aug": ["eqcoh.loss_weight=0"],
    "eqcoh": [],
}
DESCRIPTIONS = {
    "dinov2": "vanilla DINOv2",
    "dinov2_aug": "DINOv2 + g on the second view, no reconstruction",
    "eqcoh": "DINOv2 + EqCoh (λ 1, K 2, SE(2))",
}
# budget presets, overrides for all three models: "quick" is the demo config as it is (200 iterations, decoder
# width 64: the decoders do not act yet); "regime" is where they act (docs/mechanism_regime.md: width 256, z_equi
# from an unmasked pass, 800 iterations; EqCoh's run took 17 min on 2 cores there)
def _regime() -> list[str]:
    from dinov2_eqcoh.experiments.registry import REGIME

    return [*REGIME, "optim.epochs=16"]


PRESETS = {"quick": [], "regime": _regime()}


def train_model(name: str, config_file: Path, output_dir: Path, opts: list[str]) -> float:
    """One DINOv2 training run in a subprocess; streams its progress lines; returns the wall time in seconds."""
    from dinov2_eqcoh.experiments.runner import run_training, train_command

    cmd = train_command(config_file, output_dir / name, [*MODELS[name], *opts])
    print(f"[demo] training {name} ({DESCRIPTIONS[name]}): {' '.join(cmd[1:])}", flush=True)
    return run_training("[demo]", name, cmd, output_dir / f"{name}.train.log")


def dino_loss_at_end(run_dir: Path, cfg) -> dict:
    """DINO's image-level (invariance) term at the end of training, against its uniform-solution value ln K.

    DINOv2 logs `dino_local_crops_loss` and `dino_global_crops_loss` already divided by the number of crop pairs,
    so their sum is the mean cross-entropy between teacher and student over all pairs: ln K (K = prototypes) when
    both put equal mass on every prototype, i.e. when the term carries no information about the image. Read from
    the last record of `training_metrics.json` (DINOv2 writes the median of the last 20 iterations every 10).
    """
    import math

    records = [json.loads(line) for line in (run_dir / "training_metrics.json").read_text().splitlines() if line.strip()]
    records = [r for r in records if "dino_local_crops_loss" in r and "dino_global_crops_loss" in r]
    uniform = math.log(cfg.dino.head_n_prototypes)
    if not records:
        return {"dino_loss_end": None, "dino_uniform": uniform}
    last = records[-1]
    return {"dino_loss_end": last["dino_local_crops_loss"] + last["dino_global_crops_loss"], "dino_uniform": uniform}


def evaluate_model(name: str, run_dir: Path, args) -> dict:
    """Probes of one run's teacher backbone (from its final checkpoint), plus where its DINO term ended."""
    from dinov2_eqcoh.weights.checkpoints import load_backbone

    ckpt = run_dir / "model_final.rank_0.pth"
    backbone, cfg = load_backbone(ckpt, config_file=run_dir / "config.yaml")
    return {
        "description": DESCRIPTIONS[name],
        **probe_backbone(name, backbone, cfg.crops.global_crops_size, args),
        **dino_loss_at_end(run_dir, cfg),
        "checkpoint": shown(ckpt),
        "teacher_checkpoints": sorted(shown(p) for p in run_dir.glob("eval/*/teacher_checkpoint.pth")),
    }


def evaluate_untrained(run_dir: Path, args) -> dict:
    """The same probes on an untrained backbone of the run's architecture: what the probes read before training."""
    from dinov2.models import build_model_from_cfg

    from dinov2_eqcoh.method.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    torch.manual_seed(0)  # as DINOv2's default_setup before it builds the model (seed 0 + rank; it ignores train.seed)
    backbone, _ = build_model_from_cfg(cfg, only_teacher=True)
    return {"description": "untrained backbone, same architecture (reference)",
            **probe_backbone("untrained", backbone, cfg.crops.global_crops_size, args)}


def evaluate_raw_pixels(run_dir: Path, args) -> dict:
    """The same probes on the pixels themselves (`eval.features.RawPixels`): what needs no learning at all."""
    from dinov2_eqcoh.eval.features import RawPixels
    from dinov2_eqcoh.method.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    return {"description": "raw pixels: CLS = the image flattened, patch tokens = each patch's pixels (reference)",
            **probe_backbone("raw_pixels", RawPixels(int(cfg.student.patch_size)), cfg.crops.global_crops_size,
                             args)}


@torch.no_grad()
def r2_bars(models: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = (*R2_TASKS, "mean")
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(8, 4.4))
    for i, (name, m) in enumerate(models.items()):
        xs = [t + (i - (len(models) - 1) / 2) * width for t in range(len(tasks))]
        bars = ax.bar(xs, [m["r2"][t] for t in tasks], width, label=f"{name}: {m['description']}",
                      **({"color": "0.75", "hatch": "//"} if name == "untrained" else
                         {"color": "0.45", "hatch": ".."} if name == "raw_pixels" else {}))
        ax.bar_label(bars, fmt="%.2f", fontsize=5, rotation=90, padding=2)
    ax.set_xticks(range(len(tasks)), [f"R²({t})" if t != "mean" else "mean R²" for t in tasks])
    ax.set_ylim(min(0.0, min(m["r2"][t] for m in models.values() for t in tasks)), 1.12)  # room for the labels
    ax.set_ylabel("R² on held-out images")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1, frameon=False)
    ax.set_title("Synthetic equivariance tasks: θ regressed from frozen features of (I, g(I))", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend below the axes stays whole
    plt.close(fig)


def dense_cells(m: dict) -> str:
    d = m.get("dense")
    return f"{d['mce']:.2f} | {d['jf_mean']:.3f} | {d['miou']:.3f}" if d else "– | – | –"


def write_report(report: dict, output_dir: Path, command: str) -> None:
    from dinov2_eqcoh.eval.dense import describe

    models = report["models"]
    lines = [
        "# dinov2-eqcoh demo report",
        "",
        f"Command: `{command}`  ",
        f"Machine: {report['machine']}; total {report['total_seconds'] / 60:.1f} min.",
        "",
        "| model | " + " | ".join(f"R²({t})" for t in R2_TASKS)
        + " | mean R² | k-NN top-1 | linear top-1 | MCE px ↓ | J&F | mIoU | DINO loss / ln K | train s |",
        "|---|" + "---|" * (len(R2_TASKS) + 8),
    ]
    rows = {**{f"{n} (reference)": m for n, m in report.get("reference", {}).items()}, **models}
    for name, m in rows.items():
        dino = f"{m['dino_loss_end'] / m['dino_uniform']:.3f}" if m.get("dino_loss_end") is not None else "–"
        train = f"{m['train_seconds']:.0f}" if "train_seconds" in m else "–"
        lines.append(
            f"| {name} | " + " | ".join(f"{m['r2'][t]:.3f}" for t in R2_TASKS)
            + f" | {m['r2']['mean']:.3f} | {100 * m['knn_top1']:.1f} | {100 * m['linear_top1']:.1f} | {dense_cells(m)}"
            + f" | {dino} | {train} |"
        )
    if any("r2_fill_free" in m for m in rows.values()):
        lines += ["", "The geometric R² without the fill (g_θ rendered on larger images, the backbone shown their "
                  "centre; docs/fill_leak: the fill carries translation):", "",
                  "| model | " + " | ".join(f"R²({t}) fill-free" for t in FILL_FREE_TASKS) + " |",
                  "|---|" + "---|" * len(FILL_FREE_TASKS)]
        for name, m in rows.items():
            ff = m.get("r2_fill_free")
            lines.append(f"| {name} | " + " | ".join(f"{ff[t]:.3f}" if ff else "–" for t in FILL_FREE_TASKS) + " |")
    if "eqcoh" in models and len(models) > 1:
        e = models["eqcoh"]
        lines += ["", "EqCoh against each baseline (positive = EqCoh higher):", ""]
        for name, m in models.items():
            if name != "eqcoh":
                lines.append(
                    f"- vs {name}: R²(rot) {e['r2']['rot'] - m['r2']['rot']:+.3f}, mean R² "
                    f"{e['r2']['mean'] - m['r2']['mean']:+.3f}, k-NN {100 * (e['knn_top1'] - m['knn_top1']):+.1f} points"
                )
    lines += [
        "",
        f"Features: `{report['settings']['features']}` of the frozen teacher backbone. R²: an MLP probe "
        "(2d → 1024 → 1024 → dim θ, early-stopped on a tenth of its fit split) fitted on 2/3 and scored on 1/3 of "
        f"{report['settings']['eval_images']} held-out images of the built-in dataset (seed 1, not seen in "
        "training); θ drawn from the paper's ranges; mean R² over rot, color, blur, trans as in the paper (se2 "
        f"reported, not averaged). Blur: {report.get('blur_sigma_definition', 'n/a')}. k-NN (k 20) and linear probe "
        f"on the CLS token, {report['settings']['class_images']} "
        "held-out images (2/3 reference/fit, 1/3 scored), 10 classes (chance 10 %).",
        "",
        "Dense probes (`dinov2_eqcoh.eval.dense.dense_probes`, docs/dense_probes.md): "
        + next((describe(m["dense"]) for m in rows.values() if m.get("dense")), "not run") + ".",
        "",
        "The untrained row probes a randomly initialised backbone of the same architecture: what the probes read "
        "from the images before any training. DINO loss / ln K: DINOv2's image-level (cross-view, invariance) term, "
        "median of the last 20 iterations, over its value at the uniform solution (K prototypes, equal mass on each). "
        "1.000 means that term carries no information about the image: the invariance the method is meant to "
        "counter has not been learned, so the baselines cannot have lost the θ information the untrained network has.",
        "",
        "![R² bars](r2_bars.png)",
        "",
        "![reconstructions](reconstructions.png)",
    ]
    rec = models.get("eqcoh", {}).get("reconstruction")
    if rec:
        from dinov2_eqcoh.eval.reconstruction import markdown_table

        lines += [
            "",
            "## Does the auxiliary task do its job? (eqcoh's decoders, `python -m dinov2_eqcoh.eval.reconstruction`)",
            "",
            "MSE to each target u_k (normalised pixels) of D_k's output and of θ-blind predictors: v2 itself, v2 "
            "average-pooled to the token grid, and u_k pooled to the token grid (the grid floor); shuffled v1: D_k "
            "with z_equi(v1) of another image; lands at f: the point g_{fθ}(u) of the path closest to D_k's output "
            "at the token grid (θ used: near k/(K+1); θ ignored: 1). Final student, fresh images.",
            "",
            *markdown_table(rec),
            "",
            "![diagnostics during training](diagnostics.png)",
        ]
    (output_dir / "report.md").write_text("\n".join(lines) + "\n")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("dinov2_eqcoh demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="out/demo", help="where runs, report.md/json and PNGs go (default out/demo)")
    p.add_argument("--config-file", default=str(REPO / "configs/demo/eqcoh_demo.yaml"),
                   help="the config all three runs start from (default configs/demo/eqcoh_demo.yaml)")
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                   help="quick: the demo config (200 iterations, about 15 min); regime: where the decoders act "
                        "(width 256, unmasked z_equi, 800 iterations for all three models; 41.7 min on 2 cores, "
                        "docs/demo_regime)")
    p.add_argument("--eval-images", type=int, default=3000, help="held-out images for the probes (2/3 fit, 1/3 score)")
    p.add_argument("--class-images", type=int, default=9000,
                   help="held-out images for k-NN and the linear probe (2/3 reference/fit, 1/3 score)")
    p.add_argument("--probe-epochs", type=int, default=100, help="at most this many epochs of the R² probe (early-stopped)")
    p.add_argument("--features", default="concat", choices=("cls", "avgpool", "concat"),
                   help="frozen features for the equivariance probe (concat = CLS and average-pooled patches)")
    p.add_argument("--skip-training", action="store_true", help="reuse the runs already in --output-dir")
    p.add_argument("--no-fill-free", dest="fill_free", action="store_false",
                   help="skip the fill-free R² of rot, trans, se2 (about a minute per model)")
    p.add_argument("--no-dense", dest="dense", action="store_false",
                   help="skip the dense probes (homography, propagation, segmentation; about a minute per model)")
    p.add_argument("--dense-scale", type=float, default=1.0,
                   help="multiplies the dense probes' image and video counts (1: 1600 homography pairs, 8 videos, "
                        "800 segmentation images)")
    p.add_argument("--diagnostic-images", type=int, default=256,
                   help="fresh images for the decoders' diagnostics of the eqcoh run (default 256)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for all three runs, key=value")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; allowed: {', '.join(MODELS)}")
    if not args.dense_scale > 0:
        raise SystemExit(f"--dense-scale {args.dense_scale}: must be > 0")
    if not args.skip_training:
        # DINOv2 resumes from a checkpoint it finds in --output-dir: a run of an earlier (other) config would be
        # "continued" for zero iterations and reported as this one. Refuse before anything is trained.
        stale = [output_dir / n for n in names
                 if any((output_dir / n).glob("last_checkpoint*")) or any((output_dir / n).glob("model_*.pth"))]
        if stale:
            raise SystemExit(
                f"[demo] {', '.join(map(str, stale))} already hold(s) a training run; DINOv2 would resume it instead "
                "of training anew. Use another --output-dir (make demo DEMO_OUT=...), remove those folders, or pass "
                "--skip-training to evaluate the finished runs there."
            )
    t0 = time.time()
    train_seconds = {}
    for name in names:
        if args.skip_training and (output_dir / name / "model_final.rank_0.pth").exists():
            train_seconds[name] = json.loads((output_dir / "report.json").read_text())["models"][name]["train_seconds"] \
                if (output_dir / "report.json").exists() else float("nan")
            continue
        train_seconds[name] = train_model(name, Path(args.config_file), output_dir, [*PRESETS[args.preset], *args.opts])
    models = {}
    for name in names:
        models[name] = evaluate_model(name, output_dir / name, args)
        models[name]["train_seconds"] = train_seconds[name]
        r2 = models[name]["r2"]
        print(f"[demo] {name}: R²(rot) {r2['rot']:.3f}, mean R² {r2['mean']:.3f}, "
              f"k-NN {100 * models[name]['knn_top1']:.1f} %, linear {100 * models[name]['linear_top1']:.1f} %, "
              f"DINO loss {models[name]['dino_loss_end']:.3f} (uniform: ln K = {models[name]['dino_uniform']:.3f})",
              flush=True)
    reference = {"raw_pixels": evaluate_raw_pixels(output_dir / names[0], args),
                 "untrained": evaluate_untrained(output_dir / names[0], args)}
    r2_bars({**reference, **models}, output_dir / "r2_bars.png")
    if "eqcoh" in models:
        from dinov2_eqcoh.eval.reconstruction import (
            diagnose_model,
            load_student_model,
            plot_training_diagnostics,
            reconstruction_grid,
            training_records,
        )

        run_dir = output_dir / "eqcoh"
        print("[demo] diagnosing the decoders of eqcoh (eval.reconstruction)", flush=True)
        ckpt = run_dir / "model_final.rank_0.pth"
        student, cfg, iteration = load_student_model(ckpt)  # strict: a missing or unexpected key names itself
        rec = diagnose_model(student, cfg, n=args.diagnostic_images)
        models["eqcoh"]["reconstruction"] = {**rec, "checkpoint": shown(ckpt), "iteration": iteration}
        # the numbers are in the report first; the pictures come after and lose nothing if they fail
        plot_training_diagnostics(training_records(run_dir), output_dir / "diagnostics.png",
                                  "eqcoh: the decoders' diagnostics logged during training")
        reconstruction_grid(student, cfg, output_dir / "reconstructions.png")  # eval.reconstruction
    import platform

    report = {
        "models": models,
        "reference": reference,
        "settings": {"config_file": shown(args.config_file), "preset": args.preset, "preset_opts": PRESETS[args.preset],
                     "opts": args.opts, "features": args.features,
                     "eval_images": args.eval_images, "class_images": args.class_images,
                     "probe_epochs": args.probe_epochs},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "total_seconds": time.time() - t0,
        "blur_sigma_definition": next(iter(models.values()))["equivariance"].get("blur_sigma_definition"),
    }
    (output_dir / "report.json").write_text(json.dumps(report, indent=1))
    cli = list(argv) if argv is not None else sys.argv[1:]  # `make demo` runs it with --output-dir $(DEMO_OUT)
    command = " ".join(["python -m dinov2_eqcoh.experiments.demo", *cli])
    write_report(report, output_dir, command)
    print(f"[demo] done in {report['total_seconds'] / 60:.1f} min. Report: {output_dir / 'report.md'}, "
          f"{output_dir / 'report.json'}; pictures: {output_dir / 'r2_bars.png'}, {output_dir / 'reconstructions.png'}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
