# SPDX-License-Identifier: Apache-2.0
"""A run folder belongs to one model: check it before DINOv2 writes or loads anything, keep its config history.

DINOv2 resumes whatever `last_checkpoint.rank_N` in `--output-dir` names, with fvcore's checkpointer, which skips
every tensor whose shape differs (a warning), leaves those at their random initialisation, and only fails later
inside the optimizer, after `config.yaml` has been overwritten. This module makes the decision up front:

* `plan_run_folder(cfg, output_dir, no_resume)` compares the model `cfg` builds (built on the meta device: no
  memory, no weights) with what the folder holds: the names and shapes of every parameter and buffer of student
  and teacher, and the optimizer's parameter groups (count, sizes, shapes of the Adam moments), read from the
  checkpoint that DINOv2 would resume (`torch.load(mmap=True)`: only the metadata is read). A folder without a
  tagged checkpoint is compared through its latest `eval/*/teacher_checkpoint.pth`, else through the model its
  `config.yaml` builds. Any difference raises `RunFolderError`, naming the config keys that differ (old, new
  value), the tensors that would not load and the two ways out; nothing in the folder is touched. The same is
  done for `MODEL.WEIGHTS` and `student.pretrained_weights` (loaded by path) when they are set.
* `apply_plan` (rank 0 only) then either archives the folder's `config.yaml` into `config_history/` before a
  resume (DINOv2 rewrites `config.yaml` at every start), or, with `--no-resume`, moves the old run's files into
  `old_runs/<YYYYmmdd-HHMMSS>/` so that the new run never mixes with them.
* `config_for_checkpoint(path)` (in `dinov2_eqcoh.weights.run_config`, which reads the history this module writes)
  picks the config a given checkpoint was trained with (export, evaluations).

Where it runs: `EqCohMetaArch.build_cfg`, which DINOv2's `get_cfg_from_args` calls before `setup` creates the
folder, the logs or `config.yaml` (so `python -m dinov2.train.train`, `python -m dinov2_eqcoh.train` and the
SLURM jobs are all covered), and `dinov2_eqcoh.run.train` before it submits (`check_before_submit`).

Config history: `config.yaml` is the config of the running (latest) segment, as DINOv2 writes it.
`config_history/config.<stamp>.it<A>-<B>.yaml` is a byte copy of the `config.yaml` that trained iterations A..B,
archived when a later start resumed from the checkpoint of iteration B. A checkpoint of iteration i was trained
with the history file whose range holds i, else with `config.yaml`.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from dinov2_eqcoh.run.recover import damage, newest_readable, recover, tagged_checkpoint  # noqa: F401 - API
from dinov2_eqcoh.weights.files import atomic_output
from dinov2_eqcoh.weights.run_config import (  # noqa: F401 - names of this module before the split
    _EVAL_DIR,
    HISTORY_DIR,
    SHARDED,
    CheckpointReadError,
    _is_sharded,
    checkpoint_iteration,
    config_for_checkpoint,
    history_entries,
    holds_sharded_tensors,
)
from dinov2_eqcoh.weights.run_config import read_checkpoint_meta as _read_checkpoint_meta

logger = logging.getLogger("dinov2")

OLD_RUNS_DIR = "old_runs"
# what DINOv2 writes into --output-dir (submitit's own files, e.g. <job>_0_log.out, are left where they are)
RUN_FILE_PATTERNS = (
    "config.yaml", HISTORY_DIR, "last_checkpoint.rank_*", "model_*.pth", "model_*.pth.tmp", "last_checkpoint.*.tmp",
    "model_*.pth.damaged*", "config.yaml.*.tmp",
    "eval", "logs", "training_metrics.json",
)
RUN_FILES_SHOWN = "config.yaml, config_history/, model_*.pth, last_checkpoint.rank_*, eval/, logs/, training_metrics.json"
# keys whose value differs between runs without changing anything trained: not listed as changes
IGNORED_KEYS = ("train.output_dir",)
_SHOW = 12  # tensors named per kind of difference

_pending_log: list[tuple[int, str]] = []  # (level, message) for logs/log.txt, which does not exist yet at the check
_building = False  # inside build_meta_model: the model built is not the run's
_pending_recover: list[str] = []  # run folders whose damaged checkpoints the built model recovers (run/recover.py)


class RunFolderError(ValueError):
    """The output folder (or a weights file) holds another model than the config builds; nothing was changed."""


# ---------------------------------------------------------------------------------------------- reading


def read_checkpoint_meta(path: str | os.PathLike) -> Any:
    """`dinov2_eqcoh.weights.run_config.read_checkpoint_meta`, failing with a `RunFolderError`."""
    try:
        return _read_checkpoint_meta(path)
    except CheckpointReadError as e:
        raise RunFolderError(str(e)) from e


def _shape(value) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def _rank() -> int:
    """This process's global rank before DINOv2 initialises torch.distributed (torchrun, then SLURM, else 0)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _world_size() -> int:
    """The number of training processes of this start before torch.distributed exists, read as DINOv2's
    `distributed.enable` will: a SLURM job's SLURM_NTASKS, else torchrun's WORLD_SIZE, else 1."""
    if "SLURM_JOB_ID" in os.environ and os.environ.get("SLURM_NTASKS", "").isdigit():
        return int(os.environ["SLURM_NTASKS"])
    if os.environ.get("WORLD_SIZE", "").isdigit():
        return int(os.environ["WORLD_SIZE"])
    return 1


def global_batch(cfg, world_size: int) -> tuple[int, float]:
    """(global batch, the lr DINOv2 derives from it): world size × `train.batch_size_per_gpu`, and `optim.base_lr`
    × sqrt(global batch / 1024) (DINOv2's `sqrt_wrt_1024` scaling rule, `apply_scaling_rules_to_cfg`)."""
    import math

    batch = int(world_size) * int(cfg.train.batch_size_per_gpu)
    return batch, float(cfg.optim.base_lr) * math.sqrt(batch / 1024.0)


def describe_batch(cfg, world_size: int) -> str:
    batch, lr = global_batch(cfg, world_size)
    return (f"{world_size} process{'es' if world_size != 1 else ''} × train.batch_size_per_gpu "
            f"{cfg.train.batch_size_per_gpu} = global batch {batch}; optim.lr = optim.base_lr {cfg.optim.base_lr} "
            f"× sqrt({batch} / 1024) = {lr:.6g}")


def check_global_batch(cfg, world_size: int) -> str | None:
    """Compare this launch's global batch with the recipe's (`eqcoh.recipe_global_batch`): None when equal or not
    stated, else a warning naming the per-GPU batch that restores it; with `eqcoh.strict_global_batch` a
    `RunFolderError` (nothing written yet)."""
    recipe = cfg.eqcoh.get("recipe_global_batch")
    batch, _ = global_batch(cfg, world_size)
    if recipe is None or batch == int(recipe):
        return None
    per_gpu = int(recipe) / world_size
    fix = (f"train.batch_size_per_gpu={int(per_gpu)} restores it" if per_gpu == int(per_gpu) else
           f"no per-GPU batch restores it with {world_size} processes; use a count that divides {recipe}")
    msg = (f"this launch trains at global batch {batch} ({describe_batch(cfg, world_size)}), the recipe at "
           f"{recipe} (eqcoh.recipe_global_batch): {fix}")
    if cfg.eqcoh.get("strict_global_batch", False):
        raise RunFolderError(msg + " (eqcoh.strict_global_batch=true: stopped before anything was written; set it "
                             "false to train anyway)")
    return msg


def trained_world_size(output_dir: str | os.PathLike) -> int:
    """How many processes wrote the folder's checkpoints: its `last_checkpoint.rank_<N>` tags (0 without any)."""
    ranks = [int(p.name.rsplit("_", 1)[1]) for p in Path(output_dir).glob("last_checkpoint.rank_*")
             if p.name.rsplit("_", 1)[1].isdigit()]
    return max(ranks) + 1 if ranks else 0


def run_files(output_dir: str | os.PathLike) -> list[Path]:
    """The files and folders of a DINOv2 run directly in `output_dir` (not `old_runs/`, not submitit's files)."""
    out = Path(output_dir)
    found = {Path(p) for pattern in RUN_FILE_PATTERNS for p in glob.glob(os.path.join(glob.escape(str(out)), pattern))}
    return sorted(found)


def _eval_dumps(output_dir: Path) -> list[tuple[int, Path]]:
    dumps = []
    for p in (output_dir / "eval").glob("*/teacher_checkpoint.pth"):
        m = _EVAL_DIR.match(p.parent.name)
        if m:
            dumps.append((int(m.group(1)), p))
    return sorted(dumps)


# ---------------------------------------------------------------------------------------------- configs


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _container(cfg) -> dict:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an unresolvable interpolation: compare the raw strings
        return OmegaConf.to_container(cfg, resolve=False)


def config_diff(old_cfg, new_cfg) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every leaf that differs (`<absent>` for a key only one side has).

    `train.output_dir` is ignored, and so is `optim.lr` under DINOv2's scaling rule (DINOv2 recomputes it from
    `optim.base_lr`, the batch size and the world size at every start).
    """
    old, new = _flatten(_container(old_cfg)), _flatten(_container(new_cfg))
    ignored = set(IGNORED_KEYS)
    if new.get("optim.scaling_rule") == "sqrt_wrt_1024":
        ignored.add("optim.lr")
    absent = "<absent>"
    return [(k, old.get(k, absent), new.get(k, absent)) for k in sorted(set(old) | set(new))
            if k not in ignored and old.get(k, absent) != new.get(k, absent)]


def _format_diff(diff: Sequence[tuple[str, Any, Any]], limit: int = 25) -> str:
    lines = [f"  {k}: {o!r} -> {n!r}" for k, o, n in diff[:limit]]
    if len(diff) > limit:
        lines.append(f"  ... ({len(diff)} keys in all)")
    return "\n".join(lines)


def _load_old_config(path: Path):
    """A run's saved config.yaml on top of today's defaults (a file of an older version may lack new keys)."""
    from omegaconf import OmegaConf

    from dinov2_eqcoh.method.config import load_default_config, upgrade_old_config

    old = OmegaConf.load(path)
    upgrade_old_config(old, str(path))
    return OmegaConf.merge(load_default_config(), old)


# ---------------------------------------------------------------------------------------------- the new model


@dataclass
class ModelLayout:
    """Names and shapes of a meta-architecture's state and the optimizer's parameter groups DINOv2 builds."""

    state: dict[str, tuple[int, ...]]
    groups: list[list[tuple[int, ...] | None]]  # per group, the shape of each parameter (Adam moment)
    multipliers: list[tuple[Any, Any, Any]] = field(default_factory=list)  # (lr_mult, wd_mult, is_last_layer)


@contextlib.contextmanager
def _quiet(name: str = "dinov2"):
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def build_meta_model(cfg):
    """The meta-architecture of `cfg` (`train.meta_arch`), built on the meta device without pretrained weights."""
    import copy

    import torch
    from dinov2.train.ssl_meta_arch import SSLMetaArch
    from dinov2.utils.config import resolve_component
    from omegaconf import open_dict

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.student.pretrained_weights = ""
    meta_arch_cls = resolve_component(cfg.train.get("meta_arch", ""), SSLMetaArch)
    global _building
    _building, was = True, _building
    try:
        with _quiet(), torch.device("meta"):
            return meta_arch_cls(cfg)
    finally:
        _building = was


def model_layout(cfg) -> ModelLayout:
    """The layout of the model DINOv2 would build from `cfg` (parameters, buffers, optimizer groups)."""
    model = build_meta_model(cfg)
    groups = model.get_params_groups()  # what do_train hands to AdamW, in its order
    return ModelLayout(
        state={k: _shape(v) for k, v in model.state_dict().items()},
        groups=[[_shape(p) for p in g["params"]] for g in groups],
        multipliers=[(g.get("lr_multiplier"), g.get("wd_multiplier"), g.get("is_last_layer")) for g in groups],
    )


def checkpoint_layout(data: Any, source: str) -> ModelLayout | None:
    """The layout a DINOv2 checkpoint holds: a training checkpoint (model + optimizer) or an eval dump
    (`{"teacher": ...}`: teacher keys only). None for a sharded (FSDP flat-parameter) checkpoint."""
    if data is SHARDED:
        return None
    if not isinstance(data, Mapping):
        raise RunFolderError(f"{source}: not a DINOv2 checkpoint (a {type(data).__name__}, not a dict)")
    if isinstance(data.get("model"), Mapping):
        state = data["model"]
    elif isinstance(data.get("teacher"), Mapping):
        state = {f"teacher.{k.removeprefix('module.')}": v for k, v in data["teacher"].items()}
    else:
        raise RunFolderError(f"{source}: not a DINOv2 checkpoint (top-level keys: {', '.join(map(str, data))})")
    if _is_sharded(state):
        return None
    from dinov2_eqcoh.method.ssl_meta_arch import drop_retired_keys

    state, _ = drop_retired_keys(dict(state))  # tensors of earlier versions that a resume ignores
    layout = ModelLayout(state={k: _shape(v) for k, v in state.items()}, groups=[])
    optim = data.get("optimizer")
    if isinstance(optim, Mapping) and isinstance(optim.get("param_groups"), list):
        moments = optim.get("state", {})
        for g in optim["param_groups"]:
            layout.groups.append([_shape(moments.get(i, {}).get("exp_avg")) for i in g.get("params", [])])
            layout.multipliers.append((g.get("lr_multiplier"), g.get("wd_multiplier"), g.get("is_last_layer")))
    return layout


def compare_layouts(ref: ModelLayout, new: ModelLayout, *, prefix: str = "", optimizer: bool = True) -> dict:
    """Differences between a reference (the folder's checkpoint) and the new model.

    Args:
        prefix: compare only keys starting with it (`"teacher."` for an eval dump).
        optimizer: compare the optimizer's parameter groups too (when the reference has them).

    Returns:
        {"mismatched": [...], "missing": [...], "unexpected": [...], "optimizer": [...], "not_loaded": n,
        "total": n}: mismatched as "key (ref) vs (new)"; not_loaded = tensors of the new model that would not load.
    """
    new_state = {k: v for k, v in new.state.items() if k.startswith(prefix)}
    mismatched = [f"{k} {ref.state[k]} -> {s}" for k, s in new_state.items() if k in ref.state and ref.state[k] != s]
    missing = [k for k in new_state if k not in ref.state]
    unexpected = [k for k in ref.state if k.startswith(prefix) and k not in new_state]
    optim = []
    if optimizer and ref.groups:
        if len(ref.groups) != len(new.groups):
            optim.append(f"{len(ref.groups)} parameter groups in the checkpoint, {len(new.groups)} in the new model")
        else:
            for i, (a, b) in enumerate(zip(ref.groups, new.groups)):
                if len(a) != len(b):
                    optim.append(f"group {i}: {len(a)} parameters -> {len(b)}")
                else:
                    bad = [j for j, (x, y) in enumerate(zip(a, b)) if x is not None and x != y]
                    if bad:
                        optim.append(f"group {i}: parameter {bad[0]} {a[bad[0]]} -> {b[bad[0]]}"
                                     + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    return {"mismatched": mismatched, "missing": missing, "unexpected": unexpected, "optimizer": optim,
            "not_loaded": len(mismatched) + len(missing), "total": len(new_state)}


def _has_differences(d: Mapping) -> bool:
    return bool(d["mismatched"] or d["missing"] or d["unexpected"] or d["optimizer"])


def _format_differences(d: Mapping) -> str:
    def names(items):
        return ", ".join(items[:_SHOW]) + (f", ... ({len(items)} in all)" if len(items) > _SHOW else "")

    parts = [f"{d['not_loaded']} of the new model's {d['total']} parameters and buffers would not load"]
    if d["mismatched"]:
        parts.append(f"shape differs (checkpoint -> new): {names(d['mismatched'])}")
    if d["missing"]:
        parts.append(f"not in the checkpoint: {names(d['missing'])}")
    if d["unexpected"]:
        parts.append(f"only in the checkpoint: {names(d['unexpected'])}")
    if d["optimizer"]:
        parts.append(f"optimizer state does not fit: {'; '.join(d['optimizer'])}")
    return "\n  ".join(parts)


# ---------------------------------------------------------------------------------------------- the plan


@dataclass
class RunFolderPlan:
    """What a start into `output_dir` will do; `apply_plan` carries it out (rank 0)."""

    output_dir: Path
    action: str  # "new" (nothing there), "resume", "restart" (same model, no checkpoint: from iteration 0),
    #              "move" (--no-resume: old files to old_runs/<stamp>/)
    checkpoint: Path | None = None
    iteration: int | None = None
    changed: list[tuple[str, Any, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    to_move: list[Path] = field(default_factory=list)
    move_to: Path | None = None
    history_file: Path | None = None

    def summary(self) -> str:
        out = self.output_dir
        if self.action == "new":
            return f"{out}: new run"
        if self.action == "move":
            what = ", ".join(p.name for p in self.to_move)
            return f"{out}: --no-resume: the old run's files ({what}) are moved to {self.move_to} first"
        changes = (f"; config keys changed since the last start:\n{_format_diff(self.changed)}" if self.changed
                   else "; no config key changed")
        if self.action == "restart":
            return f"{out}: holds no checkpoint yet; the same model starts from iteration 0{changes}"
        return (f"{out}: resuming the same model from {self.checkpoint} (iteration {self.iteration}); its config "
                f"is kept as {self.history_file}{changes}")


def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _ways_out(output_dir: Path) -> str:
    return (
        f"Nothing in {output_dir} was changed. Either train into a new --output-dir, or rerun with --no-resume to "
        f"start over in this folder: the old run's files ({RUN_FILES_SHOWN}) are then moved to "
        f"{output_dir / OLD_RUNS_DIR}/<YYYYmmdd-HHMMSS>/ first (a complete run folder that export and the "
        "evaluations still read), never mixed with the new run's."
    )


def _check_weights_file(key: str, path: str, new: ModelLayout, cfg) -> None:
    """`MODEL.WEIGHTS` (fvcore would skip what does not fit) and `student.pretrained_weights` (loaded strictly
    into the student backbone, but only after DINOv2 has written the folder): refuse a misfit now."""
    if not (os.path.isfile(path) or (key == "student.pretrained_weights" and os.path.isdir(path))):  # HF folder
        raise RunFolderError(f"{key}={path}: no such file; nothing was written or loaded")
    if key == "MODEL.WEIGHTS":
        ref = checkpoint_layout(read_checkpoint_meta(path), path)
        if ref is None:
            return
        d = compare_layouts(ref, new, optimizer=False)
        if _has_differences(d):
            raise RunFolderError(f"{key}={path} does not fit the model of this config:\n  {_format_differences(d)}\n"
                                 "Nothing was written or loaded. Point MODEL.WEIGHTS to a checkpoint of this model.")
        return
    from dinov2_eqcoh.weights.checkpoints import load_pretrained_backbone

    backbone = build_meta_model(cfg).student.backbone
    try:
        with _quiet():  # copying into meta tensors is a no-op: names and shapes are still checked, strictly
            load_pretrained_backbone(backbone, path)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise RunFolderError(f"{key}: {msg}. Nothing was written or loaded.") from e


def plan_run_folder(cfg, output_dir: str | os.PathLike, no_resume: bool = False, rank: int = 0,
                    world_size: int | None = None) -> RunFolderPlan:
    """Decide what starting `cfg` into `output_dir` does; raise before anything is written if it would mix models.

    Args:
        cfg: the new run's config (after `build_cfg`).
        output_dir: DINOv2's `--output-dir`.
        no_resume: DINOv2's `--no-resume`.
        rank: whose `last_checkpoint.rank_N` DINOv2 will resume.
        world_size: the processes of the new start (default: from torchrun's / SLURM's environment, else 1). A
            resume with another count than the folder's checkpoints were written by is refused.

    Raises:
        RunFolderError: the folder's checkpoint (or eval dump, or config) describes another model, or a weights file
            set by `MODEL.WEIGHTS` / `student.pretrained_weights` does not fit; the message names the config keys
            that differ, the tensors that would not load and the ways out.
    """
    out = Path(output_dir).resolve()
    files = run_files(out) if out.is_dir() else []
    new = None

    def new_layout() -> ModelLayout:
        nonlocal new
        if new is None:
            new = model_layout(cfg)
        return new

    ckpt = tagged_checkpoint(out, rank) if files else None
    resuming = bool(files) and not no_resume and ckpt is not None
    # weights loaded by path: fvcore loads MODEL.WEIGHTS only when it does not resume
    if cfg.MODEL.get("WEIGHTS") and not resuming:
        _check_weights_file("MODEL.WEIGHTS", str(cfg.MODEL.WEIGHTS), new_layout(), cfg)
    if cfg.student.get("pretrained_weights"):
        _check_weights_file("student.pretrained_weights", str(cfg.student.pretrained_weights), new_layout(), cfg)

    if not files:
        return RunFolderPlan(out, "new")
    if no_resume:
        return RunFolderPlan(out, "move", to_move=files, move_to=out / OLD_RUNS_DIR / _stamp())

    old_cfg_path = out / "config.yaml"
    old_cfg = _load_old_config(old_cfg_path) if old_cfg_path.is_file() else None
    changed = config_diff(old_cfg, cfg) if old_cfg is not None else []
    diff_text = (f"config keys that differ between {old_cfg_path} and the new config (old -> new):\n"
                 f"{_format_diff(changed) if changed else '  none'}" if old_cfg is not None
                 else f"{old_cfg_path} is missing: the folder's config cannot be compared")

    recovered = None
    if ckpt is not None:
        _check_world_size(cfg, out, world_size if world_size is not None else _world_size(), old_cfg)
        if not ckpt.is_file():
            raise RunFolderError(f"{out / f'last_checkpoint.rank_{rank}'} names {ckpt.name}, which does not exist: "
                                 "DINOv2 cannot resume this folder. " + _ways_out(out))
        why = damage(ckpt)
        if why is not None:  # resumed from the newest readable one (run/recover.py, when the model is built)
            best, damaged = newest_readable(out, rank)
            if best is None:
                named = "; ".join(f"{p.name}: {w}" for p, w in damaged)
                raise RunFolderError(f"{out}: no checkpoint of rank {rank} can be read ({named}). " + _ways_out(out))
            named = "; ".join(f"{p.name} ({w})" for p, w in damaged)
            recovered = (f"cannot be read: {named}; kept aside as <name>.damaged (never deleted), the run resumes "
                         f"from {best[1].name} (iteration {best[0]}), the newest readable checkpoint")
            ckpt = best[1]
        reference, source, prefix, optimizer = read_checkpoint_meta(ckpt), ckpt, "", True
    else:
        dumps = _eval_dumps(out)
        if dumps:
            source = dumps[-1][1]
            reference, prefix, optimizer = read_checkpoint_meta(source), "teacher.", False
        else:
            reference, source, prefix, optimizer = None, old_cfg_path, "", True
    if reference is not None:
        ref = checkpoint_layout(reference, str(source))
        if ref is None:  # a sharded run's flat parameters: compare through the model its config builds
            reference = None
            source = old_cfg_path
    if reference is None:
        if old_cfg is None:
            raise RunFolderError(f"{out} holds files of a DINOv2 run ({', '.join(p.name for p in files)}) but neither "
                                 "a readable unsharded checkpoint nor config.yaml to compare the new model with. "
                                 + _ways_out(out))
        ref = model_layout(old_cfg)
    d = compare_layouts(ref, new_layout(), prefix=prefix, optimizer=optimizer)
    if prefix == "teacher." and old_cfg is not None and not _has_differences(d):
        # an eval dump holds the teacher only; the student-only modules (the decoders) are compared through the
        # model the folder's config.yaml builds
        d = compare_layouts(model_layout(old_cfg), new_layout(), prefix="student.", optimizer=False)
        if _has_differences(d):
            source = old_cfg_path
    if _has_differences(d):
        raise RunFolderError(
            f"{out} holds a run of another model than this config builds; resuming it would skip tensors and "
            f"leave them at random initialisation. Compared with {source}"
            + (f" (iteration {checkpoint_iteration(source)})" if source.suffix == ".pth" else "")
            + f":\n  {_format_differences(d)}\n{diff_text}\n{_ways_out(out)}"
        )

    warnings = [recovered] if recovered else []
    if ref.multipliers and new_layout().multipliers and ref.multipliers != new_layout().multipliers and optimizer:
        keys = [k for k, _, _ in changed if k.startswith("optim.") and ("decay" in k or "mult" in k)]
        warnings.append("the optimizer's lr/wd multipliers per parameter group differ from the checkpoint's"
                        + (f" ({', '.join(keys)} changed)" if keys else "")
                        + ": DINOv2 restores the checkpoint's parameter groups on resume, so the old multipliers "
                        "stay in effect")
    if ckpt is None:
        return RunFolderPlan(out, "restart", changed=changed, warnings=warnings)
    iteration = checkpoint_iteration(ckpt)
    if iteration is None and ckpt.name.startswith("model_final.") and old_cfg is not None:
        # a sharded file cannot be unpickled here; fvcore writes model_final at the old run's last iteration
        iteration = int(old_cfg.optim.epochs) * int(old_cfg.train.OFFICIAL_EPOCH_LENGTH) - 1
    start = max((e for _, _, e in history_entries(out)), default=-1) + 1
    history = out / HISTORY_DIR / f"config.{_stamp()}.it{start}-{iteration}.yaml" if old_cfg is not None else None
    return RunFolderPlan(out, "resume", checkpoint=ckpt, iteration=iteration, changed=changed, warnings=warnings,
                         history_file=history)


def _check_world_size(cfg, out: Path, new: int, old_cfg) -> None:
    """Refuse to resume with another process count: each rank loads its own `model_*.rank_<N>.pth` (under FSDP a
    shard of the parameters and of the optimizer state), and the global batch and the lr would change with it."""
    old = trained_world_size(out)
    if not old or old == new:
        return
    was = describe_batch(old_cfg if old_cfg is not None else cfg, old)
    raise RunFolderError(
        f"{out} was trained by {old} processes (last_checkpoint.rank_0 .. rank_{old - 1}) and this start has {new}. "
        f"Each rank resumes from its own checkpoint file (under FSDP its shard of the model and the optimizer "
        f"state), so another number of processes cannot resume it correctly. The run trained with {was}; this start "
        f"would train with {describe_batch(cfg, new)}. Resume with {old} processes (SLURM: --nodes × --ngpus = "
        f"{old}; torchrun: --nnodes × --nproc_per_node = {old}). " + _ways_out(out))


def apply_plan(plan: RunFolderPlan) -> None:
    """Carry out a plan (call on rank 0 only): move the old run away, or archive its config.yaml before a resume.

    Messages are printed now and logged to `logs/log.txt` once DINOv2 has set up logging (`log_pending`).
    """
    if plan.action == "move":
        plan.move_to.mkdir(parents=True, exist_ok=False)
        for p in plan.to_move:
            shutil.move(str(p), str(plan.move_to / p.name))
    elif plan.action == "resume" and plan.history_file is not None:
        plan.history_file.parent.mkdir(exist_ok=True)
        with atomic_output(plan.history_file) as tmp:  # all or nothing; a full disk is named
            shutil.copy2(plan.output_dir / "config.yaml", tmp)
    if plan.action != "new":
        _note(logging.INFO, f"dinov2_eqcoh: {plan.summary()}")
    for w in plan.warnings:
        _note(logging.WARNING, f"dinov2_eqcoh: warning: {w}")


def _note(level: int, msg: str) -> None:
    print(msg, file=sys.stderr if level >= logging.WARNING else sys.stdout, flush=True)
    _pending_log.append((level, msg))


def log_pending() -> None:
    """Log what the folder check decided, once DINOv2's logging exists (called by `EqCohMetaArch.__init__`)."""
    while _pending_log and not _building:
        level, msg = _pending_log.pop(0)
        logger.log(level, msg)


# ---------------------------------------------------------------------------------------------- entry points


def _dinov2_args():
    """The argparse namespace of DINOv2's `get_cfg_from_args(args)` up the call stack, or None.

    `EqCohMetaArch.build_cfg` is called by that function, which gets `--output-dir` and `--no-resume`; the hook
    itself receives only the configs, so the arguments are read from the caller's frame (pinned DINOv2 + patch
    0001). Called from anywhere else (tools, tests), there is no run folder to check.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "get_cfg_from_args" and frame.f_globals.get("__name__") == "dinov2.utils.config":
            return frame.f_locals.get("args")
        frame = frame.f_back
    return None


def check_in_dinov2_setup(cfg) -> RunFolderPlan | None:
    """`EqCohMetaArch.build_cfg`'s step: plan (and on rank 0 apply) the start into DINOv2's `--output-dir`."""
    args = _dinov2_args()
    if args is None or not getattr(args, "output_dir", ""):
        return None
    from dinov2_eqcoh.run.lock import acquire_lock, check_lock

    rank = _rank()
    batch_warning = check_global_batch(cfg, _world_size())  # every rank stops when strict
    check_lock(args.output_dir)  # every rank: none waits for a rank 0 that stopped here
    plan = plan_run_folder(cfg, args.output_dir, no_resume=bool(getattr(args, "no_resume", False)), rank=rank)
    if rank == 0:
        acquire_lock(args.output_dir)  # one writer per folder, before anything is written (run/lock.py)
        apply_plan(plan)
        _note(logging.INFO, f"dinov2_eqcoh: {describe_batch(cfg, _world_size())}")
        if batch_warning:
            _note(logging.WARNING, f"dinov2_eqcoh: warning: {batch_warning}")
    if plan.action == "resume":
        _pending_recover.append(str(plan.output_dir))  # carried out by every rank once the model is built
    return plan


def recover_pending() -> None:
    """`EqCohMetaArch.__init__`'s step (torch.distributed is set up, DINOv2 has not resumed yet): make every rank's
    `last_checkpoint` name a readable checkpoint of one common iteration (`dinov2_eqcoh.run.recover`)."""
    import torch.distributed as dist

    while _pending_recover and not _building:
        output_dir = _pending_recover.pop(0)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            def gather(obj):
                objs = [None] * dist.get_world_size()
                dist.all_gather_object(objs, obj)
                return objs

            recover(output_dir, rank=dist.get_rank(), gather=gather)
        else:
            recover(output_dir, rank=0)


def check_before_submit(config_file: str, opts: Sequence[str], output_dir: str, no_resume: bool,
                        world_size: int | None = None) -> RunFolderPlan | None:
    """The SLURM launchers' check at submission time: nothing is moved or written (the job does that).
    `world_size`: the job's processes (nodes × GPUs per node; default 1).

    The config (strict keys, values) and the training dataset are checked for every folder; the folder itself is
    not compared when its name holds `%j` (a new folder per job): then None is returned.
    """
    from dinov2.configs import dinov2_default_config
    from omegaconf import OmegaConf

    from dinov2_eqcoh.data.datasets import check_training_dataset
    from dinov2_eqcoh.method.config import build_cfg
    from dinov2_eqcoh.run.lock import check_lock

    out = os.path.abspath(output_dir)
    cfg = build_cfg(OmegaConf.create(dinov2_default_config), OmegaConf.load(config_file),
                    OmegaConf.from_dotlist([*opts, f"train.output_dir={out}"]), file_name=config_file)
    try:
        check_training_dataset(cfg)
    except FileNotFoundError as e:  # reported by the launcher like the other refusals (ValueError)
        raise RunFolderError(str(e)) from e
    logger.info(f"dinov2_eqcoh: the job trains with {describe_batch(cfg, world_size or 1)}")
    batch_warning = check_global_batch(cfg, world_size or 1)
    if batch_warning:
        logger.warning(f"dinov2_eqcoh: warning: {batch_warning}")
    if "%j" in output_dir:
        return None
    check_lock(out)  # a second submission into a folder a live job holds (a double sbatch)
    return plan_run_folder(cfg, out, no_resume=no_resume, world_size=world_size or 1)
