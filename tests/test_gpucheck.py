"""`python -m dinov2_eqcoh.experiments.gpucheck` on a CPU: the tiny preset of the one-shot GPU check runs end to end.

The same code path as on a GPU, with the tiny config instead of ViT-L/16: DINOv2's training loop (FSDP, one
process) for 4 iterations, a second start that resumes at iteration 4 and runs to 8, the teacher checkpoints, then
the bench's tiny preset; one JSON with the hardware and every figure. What only a GPU can show (xFormers' kernels,
NCCL, fp16 on CUDA, the vitl16 figures) is not exercised here; the GPU command is in docs/benchmarks.md and docs/results.md ("Cost").
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpucheck_tiny_preset_on_cpu(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # the CPU path even on a GPU machine
    done = subprocess.run([sys.executable, "-m", "dinov2_eqcoh.experiments.gpucheck", "--output-dir", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    report = json.loads((out / "gpucheck.json").read_text())

    assert report["ok"] and report["preset"] == "tiny" and report["hardware"]["device"] == "cpu"
    assert report["checks"] and all(c["ok"] for c in report["checks"])
    assert {"torch", "cpu", "cores", "memory_gib", "dinov2", "xformers"} <= set(report["hardware"])
    assert list(report["training"]) == ["sdpa"]  # xFormers only on a GPU
    run = report["training"]["sdpa"]
    assert run["first"]["returncode"] == 0 and run["resume"]["returncode"] == 0
    assert run["start_iterations"] == [0, 4]  # the second start resumed from model_final of iteration 3
    assert sorted(map(int, run["losses"])) == [0, 3, 7]
    assert all(math.isfinite(v) for d in run["losses"].values() for v in d.values())
    assert all("eqcoh_recon_loss" in d for d in run["losses"].values())
    assert run["checkpoint_bytes"]["model_final.rank_0.pth"] > 0
    assert run["attention"] == "sdpa (XFORMERS_DISABLED)"
    assert run["compute_precision"]["student"]["backbone"]["sharding_strategy"] == "SHARD_GRAD_OP"  # FSDP
    # the bench's figures, and the checkpoints deleted afterwards (GBs for ViT-L)
    fig = report["bench_figures"]
    for key in ("step_time_ratio", "memory_ratio", "augmentation_ratio", "flop_ratio"):
        assert isinstance(fig[key], float) and fig[key] > 0, (key, fig)
    assert report["bench"]["preset"] == "tiny" and report["bench"]["step_time"]["eqcoh"]["n"] == 2
    assert report["removed_checkpoints"] and not list(out.glob("runs/*/model_*.pth"))
