# SPDX-License-Identifier: Apache-2.0
"""The benchmark's settings: the two models compared, the targets, the presets and the one config both
models are built from."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

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


# plain fp32 modules: no fp16 loss scaling (DINOv2 scales the loss for its fp16 FSDP compute); the method without
# its training-log diagnostics (every eqcoh.diagnostics_every-th step, extra decoder passes and a path rendering:
# measure them with --opt eqcoh.diagnostics_every=1)
_COMMON = ("compute_precision.grad_scaler=false", "eqcoh.diagnostics_every=0")

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


def build_bench_cfg(preset: str, batch_size: int | None = None, extra_opts: Sequence[str] = ()):
    """The one config both models are built from: DINOv2's defaults <- plugin defaults <- preset <- extra opts.

    Args:
        preset: A key of PRESETS.
        batch_size: `train.batch_size_per_gpu` (None: the preset's).
        extra_opts: More `key=value` overrides (validated like the command line of a training run).
    """
    from dinov2.configs import dinov2_default_config
    from omegaconf import OmegaConf

    from dinov2_eqcoh.method.config import build_cfg

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
