# SPDX-License-Identifier: Apache-2.0
"""3. Augmentation throughput per data-loader worker: DINOv2's pipeline against the plugin's, one thread."""

from __future__ import annotations

import time
from typing import Any

import torch

from dinov2_eqcoh.experiments.bench.common import alternation, build_pipeline, seed_all, summarize
from dinov2_eqcoh.experiments.bench.presets import MODELS, log


def measure_augmentation(cfg, images: list, *, rounds: int, warmup: int, batch_size: int, seed: int) -> dict[str, Any]:
    """Samples per second of each pipeline (transform of every image + collate), one thread, alternating ABBA.

    Each round feeds the same `batch_size` images to both pipelines under the same seed. DINOv2's `do_train` collates
    to torch.half; so does this.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipelines = {name: build_pipeline(name, cfg, torch.half) for name in MODELS}
        times: dict[str, list[float]] = {name: [] for name in MODELS}
        order: list[str] = []
        keys: dict[str, list[str]] = {}
        n_chunks = max(1, len(images) // batch_size)
        for i in range(warmup + rounds):
            chunk_index = i % n_chunks
            chunk = images[chunk_index * batch_size : (chunk_index + 1) * batch_size]
            for name in alternation(i):
                transform, collate = pipelines[name]
                seed_all(seed + i)
                t0 = time.perf_counter()
                batch = collate([(transform(img), ()) for img in chunk])
                dt = time.perf_counter() - t0
                keys[name] = sorted(batch)
                if i >= warmup:
                    times[name].append(dt)
                    order.append(name)
        log(f"augmentation: {rounds} timed batches of {batch_size} per pipeline done")
    finally:
        torch.set_num_threads(threads)
    result: dict[str, Any] = {}
    for name in MODELS:
        s = summarize(times[name])
        s["samples_per_s_median"] = batch_size / s["median_s"]
        s["batch_keys"] = keys[name]
        result[name] = s
    result["ratio"] = result["eqcoh"]["samples_per_s_median"] / result["dinov2"]["samples_per_s_median"]
    result["order"] = order
    result["batch_size"] = batch_size
    result["threads"] = 1
    return result
