# SPDX-License-Identifier: Apache-2.0
"""2. Peak memory: one child process per model (`--memory-worker`), CUDA allocator peak or the CPU's peak RSS."""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import subprocess
import sys
from typing import Any

import torch

from dinov2_eqcoh.experiments.bench.common import Trainer, _sync, make_batches, render_images
from dinov2_eqcoh.experiments.bench.presets import MODELS, PRESETS, build_bench_cfg, log


def _proc_status_kib(key: str) -> int:
    """A `VmRSS`/`VmHWM`-style field of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS (VmHWM) to the current RSS (Linux >= 4.0: "5" > /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Child process of `measure_memory`: one model, `--memory-iters` steps, its peak memory (see module doc)."""
    device = torch.device(args.device)
    cfg = build_bench_cfg(args.preset, args.batch_size, args.opts)
    name = args.memory_worker
    batch_size = int(cfg.train.batch_size_per_gpu)
    n_batches = max(1, min(2, args.memory_iters))
    images = render_images(cfg, n_batches * batch_size, PRESETS[args.preset].image_size)
    batches = make_batches(name, cfg, images, n_batches, batch_size, args.seed)
    del images
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    reset = device.type == "cpu" and _reset_peak_rss()
    rss_before, hwm_before = _proc_status_kib("VmRSS") * 1024, _proc_status_kib("VmHWM") * 1024
    trainer = Trainer(name, cfg, device, args.seed, args.amp)
    for i in range(args.memory_iters):
        trainer.step(batches[i % n_batches])
    _sync(device)
    out: dict[str, Any] = {"model": name, "loss_keys": sorted(trainer.last_losses)}
    if device.type == "cuda":
        out.update(
            method="torch.cuda.max_memory_allocated (reset after the batches were built)",
            peak_bytes=torch.cuda.max_memory_allocated(device) - before,
        )
    else:
        hwm = _proc_status_kib("VmHWM") * 1024
        how = "reset to the RSS before the model" if reset else "NOT reset (clear_refs refused): includes import peaks"
        out.update(
            method=f"peak RSS (VmHWM, {how}) minus RSS before the model was built",
            peak_bytes=hwm - rss_before,
            peak_rss_bytes=hwm,
            rss_before_model_bytes=rss_before,
            peak_reset=reset,
            # the peak was reached while the model was built or stepped only if VmHWM grew past its start value
            peak_after_model_built=hwm > hwm_before,
        )
    return out


def measure_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of each model, one fresh child process each (`--memory-worker`), run one after the other."""
    result: dict[str, Any] = {}
    for name in MODELS:
        log(f"memory: child process for {name} ({args.memory_iters} steps)")
        cmd = [
            sys.executable, "-m", "dinov2_eqcoh.experiments.bench", "--memory-worker", name, "--preset", args.preset,
            "--device", args.device, "--seed", str(args.seed), "--memory-iters", str(args.memory_iters),
            "--amp", args.amp,
        ]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        for opt in args.opts:
            cmd += ["--opt", opt]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("MEMORY_RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(
                f"memory child for {name} failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-4000:]}"
            )
        result[name] = json.loads(lines[-1][len("MEMORY_RESULT ") :])
        log(f"memory: {name} peak {result[name]['peak_bytes'] / 2**20:.1f} MiB")
    result["method"] = result["dinov2"]["method"]
    result["ratio"] = result["eqcoh"]["peak_bytes"] / result["dinov2"]["peak_bytes"]
    if "peak_rss_bytes" in result["dinov2"]:
        result["ratio_absolute_rss"] = result["eqcoh"]["peak_rss_bytes"] / result["dinov2"]["peak_rss_bytes"]
    return result
