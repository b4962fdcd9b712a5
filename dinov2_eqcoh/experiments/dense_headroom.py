# SPDX-License-Identifier: Apache-2.0
"""Can a dense task tell a trained backbone from raw pixels and an untrained one?

Homography MCE (`eval.homography`, 64 px) on the built-in scenes and on crops of a photograph bundled with matplotlib;
segmentation mIoU (`eval.segmentation`, linear probe on the patch tokens, 64 px) on the colour-coded built-in
scenes (`SyntheticSeg`, where every class has its colours), on `SyntheticShapes` (classes by shape, every
instance's colour random) and on `SyntheticTextures` (classes by texture, colours and phase random), for the references (raw pixels, the untrained backbone of a config's architecture) and
trained backbones given by path. Instruments are judged on these rows only: raw pixels and untrained below a trained
baseline is the target; EqCoh checkpoints are not probed here.

    python -m dinov2_eqcoh.experiments.dense_headroom --output-dir docs/dense_headroom \\
        --weights dinov2_aug_800=out/curves/runs/dinov2_aug/eval/training_799/teacher_checkpoint.pth ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
HOMOGRAPHY_SOURCES = {"Synthetic": "built-in scenes (colour-coded)",
                      "Photos": "crops of a photograph (matplotlib's grace_hopper.jpg)"}
DATASETS = {"SyntheticSeg": "colour-coded scenes (a class has its colours)",
            "SyntheticShapes": "shapes, colour random per instance",
            "SyntheticTextures": "textures, colours and phase random per region"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("dinov2_eqcoh.experiments.dense_headroom", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="out/dense_headroom", help="where dense_headroom.json/.md go")
    p.add_argument("--config-file", default=str(REPO / "configs/demo/eqcoh_demo.yaml"),
                   help="architecture of the untrained reference (with the mechanism regime's overrides)")
    p.add_argument("--n-train", type=int, default=600, help="images (pairs) each probe is fitted on")
    p.add_argument("--n-test", type=int, default=200, help="held-out images (pairs) it is scored on")
    p.add_argument("--weights", nargs="*", default=[], help="name=checkpoint of trained baselines")
    p.add_argument("--tasks", default="seg,prop", help="comma list of seg (segmentation), prop (label propagation), "
                   "hom (homography on the built-in scenes and on crops of a bundled photograph)")
    p.add_argument("--photometric", default="0,0.6,1", help="propagation: colour drift levels of the videos")
    return p


def main(argv=None) -> int:
    from dinov2.models import build_model_from_cfg

    from dinov2_eqcoh.eval.dense import DEFAULT_SIZE
    from dinov2_eqcoh.eval.features import RawPixels
    from dinov2_eqcoh.eval.segmentation import evaluate_segmentation, make_segmentation_datasets
    from dinov2_eqcoh.experiments.registry import REGIME
    from dinov2_eqcoh.method.config import load_config
    from dinov2_eqcoh.weights.checkpoints import load_backbone

    args = get_args_parser().parse_args(argv)
    tasks = {t.strip() for t in args.tasks.split(",") if t.strip()}
    if not tasks or tasks - {"seg", "prop", "hom"}:
        raise SystemExit(f"--tasks {args.tasks!r}: a comma list of seg, prop, hom")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config_file, list(REGIME))
    torch.manual_seed(0)
    makers = {"raw_pixels": lambda: RawPixels(int(cfg.student.patch_size)),
              "untrained": lambda: build_model_from_cfg(cfg, only_teacher=True)[0]}
    for spec in args.weights:
        name, _, path = spec.partition("=")
        makers[name] = lambda path=path: load_backbone(path)[0]
    command = " ".join(["python -m dinov2_eqcoh.experiments.dense_headroom", *(argv if argv is not None else sys.argv[1:])])
    path = out / "dense_headroom.json"
    results = json.loads(path.read_text()) if path.exists() else {}  # another --tasks run into the same folder
    results.update({"size": DEFAULT_SIZE, "n_train": args.n_train, "n_test": args.n_test})
    results.setdefault("commands", {}).update({t: command for t in tasks})
    results.setdefault("miou", {})
    results.setdefault("jf", {})
    results.setdefault("mce", {})
    levels = [float(x) for x in args.photometric.split(",")]
    for name, make in makers.items():
        backbone = make()
        for level in levels if "prop" in tasks else []:
            from dinov2_eqcoh.data.synthetic_dense import SyntheticVideos
            from dinov2_eqcoh.eval.propagation import evaluate_propagation

            r = evaluate_propagation(backbone, SyntheticVideos(n=8, frames=12, size=DEFAULT_SIZE, seed=1,
                                                               photometric=level), size=DEFAULT_SIZE)
            results["jf"].setdefault(name, {})[f"{level:g}"] = r["jf_mean"]
            print(f"[dense_headroom] {name} propagation, photometric {level:g}: J&F {r['jf_mean']:.3f}", flush=True)
            path.write_text(json.dumps(results, indent=1) + "\n")
        for source in HOMOGRAPHY_SOURCES if "hom" in tasks else []:
            from dinov2_eqcoh.data.datasets import PhotoCrops
            from dinov2_eqcoh.eval.homography import evaluate_homography, image_shape, synthetic_homography_images

            n = args.n_train + args.n_test
            images = (synthetic_homography_images(n, DEFAULT_SIZE, seed=1) if source == "Synthetic"
                      else PhotoCrops(n=n, size=image_shape(DEFAULT_SIZE)[1], seed=1))
            r = evaluate_homography(backbone, images, size=DEFAULT_SIZE, n_train=args.n_train, n_test=args.n_test)
            results["mce"].setdefault(name, {})[source] = {"mce": r["mce"], "mce_zero": r["mce_zero"]}
            print(f"[dense_headroom] {name} homography on {source}: MCE {r['mce']:.2f} px (zero offsets "
                  f"{r['mce_zero']:.2f})", flush=True)
            path.write_text(json.dumps(results, indent=1) + "\n")
        for dataset in DATASETS if "seg" in tasks else []:
            t0 = time.time()
            train, test, classes, names = make_segmentation_datasets(
                f"{dataset}:n={args.n_train + args.n_test}", DEFAULT_SIZE, args.n_train, args.n_test)
            r = evaluate_segmentation(backbone, train, n_train=args.n_train, n_test=args.n_test, num_classes=classes,
                                      test_dataset=test, seed=0, class_names=names)
            results["miou"].setdefault(name, {})[dataset] = {"miou": r["miou"], "pixel_acc": r["pixel_acc"],
                                                             "seconds": time.time() - t0}
            print(f"[dense_headroom] {name} {dataset}: mIoU {r['miou']:.3f}", flush=True)
            path.write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Dense headroom: can a dense task tell trained from raw pixels and untrained?", ""]
    if results["miou"]:
        lines += ["## Segmentation mIoU: colour-coded scenes vs shapes and textures of random colour", "",
                  f"Command: `{results['commands'].get('seg', '')}`", "",
                  f"Linear probe on the patch tokens at {DEFAULT_SIZE} px, {results['n_train']} images fit, "
                  f"{results['n_test']} scored (data seed 1, probe seed 0); one fit per cell, no interval.", "",
                  "| backbone | " + " | ".join(f"{d}: {desc}" for d, desc in DATASETS.items()) + " |",
                  "|---|" + "---|" * len(DATASETS)]
        for name, by in results["miou"].items():
            lines.append(f"| {name} | " + " | ".join(f"{by[d]['miou']:.3f}" if d in by else "–" for d in DATASETS)
                         + " |")
        lines.append("")
    if results["jf"]:
        levels_seen = sorted({lv for by in results["jf"].values() for lv in by}, key=float)
        lines += ["## Label propagation J&F on the built-in videos, with colour drift over each video", "",
                  f"Command: `{results['commands'].get('prop', '')}`", "",
                  f"DINO's label propagation at {DEFAULT_SIZE} px on 8 videos of 12 frames (data seed 1); "
                  "'photometric p': by the last frame each channel is scaled by a factor in [1 - p, 1 + p] and "
                  "shifted by up to ±p/2 of the range (`SyntheticVideos(photometric=p)`).", "",
                  "| backbone | " + " | ".join(f"photometric {lv}" for lv in levels_seen) + " |",
                  "|---|" + "---|" * len(levels_seen)]
        for name, by in results["jf"].items():
            lines.append(f"| {name} | " + " | ".join(f"{by[lv]:.3f}" if lv in by else "–" for lv in levels_seen)
                         + " |")
    if results["mce"]:
        lines += ["", "## Homography MCE (px at 64 px, lower is better) on the built-in scenes and on a photograph", "",
                  f"Command: `{results['commands'].get('hom', '')}`", "",
                  f"DeTone's protocol (`eval.homography`, ρ = 16 px), {results['n_train']} pairs fit, "
                  f"{results['n_test']} scored (data seed 1, probe seed 0); in brackets the MCE of predicting no "
                  "offset. One fit per cell, no interval.", "",
                  "| backbone | " + " | ".join(f"{s}: {d}" for s, d in HOMOGRAPHY_SOURCES.items()) + " |",
                  "|---|" + "---|" * len(HOMOGRAPHY_SOURCES)]
        for name, by in results["mce"].items():
            lines.append(f"| {name} | " + " | ".join(f"{by[s]['mce']:.2f} ({by[s]['mce_zero']:.2f})" if s in by
                                                      else "–" for s in HOMOGRAPHY_SOURCES) + " |")
    (out / "dense_headroom.md").write_text("\n".join(lines) + "\n")
    print(f"[dense_headroom] wrote {out / 'dense_headroom.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
