# SPDX-License-Identifier: Apache-2.0
"""`python -m dinov2_eqcoh.experiments.bench`: the arguments, the run of every measurement, the JSON."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from dinov2_eqcoh.experiments.bench.augmentation import measure_augmentation
from dinov2_eqcoh.experiments.bench.common import count_parameters, render_images
from dinov2_eqcoh.experiments.bench.flops import count_step_flops
from dinov2_eqcoh.experiments.bench.memory import measure_memory, memory_worker
from dinov2_eqcoh.experiments.bench.presets import MODELS, PRESETS, TARGETS, build_bench_cfg, log
from dinov2_eqcoh.experiments.bench.report import _gflops, _loadavg, format_table, machine_info
from dinov2_eqcoh.experiments.bench.step import measure_step_time


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "python -m dinov2_eqcoh.experiments.bench",
        description="Cost of DINOv2 + EqCoh against vanilla DINOv2: step time, peak memory, augmentation throughput.",
    )
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model/crop setting (default tiny)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per model (default: the preset's)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per model first (default: preset's)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch per step B (default: the preset's; vitl16 on a CPU: 2)")
    parser.add_argument("--device", default=None, choices=("cpu", "cuda"),
                        help="default: cuda when available (a GPU node), else cpu")
    parser.add_argument(
        "--amp", default=None, choices=("none", "bf16", "fp16"),
        help="autocast dtype of the steps (default: none on cpu, bf16 on cuda)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation and inputs (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the steps (default: torch's)")
    parser.add_argument("--aug-rounds", type=int, default=None, help="timed augmentation batches per pipeline")
    parser.add_argument("--memory-iters", type=int, default=2, help="steps per model in the memory child (default 2)")
    parser.add_argument("--skip", action="append", default=[], choices=("step", "memory", "augmentation", "flops"),
                        help="leave a measurement out (repeatable)")
    parser.add_argument("--opt", dest="opts", action="append", default=[], metavar="KEY=VALUE",
                        help="the same as a positional KEY=VALUE (kept for older commands; repeatable)")
    parser.add_argument("--output", default=None, help="JSON file (default out/bench/bench_<preset>_<device>.json)")
    parser.add_argument("--memory-worker", default=None, choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides for both models, as every other tool takes them (e.g. "
                             "eqcoh.decoder.dim=128)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Fill the preset's defaults and reject impossible values with a message naming the option."""
    p = PRESETS[args.preset]
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise SystemExit(f"config overrides must be KEY=VALUE, got {bad}")
    args.opts = [*args.opts, *args.overrides]
    args.overrides = []
    if args.device is None:  # a GPU node benchmarks its GPU unless told otherwise
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.batch_size is None and args.device == "cpu" and p.cpu_batch_size:
        args.batch_size = p.cpu_batch_size  # passed on to the memory children too
    args.iters = p.iters if args.iters is None else args.iters
    args.warmup = p.warmup if args.warmup is None else args.warmup
    args.aug_rounds = p.aug_rounds if args.aug_rounds is None else args.aug_rounds
    args.amp = args.amp or ("bf16" if args.device == "cuda" else "none")
    for opt, value, low in (("--iters", args.iters, 1), ("--warmup", args.warmup, 0),
                            ("--aug-rounds", args.aug_rounds, 1), ("--memory-iters", args.memory_iters, 1),
                            ("--batch-size", args.batch_size if args.batch_size is not None else 1, 1)):
        if value < low:
            raise SystemExit(f"error: {opt} = {value} must be >= {low}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device (torch.cuda.is_available() is False)")


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """All three measurements; returns the report (also what is written to JSON)."""
    device = torch.device(args.device)
    cfg = build_bench_cfg(args.preset, args.batch_size, args.opts)
    preset = PRESETS[args.preset]
    batch_size = int(cfg.train.batch_size_per_gpu)
    report: dict[str, Any] = {
        "preset": args.preset,
        "description": preset.description,
        "device": args.device,
        "amp": args.amp,
        "command": shlex.join([Path(sys.executable).name, "-m", "dinov2_eqcoh.experiments.bench", *sys.argv[1:]]),
        "batch_size": batch_size,
        "iters": args.iters,
        "warmup": args.warmup,
        "seed": args.seed,
        "config_opts": list(preset.opts) + list(args.opts),
        "eqcoh": {k: cfg.eqcoh[k] for k in ("loss_weight", "n_intermediate", "d_patch", "d_equi", "transform")}
        | {"decoder_dim": cfg.eqcoh.decoder.dim},
        "machine": machine_info(device),
        "targets": dict(TARGETS),
    }
    log(f"preset {args.preset}: {preset.description}; batch {batch_size}, device {device}, "
        f"loadavg {report['machine']['loadavg']}")
    report["parameters"] = count_parameters(cfg)
    log(f"parameters (student): dinov2 {report['parameters']['dinov2']['student'] / 1e6:.2f} M, "
        f"eqcoh {report['parameters']['eqcoh']['student'] / 1e6:.2f} M")

    n_images = max(2 * batch_size, batch_size * min(4, args.aug_rounds))
    images = render_images(cfg, n_images, preset.image_size)
    if "flops" not in args.skip:
        report["flops"] = count_step_flops(cfg, images, args.seed)
        log(f"FLOPs of one forward_backward (meta device): dinov2 {_gflops(report['flops']['dinov2']['total'])} G, "
            f"eqcoh {_gflops(report['flops']['eqcoh']['total'])} G, ratio {report['flops']['ratio']:.3f}")
    if "augmentation" not in args.skip:
        log(f"augmentation: {args.aug_rounds} batches of {batch_size} x {preset.image_size} px images per pipeline")
        report["augmentation"] = measure_augmentation(
            cfg, images, rounds=args.aug_rounds, warmup=1, batch_size=batch_size, seed=args.seed
        )
    if "step" not in args.skip:
        log(f"step time: {args.warmup} warm-up + {args.iters} timed steps per model, alternating")
        report["step_time"] = measure_step_time(
            cfg, iters=args.iters, warmup=args.warmup, device=device, seed=args.seed, amp=args.amp, images=images
        )
    if "memory" not in args.skip:
        report["memory"] = measure_memory(args)
    report["machine"]["loadavg_end"] = _loadavg()
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = get_args_parser().parse_args(argv)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # DINOv2's torch.cuda.amp / weight_norm notices
    warnings.filterwarnings("ignore", message=".*xFormers.*")
    if args.memory_worker:
        print("MEMORY_RESULT " + json.dumps(memory_worker(args)), flush=True)
        return None
    report = run_benchmark(args)
    output = Path(args.output or f"out/bench/bench_{args.preset}_{args.device}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report), flush=True)
    log(f"wrote {output}")
    return report
