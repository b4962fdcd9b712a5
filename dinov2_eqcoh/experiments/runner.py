# SPDX-License-Identifier: Apache-2.0
"""How the experiments train: one training process per run, launched and logged here and nowhere else.

`run_training(...)` runs the plugin's training door, `python -m dinov2_eqcoh.train` (DINOv2's own entry and loop), with one
intra-op thread, its whole output kept in a log and its progress lines printed; the demo, the study, the curves
and the regime search all train through it. `hold_folder` is the one-experiment-per-folder lock of the resumable
ones.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

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


TRAIN_MODULE = "dinov2_eqcoh.train"


def shown(path: str | Path) -> str:
    """A path as a report records it: relative to the repository when inside it (a report read on another machine
    names `configs/...`, `out/...`), else as given."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def train_command(config_file: str | Path, run_dir: Path, opts: Sequence[str] = ()) -> list[str]:
    """The command that trains `config_file` (+ `key=value` overrides) into `run_dir`."""
    return [sys.executable, "-m", TRAIN_MODULE, "--config-file", str(config_file), "--output-dir", str(run_dir),
            *map(str, opts)]


def run_training(prefix: str, name: str, cmd: list[str], log_path: Path, append: bool = False) -> float:
    """Run a `train_command` with its output in `log_path` and its progress printed as `<prefix>   <name> [it/N] ...`.

    Args:
        prefix: the experiment's tag in printed lines, e.g. "[study]".
        name: the run's name in printed lines.
        append: add to `log_path` (a resumed run keeps its earlier segments' log) instead of replacing it.

    Returns:
        The wall seconds of this call. A failed run stops the experiment (SystemExit naming the exit code and log).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rc = run_logged(cmd, log_path, progress_reporter(prefix, name), mode="a" if append else "w")
    if rc != 0:
        raise SystemExit(f"{prefix} training {name} failed (exit {rc}); see {log_path}")
    return time.time() - start


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


# ---------------------------------------------------------------------------------------------- what a run logged

def logged_train_seconds(run_dir: Path) -> float:
    """Training time of a run over all its segments: the sum of DINOv2's "Training Total time: H:MM:SS" lines."""
    import re

    total = 0.0
    for h, m, s in re.findall(r"Training Total time: (\d+):(\d+):(\d+)", (run_dir / "logs/log.txt").read_text()):
        total += 3600 * int(h) + 60 * int(m) + int(s)
    return total


def teacher_at(run_dir: Path, point: int) -> Path:
    """The teacher DINOv2 kept after `point` iterations (its iteration index is point - 1)."""
    return run_dir / "eval" / f"training_{point - 1}" / "teacher_checkpoint.pth"


def dino_trajectory(run_dir: Path, n_prototypes: int, iterations: int) -> dict:
    """DINOv2's image-level DINO term over ln K along training (as demo.dino_loss_at_end, for the whole log).

    DINOv2 logs the median of the last 20 iterations every 10; "last quarter" = records at iterations ≥ 3/4 of
    `iterations` (the last record when the log is shorter than that)."""
    records = [json.loads(line) for line in (run_dir / "training_metrics.json").read_text().splitlines()
               if line.strip()]
    records = [r for r in records if "dino_local_crops_loss" in r and "dino_global_crops_loss" in r]
    uniform = math.log(n_prototypes)
    if not records:
        return {}
    ratio = {int(r["iteration"]): (r["dino_local_crops_loss"] + r["dino_global_crops_loss"]) / uniform
             for r in records}
    last_it = max(ratio)
    quarter = [v for it, v in ratio.items() if it >= 0.75 * iterations] or [ratio[last_it]]
    low_it = min(ratio, key=ratio.get)
    return {
        "dino_ratio_end": ratio[last_it],
        "dino_ratio_last_quarter_max": max(quarter),
        "dino_ratio_last_quarter_mean": sum(quarter) / len(quarter),
        "dino_ratio_min": ratio[low_it],
        "dino_ratio_min_iteration": low_it,
        "dino_ratio": {str(k): round(v, 4) for k, v in sorted(ratio.items())},
        "dino_uniform": uniform,
    }
