# SPDX-License-Identifier: Apache-2.0
"""FLOPs of one `forward_backward` of each model, counted on the meta device (independent of machine load)."""

from __future__ import annotations

from typing import Any

import torch

from dinov2_eqcoh.experiments.bench.common import make_batches, model_class
from dinov2_eqcoh.experiments.bench.presets import MODELS


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
