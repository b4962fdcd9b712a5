"""One writer per run folder (`dinov2_eqcoh.run.lock`, issue 24 part 1), with real processes and files.

A second training into a folder that a live run holds stops at once, naming the holder; a holder killed with
`kill -9` leaves its lock behind, and the next start takes it over and resumes; a requeued SLURM job takes over its
own lock.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import PYTHON, REPO, run

from dinov2_eqcoh.run import lock

CFG = "configs/tiny/eqcoh_cpu.yaml"


def write_holder(folder: Path, **fields) -> Path:
    holder = lock.me()
    for k, v in fields.items():
        setattr(holder, k, v)
    path = folder / lock.LOCK_NAME
    path.write_text(json.dumps(asdict(holder)))
    return path


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_holder_states(tmp_path, sleeper, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    alive = lock.read_holder(write_holder(tmp_path, pid=sleeper.pid, pid_start=lock._proc_start(sleeper.pid)))
    assert lock.holder_state(alive)[0] == "alive"
    reused = lock.Holder(**{**asdict(alive), "pid_start": "1"})  # the pid now belongs to another process
    assert lock.holder_state(reused) == ("gone", f"pid {sleeper.pid} on {socket.gethostname()} is now another process")
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = lock.Holder(**{**asdict(alive), "pid": int(done.stdout)})
    assert lock.holder_state(dead)[0] == "gone"
    # killed and not yet reaped (a zombie: what a `kill -9`ed run is until its parent waits for it) holds nothing
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    killed = lock.Holder(**{**asdict(alive), "pid": child.pid, "pid_start": lock._proc_start(child.pid)})
    child.send_signal(signal.SIGKILL)
    wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
             what="the killed child to be a zombie")
    assert lock.holder_state(killed) == ("gone", f"pid {child.pid} no longer runs on {socket.gethostname()}")
    child.wait()
    elsewhere = lock.Holder(**{**asdict(alive), "host": "node-that-is-not-here"})
    assert lock.holder_state(elsewhere)[0] == "unknown"  # cannot be checked: kept
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    requeued = lock.Holder(**{**asdict(elsewhere), "slurm_job_id": "4242"})
    assert lock.holder_state(requeued)[0] == "ours"  # the same SLURM job, restarted on another node


def test_acquire_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, sleeper, caplog):
    path = write_holder(tmp_path, pid=sleeper.pid, pid_start=lock._proc_start(sleeper.pid), command="train A")
    with pytest.raises(lock.RunFolderLockedError, match=rf"pid {sleeper.pid}, .*train A.*Nothing was written"):
        lock.acquire_lock(tmp_path)
    with pytest.raises(lock.RunFolderLockedError):
        lock.check_lock(tmp_path)
    assert json.loads(path.read_text())["pid"] == sleeper.pid  # untouched
    os.kill(sleeper.pid, signal.SIGKILL)
    sleeper.wait()
    with caplog.at_level("WARNING", logger="dinov2.eqcoh"):
        assert lock.acquire_lock(tmp_path) == path
    assert f"taking over the run-folder lock {path}" in caplog.text and f"pid {sleeper.pid} no longer runs" in caplog.text
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release_lock(path)
    assert not path.exists()


def wait_for(predicate, timeout=120.0, what=""):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_second_training_into_a_held_folder_stops_and_a_killed_holder_is_taken_over(tmp_path):
    out = tmp_path / "run"
    train = [PYTHON, "-m", "dinov2_eqcoh.train", "--config-file", CFG, "--output-dir", out]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([*train, "optim.epochs=1000"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (out / "model_final.rank_0.pth").exists() or any(out.glob("model_0*.rank_0.pth")),
                 what="the first run's first checkpoint")
        assert json.loads((out / lock.LOCK_NAME).read_text())["pid"] == first.pid
        second = run([*train, "optim.epochs=1000"], check=False, timeout=120)
        assert second.returncode != 0 and first.poll() is None
        assert f"is in use by another run: host {socket.gethostname()}, pid {first.pid}" in second.stdout
        assert "Traceback" not in second.stdout
        # nothing of the second: no resume archived the config, no --no-resume move, the lock still the first's
        assert not (out / "config_history").exists() and not (out / "old_runs").exists()
        assert json.loads((out / lock.LOCK_NAME).read_text())["pid"] == first.pid
    finally:
        first.send_signal(signal.SIGKILL)  # a node lost, an OOM kill: no clean-up runs
        first.wait()
    assert (out / lock.LOCK_NAME).exists()  # left behind by the killed holder
    third = run([*train, "optim.epochs=1"], timeout=300)  # an allowed change: it resumes (and ends at once)
    assert "taking over the run-folder lock" in third.stdout and f"pid {first.pid} no longer runs" in third.stdout
    assert not (out / lock.LOCK_NAME).exists()  # released at a normal exit


def test_ranks_of_one_torchrun_run_share_the_lock(tmp_path, monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29511")
    rank0 = lock.Holder(**{**asdict(lock.me()), "pid": 1, "pid_start": lock._proc_start(1)})  # pid 1: a live process
    assert lock.holder_state(rank0)[0] == "ours"
    monkeypatch.setenv("MASTER_PORT", "29512")  # another run on this host
    assert lock.holder_state(rank0)[0] == "alive"
