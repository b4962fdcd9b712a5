# SPDX-License-Identifier: Apache-2.0
"""The global batch of a start, read before torch.distributed exists: processes × `train.batch_size_per_gpu`, the
lr DINOv2 derives from it, and the check against the recipe's global batch (`eqcoh.recipe_global_batch`).

The process count is read as DINOv2's `distributed.enable` will read it: a SLURM job's SLURM_NTASKS, else
torchrun's WORLD_SIZE, else 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from dinov2_eqcoh.run.layout import RunFolderError


def rank() -> int:
    """This process's global rank before DINOv2 initialises torch.distributed (torchrun, then SLURM, else 0)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def world_size() -> int:
    """The number of training processes of this start before torch.distributed exists (see the module)."""
    if "SLURM_JOB_ID" in os.environ and os.environ.get("SLURM_NTASKS", "").isdigit():
        return int(os.environ["SLURM_NTASKS"])
    if os.environ.get("WORLD_SIZE", "").isdigit():
        return int(os.environ["WORLD_SIZE"])
    return 1


def global_batch(cfg, world_size: int) -> tuple[int, float]:
    """(global batch, the lr DINOv2 derives from it): world size × `train.batch_size_per_gpu`, and `optim.base_lr`
    × sqrt(global batch / 1024) (DINOv2's `sqrt_wrt_1024` scaling rule, `apply_scaling_rules_to_cfg`)."""
    batch = int(world_size) * int(cfg.train.batch_size_per_gpu)
    return batch, float(cfg.optim.base_lr) * math.sqrt(batch / 1024.0)


def describe_batch(cfg, world_size: int) -> str:
    batch, lr = global_batch(cfg, world_size)
    return (f"{world_size} process{'es' if world_size != 1 else ''} × train.batch_size_per_gpu "
            f"{cfg.train.batch_size_per_gpu} = global batch {batch}; optim.lr = optim.base_lr {cfg.optim.base_lr} "
            f"× sqrt({batch} / 1024) = {lr:.6g}")


def check_global_batch(cfg, world_size: int) -> str | None:
    """Compare this launch's global batch with the recipe's (`eqcoh.recipe_global_batch`): None when equal or not
    stated, else a warning naming the per-GPU batch that restores it; with `eqcoh.strict_global_batch` a
    `RunFolderError` (nothing written yet)."""
    recipe = cfg.eqcoh.get("recipe_global_batch")
    batch, _ = global_batch(cfg, world_size)
    if recipe is None or batch == int(recipe):
        return None
    per_gpu = int(recipe) / world_size
    fix = (f"train.batch_size_per_gpu={int(per_gpu)} restores it" if per_gpu == int(per_gpu) else
           f"no per-GPU batch restores it with {world_size} processes; use a count that divides {recipe}")
    msg = (f"this launch trains at global batch {batch} ({describe_batch(cfg, world_size)}), the recipe at "
           f"{recipe} (eqcoh.recipe_global_batch): {fix}")
    if cfg.eqcoh.get("strict_global_batch", False):
        raise RunFolderError(msg + " (eqcoh.strict_global_batch=true: stopped before anything was written; set it "
                             "false to train anyway)")
    return msg


def trained_world_size(output_dir: str | os.PathLike) -> int:
    """How many processes wrote the folder's checkpoints: its `last_checkpoint.rank_<N>` tags (0 without any)."""
    ranks = [int(p.name.rsplit("_", 1)[1]) for p in Path(output_dir).glob("last_checkpoint.rank_*")
             if p.name.rsplit("_", 1)[1].isdigit()]
    return max(ranks) + 1 if ranks else 0
