"""Shared test helpers: paths, subprocess runs of the real entry points, small configs and batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PIN = dict(line.split("=", 1) for line in (REPO / "patches/UPSTREAM").read_text().split() if "=" in line)["commit"]
DINOV2_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dinov2_eqcoh" / "dinov2"


def run(cmd, *, timeout=300, env=None, cwd=REPO, check=True):
    """Run a command, return CompletedProcess; on failure raise with the tail of its output."""
    # one intra-op thread per process: runs of several ranks (and the 2 cores' other load) would otherwise
    # oversubscribe the CPU and slow down by an order of magnitude
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stdout[-6000:]}")
    return proc


def read_metrics(output_dir) -> list[dict]:
    """DINOv2's training_metrics.json: one JSON object per logged iteration."""
    lines = (Path(output_dir) / "training_metrics.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def dinov2_cfg(config_file, *opts):
    """DINOv2's default config merged with a file and a dotlist, exactly as DINOv2's get_cfg_from_args does."""
    from dinov2.configs import dinov2_default_config
    from omegaconf import OmegaConf

    return OmegaConf.merge(
        OmegaConf.create(dinov2_default_config), OmegaConf.load(REPO / config_file), OmegaConf.from_dotlist(list(opts))
    )


def dinov2_batch(cfg, batch_size=None, dtype=None, seed=0):
    """A real DINOv2 batch: built-in dataset images -> DataAugmentationDINO -> collate_data_and_cast."""
    import random

    import torch
    from dinov2.train.train import build_collate_fn, build_data_transform

    from dinov2_eqcoh.data.datasets import make_dataset

    random.seed(seed)
    torch.manual_seed(seed)
    ds = make_dataset(dataset_str=cfg.train.dataset_path, transform=build_data_transform(cfg), target_transform=None)
    n = batch_size or cfg.train.batch_size_per_gpu
    return build_collate_fn(cfg, dtype or torch.float32)([ds[i] for i in range(n)])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
