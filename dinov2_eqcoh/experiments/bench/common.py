# SPDX-License-Identifier: Apache-2.0
"""What every measurement shares: models, data pipelines, batches, one training step (`Trainer`), summaries."""

from __future__ import annotations

import random
import statistics
from typing import Any, Callable, Sequence

import numpy as np
import torch

from dinov2_eqcoh.experiments.bench.presets import MODELS


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
        from dinov2_eqcoh.method.augmentation import build_data_transform
        from dinov2_eqcoh.method.collate import build_collate_fn
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
    for k in model.teacher.keys():  # (EqCoh's teacher has no decoders)
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
