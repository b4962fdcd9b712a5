# SPDX-License-Identifier: Apache-2.0
"""One writer per run folder: a lock file naming its holder, taken before anything is written.

Two jobs training into one folder (a double `sbatch`, a requeue that starts while the old job is still being
killed, a rerun by hand) overwrite each other's checkpoints, `last_checkpoint` tag and metrics log. Rank 0 of a run
creates `<output_dir>/.eqcoh.lock` atomically (`O_CREAT | O_EXCL`) with its holder: host, pid, the pid's start
time (so a reused pid is not mistaken for the holder), SLURM job id, time and command. A second start into the
folder stops at once with an error that names the holder and the ways out (every rank checks, so no rank waits for
a rank 0 that stopped). The lock is taken over, with a log line, when its holder is gone:

- on this host, the pid no longer runs (or runs another program: its start time differs), e.g. after `kill -9`;
- the holder's SLURM job is this job (a requeue: SLURM restarts the job with the same id), or the holder is another
  rank of this run (its torchrun rendezvous);
- the holder's SLURM job is no longer running or pending (`squeue`), e.g. a lost node.

A holder on another host without a SLURM job id cannot be checked: the lock is kept and the message says how to
remove it by hand. The holder removes the lock when its process exits normally (`atexit`).
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from dinov2_eqcoh.weights.files import disk_full

logger = logging.getLogger("dinov2.eqcoh")

LOCK_NAME = ".eqcoh.lock"


class RunFolderLockedError(RuntimeError):
    """The folder is held by another live run; the message names it and the ways out."""


@dataclass
class Holder:
    host: str
    pid: int
    pid_start: str | None  # field 22 of /proc/<pid>/stat: the process's start time in clock ticks since boot
    slurm_job_id: str | None
    started: str
    command: str
    group: str | None = None  # the run's processes together: its SLURM job, or its torchrun rendezvous

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job_id}" if self.slurm_job_id else ""
        return f"host {self.host}, pid {self.pid}{job}, since {self.started} ({self.command})"


def _proc_start(pid: int) -> str | None:
    """The process's start time, or None when it does not run: no such pid, or a zombie (exited, e.g. killed, and
    not yet reaped by its parent: it holds nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the fields after "pid (comm)": state is field 3, starttime 22
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _job_id() -> str | None:
    """This process's SLURM job (the array task's own id for an array job)."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID") or None


def _group() -> str | None:
    """What all ranks of this run share: the SLURM job, else torchrun's rendezvous (a master port is held by one live
    run at a time), else nothing (a single process)."""
    job = _job_id()
    if job:
        return f"slurm:{job}"
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and os.environ.get("MASTER_PORT"):
        return (f"torchrun:{os.environ.get('MASTER_ADDR', '')}:{os.environ['MASTER_PORT']}:"
                f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}")
    return None


def me() -> Holder:
    return Holder(host=socket.gethostname(), pid=os.getpid(), pid_start=_proc_start(os.getpid()),
                  slurm_job_id=_job_id(), started=datetime.datetime.now().isoformat(timespec="seconds"),
                  command=" ".join([os.path.basename(sys.executable), *sys.argv])[:300], group=_group())


def read_holder(path: Path) -> Holder | None:
    """The holder written in a lock file; None for a file that cannot be read or parsed (a torn write)."""
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _slurm_job_alive(job_id: str) -> bool | None:
    """True / False from `squeue`; None where squeue is not available or does not answer."""
    squeue = shutil.which("squeue")
    if not squeue:
        return None
    try:
        proc = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return False if "Invalid job id" in proc.stderr else None
    states = proc.stdout.split()
    return bool(states) and any(s in ("RUNNING", "PENDING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED")
                                for s in states)


def holder_state(holder: Holder | None, mine: Holder | None = None) -> tuple[str, str]:
    """("ours" | "gone" | "alive" | "unknown", why) for the holder of a lock, seen from this process."""
    mine = mine or me()
    if holder is None:
        return "gone", "the lock file is empty or unreadable (a write cut short)"
    if holder.slurm_job_id and holder.slurm_job_id == mine.slurm_job_id:
        return "ours", f"it is this SLURM job ({holder.slurm_job_id}), requeued or restarted"
    if holder.group and holder.group == mine.group:
        return "ours", f"it is another rank of this run ({holder.group})"
    if holder.host == mine.host:
        if holder.pid == mine.pid:
            return "ours", "it is this process"
        start = _proc_start(holder.pid)
        if start is None:
            return "gone", f"pid {holder.pid} no longer runs on {holder.host}"
        if holder.pid_start and start != holder.pid_start:
            return "gone", f"pid {holder.pid} on {holder.host} is now another process"
        return "alive", f"pid {holder.pid} still runs on {holder.host}"
    if holder.slurm_job_id:
        alive = _slurm_job_alive(holder.slurm_job_id)
        if alive is False:
            return "gone", f"SLURM job {holder.slurm_job_id} is no longer running or pending"
        if alive:
            return "alive", f"SLURM job {holder.slurm_job_id} is still running or pending"
    return "unknown", f"its process on {holder.host} cannot be checked from {mine.host}"


def _message(path: Path, holder: Holder, why: str) -> str:
    return (f"{path.parent} is in use by another run: {holder.describe()}; {why}. Two runs in one folder overwrite "
            f"each other's checkpoints, last_checkpoint tag and metrics. Nothing was written. Either wait for it to "
            f"end, train into another --output-dir, or stop that run (scancel / kill); if it is certainly gone, "
            f"remove {path} and start again.")


def check_lock(output_dir: str | os.PathLike) -> None:
    """Raise RunFolderLockedError if another live run holds the folder (any rank; writes nothing)."""
    path = Path(output_dir) / LOCK_NAME
    if not path.exists():
        return
    holder = read_holder(path)
    state, why = holder_state(holder)
    if state in ("alive", "unknown"):
        raise RunFolderLockedError(_message(path, holder, why))


def acquire_lock(output_dir: str | os.PathLike) -> Path:
    """Take the folder's lock for this process (rank 0), taking over one whose holder is gone or is this job.

    Raises:
        RunFolderLockedError: another live (or uncheckable) run holds it.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    mine = me()
    text = json.dumps(asdict(mine), indent=1) + "\n"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(path)
            state, why = holder_state(holder, mine)
            if state in ("alive", "unknown"):
                raise RunFolderLockedError(_message(path, holder, why)) from None
            logger.warning(f"dinov2_eqcoh: taking over the run-folder lock {path}: "
                           f"{holder.describe() if holder else 'unreadable holder'}; {why}")
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # no half-written lock left behind (it would read as "unreadable holder")
            path.unlink(missing_ok=True)
            raise (disk_full(e, path) or e) from e
        atexit.register(release_lock, path, mine.pid)
        return path
    raise RunFolderLockedError(f"{path}: another process keeps taking the lock; start again")


def release_lock(path: str | os.PathLike, pid: int | None = None) -> None:
    """Remove the lock if this process (or `pid`) holds it."""
    path = Path(path)
    holder = read_holder(path)
    if holder is not None and holder.host == socket.gethostname() and holder.pid == (pid or os.getpid()):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
