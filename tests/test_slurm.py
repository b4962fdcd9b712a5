"""SLURM launching: `python -m dinov2_eqcoh.run.train` and DINOv2's own launcher on a real one-node SLURM.

The cluster (munged, slurmctld, slurmd on localhost, see tests/slurm_cluster.py) is started once for this module;
if it cannot start, the SLURM tests fail with the reason. Jobs run two CPU ranks (gloo, FSDP SHARD_GRAD_OP) of
the tiny config for a few iterations. The sbatch scripts rendered for the example profiles are compared with the
records under tests/records/ (submitit's `_sbatch_test_record.txt` pattern).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster

REPO = Path(__file__).resolve().parents[1]
RECORDS = Path(__file__).resolve().parent / "records"
# the method's tiny config when it exists, else vanilla DINOv2's
CONFIG = next(p for p in (REPO / "configs/tiny/eqcoh_cpu.yaml", REPO / "configs/tiny/dinov2_cpu.yaml") if p.exists())
SUBMITTED = re.compile(r"Submitted job_id: (\d+)")
STARTED = re.compile(r"Starting training from iteration (\d+)")


# ---- helpers ----


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()  # raises (test error) when SLURM cannot start
    yield slurm
    slurm.stop()


def submit(cluster: SlurmCluster, cmd: list[str]) -> str:
    """Run a launcher command against the cluster; return the job id it reports."""
    env = dict(cluster.env, OMP_NUM_THREADS="1")  # two ranks share the machine's cores
    done = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    match = SUBMITTED.search(done.stdout + done.stderr)
    assert done.returncode == 0 and match, f"submission failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    return match.group(1)


def job_field(cluster: SlurmCluster, job_id: str, field: str) -> str:
    out = cluster.run(["scontrol", "show", "job", "-o", job_id]).stdout
    match = re.search(rf"\b{field}=(\S+)", out)
    return match.group(1) if match else ""


def job_logs(cluster: SlurmCluster, output_dir: Path) -> str:
    parts = []
    for log in sorted(output_dir.glob("*_log.*")) + sorted(output_dir.glob("logs/log.txt*")):
        parts.append(f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
    return "\n".join(parts) + "\n" + cluster.log_tails(8)


def wait_for(cluster, job_id, output_dir, ready, what: str, timeout_s: float = 150) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        state = job_field(cluster, job_id, "JobState")
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            pytest.fail(f"job {job_id} ended {state} while waiting for {what}:\n{job_logs(cluster, output_dir)}")
        time.sleep(0.5)
    pytest.fail(f"job {job_id}: no {what} within {timeout_s:.0f} s:\n{job_logs(cluster, output_dir)}")


def wait_completed(cluster, job_id, output_dir, timeout_s: float = 150) -> None:
    wait_for(cluster, job_id, output_dir, lambda: job_field(cluster, job_id, "JobState") == "COMPLETED",
             "completion", timeout_s)


def release(cluster: SlurmCluster, job_id: str, timeout_s: float = 30) -> None:
    """Start a requeued job now: SLURM holds a requeued job back for about two minutes (BeginTime)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if job_field(cluster, job_id, "JobState") == "PENDING":
            cluster.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not return to PENDING after its requeue")


def assert_two_rank_run(output_dir: Path) -> None:
    """Both ranks trained, logged and wrote their checkpoint shards; rank 0 dumped the teacher for evaluation."""
    for rank in (0, 1):
        assert (output_dir / f"model_final.rank_{rank}.pth").is_file(), sorted(p.name for p in output_dir.iterdir())
        assert (output_dir / f"last_checkpoint.rank_{rank}").is_file()
    assert list(output_dir.glob("eval/*/teacher_checkpoint.pth")), "no eval/*/teacher_checkpoint.pth"
    for name in ("log.txt", "log.txt.rank1"):  # DINOv2 logs rank 0 to log.txt, rank N to log.txt.rankN
        text = (output_dir / "logs" / name).read_text()
        assert "Starting training from iteration 0" in text, f"{name}:\n{text[-2000:]}"


# ---- jobs on the cluster ----


@pytest.mark.slurm
@pytest.mark.slow
def test_plugin_launcher_runs_two_ranks(cluster, tmp_path):
    job = submit(cluster, ["-m", "dinov2_eqcoh.run.train", "--cluster-profile", "local", "--nodes", "1",
                           "--ngpus", "2", "--config-file", str(CONFIG), "--output-dir", str(tmp_path / "%j")])
    output_dir = tmp_path / job
    wait_completed(cluster, job, output_dir)

    assert_two_rank_run(output_dir)
    for rank in (0, 1):  # each task announces its job, rank and folder in its submitit log
        announced = (output_dir / f"{job}_{rank}_log.out").read_text()
        assert f"slurm job {job}, rank {rank} of 2, output folder {output_dir}" in announced, announced
    assert f"job_id: {job}" in (output_dir / "logs" / "log.txt").read_text()


@pytest.mark.slurm
@pytest.mark.slow
def test_dinov2_launcher_runs_plugin_config(cluster, tmp_path):
    # DINOv2's launcher, unchanged: its partition default is a guess about Meta's clusters, so pass ours
    job = submit(cluster, ["-m", "dinov2.run.train.train", "--nodes", "1", "--ngpus", "2", "--partition", "debug",
                           "--timeout", "10", "--config-file", str(CONFIG), "--output-dir", str(tmp_path / "%j")])
    output_dir = tmp_path / job
    wait_completed(cluster, job, output_dir)
    assert_two_rank_run(output_dir)


@pytest.mark.slurm
@pytest.mark.slow
def test_requeued_job_resumes_from_last_checkpoint(cluster, tmp_path):
    # 2 iterations per "epoch", a checkpoint every 3 epochs (DINOv2: 3 * OFFICIAL_EPOCH_LENGTH), no teacher dumps
    job = submit(cluster, ["-m", "dinov2_eqcoh.run.train", "--cluster-profile", "local", "--config-file", str(CONFIG),
                           "--output-dir", str(tmp_path / "%j"), "optim.epochs=60", "evaluation.eval_period_iterations=0"])
    output_dir = tmp_path / job
    log = output_dir / "logs" / "log.txt"

    def starts() -> list[int]:
        return [int(n) for n in STARTED.findall(log.read_text())] if log.exists() else []

    # 1. `scontrol requeue` (an administrator, a node failure): SLURM kills the job and reruns the same task
    wait_for(cluster, job, output_dir, lambda: (output_dir / "last_checkpoint.rank_1").exists(), "first checkpoint")
    cluster.run(["scontrol", "requeue", job])
    release(cluster, job)
    wait_for(cluster, job, output_dir, lambda: len(starts()) >= 2, "restart")

    # 2. pre-emption signal (USR2, what SLURM sends before a time limit): submitit calls Trainer.checkpoint(), which
    #    returns a DelayedSubmission of a fresh trainer, and requeues the job itself
    n_before = len(re.findall(r"Requeuing", log.read_text()))
    wait_for(cluster, job, output_dir, lambda: any(s > starts()[-1] for s in checkpointed(output_dir)), "checkpoint")
    cluster.run(["scancel", "--signal=USR2", job])
    release(cluster, job)
    wait_completed(cluster, job, output_dir)

    first, second, third = starts()[:3]
    assert first == 0 and 0 < second < third, f"iterations at (re)starts: {starts()}"
    assert second % 6 == 0 and third % 6 == 0, f"not resumed right after a checkpoint: {starts()}"
    assert len(re.findall(r"Requeuing", log.read_text())) == n_before + 1, "Trainer.checkpoint() was not called"
    assert job_field(cluster, job, "Restarts") == "2"
    assert (output_dir / "model_final.rank_0.pth").is_file() and (output_dir / "model_final.rank_1.pth").is_file()


def checkpointed(output_dir: Path) -> list[int]:
    """Iterations + 1 of the checkpoints both ranks point to (the iteration a resumed run starts from)."""
    its = []
    for rank in (0, 1):
        tag = output_dir / f"last_checkpoint.rank_{rank}"
        m = re.search(r"model_(\d+)", tag.read_text()) if tag.exists() else None
        its.append(int(m.group(1)) + 1 if m else -1)
    return [min(its)]
