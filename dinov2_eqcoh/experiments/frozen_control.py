# SPDX-License-Identifier: Apache-2.0
"""Does the reconstruction task ask anything of the backbone? The frozen-backbone control, resumable.

    python -m dinov2_eqcoh.experiments.frozen_control [--output-dir out/frozen_control] [--seeds 2] [--arms given,zeroed]

For each training seed s: trains (through `experiments.runner`, DINOv2's loop) EqCoh and its head-only twin (the
same head split, λ 0) in the mechanism regime (`experiments.registry.REGIME`, 800 iterations), then fits the frozen
reconstruction probe (`eval.reconstruction_probe`: fresh z_equi rows of a head and fresh decoders of the regime's
width, 800 iterations, the backbone never updated) on three frozen backbones: the untrained one (initialised as
DINOv2 does with seed s), the head-only twin's teacher and EqCoh's own teacher; each with v1 given and v1 zeroed
(the decoders then read v2 alone). Beside them: the jointly trained EqCoh's own decoders on the same kind of
held-out items (`eval.reconstruction.diagnose`), and raw pixels once. If a frozen untrained backbone reaches the
jointly trained EqCoh's figures, the task asks nothing of the backbone at this scale.

Writes `frozen_control.json` (every figure) and `frozen_control.md` (the table) after each item; rerunning skips
what is done (`scores/*.json`) and resumes a run in flight (DINOv2 resumes its checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from dinov2_eqcoh.experiments.registry import MODELS, REGIME
from dinov2_eqcoh.experiments.runner import hold_folder, run_training, shown, train_command
from dinov2_eqcoh.experiments.stats import interval

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/demo/eqcoh_demo.yaml"
TRAINED = ("eqcoh_head_only", "eqcoh")  # trained in the regime, cheapest first
BACKBONES = ("untrained", "eqcoh_head_only", "eqcoh")
EPOCHS = 16  # × 50 iterations = 800, the regime study's budget


def run_dir(out: Path, model: str, seed: int) -> Path:
    return out / "runs" / f"{model}_s{seed}"


def train(out: Path, model: str, seed: int) -> None:
    """The run in the regime (resumed by DINOv2 when interrupted); nothing when its final checkpoint exists."""
    folder = run_dir(out, model, seed)
    if (folder / "model_final.rank_0.pth").is_file():
        return
    cmd = train_command(REPO / CONFIG, folder, [*REGIME, *MODELS[model], f"train.seed={seed}", f"optim.epochs={EPOCHS}",
                                                f"evaluation.eval_period_iterations={EPOCHS * 50}"])
    print(f"[frozen] training {folder.name}", flush=True)
    run_training("[frozen]", folder.name, cmd, out / "runs" / f"{folder.name}.train.log", append=True)


def pipeline_config(out: Path, seed: int):
    """The regime's EqCoh config (the pipeline, K, decoder width) as the seed's EqCoh run was trained with."""
    from dinov2_eqcoh.method.config import load_config

    return load_config(run_dir(out, "eqcoh", seed) / "config.yaml")


def backbone(out: Path, name: str, seed: int, cfg):
    import torch

    if name == "raw_pixels":
        from dinov2_eqcoh.eval.features import RawPixels

        return RawPixels(int(cfg.student.patch_size))
    if name == "untrained":
        from dinov2.models import build_model_from_cfg

        torch.manual_seed(seed)
        return build_model_from_cfg(cfg, only_teacher=True)[0]
    from dinov2_eqcoh.weights.checkpoints import load_backbone

    folder = run_dir(out, name, seed)
    return load_backbone(folder / "model_final.rank_0.pth", config_file=folder / "config.yaml")[0]  # the teacher


def save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def probe_item(out: Path, name: str, seed: int, arm: str, args) -> dict:
    from dinov2_eqcoh.eval.reconstruction_probe import probe_backbone

    path = out / "scores" / f"{name}_s{seed}_{arm}.json"
    if path.is_file():
        return json.loads(path.read_text())
    import torch

    torch.set_num_threads(os.cpu_count() or 1)  # no training beside the probe: every core (training uses one)
    cfg = pipeline_config(out, seed)
    print(f"[frozen] probing {name} (seed {seed}), v1 {arm}", flush=True)
    report = probe_backbone(backbone(out, name, seed, cfg), cfg, v1=arm, iterations=args.iterations,
                            batch_size=args.batch_size, pool=args.pool, n_eval=args.n_eval, seed=seed)
    report.update(backbone=name, training_seed=seed)
    save(path, report)
    return report


def joint_item(out: Path, seed: int) -> dict:
    """The jointly trained EqCoh's own decoders (its student) on fresh items of its pipeline."""
    from dinov2_eqcoh.eval.reconstruction import diagnose

    path = out / "scores" / f"joint_eqcoh_s{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    print(f"[frozen] diagnosing the jointly trained eqcoh (seed {seed})", flush=True)
    report = diagnose(run_dir(out, "eqcoh", seed) / "model_final.rank_0.pth", n=512)
    report.update(backbone="joint eqcoh", training_seed=seed, checkpoint=shown(report["checkpoint"]))
    save(path, report)
    return report


def summary(items: list[dict]) -> dict:
    """Per (backbone, arm) and k: MSE, MSE / mean-target MSE, path position over seeds (mean and 95 % interval)."""
    groups: dict[str, list[dict]] = {}
    for it in items:
        key = it["backbone"] if it["backbone"] == "joint eqcoh" else f"{it['backbone']}, v1 {it['v1']}"
        groups.setdefault(key, []).append(it)
    out = {}
    for key, reps in groups.items():
        K = len(reps[0]["per_k"])
        out[key] = {"seeds": sorted(r.get("training_seed", 0) for r in reps), "per_k": []}
        for k in range(K):
            rows = [r["per_k"][k] for r in reps]
            entry = {"k": k + 1, "mse": interval([r["mse"] for r in rows]),
                     "path_position": interval([r["path_position"] for r in rows]),
                     "copy_v2": interval([r["copy_v2"] for r in rows]),
                     "pooled_v2": interval([r["pooled_v2"] for r in rows])}
            if all("mean_target" in r for r in rows):
                entry["mean_target"] = interval([r["mean_target"] for r in rows])
            out[key]["per_k"].append(entry)
    return out


def _cell(iv: dict, digits: int = 3) -> str:
    if iv["n"] > 1:
        return f"{iv['mean']:.{digits}f} ± {iv['half_width']:.{digits}f}"
    return f"{iv['mean']:.{digits}f}"


def write_report(out: Path, items: list[dict], planned: int, command: str) -> None:
    s = summary(items)
    lines = ["# Frozen-backbone control: does the reconstruction ask anything of the backbone?", "",
             f"Command: `{command}`  ", f"Items done: {len(items)} of {planned}. Mean over training seeds "
             "± half-width of the 95 % t-interval (one value: one seed). MSE in the crops' normalised pixel space on "
             "held-out items; path: where D_k lands between u (0) and v2 (1), target k/(K+1).", "",
             "| backbone, arm | seeds | " + " | ".join(f"D_{k} MSE | D_{k} path" for k in (1, 2)) +
             " | copy v2 (k 1 / 2) | mean image (k 1 / 2) |",
             "|---|---|" + "---|---|" * 2 + "---|---|"]
    for key, g in s.items():
        rows = g["per_k"]
        cells = " | ".join(f"{_cell(r['mse'])} | {_cell(r['path_position'], 2)}" for r in rows[:2])
        copy = " / ".join(f"{r['copy_v2']['mean']:.3f}" for r in rows[:2])
        mean = " / ".join(f"{r['mean_target']['mean']:.3f}" for r in rows[:2]) if "mean_target" in rows[0] else "–"
        lines.append(f"| {key} | {','.join(map(str, g['seeds']))} | {cells} | {copy} | {mean} |")
    (out / "frozen_control.md").write_text("\n".join(lines) + "\n")
    save(out / "frozen_control.json", {"summary": s, "items": items, "planned": planned, "command": command})


def get_args_parser() -> argparse.ArgumentParser:
    from dinov2_eqcoh.eval.reconstruction_probe import BATCH_SIZE, ITERATIONS, N_EVAL, POOL

    p = argparse.ArgumentParser("python -m dinov2_eqcoh.experiments.frozen_control",
                                description="Train EqCoh and its head-only twin in the mechanism regime, then fit the "
                                            "frozen reconstruction probe on the untrained, head-only and EqCoh "
                                            "backbones, with v1 given and zeroed. Resumable.")
    p.add_argument("--output-dir", default="out/frozen_control", help="the experiment's folder (runs, scores, report)")
    p.add_argument("--seeds", type=int, default=2, help="training seeds 0..N-1 (default 2)")
    p.add_argument("--arms", default="given,zeroed", help="v1 arms of the probe (default given,zeroed)")
    p.add_argument("--iterations", type=int, default=ITERATIONS, help=f"probe steps (default {ITERATIONS})")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"probe batch (default {BATCH_SIZE})")
    p.add_argument("--pool", type=int, default=POOL, help=f"probe training items (default {POOL})")
    p.add_argument("--n-eval", type=int, default=N_EVAL, help=f"held-out items (default {N_EVAL})")
    return p


def main(argv=None) -> int:
    from dinov2_eqcoh.eval.reconstruction_probe import V1_ARMS

    args = get_args_parser().parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or any(a not in V1_ARMS for a in arms):
        raise SystemExit(f"--arms {args.arms}: a comma list of {', '.join(V1_ARMS)}")
    if args.seeds < 1:
        raise SystemExit(f"--seeds {args.seeds}: must be >= 1")
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    hold_folder(out, "frozen")
    command = "python -m dinov2_eqcoh.experiments.frozen_control " + " ".join(sys.argv[1:] if argv is None else argv)
    seeds = list(range(args.seeds))
    planned = len(seeds) * (len(BACKBONES) * len(arms) + 1) + len(arms)
    items: list[dict] = []
    t0 = time.time()
    for seed in seeds:
        for model in TRAINED:
            train(out, model, seed)
        items.append(joint_item(out, seed))
        write_report(out, items, planned, command)
        for name in BACKBONES:
            for arm in arms:
                items.append(probe_item(out, name, seed, arm, args))
                write_report(out, items, planned, command)
    for arm in arms:
        items.append(probe_item(out, "raw_pixels", 0, arm, args))
        write_report(out, items, planned, command)
    print(f"[frozen] done in {(time.time() - t0) / 60:.1f} min: {out / 'frozen_control.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
