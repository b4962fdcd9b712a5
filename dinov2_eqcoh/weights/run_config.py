# SPDX-License-Identifier: Apache-2.0
"""Which config trained a checkpoint, and what a checkpoint file holds, read without loading its tensors.

A run folder (`dinov2_eqcoh.run.folder` writes it) keeps `config.yaml` (the running segment's config) and
`config_history/config.<stamp>.it<A>-<B>.yaml` (the config that trained iterations A..B). A checkpoint of iteration i
was trained with the history file whose range holds i, else with `config.yaml`. This module reads that layout for
every tool that loads a run's weights (export, evaluations), so weights I/O never imports run management.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dinov2_eqcoh.weights.files import _numpy_safe_globals, holds_sharded_tensors  # noqa: F401 - re-exported

HISTORY_DIR = "config_history"
_HISTORY_NAME = re.compile(r"^config\.(?P<stamp>[0-9T-]+)\.it(?P<start>\d+)-(?P<end>\d+)\.yaml$")
_EVAL_DIR = re.compile(r"^(?:training|manual)_(\d+)$")
_MODEL_FILE = re.compile(r"^model_(\d+)\.rank_\d+\.pth$")
# every rank file a run writes, `model_final` included (run.recover, weights.consolidate)
RANK_FILE = re.compile(r"^model_(?P<it>\d+|final)\.rank_(?P<rank>\d+)\.pth$")


class CheckpointReadError(ValueError):
    """A file that is not a readable checkpoint; the message names it and torch's reason."""


def _is_sharded(state: Mapping) -> bool:
    return any("flat_param" in k for k in state) or any(type(v).__name__ == "ShardedTensor" for v in state.values())


def _safe_globals() -> list:
    """What DINOv2's checkpoints hold beyond tensors (as patch 0004's `FSDPCheckpointer._load_file` allows)."""
    allowed = _numpy_safe_globals()
    try:  # the ShardedTensor metadata of a sharded run's LOCAL_STATE_DICT
        from torch.distributed._shard import metadata as shard_md
        from torch.distributed._shard import sharded_tensor as st
        from torch.distributed._shard.sharding_spec import ChunkShardingSpec
        from torch.distributed.remote_device import _remote_device

        allowed += [st.ShardedTensor, st.metadata.ShardedTensorMetadata, st.metadata.TensorProperties,
                    st.metadata.MEM_FORMAT_ENCODING, st.Shard, shard_md.ShardMetadata, ChunkShardingSpec,
                    st.ShardedTensor.ProcessGroupState, _remote_device, getattr]
    except (ImportError, AttributeError):
        pass
    return allowed


SHARDED = "<sharded>"  # read_checkpoint_meta of a sharded run's file: unpickling it needs the run's process group


def read_checkpoint_meta(path: str | os.PathLike) -> Any:
    """`torch.load` memory-mapped with the safe loader: tensors are not read, their shapes are.

    Returns:
        The checkpoint object, or `SHARDED` for a sharded run's file (compared through its config instead).

    Raises:
        CheckpointReadError: the file is not a readable checkpoint (named, with torch's reason).
    """
    import torch

    if holds_sharded_tensors(path):
        return SHARDED
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure: the file cannot be compared, say which and why
        try:  # mmap needs torch's zip format; older files are read normally
            with torch.serialization.safe_globals(_safe_globals()):
                return torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise CheckpointReadError(f"cannot read checkpoint {path}: {reason}") from e


def checkpoint_iteration(path: str | os.PathLike) -> int | None:
    """The training iteration a checkpoint was written at: `eval/training_N/`, `model_N.rank_*.pth`, else the
    file's `iteration` entry (read memory-mapped); None when none of these says."""
    path = Path(path)
    for name in (path.parent.name, path.name):
        m = _EVAL_DIR.match(name) or _MODEL_FILE.match(name)
        if m:
            return int(m.group(1))
    try:
        data = read_checkpoint_meta(path)
    except CheckpointReadError:
        return None
    it = data.get("iteration") if isinstance(data, Mapping) else None
    return int(it) if isinstance(it, int) else None


def history_entries(run_dir: str | os.PathLike) -> list[tuple[Path, int, int]]:
    """(file, first iteration, last iteration) of each archived config of a run, oldest first."""
    entries = []
    for p in (Path(run_dir) / HISTORY_DIR).glob("config.*.yaml"):
        m = _HISTORY_NAME.match(p.name)
        if m:
            entries.append((p, int(m.group("start")), int(m.group("end"))))
    return sorted(entries, key=lambda e: (e[1], e[2], e[0].name))


def config_for_checkpoint(checkpoint: str | os.PathLike) -> Path | None:
    """The config a checkpoint inside a run folder was trained with, or None outside a run folder.

    `<run>/model_*.pth`, `<run>/consolidated/model_*.pth` and `<run>/eval/<name>/teacher_checkpoint.pth`: the `config_history/` file whose iteration
    range holds the checkpoint's iteration, else `<run>/config.yaml` (the latest segment's).
    """
    here = Path(checkpoint).resolve().parent
    for run_dir in (here, here.parent, here.parent.parent):  # <run>/, <run>/consolidated/, <run>/eval/<name>/
        if (run_dir / "config.yaml").is_file() or (run_dir / HISTORY_DIR).is_dir():
            break
    else:
        return None
    entries = history_entries(run_dir)
    if entries:
        it = checkpoint_iteration(checkpoint)
        if it is not None:
            for path, start, end in reversed(entries):  # the latest segment that trained iteration `it`
                if start <= it <= end:
                    return path
    latest = run_dir / "config.yaml"
    return latest if latest.is_file() else None
