"""A full disk (issue 24, part 3): every write completes under its final name or leaves nothing behind, the error
names the file and the full disk, and the same command resumes once space is freed.

The file system is a real tmpfs of a few MB that the test mounts (root only; skipped with the reason otherwise);
"freeing space" is a remount with a larger size. Real DINOv2 runs (patch 0011), real exports.
"""

import contextlib
import json
import os
import re
import subprocess
import uuid

import pytest
import torch
from helpers import PYTHON, run

TINY = "configs/tiny/eqcoh_cpu.yaml"


@contextlib.contextmanager
def small_fs(tmp_path, size):
    """A tmpfs of `size` (mount syntax, e.g. "3m") mounted at tmp_path/<id>; yields (path, resize(size))."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    mnt = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt, lambda new: subprocess.run(["mount", "-o", f"remount,size={new}", str(mnt)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _leftovers(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


def _train(out, check=True):
    # checkpoints of ~1.1 MB at iterations 2, 5, 8, ...: a 3 MB file system fills at the second one
    return run([PYTHON, "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", out,
                "train.OFFICIAL_EPOCH_LENGTH=1", "optim.epochs=10", "evaluation.eval_period_iterations=0"],
               check=check, timeout=600)


@pytest.mark.slow
def test_training_on_a_full_disk_stops_naming_the_file_leaves_nothing_and_resumes(tmp_path):
    with small_fs(tmp_path, "3m") as (mnt, resize):
        out = mnt / "run"
        first = _train(out, check=False)
        assert first.returncode != 0
        m = re.search(r"OSError: \[Errno 28\] disk or quota full while writing (\S+?): nothing was left", first.stdout)
        assert m, first.stdout[-3000:]
        failed = m.group(1)
        assert not os.path.exists(failed) and _leftovers(out) == []
        for line in (out / "training_metrics.json").read_text().splitlines():  # whole JSON lines only
            json.loads(line)
        tagged = out / (out / "last_checkpoint.rank_0").read_text()
        assert tagged.is_file() and tagged.name != os.path.basename(failed)

        resize("64m")  # space freed
        second = _train(out)
        start = int(re.search(r"Starting training from iteration (\d+)", second.stdout).group(1))
        assert start == int(re.search(r"model_(\d+)", tagged.name).group(1)) + 1
        assert (out / "model_final.rank_0.pth").is_file() and _leftovers(out) == []


def test_metrics_log_keeps_whole_lines_when_the_disk_fills(tmp_path):
    from dinov2.logging.helpers import MetricLogger

    with small_fs(tmp_path, "64k") as (mnt, _):
        path = mnt / "training_metrics.json"
        logger = MetricLogger(output_file=str(path))
        logger.update(loss=1.0)
        logger.dump_in_output_file(iteration=0, iter_time=0.1, data_time=0.0)
        before = path.read_bytes()
        with open(mnt / "filler", "wb") as f:  # leave less room than one line
            with contextlib.suppress(OSError):
                f.write(b"\0" * (1 << 20))
        logger.update(**{f"metric_with_a_long_name_{i}": float(i) for i in range(200)})
        with pytest.raises(OSError, match=f"disk or quota full while writing {re.escape(str(path))}"):
            logger.dump_in_output_file(iteration=10, iter_time=0.1, data_time=0.0)
        assert path.read_bytes() == before


@pytest.mark.parametrize("fmt", ["hub", "hf"])
def test_export_to_a_full_disk_leaves_nothing_and_names_the_file(tmp_path, fmt):
    ckpt_dir = tmp_path / "run"
    run([PYTHON, "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", ckpt_dir,
         "train.OFFICIAL_EPOCH_LENGTH=1", "optim.epochs=1", "evaluation.eval_period_iterations=0"], timeout=600)
    with small_fs(tmp_path, "256k") as (mnt, _):
        target = mnt / ("backbone.pth" if fmt == "hub" else "hf")
        proc = run([PYTHON, "-m", "dinov2_eqcoh.weights.export", "--checkpoint", ckpt_dir / "model_final.rank_0.pth",
                    "--output", target, "--format", fmt], check=False, timeout=300)
        assert proc.returncode != 0
        assert "disk or quota full while writing" in proc.stdout, proc.stdout[-2000:]
        assert _leftovers(mnt) == [] and not (target.is_file() or (target / "model.safetensors").exists())


def test_disk_full_is_found_in_torch_and_safetensors_errors(tmp_path):
    from dinov2_eqcoh.weights.files import atomic_output

    with small_fs(tmp_path, "64k") as (mnt, _):
        for name, write in (("t.pth", lambda p: torch.save(torch.zeros(1 << 16), open(p, "wb"))),
                            ("s.safetensors", lambda p: __import__("safetensors.torch").torch.save_file(
                                {"w": torch.zeros(1 << 16)}, p))):
            with pytest.raises(OSError, match=f"disk or quota full while writing {re.escape(str(mnt / name))}"):
                with atomic_output(mnt / name) as tmp:
                    write(tmp)
            assert os.listdir(mnt) == []
