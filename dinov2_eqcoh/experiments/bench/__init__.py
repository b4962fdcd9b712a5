# SPDX-License-Identifier: Apache-2.0
"""What the method costs: DINOv2 + EqCoh against vanilla DINOv2, side by side, in one run.

    python -m dinov2_eqcoh.experiments.bench [--preset tiny|vits14|vitl16] [--iters N --warmup W --batch-size B]
        [--device cpu|cuda] [--output F.json]

The paper reports +7.2 % time per epoch for DINOv2 ViT-L/16 (750 -> 804 s) [0]. Three measurements, all with the
same config, batch and seed for both models:

1. Training-step time. One step is what DINOv2's `do_train` does per iteration: apply the schedules, zero the
   gradients, `forward_backward`, clip the gradient norm of every student module, AdamW step, EMA `update_teacher`,
   `.item()` of the losses. The modules are plain (no FSDP, which on one process only adds wrapper overhead), fp32 on
   CPU; on CUDA the same plain modules under bf16 autocast (`--amp`). The two models run ALTERNATELY, step by step,
   in ABBA order (DINOv2 first on even iterations, EqCoh first on odd ones), so that machine drift and load from
   other processes fall on both alike. Reported: median, quartiles and min/max of each, the ratio of the medians,
   and the median of the per-iteration (paired) ratios.
2. Peak memory, one child process per model, each building the model and running `--memory-iters` steps. CUDA:
   `torch.cuda.max_memory_allocated` (reset after the batches are built): parameters, gradients, AdamW state,
   teacher, activations. CPU: torch has no allocator statistics for the CPU, so the child resets the kernel's peak
   resident set size (VmHWM, via /proc/self/clear_refs) just before it builds the model (after the imports and the
   batches) and reports that peak minus the RSS at that moment: the physical memory that the model, gradients,
   AdamW state, teacher and the steps' activations and allocator caches added. The absolute peaks are reported too.
3. Augmentation throughput per data-loader worker (one process, `torch.set_num_threads(1)`): samples per second of
   DINOv2's `DataAugmentationDINO` + `collate_data_and_cast` against the plugin's `build_data_transform(cfg)` +
   `build_collate_fn(cfg, torch.half)` (as `do_train` builds them), on the same pre-rendered images of the built-in
   `Synthetic` dataset, with the same `random`/`torch`/`numpy` seed for both, alternating batch by batch. The
   plugin's worker only draws θ; v2 = g_θ(u) and the targets u_k are rendered on the training device inside
   `EqCohMetaArch.forward_backward`, so that work counts in the step time (and the peak memory), not here.

Also reported, independent of machine load: parameter counts, and the matmul/conv/attention FLOPs of one
`forward_backward` of each model (counted with `torch.utils.flop_counter` on the meta device, so the vitl16 preset
gets a figure on any machine: `--skip step --skip memory --skip augmentation`).

Output: progress while it runs, a table on stdout and a JSON file (`--output`, default
`out/bench/bench_<preset>_<device>.json`). Targets (docs/benchmarks.md): step-time ratio <= counted FLOP
ratio + 0.02 (vits14 and vitl16) and <= 1.10 (vits14, CPU), memory ratio <= 1.10, augmentation throughput ratio
>= 0.95.

One module per concern: `presets` (the settings and the config), `common` (models, batches, one step), `step`,
`flops`, `memory`, `augmentation`, `report` (machine and table), `cli` (this command).

- [0]: Wang et al., AAAI-26, https://arxiv.org/abs/2503.18753
"""

from __future__ import annotations

from dinov2_eqcoh.experiments.bench.augmentation import measure_augmentation
from dinov2_eqcoh.experiments.bench.cli import check_args, get_args_parser, main, run_benchmark
from dinov2_eqcoh.experiments.bench.common import (
    Trainer,
    alternation,
    build_model,
    build_pipeline,
    count_parameters,
    make_batches,
    model_class,
    render_images,
    seed_all,
    summarize,
)
from dinov2_eqcoh.experiments.bench.flops import count_step_flops
from dinov2_eqcoh.experiments.bench.memory import measure_memory, memory_worker
from dinov2_eqcoh.experiments.bench.presets import MODELS, PRESETS, TARGETS, Preset, build_bench_cfg, log
from dinov2_eqcoh.experiments.bench.report import format_table, machine_info
from dinov2_eqcoh.experiments.bench.step import measure_step_time

__all__ = [
    "MODELS", "PRESETS", "TARGETS", "Preset", "Trainer", "alternation", "build_bench_cfg", "build_model",
    "build_pipeline", "check_args", "count_parameters", "count_step_flops", "format_table", "get_args_parser",
    "log", "machine_info", "main", "make_batches", "measure_augmentation", "measure_memory", "measure_step_time",
    "memory_worker", "model_class", "render_images", "run_benchmark", "seed_all", "summarize",
]
