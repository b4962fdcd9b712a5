# SPDX-License-Identifier: Apache-2.0
"""What the method costs: DINOv2 + EqCoh against vanilla DINOv2, side by side, in one run.

    python -m dinov2_eqcoh.bench [--preset tiny|vits14|vitl16] [--iters N --warmup W --batch-size B]
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
`out/bench/bench_<preset>_<device>.json`). Targets (docs/benchmarks.md, issue 14): step-time ratio <= counted FLOP
ratio + 0.02 (vits14 and vitl16) and <= 1.10 (vits14, CPU), memory ratio <= 1.10, augmentation throughput ratio
>= 0.95.

- [0]: Wang et al., AAAI-26, https://arxiv.org/abs/2503.18753
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

MODELS = ("dinov2", "eqcoh")  # vanilla SSLMetaArch, EqCohMetaArch
TARGETS = {
    "step_time_ratio_max": 1.10,
    "step_over_flop_ratio_max": 0.02,  # step-time ratio minus the counted FLOP ratio: the step at its FLOP floor
    "memory_ratio_max": 1.10,
    "augmentation_ratio_min": 0.95,
}


@dataclass(frozen=True)
class Preset:
    """One benchmark setting: config dotlist (over DINOv2's + the plugin's defaults) and run sizes.

    Attributes:
        opts: Dotlist applied to the config; the same config builds both models (DINOv2's SSLMetaArch ignores
            `eqcoh.*`).
        batch_size: Default batch per step B.
        iters: Default timed steps per model.
        warmup: Default untimed steps per model before the timed ones.
        image_size: Side of the `Synthetic` images fed to both augmentations.
        aug_rounds: Default number of timed augmentation batches per pipeline.
        description: One line for the table and the docs.
        cpu_batch_size: Default batch on `--device cpu`, where it differs from `batch_size` (a GPU's batch that a
            CPU cannot step in reasonable time or memory); None: `batch_size` on every device.
    """

    opts: tuple[str, ...]
    batch_size: int
    iters: int
    warmup: int
    image_size: int
    aug_rounds: int
    description: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    cpu_batch_size: int | None = None


# plain fp32 modules: no fp16 loss scaling (DINOv2 scales the loss for its fp16 FSDP compute)
_COMMON = ("compute_precision.grad_scaler=false",)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        opts=_COMMON
        + (
            "student.arch=dinov2_eqcoh.models:vit_test",
            "student.patch_size=8",
            "student.drop_path_rate=0.1",
            "crops.global_crops_size=32",
            "crops.local_crops_size=16",
            "crops.local_crops_number=2",
            "dino.head_n_prototypes=64",
            "dino.head_bottleneck_dim=16",
            "dino.head_hidden_dim=32",
            "ibot.head_n_prototypes=64",
            "ibot.head_bottleneck_dim=16",
            "ibot.head_hidden_dim=32",
            "eqcoh.d_patch=64",
            "eqcoh.d_equi=16",
            "eqcoh.decoder.dim=32",
        ),
        batch_size=4,
        iters=20,
        warmup=3,
        image_size=48,
        aug_rounds=20,
        description="vit_test (64-d, 2 blocks, patch 8), crops 2x32 + 2x16 px, heads 64 prototypes, "
        "d_patch 64 / d_equi 16, C 32, K 2, SE(2)",
    ),
    "vits14": Preset(
        opts=_COMMON
        + (
            "student.arch=vit_small",
            "student.patch_size=14",
            "crops.global_crops_size=224",
            "crops.local_crops_size=98",
            "crops.local_crops_number=8",
        ),
        batch_size=8,
        iters=10,
        warmup=2,
        image_size=224,
        aug_rounds=10,
        description="ViT-S/14, crops 2x224 + 8x98 px, DINOv2's heads (65536 prototypes, hidden 2048, bottleneck 256), "
        "d_patch 2048 / d_equi 512, C 256, K 2, SE(2) (the paper's DINOv2 settings)",
    ),
    "vitl16": Preset(
        opts=_COMMON
        + (
            "student.arch=vit_large",
            "student.patch_size=16",
            "crops.global_crops_size=224",
            "crops.local_crops_size=96",
            "crops.local_crops_number=8",
        ),
        batch_size=32,
        iters=20,
        warmup=3,
        image_size=224,
        aug_rounds=10,
        description="ViT-L/16, crops 2x224 + 8x96 px, DINOv2's heads, d_patch 2048 / d_equi 512, C 256, K 2, SE(2): "
        "the paper's DINOv2 setting (batch 32 per GPU; batch 2 on a CPU)",
        cpu_batch_size=2,
    ),
}


def log(msg: str) -> None:
    """Progress line (stdout, flushed)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- config and models


def build_bench_cfg(preset: str, batch_size: int | None = None, extra_opts: Sequence[str] = ()):
    """The one config both models are built from: DINOv2's defaults <- plugin defaults <- preset <- extra opts.

    Args:
        preset: A key of PRESETS.
        batch_size: `train.batch_size_per_gpu` (None: the preset's).
        extra_opts: More `key=value` overrides (validated like the command line of a training run).
    """
    from dinov2.configs import dinov2_default_config
    from omegaconf import OmegaConf

    from dinov2_eqcoh.config import build_cfg

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: allowed {', '.join(PRESETS)}")
    p = PRESETS[preset]
    opts = list(p.opts) + [
        f"train.batch_size_per_gpu={batch_size or p.batch_size}",
        f"train.dataset_path=Synthetic:n=256:size={p.image_size}:classes=10:seed=0",
        "train.meta_arch=dinov2_eqcoh.meta_arch:EqCohMetaArch",
        "eqcoh.loss_weight=1.0",
        *extra_opts,
    ]
    return build_cfg(
        OmegaConf.create(dinov2_default_config), OmegaConf.create({}), OmegaConf.from_dotlist(opts),
        file_name=f"preset {preset}",
    )


def model_class(name: str):
    """The meta-architecture of `name`: DINOv2's SSLMetaArch ("dinov2") or the plugin's EqCohMetaArch ("eqcoh")."""
    if name == "dinov2":
        from dinov2.train.ssl_meta_arch import SSLMetaArch

        return SSLMetaArch
    if name == "eqcoh":
        from dinov2_eqcoh.meta_arch import EqCohMetaArch

        return EqCohMetaArch
    raise ValueError(f"unknown model {name!r}: allowed {', '.join(MODELS)}")


def build_pipeline(name: str, cfg, dtype: torch.dtype) -> tuple[Callable, Callable]:
    """(per-image transform, collate fn) of `name`, built as DINOv2's `do_train` builds them."""
    if name == "dinov2":
        from dinov2.train.train import build_collate_fn, build_data_transform
    elif name == "eqcoh":
        from dinov2_eqcoh.data.augmentation import build_data_transform
        from dinov2_eqcoh.data.collate import build_collate_fn
    else:
        raise ValueError(f"unknown model {name!r}: allowed {', '.join(MODELS)}")
    return build_data_transform(cfg), build_collate_fn(cfg, dtype)


def count_parameters(cfg) -> dict[str, Any]:
    """Student and teacher parameter counts of both models, built on the meta device (nothing is allocated)."""
    counts = {}
    for name in MODELS:
        with torch.device("meta"):
            model = model_class(name)(cfg)
        counts[name] = {
            "student": sum(p.numel() for p in model.student.parameters()),
            "teacher": sum(p.numel() for p in model.teacher.parameters()),
            "student_modules": {k: sum(p.numel() for p in m.parameters()) for k, m in model.student.items()},
        }
        del model
    counts["student_ratio"] = counts["eqcoh"]["student"] / counts["dinov2"]["student"]
    return counts


def render_images(cfg, n: int, image_size: int) -> list:
    """n PIL images of the built-in `Synthetic` dataset (rendered once, outside every timed region)."""
    from dinov2_eqcoh.data.datasets import SyntheticGlyphs

    ds = SyntheticGlyphs(n=n, size=image_size, classes=10, seed=int(cfg.train.seed))
    return [ds.render(i) for i in range(n)]


def seed_all(seed: int) -> None:
    """Seed every stream the augmentations and masks draw from (`random`, `numpy`, `torch`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_batches(name: str, cfg, images: list, n_batches: int, batch_size: int, seed: int) -> list[dict]:
    """`n_batches` collated batches of `name`'s pipeline; batch i uses images [i·B, (i+1)·B) and seed + i for both
    pipelines, so v1, u, the local crops and the iBOT masks are the same for DINOv2 and EqCoh (EqCoh adds g_θ)."""
    transform, collate = build_pipeline(name, cfg, torch.float32)  # plain fp32 modules take fp32 inputs
    batches = []
    for i in range(n_batches):
        seed_all(seed + i)
        chunk = images[i * batch_size : (i + 1) * batch_size]
        batches.append(collate([(transform(img), ()) for img in chunk]))
    return batches


def build_model(name: str, cfg, device: torch.device, seed: int):
    """The meta-arch on `device`, plain modules, teacher = student (as `prepare_for_distributed_training` makes it)."""
    torch.manual_seed(seed)  # same initialisation of the shared parts (backbone) for both models
    model = model_class(name)(cfg).to(device)
    for k in model.student.keys():
        model.teacher[k].load_state_dict(model.student[k].state_dict())
    model.train()
    return model


class Trainer:
    """One model, its AdamW and DINOv2's per-iteration work (`do_train`'s loop body) on plain modules.

    Schedules are held at their base values (lr = `optim.base_lr` scaled by DINOv2's sqrt rule for this batch,
    `optim.weight_decay`, `teacher.momentum_teacher`, `teacher.teacher_temp`); the work per step does not depend on
    them.
    """

    def __init__(self, name: str, cfg, device: torch.device, seed: int, amp: str = "none") -> None:
        from dinov2.train.train import build_optimizer

        self.name, self.cfg, self.device = name, cfg, device
        self.model = build_model(name, cfg, device, seed)
        self.optimizer = build_optimizer(cfg, self.model.get_params_groups())
        self.lr = cfg.optim.base_lr * (cfg.train.batch_size_per_gpu / 1024.0) ** 0.5
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.last_losses: dict[str, float] = {}

    def step(self, batch: dict) -> dict[str, float]:
        """One training iteration; returns the loss dict as floats (the `.item()` also waits for the device)."""
        from dinov2.train.train import apply_optim_scheduler

        cfg = self.cfg
        apply_optim_scheduler(self.optimizer, self.lr, cfg.optim.weight_decay, self.lr)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss_dict = self.model.forward_backward(batch, teacher_temp=cfg.teacher.teacher_temp)
        if cfg.optim.clip_grad:  # DINOv2 clips each student module (FSDP's clip_grad_norm_) separately
            for module in self.model.student.values():
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.optim.clip_grad)
        self.optimizer.step()
        self.model.update_teacher(cfg.teacher.momentum_teacher)
        self.last_losses = {k: v.item() for k, v in loss_dict.items()}
        return self.last_losses


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles, min, max (seconds) and the raw list."""
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (times[0],) * 3
    return {
        "median_s": statistics.median(times),
        "q1_s": q1,
        "q3_s": q3,
        "min_s": min(times),
        "max_s": max(times),
        "n": len(times),
        "times_s": list(times),
    }


def alternation(i: int) -> tuple[str, str]:
    """ABBA order: DINOv2 first on even rounds, EqCoh first on odd ones."""
    return MODELS if i % 2 == 0 else MODELS[::-1]


# ---------------------------------------------------------------------------------------------- 1. step time


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


# ---------------------------------------------------------------------------------------------- FLOPs


def count_step_flops(cfg, images: list, seed: int) -> dict[str, Any]:
    """Matmul/conv/attention FLOPs of one `forward_backward` of each model, counted on the meta device.

    `torch.utils.flop_counter.FlopCounterMode` over DINOv2's real `forward_backward` with the model and the batch on
    the meta device: nothing is computed or allocated, so the count is independent of machine load and works for
    presets too large for this machine (vitl16). Not counted: elementwise ops, the optimizer, the EMA. The per-module
    entries are forward + backward FLOPs by top-level module class (student and teacher together): backbone
    (DinoVisionTransformer), DINOHead, EqCohHead, EqCohDecoders.
    """
    from torch.utils.flop_counter import FlopCounterMode

    batch_size = int(cfg.train.batch_size_per_gpu)
    result: dict[str, Any] = {}
    for name in MODELS:
        batch = make_batches(name, cfg, images, 1, batch_size, seed)[0]
        batch = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.device("meta"):
            model = model_class(name)(cfg)
        model.train()
        counter = FlopCounterMode(display=False, depth=1)
        with counter:
            model.forward_backward(batch, teacher_temp=cfg.teacher.teacher_temp)
        # top-level module classes only: the finer (and the loss modules') attributions of backward ops are not reliable
        per_module = {
            k: sum(v.values())
            for k, v in counter.get_flop_counts().items()
            if "." not in k and k != "Global" and not k.endswith("Loss")
        }
        result[name] = {"total": counter.get_total_flops(), "by_module": per_module}
        del model
    result["ratio"] = result["eqcoh"]["total"] / result["dinov2"]["total"]
    return result


# ---------------------------------------------------------------------------------------------- 2. memory


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
            sys.executable, "-m", "dinov2_eqcoh.bench", "--memory-worker", name, "--preset", args.preset,
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


# ---------------------------------------------------------------------------------------------- 3. augmentation


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


# ---------------------------------------------------------------------------------------------- machine and report


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model (lscpu), core count, torch version, load average, GPU name."""
    cpu = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True, check=True).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), cpu)
    except (OSError, subprocess.CalledProcessError):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg": _loadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def _gflops(flops: float) -> str:
    g = flops / 1e9
    return f"{g:.1f}" if g >= 10 else f"{g:.4f}"


def format_table(report: dict[str, Any]) -> str:
    """The side-by-side table printed at the end."""
    st, mem, aug = report.get("step_time"), report.get("memory"), report.get("augmentation")
    rows = [("measure", "DINOv2", "DINOv2 + EqCoh", "ratio", "target")]
    if st:
        def cell(s):
            return f"{s['median_s']:.3f} [{s['q1_s']:.3f}, {s['q3_s']:.3f}]"

        rows.append(
            ("step time, s: median [IQR]", cell(st["dinov2"]), cell(st["eqcoh"]), f"{st['ratio_of_medians']:.3f}",
             f"<= {TARGETS['step_time_ratio_max']:.2f}")
        )
        rows.append(("  paired ratio (median of per-step)", "", "", f"{st['paired_ratio_median']:.3f}", ""))
        if report.get("flops"):
            rows.append(("  step ratio - FLOP ratio", "", "", f"{st['ratio_of_medians'] - report['flops']['ratio']:+.3f}",
                         f"<= +{TARGETS['step_over_flop_ratio_max']:.2f}"))
    if mem:
        rows.append(
            ("peak memory, MiB", f"{mem['dinov2']['peak_bytes'] / 2**20:.1f}",
             f"{mem['eqcoh']['peak_bytes'] / 2**20:.1f}", f"{mem['ratio']:.3f}",
             f"<= {TARGETS['memory_ratio_max']:.2f}")
        )
        if "ratio_absolute_rss" in mem:
            rows.append(
                ("  absolute peak RSS, MiB", f"{mem['dinov2']['peak_rss_bytes'] / 2**20:.1f}",
                 f"{mem['eqcoh']['peak_rss_bytes'] / 2**20:.1f}", f"{mem['ratio_absolute_rss']:.3f}", "")
            )
    if aug:
        rows.append(
            ("augmentation, samples/s/worker", f"{aug['dinov2']['samples_per_s_median']:.1f}",
             f"{aug['eqcoh']['samples_per_s_median']:.1f}", f"{aug['ratio']:.3f}",
             f">= {TARGETS['augmentation_ratio_min']:.2f}")
        )
    fl = report.get("flops")
    if fl:
        rows.append(
            ("forward_backward GFLOPs (counted)", _gflops(fl["dinov2"]["total"]), _gflops(fl["eqcoh"]["total"]),
             f"{fl['ratio']:.3f}", "")
        )
    p = report.get("parameters")
    if p:
        rows.append(
            ("student parameters, M", f"{p['dinov2']['student'] / 1e6:.2f}", f"{p['eqcoh']['student'] / 1e6:.2f}",
             f"{p['student_ratio']:.3f}", "")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        f"preset {report['preset']} on {report['device']} ({report['machine']['cpu']}, {report['machine']['cores']} "
        f"cores, torch {report['machine']['torch']}), batch {report['batch_size']}, "
        f"loadavg {report['machine']['loadavg']}"
    ]
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "python -m dinov2_eqcoh.bench",
        description="Cost of DINOv2 + EqCoh against vanilla DINOv2: step time, peak memory, augmentation throughput.",
    )
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model/crop setting (default tiny)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per model (default: the preset's)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per model first (default: preset's)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch per step B (default: the preset's; vitl16 on a CPU: 2)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default cpu")
    parser.add_argument(
        "--amp", default=None, choices=("none", "bf16", "fp16"),
        help="autocast dtype of the steps (default: none on cpu, bf16 on cuda)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the steps (default: torch's)")
    parser.add_argument("--aug-rounds", type=int, default=None, help="timed augmentation batches per pipeline")
    parser.add_argument("--memory-iters", type=int, default=2, help="steps per model in the memory child (default 2)")
    parser.add_argument("--skip", action="append", default=[], choices=("step", "memory", "augmentation", "flops"),
                        help="leave a measurement out (repeatable)")
    parser.add_argument("--opt", dest="opts", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for both models, e.g. --opt eqcoh.decoder.dim=128 (repeatable)")
    parser.add_argument("--output", default=None, help="JSON file (default out/bench/bench_<preset>_<device>.json)")
    parser.add_argument("--memory-worker", default=None, choices=MODELS, help=argparse.SUPPRESS)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Fill the preset's defaults and reject impossible values with a message naming the option."""
    p = PRESETS[args.preset]
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
        "command": shlex.join([Path(sys.executable).name, "-m", "dinov2_eqcoh.bench", *sys.argv[1:]]),
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


if __name__ == "__main__":
    main()
