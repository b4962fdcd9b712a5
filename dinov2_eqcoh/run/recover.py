# SPDX-License-Identifier: Apache-2.0
"""Damaged checkpoints: resume from the newest readable one, keep the damaged ones aside, never delete them.

DINOv2 resumes the file `last_checkpoint.rank_N` names. Patches 0006/0009 make every write atomic, so a kill never
leaves a half-written checkpoint under its final name; a file can still be damaged afterwards (a disk or file
system error, a copy cut short, a quota hit by another tool). fvcore would then fail inside `torch.load` with
"PytorchStreamReader failed reading zip archive" at every restart.

* `damage(path)`: why a checkpoint cannot be read, or None. A checkpoint is a zip archive (torch's format); every
  member's CRC-32 is checked (`zipfile.testzip`), so a truncated file and a flipped byte are both found. This
  reads the whole file once (about a second per GB); results are cached per (path, size, mtime).
* `recover(output_dir, rank, gather)`: when any rank's tagged checkpoint is damaged, every rank resumes from the
  newest iteration whose checkpoint is readable on *every* rank (ranks never resume different iterations); the
  damaged files newer than that are renamed `<name>.damaged` (`.damaged.1`, ... if taken) and the tag is rewritten
  (atomically) to the chosen file. The log names the damaged files, their reason, the file resumed and the
  iterations that are trained again. No readable checkpoint on some rank: `DamagedCheckpointError` naming every
  file and its reason; nothing is moved or rewritten.

Where it runs: `run.folder.plan_run_folder` (before anything is written) compares the model with the newest
readable checkpoint and says what will happen; `EqCohMetaArch.prepare_for_distributed_training` (after DINOv2 has set up
torch.distributed, before its checkpointer resumes) calls `recover` with the process group's all-gather.
"""

from __future__ import annotations

import functools
import logging
import os
import zipfile
from pathlib import Path
from typing import Callable

from dinov2_eqcoh.weights.run_config import RANK_FILE

logger = logging.getLogger("dinov2")

UNKNOWN_LAST = 2**62  # the iteration of a damaged model_final whose run length is not known: after every other


class DamagedCheckpointError(RuntimeError):
    """No checkpoint of the run folder can be resumed on every rank; nothing was changed."""


def damage(path: str | os.PathLike) -> str | None:
    """Why `path` is not a readable checkpoint (missing, empty, not a zip archive, a member's CRC wrong), or None."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return _damage_of_version(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _damage_of_version(path: str, size: int, mtime_ns: int) -> str | None:
    """`_damage` of one version of a file (path, size, mtime): a file read once per version, not per question."""
    return _damage(Path(path), size)


def _damage(path: Path, size: int) -> str | None:
    if size == 0:
        return "empty file"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except zipfile.BadZipFile as e:
        return f"not a complete checkpoint ({e}; {size} bytes: truncated?)"
    except (OSError, EOFError, ValueError) as e:
        return f"cannot be read ({type(e).__name__}: {e})"
    return f"corrupt: member {bad} fails its CRC check" if bad else None


def _iteration(path: Path, max_iter: int | None) -> int | None:
    """The iteration of `model_<N>.rank_R.pth` from its name; of `model_final`, the run's last iteration."""
    m = RANK_FILE.match(path.name)
    if not m:
        return None
    if m.group(1) != "final":
        return int(m.group(1))
    from dinov2_eqcoh.weights.run_config import checkpoint_iteration

    if damage(path) is None:
        it = checkpoint_iteration(path)
        if it is not None:
            return it
    # fvcore writes model_final after the last iteration: the run's last (when known), else newer than any other
    return max_iter if max_iter is not None else UNKNOWN_LAST


def rank_checkpoints(output_dir: str | os.PathLike, rank: int, max_iter: int | None = None) -> list[tuple[int, Path]]:
    """This rank's `model_*.rank_<rank>.pth` files with their iterations, newest first."""
    found = []
    for p in Path(output_dir).glob(f"model_*.rank_{rank}.pth"):
        it = _iteration(p, max_iter)
        if it is not None:
            found.append((it, p))
    return sorted(found, key=lambda ip: (ip[0], ip[1].name.startswith("model_final")), reverse=True)


def tagged_checkpoint(output_dir: str | os.PathLike, rank: int = 0) -> Path | None:
    """The file `last_checkpoint.rank_<rank>` names (what DINOv2 resumes), or None without a tag."""
    tag = Path(output_dir) / f"last_checkpoint.rank_{rank}"
    if not tag.is_file():
        return None
    return Path(output_dir) / tag.read_text().strip()


def newest_readable(output_dir: str | os.PathLike, rank: int, max_iter: int | None = None
                    ) -> tuple[tuple[int, Path] | None, list[tuple[Path, str]]]:
    """(iteration, file) of this rank's newest readable checkpoint (or None), and the damaged ones newer than it."""
    damaged = []
    for it, p in rank_checkpoints(output_dir, rank, max_iter):
        why = damage(p)
        if why is None:
            return (it, p), damaged
        damaged.append((p, why))
    return None, damaged


def _aside(path: Path) -> Path:
    """Rename a damaged file out of DINOv2's way (never deleted): `<name>.damaged`, `.damaged.1`, ..."""
    target, n = path.with_name(path.name + ".damaged"), 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged.{n}")
    os.replace(path, target)
    return target


def _write_tag(output_dir: Path, rank: int, name: str) -> None:
    from dinov2_eqcoh.weights.files import write_text_atomic

    write_text_atomic(output_dir / f"last_checkpoint.rank_{rank}", name)


def recover(output_dir: str | os.PathLike, rank: int = 0, gather: Callable[[object], list] = lambda x: [x],
            max_iter: int | None = None) -> str | None:
    """Make every rank's tag name a readable checkpoint of one common iteration (see the module docstring).

    Args:
        output_dir: the run folder.
        rank: this process's global rank.
        gather: all-gather of a picklable object over the ranks (identity list for one process).
        max_iter: the run's planned iterations - 1 (the iteration of a damaged `model_final`), if known.

    Returns:
        The message logged when something was recovered, else None.

    Raises:
        DamagedCheckpointError: some rank has no readable checkpoint (every damaged file named).
    """
    out = Path(output_dir)
    tag = tagged_checkpoint(out, rank)
    why = damage(tag) if tag is not None else None
    if not any(gather(why is not None)):
        return None
    best, damaged = newest_readable(out, rank, max_iter)
    readable = {it for it, p in rank_checkpoints(out, rank, max_iter) if damage(p) is None}
    everyone = gather({"rank": rank, "readable": sorted(readable), "damaged": [(str(p), w) for p, w in damaged]})
    common = set.intersection(*(set(e["readable"]) for e in everyone))
    if not common:
        named = "; ".join(f"{p}: {w}" for e in everyone for p, w in e["damaged"]) or "no checkpoint files"
        raise DamagedCheckpointError(
            f"{out}: no checkpoint can be resumed on every rank ({named}). Nothing was moved or rewritten. Rerun "
            "with --no-resume to start over (the folder's files are moved to old_runs/ first), or restore a "
            "checkpoint from a copy.")
    it = max(common)
    chosen = next(p for i, p in rank_checkpoints(out, rank, max_iter) if i == it and damage(p) is None)
    lost = _iteration(tag, max_iter) if tag is not None else None  # before the damaged files move
    moved = [(p, w, _aside(p)) for p, w in damaged]  # this rank's damaged files, all newer than `it`
    _write_tag(out, rank, chosen.name)
    msg = (f"dinov2_eqcoh: rank {rank}: "
           + ("; ".join(f"checkpoint {p} cannot be read ({w}): kept aside as {a.name}" for p, w, a in moved)
              or f"checkpoint {tag} is readable, but another rank's is not")
           + f"; resuming from {chosen.name} (iteration {it})"
           + (f": iterations {it + 1}..{lost} are trained again" if lost is not None and it < lost < UNKNOWN_LAST
              else ": the iterations after it are trained again"))
    logger.warning(msg)
    print(msg, flush=True)
    return msg
