# SPDX-License-Identifier: Apache-2.0
"""The learned-invariance criterion on a baseline's learning curve (never on EqCoh's).

Does training a baseline destroy rotation information? At each kept teacher of a run (the learning-curve runs of
`experiments.curves`), R²(rot) on the CLS token is probed with several probe seeds (image subset, θ draws, probe
initialisation), as is the untrained backbone of the same architecture (seed-0 initialisation, as the curves'
reference). The criterion holds at a checkpoint when the untrained − trained difference, paired by probe seed,
has a 95 % t-interval above 0, i.e. the loss exceeds the probe-seed spread. One training run: a statement about
this run, not over training seeds.

    python -m dinov2_eqcoh.experiments.invariance_criterion --run-dir out/curves/runs/dinov2_aug \\
        [--points 100,200,400,800] [--probe-seeds 0,1,2,3] [--output docs/curves/invariance_criterion.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    from dinov2.models import build_model_from_cfg

    from dinov2_eqcoh.eval.equivariance import evaluate_equivariance
    from dinov2_eqcoh.eval.features import make_eval_dataset
    from dinov2_eqcoh.experiments.runner import teacher_at
    from dinov2_eqcoh.experiments.stats import interval
    from dinov2_eqcoh.method.config import load_config
    from dinov2_eqcoh.weights.checkpoints import load_backbone

    p = argparse.ArgumentParser("dinov2_eqcoh.experiments.invariance_criterion", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="a curves run folder (eval/training_N/teacher_checkpoint.pth)")
    p.add_argument("--points", default="100,200,400,800", help="iterations whose kept teacher is probed")
    p.add_argument("--probe-seeds", default="0,1,2,3")
    p.add_argument("--images", type=int, default=1500, help="held-out images per probe (2/3 fit, 1/3 scored)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--output", default=None, help="JSON (default <run-dir>/invariance_criterion.json); .md beside it")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    cfg = load_config(run_dir / "config.yaml")
    size = int(cfg.crops.global_crops_size)
    points = [int(x) for x in args.points.split(",")]
    seeds = [int(x) for x in args.probe_seeds.split(",")]
    # the curves' probe images: data seed 1, as many as their class probes drew (3000), a seeded subset per probe
    dataset = make_eval_dataset(f"Synthetic:n={2 * args.images}:size={size}:classes=10:seed=1", size)
    torch.manual_seed(0)
    makers = {"untrained": lambda: build_model_from_cfg(cfg, only_teacher=True)[0]}
    for point in points:
        makers[str(point)] = lambda pt=point: load_backbone(teacher_at(run_dir, pt), config_file=run_dir / "config.yaml")[0]
    r2: dict[str, dict[str, float]] = {}
    for name, make in makers.items():
        backbone = make()
        for seed in seeds:
            r = evaluate_equivariance(backbone, dataset, tasks=("rot",), features=("cls",),
                                      n_train=args.images - args.images // 3, n_test=args.images // 3,
                                      epochs=args.epochs, seed=seed)
            r2.setdefault(name, {})[str(seed)] = r["r2"]["cls"]["rot"]
            print(f"[criterion] {name} probe seed {seed}: R²(rot) CLS {r2[name][str(seed)]:.4f}", flush=True)
    rows = {}
    for point in points:
        diffs = [r2["untrained"][str(s)] - r2[str(point)][str(s)] for s in seeds]
        iv = interval(diffs)
        rows[str(point)] = {"r2": interval(list(r2[str(point)].values())), "untrained_minus_trained": iv,
                            "holds": bool(iv["ci95"][0] > 0)}
    result = {"run_dir": str(run_dir), "points": points, "probe_seeds": seeds, "r2_rot_cls": r2,
              "untrained": interval(list(r2["untrained"].values())), "by_point": rows,
              "command": " ".join(["python -m dinov2_eqcoh.experiments.invariance_criterion",
                                   *(argv if argv is not None else sys.argv[1:])])}
    out = Path(args.output) if args.output else run_dir / "invariance_criterion.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    u = result["untrained"]
    lines = [f"# Learned invariance on {run_dir.name}: R²(rot) on the CLS token, {len(seeds)} probe seeds", "",
             f"Command: `{result['command']}`", "",
             f"Untrained backbone: {u['mean']:.3f} (probe-seed sd {u['sd']:.3f}).", "",
             "| iteration | R²(rot) CLS, mean (sd) | untrained − trained, paired by probe seed (95 % interval) | holds |",
             "|---|---|---|---|"]
    for point, row in rows.items():
        d = row["untrained_minus_trained"]
        lines.append(f"| {point} | {row['r2']['mean']:.3f} ({row['r2']['sd']:.3f}) | {d['mean']:+.3f} "
                     f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | {'yes' if row['holds'] else 'no'} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"[criterion] wrote {out} and {out.with_suffix('.md')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
