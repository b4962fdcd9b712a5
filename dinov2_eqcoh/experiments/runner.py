# SPDX-License-Identifier: Apache-2.0
"""The experiments' training subprocess: DINOv2's `train.py` with one intra-op thread, its output kept in a log and
its progress lines printed (the study, the curves, the regime search and the demo all train through this), and the
one-experiment-per-folder lock of the resumable ones."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_logged(cmd: list[str], log_path: Path, report, mode: str = "w") -> int:
    """Run a training command in the repository with one intra-op thread (the data worker has the other core),
    every output line into `log_path` after a `command:` line, and print what `report(line)` returns for a line
    (None: nothing). Returns the exit code."""
    with open(log_path, mode) as log:
        log.write("command: " + " ".join(cmd[1:]) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env={"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            log.write(line)
            message = report(line)
            if message:
                print(message, flush=True)
        return proc.wait()


def progress_reporter(prefix: str, name: str):
    """A `run_logged` reporter for DINOv2's MetricLogger lines (every 10 iterations):
    `<prefix>   <name> [it/N] total_loss L eta H:MM:SS`; None for every other line."""
    def report(line: str) -> str | None:
        if "Training  [" not in line or "eta: " not in line:
            return None
        it = line.split("Training  ")[1].split("]")[0].strip("[ ")
        loss = line.split("total_loss: ")[1].split(" (")[0] if "total_loss: " in line else "?"
        return f"{prefix}   {name} [{it}] total_loss {loss} eta {line.split('eta: ')[1].split()[0]}"

    return report


def hold_folder(output_dir: Path, prefix: str) -> None:
    """Take `output_dir`'s lock for this process (`run.lock`: the run folders' lock, released at exit, taken over
    from a holder that is gone), or stop naming the holder: two studies (or curves) training into one folder would
    remove and retrain each other's runs in flight."""
    from dinov2_eqcoh.run.lock import RunFolderLockedError, acquire_lock

    try:
        acquire_lock(output_dir)
    except RunFolderLockedError as e:
        raise SystemExit(f"[{prefix}] {e}") from None
