# SPDX-License-Identifier: Apache-2.0
"""Reading checkpoint files safely, and the raw backbone key layout: the bottom of `dinov2_eqcoh.weights`.

Everything else in the package (checkpoints, interop, run_config) reads files through `load_checkpoint_file`, so one
pickle policy holds: `torch.load(weights_only=True)` with the numpy scalars DINOv2's optimizer state holds (the same
allow-list as patch 0004); a file that needs full unpickling is refused unless the caller passes `allow_pickle=True`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("dinov2.eqcoh")

_CHUNKED_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")  # blocks.{chunk}.{i}.rest


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


def disk_full(error: BaseException | None, path: str | os.PathLike) -> OSError | None:
    """An OSError naming `path` when `error` (or anything in its chain) says the disk or the quota is full (ENOSPC,
    EDQUOT; torch and safetensors wrap it as "unexpected pos" / "os error 28"), else None. As DINOv2's patch 0011."""
    seen = error
    while seen is not None:
        code = getattr(seen, "errno", None)
        if code in _DISK_FULL_ERRNOS or any(t in str(seen) for t in _DISK_FULL_TEXT):
            return OSError(code if code in _DISK_FULL_ERRNOS else errno.ENOSPC,
                           f"disk or quota full while writing {path}: nothing was left under that name (a previous "
                           "file of that name is intact); free space, then run the same command again", str(path))
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield `<path>.tmp` to write; once the block ends it is fsynced and renamed to `path`. On any failure the
    temporary file is removed (nothing is left behind, a previous `path` is untouched) and a full disk becomes an
    OSError naming `path` (`disk_full`).

        with atomic_output(out) as tmp:
            with open(tmp, "wb") as f:  # a file object: torch.save then reports ENOSPC in its exception chain
                torch.save(state, f)
    """
    tmp = f"{os.fspath(path)}.tmp"
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        full = disk_full(e, path)
        if full is not None:
            raise full from e
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`Path.write_text`, all or nothing (`atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def _numpy_safe_globals() -> list:
    """The numpy scalar/dtype globals DINOv2's optimizer state pickles (schedule values): data, not code."""
    numpy_core = getattr(np, "_core", None) or np.core
    return [numpy_core.multiarray.scalar, np.dtype] + [type(np.dtype(t)) for t in ("float64", "float32", "int64")]


def holds_sharded_tensors(path: str | os.PathLike) -> bool:
    """Whether a torch zip checkpoint pickles `ShardedTensor`s (FSDP LOCAL_STATE_DICT of a run with world size >
    1); read from the archive's pickle stream, without unpickling (that needs the run's process group)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(z.read(n).find(b"ShardedTensor") >= 0 for n in z.namelist() if n.endswith("data.pkl"))
    except (OSError, zipfile.BadZipFile):
        return False


def load_checkpoint_file(path: str | os.PathLike, allow_pickle: bool = False) -> Any:
    """`torch.load` a checkpoint on the CPU, refusing files that need full unpickling unless `allow_pickle`.

    Args:
        path: the checkpoint file.
        allow_pickle: load with `weights_only=False` when the safe loader refuses the file. Only for trusted files:
            unpickling can run arbitrary code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file needs full unpickling (and `allow_pickle` is false), is not a torch checkpoint, or is
            one rank's shard of a multi-process run (`dinov2_eqcoh.weights.consolidate` makes a whole one).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    if holds_sharded_tensors(path):
        raise ValueError(
            f"checkpoint {path} is one rank's shard of a multi-process (FSDP) run; write a whole one with "
            f"`python -m dinov2_eqcoh.weights.consolidate {os.path.dirname(os.path.abspath(path))}` and pass "
            "<run>/consolidated/<name>.pth, or use the run's eval/training_<N>/teacher_checkpoint.pth (teacher only)"
        )
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln), None)
        if reason is None:
            raise ValueError(f"checkpoint {path} is not a readable torch checkpoint: {str(e).splitlines()[-1]}") from e
        if not allow_pickle:
            raise ValueError(
                f"checkpoint {path} holds objects other than tensors and plain containers and needs full unpickling, "
                f"which can run arbitrary code ({reason.split(' was not')[0]}). Refused; pass allow_pickle=True "
                "(--allow-pickle) only if you trust the file."
            ) from e
        logger.warning(f"loading {path} with full unpickling (allow_pickle=True): {reason.split(' was not')[0]}")
        return torch.load(path, map_location="cpu", weights_only=False)


def unchunk_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map chunked block keys `blocks.{chunk}.{i}.*` to the raw layout `blocks.{i}.*` (others unchanged)."""
    out = {}
    for key, value in state.items():
        m = _CHUNKED_KEY.match(key)
        new_key = f"blocks.{m.group(2)}.{m.group(3)}" if m else key
        if new_key in out:
            raise ValueError(f"two checkpoint entries map to {new_key} (mixed chunked and unchunked block keys?)")
        out[new_key] = value
    return out
