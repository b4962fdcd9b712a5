"""SLURM launching: `python -m dinov2_eqcoh.run.train` and DINOv2's own launcher on a real one-node SLURM.

The cluster (munged, slurmctld, slurmd on localhost, see tests/slurm_cluster.py) is started once for this module;
if it cannot start, the SLURM tests fail with the reason. Jobs run two CPU ranks (gloo, FSDP SHARD_GRAD_OP) of
the tiny config for a few iterations. The sbatch scripts rendered for the example profiles are compared with the
records under tests/records/ (submitit's `_sbatch_test_record.txt` pattern).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, require_root

REPO = Path(__file__).resolve().parents[1]
RECORDS = Path(__file__).resolve().parent / "records"
# the method's tiny config when it exists, else vanilla DINOv2's
CONFIG = next(p for p in (REPO / "configs/tiny/eqcoh_cpu.yaml", REPO / "configs/tiny/dinov2_cpu.yaml") if p.exists())
SUBMITTED = re.compile(r"Submitted job_id: (\d+)")
STARTED = re.compile(r"Starting training from iteration (\d+)")


# ---- helpers ----


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_root()  # skipped with the reason off root; as root, failing to start is an error
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()  # raises (test error) when SLURM cannot start
    yield slurm
    slurm.stop()


def submit(cluster: SlurmCluster, launcher: str, tmp_path: Path, *opts: str) -> tuple[str, Path]:
    """Run a launcher (`-m module --flags`) on CONFIG against the cluster; return the job id and its output folder."""
    cmd = [sys.executable, *launcher.split(), "--config-file", str(CONFIG), "--output-dir", str(tmp_path / "%j"), *opts]
    env = dict(cluster.env, OMP_NUM_THREADS="1")  # two ranks share the machine's cores
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    match = SUBMITTED.search(done.stdout + done.stderr)
    assert done.returncode == 0 and match, f"submission failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    return match.group(1), tmp_path / match.group(1)


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
    wait_for(
        cluster,
        job_id,
        output_dir,
        lambda: job_field(cluster, job_id, "JobState") == "COMPLETED",
        "completion",
        timeout_s,
    )


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
    job, output_dir = submit(cluster, "-m dinov2_eqcoh.run.train --cluster-profile local --nodes 1 --ngpus 2", tmp_path)
    wait_completed(cluster, job, output_dir)

    assert_two_rank_run(output_dir)
    for rank in (0, 1):  # each task announces its job, rank and folder in its submitit log
        announced = (output_dir / f"{job}_{rank}_log.out").read_text()
        assert f"slurm job {job}, rank {rank} of 2, output folder {output_dir}" in announced, announced
    assert f"job_id: {job}" in (output_dir / "logs" / "log.txt").read_text()
    assert "2 processes × train.batch_size_per_gpu" in (output_dir / "logs" / "log.txt").read_text()

    # resuming that folder with another GPU count is refused at submission (issue 24, part 4), nothing queued
    cmd = [sys.executable, "-m", "dinov2_eqcoh.run.train", "--cluster-profile", "local", "--nodes", "1", "--ngpus",
           "1", "--config-file", str(CONFIG), "--output-dir", str(output_dir), "optim.epochs=4"]
    again = subprocess.run(cmd, cwd=REPO, env=dict(cluster.env, OMP_NUM_THREADS="1"), capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 2 and "was trained by 2 processes" in again.stderr, again.stdout + again.stderr
    assert not SUBMITTED.search(again.stdout + again.stderr)


@pytest.mark.slurm
@pytest.mark.slow
def test_dinov2_launcher_runs_plugin_config(cluster, tmp_path):
    # DINOv2's launcher, unchanged: its partition default is a guess about Meta's clusters, so pass ours
    launcher = "-m dinov2.run.train.train --nodes 1 --ngpus 2 --partition debug --timeout 10"
    job, output_dir = submit(cluster, launcher, tmp_path)
    wait_completed(cluster, job, output_dir)
    assert_two_rank_run(output_dir)


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_template_runs_two_ranks(cluster, tmp_path):
    # slurm/train.sbatch holds JUWELS Booster values: sbatch flags override them for the test cluster
    env = dict(cluster.env, OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}:{cluster.env['PATH']}")
    flags = "--partition=debug --ntasks-per-node=2 --gres=gpu:2 --cpus-per-task=1 --mem=2G --time=10".split()
    flags.append(f"--output={tmp_path}/%x-%j.out")
    output_dir = tmp_path / "run"
    cmd = ["sbatch", "--parsable", *flags, str(REPO / "slurm" / "train.sbatch"), str(CONFIG), str(output_dir)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"sbatch failed: {done.stdout}{done.stderr}"
    job = done.stdout.strip()
    wait_completed(cluster, job, tmp_path)

    assert_two_rank_run(output_dir)
    out = (tmp_path / f"dinov2_eqcoh-{job}.out").read_text()
    assert f"SLURM job {job}, 2 tasks on localhost, output folder {output_dir}" in out, out


@pytest.mark.slurm
@pytest.mark.slow
def test_requeued_job_resumes_from_last_checkpoint(cluster, tmp_path):
    # 2 iterations per "epoch", a checkpoint every 3 epochs (DINOv2: 3 * OFFICIAL_EPOCH_LENGTH), no teacher dumps
    launcher = "-m dinov2_eqcoh.run.train --cluster-profile local"
    job, output_dir = submit(cluster, launcher, tmp_path, "optim.epochs=80", "evaluation.eval_period_iterations=0")
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
    wait_for(cluster, job, output_dir, lambda: checkpointed(output_dir) > starts()[-1], "checkpoint after restart")
    cluster.run(["scancel", "--signal=USR2", job])
    release(cluster, job)
    wait_completed(cluster, job, output_dir)

    assert len(starts()) == 3, f"iterations at (re)starts: {starts()}"
    first, second, third = starts()
    assert first == 0 and 0 < second < third, f"iterations at (re)starts: {starts()}"
    assert second % 6 == 0 and third % 6 == 0, f"not resumed right after a checkpoint: {starts()}"
    rank1 = [int(n) for n in STARTED.findall((output_dir / "logs" / "log.txt.rank1").read_text())]
    assert rank1 == starts(), f"ranks resumed from different checkpoints: rank 0 {starts()}, rank 1 {rank1}"
    assert log.read_text().count("Requeuing Namespace(") == 1, "Trainer.checkpoint() did not run on USR2"
    assert job_field(cluster, job, "Restarts") == "2"
    assert (output_dir / "model_final.rank_0.pth").is_file() and (output_dir / "model_final.rank_1.pth").is_file()


def checkpointed(output_dir: Path) -> int:
    """The iteration a resumed run would start from: 1 + the last checkpoint that both ranks point to (-1: none)."""
    its = []
    for rank in (0, 1):
        tag = output_dir / f"last_checkpoint.rank_{rank}"
        m = re.search(r"model_(\d+)", tag.read_text()) if tag.exists() else None
        its.append(int(m.group(1)) + 1 if m else -1)
    return min(its)


# ---- submission parameters (no cluster needed) ----

RECORDED = {  # record file -> launcher arguments (besides --config-file and --output-dir)
    "sbatch_juwels_booster.txt": "--cluster-profile juwels_booster --account my_budget --nodes 4",
    "sbatch_juwels_booster_overrides.txt": "--cluster-profile juwels_booster --account my_budget --nodes 2 "
    "--partition develbooster --timeout 120 --qos normal --cpus-per-task 24 --mem 400 --constraint largedata "
    "--exclude jwb[0001-0002] --comment 'eqcoh ablation'",
    "sbatch_local.txt": "--cluster-profile local",
}


def render(argv: list[str], output_dir: Path) -> str:
    """The sbatch script the launcher would submit, with this machine's paths replaced by placeholders."""
    from dinov2_eqcoh.run.train import prepare, render_sbatch

    _, executor = prepare([*argv, "--config-file", str(CONFIG), "--output-dir", str(output_dir)])
    return render_sbatch(executor).replace(str(output_dir), "<OUTPUT_DIR>").replace(sys.executable, "<PYTHON>")


@pytest.mark.parametrize("record", sorted(RECORDED))
def test_sbatch_script_matches_record(record, tmp_path):
    string = render(shlex.split(RECORDED[record]), tmp_path / "%j")
    record_file = RECORDS / record
    if not record_file.exists():  # submitit's pattern: the first run writes the record, to be reviewed and committed
        record_file.parent.mkdir(exist_ok=True)
        record_file.write_text(string)
    recorded = record_file.read_text()
    if string != recorded:
        changes = [
            f'line #{k + 1}: "{b}" -> "{a}"'
            for k, (a, b) in enumerate(zip(string.splitlines(), recorded.splitlines()))
            if a != b
        ] or ["(different number of lines)"]
        print(string, "# # # # #", recorded, sep="\n")
        advice = ["", "Delete the record file if the change is intended:", f"rm {record_file}"]
        pytest.fail("\n".join(["Difference with the record:", *changes, *advice]))


def test_profile_errors_name_the_problem(tmp_path, monkeypatch):
    from dinov2_eqcoh.run.train import load_profile, prepare

    with pytest.raises(ValueError, match=r"unknown cluster profile 'nope'.*juwels_booster, local"):
        load_profile("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("partition: booster\ngpus: 4\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) gpus; allowed: partition, account"):
        load_profile(str(bad))
    bad.write_text("cpus_per_task: twelve\n")
    with pytest.raises(ValueError, match=r"'cpus_per_task' must be int or null, got 'twelve'"):
        load_profile(str(bad))
    with pytest.raises(ValueError, match=r"leaves 'account' as CHANGE_ME: pass --account"):
        prepare(["--cluster-profile", "juwels_booster", "--config-file", str(CONFIG)])
    with pytest.raises(ValueError, match=r"--config-file 'missing.yaml' does not exist"):
        prepare(["--cluster-profile", "local", "--config-file", "missing.yaml"])

    # DINOV2_EQCOH_PROFILES points at another profile folder
    (tmp_path / "mine.yaml").write_text("partition: gpu\ngpus_per_node: 8\n")
    monkeypatch.setenv("DINOV2_EQCOH_PROFILES", str(tmp_path))
    assert load_profile("mine") == {"partition": "gpu", "gpus_per_node": 8}
    monkeypatch.setenv("DINOV2_EQCOH_PROFILES", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match=r"no profile folder at .*absent; set DINOV2_EQCOH_PROFILES"):
        load_profile("mine")


def test_second_submission_into_a_folder_a_running_job_holds_is_refused(cluster, tmp_path):
    """One writer per run folder (run/lock.py): a double `sbatch` into a fixed folder stops at submission, naming
    the job that holds it; the job itself is not disturbed."""
    folder = tmp_path / "run"
    cmd = [sys.executable, "-m", "dinov2_eqcoh.run.train", "--cluster-profile", "local", "--config-file", str(CONFIG),
           "--output-dir", str(folder), "optim.epochs=80", "evaluation.eval_period_iterations=0"]
    env = dict(cluster.env, OMP_NUM_THREADS="1")
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    job = SUBMITTED.search(first.stdout + first.stderr).group(1)
    try:
        wait_for(cluster, job, folder, lambda: (folder / ".eqcoh.lock").exists(), "the job's run-folder lock")
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "is in use by another run" in second.stderr and f"SLURM job {job}" in second.stderr, second.stderr
        assert not SUBMITTED.search(second.stdout + second.stderr)  # nothing was queued
        assert job_field(cluster, job, "JobState") in ("RUNNING", "COMPLETING", "COMPLETED")
    finally:
        cluster.run(["scancel", job])
