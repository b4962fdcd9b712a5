# SPDX-License-Identifier: Apache-2.0
"""1. Training-step time: both models stepped alternately (ABBA), on the same batches."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from dinov2_eqcoh.experiments.bench.common import (
    Trainer,
    _sync,
    alternation,
    make_batches,
    model_class,
    render_images,
    summarize,
)
from dinov2_eqcoh.experiments.bench.presets import MODELS, log


def measure_step_time(
    cfg, *, iters: int, warmup: int, device: torch.device, seed: int, amp: str = "none", n_batches: int = 2,
    images: list | None = None,
) -> dict[str, Any]:
    """Alternating training-step times of both models (see the module docstring).

    Returns:
        {"dinov2": summary, "eqcoh": summary, "ratio_of_medians", "paired_ratio_median", "order" (model per timed
        step, in call order), "loss_keys", "last_losses", "n_batches"}.
    """
    batch_size = int(cfg.train.batch_size_per_gpu)
    n_batches = max(1, min(n_batches, iters + warmup))
    if images is None:
        images = render_images(cfg, n_batches * batch_size, int(cfg.crops.global_crops_size))
    if len(images) < n_batches * batch_size:
        raise ValueError(f"need {n_batches * batch_size} images ({n_batches} x {batch_size}), got {len(images)}")
    batches = {name: make_batches(name, cfg, images, n_batches, batch_size, seed) for name in MODELS}
    trainers = {}
    for name in MODELS:
        log(f"building {name} ({model_class(name).__name__}) on {device}")
        trainers[name] = Trainer(name, cfg, device, seed, amp)
    times: dict[str, list[float]] = {name: [] for name in MODELS}
    order: list[str] = []
    for i in range(warmup + iters):
        timed = i >= warmup
        for name in alternation(i):
            batch = batches[name][i % n_batches]
            _sync(device)
            t0 = time.perf_counter()
            trainers[name].step(batch)
            _sync(device)
            dt = time.perf_counter() - t0
            if timed:
                times[name].append(dt)
                order.append(name)
        last = {name: times[name][-1] if times[name] else float("nan") for name in MODELS}
        phase = "warm-up" if not timed else "timed"
        log(
            f"step {i + 1}/{warmup + iters} ({phase}): "
            + ", ".join(f"{name} {last[name]:.3f} s" if timed else f"{name} done" for name in alternation(i))
        )
    result: dict[str, Any] = {name: summarize(times[name]) for name in MODELS}
    result["ratio_of_medians"] = result["eqcoh"]["median_s"] / result["dinov2"]["median_s"]
    result["paired_ratio_median"] = statistics.median(e / d for e, d in zip(times["eqcoh"], times["dinov2"]))
    result["order"] = order
    result["loss_keys"] = {name: sorted(trainers[name].last_losses) for name in MODELS}
    result["last_losses"] = {name: trainers[name].last_losses for name in MODELS}
    result["n_batches"] = n_batches
    return result
