# SPDX-License-Identifier: Apache-2.0
"""Reading checkpoint files safely, and the raw backbone key layout: the bottom of `dinov2_eqcoh.weights`.

Everything else in the package (checkpoints, interop, run_config) reads files through `load_checkpoint_file`, so one
pickle policy holds: `torch.load(weights_only=True)` with the numpy scalars DINOv2's optimizer state holds (the same
allow-list as patch 0004); a file that needs full unpickling is refused unless the caller passes `allow_pickle=True`.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("dinov2.eqcoh")

_CHUNKED_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")  # blocks.{chunk}.{i}.rest


def _numpy_safe_globals() -> list:
    """The numpy scalar/dtype globals DINOv2's optimizer state pickles (schedule values): data, not code."""
    numpy_core = getattr(np, "_core", None) or np.core
    return [numpy_core.multiarray.scalar, np.dtype] + [type(np.dtype(t)) for t in ("float64", "float32", "int64")]


def load_checkpoint_file(path: str | os.PathLike, allow_pickle: bool = False) -> Any:
    """`torch.load` a checkpoint on the CPU, refusing files that need full unpickling unless `allow_pickle`.

    Args:
        path: the checkpoint file.
        allow_pickle: load with `weights_only=False` when the safe loader refuses the file. Only for trusted files:
            unpickling can run arbitrary code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file needs full unpickling (and `allow_pickle` is false) or is not a torch checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
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
