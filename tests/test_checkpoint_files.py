"""DINOv2's checkpoint files (patch 0009): the teacher dump is atomic, the keep-last clean-up spares model_final.

- `do_test` writes `eval/<it>/teacher_checkpoint.pth` through `<file>.tmp` + fsync + rename, like the model
  checkpoints (patch 0006): a save that fails half-way (here: an object that cannot be pickled, after torch.save has
  already written the tensors before it) leaves the previous teacher checkpoint intact.
- fvcore's `PeriodicCheckpointer` keeps the last `max_to_keep` periodic checkpoints and deletes older ones; its guard
  for `model_final.pth` does not match DINOv2's `model_final.rank_N.pth`. DINOv2's loop uses a subclass that
  never deletes a model_final file (shown against fvcore's class, which does).
"""

from __future__ import annotations

import types

import pytest
import torch
from omegaconf import OmegaConf


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this (a save failing half-way)")


def test_teacher_checkpoint_is_replaced_atomically(tmp_path):
    from dinov2.train.train import do_test

    cfg = OmegaConf.create({"train": {"output_dir": str(tmp_path)}})
    good = {"w": torch.arange(1000.0)}
    do_test(cfg, types.SimpleNamespace(teacher=types.SimpleNamespace(state_dict=lambda: good)), "training_9")
    path = tmp_path / "eval" / "training_9" / "teacher_checkpoint.pth"
    assert torch.equal(torch.load(path, weights_only=True)["teacher"]["w"], good["w"])

    broken = {"w": torch.zeros(100_000), "z": Unpicklable()}  # the tensor is written, then pickling fails
    with pytest.raises(RuntimeError, match="cannot pickle"):
        do_test(cfg, types.SimpleNamespace(teacher=types.SimpleNamespace(state_dict=lambda: broken)), "training_9")
    assert torch.equal(torch.load(path, weights_only=True)["teacher"]["w"], good["w"])  # the previous file


def _checkpointer_with_final_in_recent(tmp_path, cls):
    """A periodic checkpointer whose list of recent checkpoints holds model_final, as after a save of it."""
    from dinov2.fsdp import FSDPCheckpointer

    tmp_path.mkdir(parents=True)
    checkpointer = FSDPCheckpointer(torch.nn.Linear(2, 2), str(tmp_path), save_to_disk=True)
    periodic = cls(checkpointer, period=1, max_iter=100, max_to_keep=1)
    checkpointer.save("model_final", iteration=3)
    periodic.recent_checkpoints.append(checkpointer.get_checkpoint_file())  # what `step` records after a save
    return periodic


def test_keep_last_cleanup_never_deletes_model_final(tmp_path):
    from dinov2.train import train
    from fvcore.common.checkpoint import PeriodicCheckpointer

    assert issubclass(train._KeepFinalPeriodicCheckpointer, PeriodicCheckpointer)
    final = tmp_path / "dinov2" / "model_final.rank_0.pth"
    periodic = _checkpointer_with_final_in_recent(tmp_path / "dinov2", train._KeepFinalPeriodicCheckpointer)
    for it in (4, 5, 6):
        periodic.step(it)
    assert final.is_file(), sorted(p.name for p in final.parent.iterdir())
    assert sorted(p.name for p in final.parent.glob("model_0*.pth")) == ["model_0000006.rank_0.pth"]  # keep-last 1

    # fvcore's own class deletes it: its guard looks for "model_final.pth"
    final = tmp_path / "fvcore" / "model_final.rank_0.pth"
    periodic = _checkpointer_with_final_in_recent(tmp_path / "fvcore", PeriodicCheckpointer)
    periodic.step(4)
    assert not final.exists()
