"""Reliability: bad input gets a clear error, faults lose nothing, checkpoints are safe.

- datasets: a missing/empty folder, an unknown name or key, an out-of-range limit are named; an unreadable or
  truncated image is skipped, logged and counted (across DataLoader workers), and too many stop the run;
- checkpoints (patch 0006): written to `<file>.tmp` then renamed, so a kill during a save keeps the previous
  checkpoint and its tag; `kill -9` mid-run then the same command resumes; a non-finite loss stops the run before
  that iteration's optimizer step, naming the term and the iteration, and leaves the last checkpoint untouched.

Loading safety of `dinov2_eqcoh.weights.checkpoints.load_checkpoint_file` (full unpickling refused unless opted in; missing
and unexpected keys named) is tested in test_checkpoints.py.
"""

import builtins
import hashlib
import io
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PYTHON, REPO, read_metrics, run
from PIL import Image

TINY = "configs/tiny/dinov2_cpu.yaml"


def _train_cmd(output_dir, *opts):
    return [PYTHON, "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", output_dir, *opts]


def _image_folder(root: Path, n_good: int, n_truncated: int = 0, n_garbage: int = 0) -> list[Path]:
    """A flat folder of real 48 px PNG/JPEG files (alternating) plus truncated and garbage files; returns the bad."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    bad = []
    for i in range(n_good + n_truncated + n_garbage):
        fmt, ext = ("PNG", "png") if i % 2 == 0 else ("JPEG", "jpg")
        path = root / f"img_{i:03d}.{ext}"
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, fmt)
        data = buf.getvalue()
        if i >= n_good + n_truncated:
            data = rng.integers(0, 256, 600, dtype=np.uint8).tobytes()  # not an image at all
        elif i >= n_good:
            data = data[: len(data) // 2]  # an interrupted copy
        path.write_bytes(data)
        if i >= n_good:
            bad.append(path)
    return bad


def _interleaved_folder(root: Path, n: int, bad_indexes) -> list[Path]:
    """n real images, those at `bad_indexes` (sorted file order) truncated (odd) or garbage (even)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        path = root / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        if i in bad_indexes:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if i % 2 else b"garbage" * 50)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------------------
# datasets: clear errors
# --------------------------------------------------------------------------------------------------------------


def test_missing_and_empty_folders_are_named(tmp_path):
    from dinov2_eqcoh.data.datasets import make_dataset

    with pytest.raises(FileNotFoundError, match=rf"root={re.escape(str(tmp_path / 'nowhere'))} is not a directory"):
        make_dataset(dataset_str=f"ImageFolder:root={tmp_path / 'nowhere'}")
    empty = tmp_path / "empty"
    (empty / "class_a").mkdir(parents=True)
    (empty / "class_a" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=rf"no images under root={re.escape(str(empty))} \(looked for .*\.png"):
        make_dataset(dataset_str=f"ImageFolder:root={empty}")


@pytest.mark.parametrize(
    "dataset_str, message",
    [
        ("Imagenet:split=TRAIN", r"unknown dataset 'Imagenet' .*allowed: Synthetic, ImageFolder, Photos, ImageNet, ImageNet"),
        ("Synthetic:n=8:colour=red", r"unknown key 'colour' for Synthetic; allowed: n, size, classes, seed"),
        ("Synthetic:n=eight", r"Synthetic key 'n=eight' is not a valid int"),
        ("Synthetic:n=8:seed", r"'seed' in 'Synthetic:n=8:seed' is not key=value"),
        ("ImageFolder:root=.:max_bad=0.1", r"unknown key 'max_bad' for ImageFolder; allowed: root, max_bad_fraction"),
        ("ImageFolder:root=.:max_bad_fraction=lots", r"'max_bad_fraction=lots' is not a valid float"),
        ("ImageFolder:root=.:max_bad_fraction=2", r"max_bad_fraction=2.0 is out of range; allowed 0..1"),
    ],
)
def test_bad_dataset_strings_name_the_key_and_what_is_allowed(dataset_str, message):
    from dinov2_eqcoh.data.datasets import make_dataset

    with pytest.raises(ValueError, match=message):
        make_dataset(dataset_str=dataset_str)


def test_imagenet_placeholders_folders_and_metadata_are_checked_with_the_command_that_writes_them(tmp_path):
    """DINOv2's ImageNet: the shipped configs' `<set me>`, a missing root and missing `extra` metadata are named
    before a model is built (and at submission, test_submission_checks_config_and_dataset_for_templated_folders)."""
    from dinov2_eqcoh.data.datasets import check_dataset_str

    with pytest.raises(ValueError, match=r"ImageNet needs root=<dir>, got root='<set me>'"):
        check_dataset_str("ImageNet:split=TRAIN:root=<set me>:extra=<set me>")
    with pytest.raises(FileNotFoundError, match=r"root=/nonexistent/imagenet is not a directory"):
        check_dataset_str(f"ImageNet:split=TRAIN:root=/nonexistent/imagenet:extra={tmp_path}")
    root, extra = tmp_path / "imagenet", tmp_path / "extra"
    (root / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        check_dataset_str(f"ImageNet:split=TRAIN:root={root}:extra={extra}")
    msg = str(err.value)
    assert "lacks entries-TRAIN.npy, class-ids-TRAIN.npy, class-names-TRAIN.npy" in msg
    assert f"ImageNet(split=s, root='{root}', extra='{extra}').dump_extra() for s in ImageNet.Split" in msg
    extra.mkdir()
    for name in ("entries-TRAIN.npy", "class-ids-TRAIN.npy", "class-names-TRAIN.npy"):
        np.save(extra / name, np.zeros(1))
    check_dataset_str(f"ImageNet:split=TRAIN:root={root}:extra={extra}")  # complete: no error


# --------------------------------------------------------------------------------------------------------------
# datasets: unreadable images are skipped, logged, counted
# --------------------------------------------------------------------------------------------------------------


def test_unreadable_image_is_replaced_by_the_next_readable_one_and_counted(tmp_path, caplog):
    from dinov2_eqcoh.data.datasets import ImageFolder

    paths = _interleaved_folder(tmp_path / "imgs", 6, bad_indexes={2, 3})  # 2: garbage, 3: truncated
    ds = ImageFolder(str(tmp_path / "imgs"), max_bad_fraction=1.0)
    with caplog.at_level(logging.WARNING, logger="dinov2"):
        image, target = ds[np.int64(2)]
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(paths[4]).convert("RGB")))  # deterministic: 2 -> 4
    assert (ds.bad_images, ds.loaded_images) == (2, 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert str(paths[2]) in warnings[0] and "bad images so far: 1 of 1 loads" in warnings[0]
    assert str(paths[3]) in warnings[1] and "truncated" in warnings[1].lower()
    assert "bad images so far: 2 of 2 loads" in warnings[1]
    image, _ = ds[5]  # the last file is good: no wrap-around, one more load
    assert (ds.bad_images, ds.loaded_images) == (2, 4)


def test_counts_are_shared_across_dataloader_workers(tmp_path):
    from torchvision.transforms.functional import pil_to_tensor

    from dinov2_eqcoh.data.datasets import ImageFolder

    _interleaved_folder(tmp_path / "imgs", 8, bad_indexes={2, 5})
    ds = ImageFolder(str(tmp_path / "imgs"), transform=pil_to_tensor, max_bad_fraction=0.5)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    assert sum(len(images) for images, _ in loader) == 8
    # each worker process decoded its own indexes; the parent sees the totals of both
    assert (ds.bad_images, ds.loaded_images) == (2, 10)


def test_too_many_bad_images_stop_with_a_clear_message(tmp_path):
    from dinov2_eqcoh.data.datasets import ALL_BAD_STOP, MIN_LOADS_FOR_FRACTION, ImageFolder, make_dataset

    # every load fails: stop at once after ALL_BAD_STOP loads, naming the count, the last file and the key
    paths = _interleaved_folder(tmp_path / "all_bad", 12, bad_indexes=set(range(12)))
    ds = make_dataset(dataset_str=f"ImageFolder:root={tmp_path / 'all_bad'}")
    with pytest.raises(RuntimeError) as err:
        ds[0]
    message = str(err.value)
    assert f"{ALL_BAD_STOP} of {ALL_BAD_STOP} image loads" in message and "max_bad_fraction=0.01" in message
    assert f"last bad file: {paths[ALL_BAD_STOP - 1]}" in message
    assert f"train.dataset_path=ImageFolder:root={tmp_path / 'all_bad'}:max_bad_fraction=" in message
    # with the limit at 1, loading goes on until no file is left to try
    with pytest.raises(RuntimeError, match="none of the 12 images under root=.* can be read"):
        ImageFolder(str(tmp_path / "all_bad"), max_bad_fraction=1.0)[0]

    # 2 bad files in 20 (2 failed loads per 22): over a 5% limit, judged only once MIN_LOADS_FOR_FRACTION loads happened
    _interleaved_folder(tmp_path / "some_bad", 20, bad_indexes={4, 11})
    ds = make_dataset(dataset_str=f"ImageFolder:root={tmp_path / 'some_bad'}:max_bad_fraction=0.05")
    served = 0
    with pytest.raises(RuntimeError, match=r"of \d+ image loads .* failed \(9\.\d%\), more than max_bad_fraction=0.05"):
        while True:
            ds[served % 20]
            served += 1
    assert ds.loaded_images >= MIN_LOADS_FOR_FRACTION and served >= MIN_LOADS_FOR_FRACTION * 20 // 22 - 1
    # the same files under a 10% limit never stop
    ds = make_dataset(dataset_str=f"ImageFolder:root={tmp_path / 'some_bad'}:max_bad_fraction=0.1")
    for i in range(200):
        ds[i % 20]
    assert (ds.bad_images, ds.loaded_images) == (20, 220)


@pytest.mark.slow
def test_training_run_skips_bad_images_and_logs_them(tmp_path):
    bad = _image_folder(tmp_path / "imgs", n_good=6, n_truncated=1, n_garbage=1)
    out = tmp_path / "run"
    # 8 files, 16 samples drawn by DINOv2's permutation sampler: every file is loaded at least twice;
    # one DataLoader worker process: its warnings reach the run's log file too
    run(_train_cmd(out, f"train.dataset_path=ImageFolder:root={tmp_path / 'imgs'}:max_bad_fraction=0.5",
                   "train.num_workers=1", "evaluation.eval_period_iterations=0"))
    assert (out / "model_final.rank_0.pth").is_file()
    log = (out / "logs" / "log.txt").read_text()
    skipped = re.findall(r"skipped unreadable image (\S+) .*bad images so far: (\d+) of (\d+) loads", log)
    assert {Path(p) for p, _, _ in skipped} == set(bad), skipped
    counts = [(int(n), int(m)) for _, n, m in skipped]
    assert [n for n, _ in counts] == list(range(1, len(counts) + 1)) and all(m >= n for n, m in counts)
    assert len(counts) >= 2 * len(bad)
    # ... and the count is in the metrics, next to the losses (the loader prefetches, so the logged totals trail
    # the log lines but never go down and end above zero)
    metrics = read_metrics(out)
    assert all("bad_images" in m and "loaded_images" in m for m in metrics)
    bads = [m["bad_images"] for m in metrics]
    assert bads == sorted(bads) and bads[-1] > 0 and metrics[-1]["loaded_images"] >= bads[-1]


@pytest.mark.slow
def test_training_run_stops_when_most_images_are_bad(tmp_path):
    _image_folder(tmp_path / "imgs", n_good=3, n_truncated=6, n_garbage=7)
    out = tmp_path / "run"
    proc = run(_train_cmd(out, f"train.dataset_path=ImageFolder:root={tmp_path / 'imgs'}", "optim.epochs=30",
                          "evaluation.eval_period_iterations=0"), check=False)
    assert proc.returncode != 0
    message = re.search(r"RuntimeError: (ImageFolder: (\d+) of (\d+) image loads .*)", proc.stdout)
    assert message, proc.stdout[-3000:]
    assert "more than max_bad_fraction=0.01" in message.group(1) and ":max_bad_fraction=" in message.group(1)
    assert "last bad file: " + str(tmp_path / "imgs" / "img_0") in message.group(1)
    assert message.group(1) in (out / "logs" / "log.txt").read_text()  # also in the run's log
    assert not (out / "model_final.rank_0.pth").exists()


# --------------------------------------------------------------------------------------------------------------
# checkpoints: atomic saves, kill -9 and resume, non-finite losses
# --------------------------------------------------------------------------------------------------------------


class Killed(BaseException):
    """Stands in for the process dying mid-write (what was written so far stays on disk)."""


def _checkpointer(save_dir, seed):
    from dinov2.fsdp import FSDPCheckpointer

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    return model, FSDPCheckpointer(model, str(save_dir), optimizer=optimizer, save_to_disk=True)


def _assert_resumes_to(save_dir, model, iteration, name):
    fresh, checkpointer = _checkpointer(save_dir, seed=123)
    assert checkpointer.get_checkpoint_file() == os.path.join(save_dir, name)
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == iteration
    for (key, value), expected in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(value, expected), key


def test_kill_during_a_save_keeps_the_previous_checkpoint_and_tag(tmp_path, monkeypatch):
    model, checkpointer = _checkpointer(tmp_path, seed=0)
    checkpointer.save("model_final", iteration=3)  # e.g. a finished run, later extended and resumed
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    # the process dies while torch.save streams the next checkpoint of the same name: half the bytes are out
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        raise Killed

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Killed):
        checkpointer.save("model_final", iteration=7)
    monkeypatch.setattr(torch, "save", real_save)
    model.load_state_dict(saved)
    _assert_resumes_to(tmp_path, model, 3, "model_final.rank_0.pth")

    # the process dies while the tag file is written (after the new checkpoint is complete)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    real_open = builtins.open

    def dying_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if os.path.basename(str(file)).startswith("last_checkpoint") and "w" in mode:
            def write(_):
                raise Killed
            f.write = write
        return f

    monkeypatch.setattr(builtins, "open", dying_open)
    with pytest.raises(Killed):
        checkpointer.save("model_0000009", iteration=9)
    monkeypatch.setattr(builtins, "open", real_open)
    model.load_state_dict(saved)
    _assert_resumes_to(tmp_path, model, 3, "model_final.rank_0.pth")


@pytest.mark.slow
def test_kill_9_during_training_then_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    # checkpoints every 3 * OFFICIAL_EPOCH_LENGTH = 3 iterations, 8 in all
    cmd = _train_cmd(out, "train.OFFICIAL_EPOCH_LENGTH=1", "optim.epochs=8", "evaluation.eval_period_iterations=0")
    with open(tmp_path / "first.txt", "w") as log:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 240
            while not (out / "last_checkpoint.rank_0").exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            ended = proc.wait(60)
    assert ended == -signal.SIGKILL, "the run ended before the kill: " + (tmp_path / "first.txt").read_text()[-2000:]
    assert not (out / "model_final.rank_0.pth").exists()

    second = run(cmd)
    start = int(re.search(r"Starting training from iteration (\d+)", second.stdout).group(1))
    assert start > 0 and start % 3 == 0, start
    assert (out / "model_final.rank_0.pth").is_file()
    assert re.search(r"Training  \[7/8\]", second.stdout), second.stdout[-2000:]


def _digest(path: Path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.mark.slow
def test_non_finite_loss_stops_before_the_step_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    run(_train_cmd(out, "evaluation.eval_period_iterations=0"))  # 4 iterations, model_final at iteration 3
    before = {p.name: _digest(p) for p in out.iterdir() if p.suffix == ".pth" or p.name.startswith("last_checkpoint")}
    assert "model_final.rank_0.pth" in before

    # resumed with a real, absurd learning rate: the step of iteration 4 blows the weights up, the loss of
    # iteration 5 is NaN (iteration 5 is also a checkpoint iteration: 3 * OFFICIAL_EPOCH_LENGTH = 6)
    proc = run(_train_cmd(out, "evaluation.eval_period_iterations=0", "optim.epochs=4", "optim.base_lr=1e30"),
               check=False)
    assert proc.returncode != 0
    assert "Starting training from iteration 4" in proc.stdout
    error = re.search(r"FloatingPointError: (non-finite loss at iteration (\d+): .*)", proc.stdout)
    assert error, proc.stdout[-3000:]
    assert int(error.group(2)) >= 4 and "dino_global_crops_loss" in error.group(1)
    assert "model_final.rank_0.pth" in error.group(1)  # names the checkpoint that is kept
    assert error.group(1) in (out / "logs" / "log.txt").read_text()
    after = {p.name: _digest(p) for p in out.iterdir() if p.suffix == ".pth" or p.name.startswith("last_checkpoint")}
    assert after == before
