"""World size on resume (issue 24, part 4): a run folder written by N processes resumes only with N, refused by
name before anything is written, with the global batch and lr each count implies; every start logs its global
batch. Real processes: torchrun with two gloo ranks, then one plain process (the SLURM submission check is in
test_slurm.py)."""

import socket

import pytest
from helpers import PYTHON, run

TINY = "configs/tiny/eqcoh_cpu.yaml"


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_two_rank_run_is_not_resumed_by_one_process(tmp_path):
    out = tmp_path / "run"
    two = run([PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port(),
               "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", out], timeout=600)
    # batch_size_per_gpu 4 in the tiny config; base_lr 0.001 × sqrt(8 / 1024)
    assert "2 processes × train.batch_size_per_gpu 4 = global batch 8; optim.lr = optim.base_lr" in two.stdout

    before = _snapshot(out)
    one = run([PYTHON, "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", out, "optim.epochs=4"],
              check=False, timeout=600)
    assert one.returncode != 0
    assert "was trained by 2 processes (last_checkpoint.rank_0 .. rank_1) and this start has 1" in one.stdout
    assert "global batch 8" in one.stdout and "global batch 4" in one.stdout
    assert "Resume with 2 processes" in one.stdout
    assert _snapshot(out) == before  # refused before anything was written (no lock, no config history)

    # the submission-time check of the SLURM launcher refuses it too, and accepts the right count
    from dinov2_eqcoh.run.folder import RunFolderError, check_before_submit

    with pytest.raises(RunFolderError, match="was trained by 2 processes"):
        check_before_submit(TINY, ["optim.epochs=4"], str(out), no_resume=False, world_size=4)
    assert check_before_submit(TINY, ["optim.epochs=4"], str(out), no_resume=False, world_size=2).action == "resume"


def test_global_batch_and_lr_follow_dinov2s_scaling_rule():
    import math

    from dinov2_eqcoh.method.config import load_config
    from dinov2_eqcoh.run.batch import describe_batch, global_batch

    cfg = load_config(TINY, ["train.batch_size_per_gpu=32", "optim.base_lr=0.004"])
    assert global_batch(cfg, 64) == (2048, pytest.approx(0.004 * math.sqrt(2)))
    assert describe_batch(cfg, 64).startswith("64 processes × train.batch_size_per_gpu 32 = global batch 2048")


def test_a_launch_at_another_global_batch_than_the_recipe_warns_or_stops():
    from dinov2_eqcoh.method.config import ConfigError, load_config
    from dinov2_eqcoh.run.batch import RunFolderError, check_global_batch

    cfg = load_config("configs/train/vitb14_in1k_ep100_eqcoh_se2.yaml")  # 64 per GPU, recipe 1024
    assert check_global_batch(cfg, 16) is None
    assert "global batch 512" in check_global_batch(cfg, 8)
    assert "train.batch_size_per_gpu=128 restores it" in check_global_batch(cfg, 8)
    assert "no per-GPU batch restores it with 3 processes" in check_global_batch(cfg, 3)
    strict = load_config("configs/train/vitb14_in1k_ep100_eqcoh_se2.yaml", ["eqcoh.strict_global_batch=true"])
    with pytest.raises(RunFolderError, match="stopped before anything was written"):
        check_global_batch(strict, 8)
    with pytest.raises(ConfigError, match="eqcoh.recipe_global_batch"):
        load_config(TINY, ["eqcoh.recipe_global_batch=0"])


@pytest.mark.slow
def test_training_logs_the_global_batch_and_stops_on_a_strict_recipe_mismatch(tmp_path):
    warned = run([PYTHON, "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", tmp_path / "a",
                  "eqcoh.recipe_global_batch=8", "optim.epochs=1"], timeout=600)
    assert "1 process × train.batch_size_per_gpu 4 = global batch 4" in warned.stdout
    assert "the recipe at 8 (eqcoh.recipe_global_batch): train.batch_size_per_gpu=8 restores it" in warned.stdout
    stopped = run([PYTHON, "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", tmp_path / "b",
                   "eqcoh.recipe_global_batch=8", "eqcoh.strict_global_batch=true"], check=False, timeout=600)
    assert stopped.returncode != 0 and "eqcoh.strict_global_batch=true: stopped" in stopped.stdout
    assert not (tmp_path / "b").exists()
