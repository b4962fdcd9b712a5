# SPDX-License-Identifier: Apache-2.0
"""Does the fill of uncovered corners leak θ into the R² probes?

The same held-out built-in images, probed twice with the demo's R² protocol: rendered as the probes always have
(g_θ on the S px image, the corners a rotation or shift uncovers filled with zeros = mean grey) and fill-free
(g_θ on a larger canvas, the backbone sees the centred S px: `evaluate_equivariance(crop=S)`). Both see the same
S px content before g. Backbones with known answers only (never a trained EqCoh model): raw pixels, the untrained
backbone of the demo's architecture, and optionally run folders given with --weights.

    python -m dinov2_eqcoh.experiments.fill_leak --output-dir docs/fill_leak [--weights name=path ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dinov2_eqcoh.experiments.runner import shown

REPO = Path(__file__).resolve().parents[2]
TASKS = ("rot", "trans", "se2", "color", "blur")


class CenterCropped(torch.utils.data.Dataset):
    """The centred `size` px of another dataset's images (the filled rendering then sees the same content)."""

    def __init__(self, dataset, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        from dinov2_eqcoh.eval.equivariance import center_crop

        image, label = self.dataset[i]
        return center_crop(image, self.size), label


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("dinov2_eqcoh.experiments.fill_leak", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="out/fill_leak", help="where fill_leak.json/.md go (default out/fill_leak)")
    p.add_argument("--config-file", default=str(REPO / "configs/demo/eqcoh_demo.yaml"), help="architecture, crop")
    p.add_argument("--images", type=int, default=1500, help="held-out images (2/3 fit, 1/3 scored)")
    p.add_argument("--epochs", type=int, default=100, help="at most this many epochs of the R² probe (early-stopped)")
    p.add_argument("--weights", nargs="*", default=[], help="name=checkpoint of further backbones to probe")
    return p


def main(argv=None) -> int:
    from dinov2.models import build_model_from_cfg

    from dinov2_eqcoh.eval.equivariance import evaluate_equivariance, fill_free_size
    from dinov2_eqcoh.eval.features import RawPixels, make_eval_dataset
    from dinov2_eqcoh.method.config import load_config
    from dinov2_eqcoh.weights.checkpoints import load_backbone

    args = get_args_parser().parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config_file)
    size = int(cfg.crops.global_crops_size)
    canvas = fill_free_size(size)
    canvas_ds = make_eval_dataset(f"Synthetic:n={args.images}:size={canvas}:classes=10:seed=1", canvas)
    torch.manual_seed(0)
    backbones = {"raw_pixels": RawPixels(int(cfg.student.patch_size)),
                 "untrained": build_model_from_cfg(cfg, only_teacher=True)[0]}
    for spec in args.weights:
        name, _, path = spec.partition("=")
        backbones[name] = load_backbone(path)[0]
    probe = dict(tasks=TASKS, features=("cls", "concat"), n_train=args.images - args.images // 3,
                 n_test=args.images // 3, epochs=args.epochs, seed=0)
    results = {"config_file": shown(args.config_file), "size": size, "canvas": canvas, "probe": {**probe, "tasks": TASKS},
               "scores": {}}
    for name, backbone in backbones.items():
        for rendering in ("filled", "fill_free"):
            t0 = time.time()
            if rendering == "filled":
                r = evaluate_equivariance(backbone, CenterCropped(canvas_ds, size), **probe)
            else:
                r = evaluate_equivariance(backbone, canvas_ds, crop=size, **probe)
            results["scores"].setdefault(name, {})[rendering] = {"r2": r["r2"], "rendering": r["rendering"],
                                                                 "seconds": time.time() - t0}
            print(f"[fill_leak] {name} {rendering}: " + ", ".join(f"{k} {v:.3f}" for k, v in r["r2"]["cls"].items()),
                  flush=True)
            (out / "fill_leak.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [f"# Fill leak: R² with the corners filled vs fill-free ({size} px crops of {canvas} px built-in images)", "",
             "Command: `python -m dinov2_eqcoh.experiments.fill_leak " + " ".join(argv if argv is not None else sys.argv[1:])
             + "`", "",
             "| backbone | features | rendering | " + " | ".join(f"R²({t})" for t in TASKS) + " | mean R² |",
             "|---|---|---|" + "---|" * (len(TASKS) + 1)]
    for name, by in results["scores"].items():
        for kind in ("cls", "concat"):
            for rendering, r in by.items():
                lines.append(f"| {name} | {kind} | {rendering} | "
                             + " | ".join(f"{r['r2'][kind][t]:.3f}" for t in TASKS) + f" | {r['r2'][kind]['mean']:.3f} |")
    (out / "fill_leak.md").write_text("\n".join(lines) + "\n")
    print(f"[fill_leak] wrote {out / 'fill_leak.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
