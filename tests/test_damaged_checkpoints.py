"""Damaged checkpoints (issue 24, part 2): the newest readable checkpoint is resumed, the damaged ones are kept
aside (renamed `<name>.damaged`, never deleted), every rank resumes the same iteration, and a folder with nothing
readable stops with every file named and nothing changed. Real DINOv2 runs on the tiny config and real files."""

import hashlib
import re
import threading

import pytest
import torch
from helpers import PYTHON, run

TINY = "configs/tiny/eqcoh_cpu.yaml"


def _train(out, epochs, check=True):
    # 1 iteration per "epoch": checkpoints every 3 iterations (2, 5, ...) and model_final after the last
    return run([PYTHON, "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", out,
                "train.OFFICIAL_EPOCH_LENGTH=1", f"optim.epochs={epochs}", "evaluation.eval_period_iterations=0"],
               check=check, timeout=600)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_damage_finds_truncated_flipped_empty_and_missing_files(tmp_path):
    from dinov2_eqcoh.run.recover import damage

    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.randn(64, 64)}, "iteration": 3}, good)
    assert damage(good) is None
    for name, spoil, reason in (("trunc.pth", _truncate, "not a complete checkpoint"),
                                ("flip.pth", _flip_a_byte, "fails its CRC check"),
                                ("empty.pth", lambda p: p.write_bytes(b""), "empty file")):
        p = tmp_path / name
        p.write_bytes(good.read_bytes())
        spoil(p)
        assert reason in damage(p), name
    assert "cannot be read" in damage(tmp_path / "missing.pth")


@pytest.mark.slow
def test_damaged_newest_checkpoints_are_kept_aside_and_the_newest_readable_is_resumed(tmp_path):
    out = tmp_path / "run"
    _train(out, 8)  # model_0000002, model_0000005, model_final (iteration 7)
    final, five = out / "model_final.rank_0.pth", out / "model_0000005.rank_0.pth"
    _truncate(final)  # a copy cut short
    _flip_a_byte(five)  # a bit flipped on disk
    damaged = {final.name: _sha(final), five.name: _sha(five)}

    second = _train(out, 10)
    assert "Starting training from iteration 3" in second.stdout, second.stdout[-3000:]
    msg = next(line for line in second.stdout.splitlines() if line.startswith("dinov2_eqcoh: rank 0:"))
    assert "model_final.rank_0.pth cannot be read (not a complete checkpoint" in msg
    assert "model_0000005.rank_0.pth cannot be read (corrupt: member" in msg
    assert "resuming from model_0000002.rank_0.pth (iteration 2)" in msg
    for name, digest in damaged.items():  # kept aside byte for byte
        assert _sha(out / f"{name}.damaged") == digest, name
    assert (out / "last_checkpoint.rank_0").read_text() == "model_final.rank_0.pth"
    from dinov2_eqcoh.run.recover import damage

    assert damage(final) is None and damage(five) is None  # written again by the resumed run
    assert re.search(r"Training  \[\s*9/10\]", second.stdout)

    # the files kept aside travel with the old run on --no-resume
    run([PYTHON, "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", out, "--no-resume",
         "train.OFFICIAL_EPOCH_LENGTH=1", "optim.epochs=1", "evaluation.eval_period_iterations=0"], timeout=600)
    assert not list(out.glob("*.damaged")) and len(list((out / "old_runs").glob("*/*.damaged"))) == 2


@pytest.mark.slow
def test_nothing_readable_stops_naming_every_file_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    _train(out, 5)  # model_0000002, model_final (iteration 4)
    files = sorted(out.glob("model_*.pth"))
    for p in files:
        _truncate(p)
    before = {p.name: _sha(p) for p in out.iterdir() if p.is_file()}

    proc = _train(out, 8, check=False)
    assert proc.returncode != 0
    assert "no checkpoint of rank 0 can be read" in proc.stdout
    for p in files:
        assert f"{p.name}: not a complete checkpoint" in proc.stdout, p.name
    assert {p.name: _sha(p) for p in out.iterdir() if p.is_file()} == before


def test_ranks_agree_on_the_newest_iteration_readable_everywhere(tmp_path):
    """Two ranks (threads with a real all-gather over a barrier): rank 1's newest is damaged, so both resume
    iteration 2; rank 0's readable newer file stays where it is, rank 1's damaged one is kept aside."""
    from dinov2_eqcoh.run.recover import recover

    for rank in (0, 1):
        for it in (2, 5):
            torch.save({"model": {"w": torch.full((8,), float(it))}, "iteration": it},
                       tmp_path / f"model_{it:07d}.rank_{rank}.pth")
        (tmp_path / f"last_checkpoint.rank_{rank}").write_text(f"model_0000005.rank_{rank}.pth")
    _flip_a_byte(tmp_path / "model_0000005.rank_1.pth")

    slots, barrier, results = [None, None], threading.Barrier(2), {}

    def worker(rank):
        def gather(obj):
            barrier.wait()
            slots[rank] = obj
            barrier.wait()
            got = list(slots)
            barrier.wait()
            return got

        results[rank] = recover(tmp_path, rank=rank, gather=gather)

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for rank in (0, 1):
        assert (tmp_path / f"last_checkpoint.rank_{rank}").read_text() == f"model_0000002.rank_{rank}.pth"
        assert "resuming from model_0000002" in results[rank] and "iterations 3..5 are trained again" in results[rank]
    assert (tmp_path / "model_0000005.rank_0.pth").is_file()  # readable: not moved
    assert "another rank's is not" in results[0]
    assert (tmp_path / "model_0000005.rank_1.pth.damaged").is_file()
    assert not (tmp_path / "model_0000005.rank_1.pth").exists()

    # nothing damaged anywhere: nothing happens
    assert recover(tmp_path, rank=0) is None
