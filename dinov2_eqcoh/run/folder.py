# SPDX-License-Identifier: Apache-2.0
"""A run folder belongs to one model: check it before DINOv2 writes or loads anything, keep its config history.

DINOv2 resumes whatever `last_checkpoint.rank_N` in `--output-dir` names, with fvcore's checkpointer, which skips
every tensor whose shape differs (a warning), leaves those at their random initialisation, and only fails later
inside the optimizer, after `config.yaml` has been overwritten. This module makes the decision up front:

* `plan_run_folder(cfg, output_dir, no_resume)` compares the model `cfg` builds with what the folder holds, read
  from the checkpoint that DINOv2 would resume (`dinov2_eqcoh.run.layout`: names and shapes of every tensor and
  the optimizer's parameter groups, read without loading the weights). A folder without a
  tagged checkpoint is compared through its latest `eval/*/teacher_checkpoint.pth`, else through the model its
  `config.yaml` builds. Any difference raises `RunFolderError`, naming the config keys that differ (old, new
  value), the tensors that would not load and the two ways out; nothing in the folder is touched. The same is
  done for `MODEL.WEIGHTS` and `student.pretrained_weights` (loaded by path) when they are set.
* `apply_plan` (rank 0 only) then either archives the folder's `config.yaml` into `config_history/` before a
  resume (DINOv2 rewrites `config.yaml` at every start), or, with `--no-resume`, moves the old run's files into
  `old_runs/<YYYYmmdd-HHMMSS>/` so that the new run never mixes with them.
* `config_for_checkpoint(path)` (in `dinov2_eqcoh.weights.run_config`, which reads the history this module writes)
  picks the config a given checkpoint was trained with (export, evaluations).

Where it runs: `start_run(cfg, output_dir, no_resume)`, called by `EqCohMetaArch.build_cfg`, which DINOv2's
`get_cfg_from_args` calls with its arguments before `setup` creates the folder, the logs or `config.yaml` (so
`python -m dinov2.train.train`, `python -m dinov2_eqcoh.train` and the SLURM jobs are all covered); its decision
travels to the model as a value in the config (`eqcoh.start`), read by `log_start` and `resume_readable`. And
`dinov2_eqcoh.run.train` checks before it submits (`check_before_submit`).

Config history: `config.yaml` is the config of the running (latest) segment, as DINOv2 writes it.
`config_history/config.<stamp>.it<A>-<B>.yaml` is a byte copy of the `config.yaml` that trained iterations A..B,
archived when a later start resumed from the checkpoint of iteration B. A checkpoint of iteration i was trained
with the history file whose range holds i, else with `config.yaml`.

Length: one decision, `plan_run_folder`, with the messages that name each way out; what it compares is in
`dinov2_eqcoh.run.layout`, the batch arithmetic in `dinov2_eqcoh.run.batch`.
"""

from __future__ import annotations

import datetime
import glob
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from dinov2_eqcoh.run import batch
from dinov2_eqcoh.run.batch import check_global_batch, describe_batch, trained_world_size
from dinov2_eqcoh.run.layout import (
    ModelLayout,
    RunFolderError,
    _format_differences,
    _has_differences,
    _quiet,
    build_meta_model,
    checkpoint_layout,
    compare_layouts,
    model_layout,
    read_checkpoint_meta,
)
from dinov2_eqcoh.run.recover import damage, newest_readable, recover, tagged_checkpoint
from dinov2_eqcoh.weights.files import atomic_output
from dinov2_eqcoh.weights.run_config import _EVAL_DIR, HISTORY_DIR, checkpoint_iteration, history_entries

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
IGNORED_KEYS = ("train.output_dir", "eqcoh.start")


# ---------------------------------------------------------------------------------------------- reading


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

    `train.output_dir` and the start record `eqcoh.start` are ignored, and so is `optim.lr` under DINOv2's scaling
    rule (DINOv2 recomputes it from `optim.base_lr`, the batch size and the world size at every start).
    """
    old, new = _flatten(_container(old_cfg)), _flatten(_container(new_cfg))
    ignored = set(IGNORED_KEYS)
    if new.get("optim.scaling_rule") == "sqrt_wrt_1024":
        ignored.add("optim.lr")
    absent = "<absent>"
    return [(k, old.get(k, absent), new.get(k, absent)) for k in sorted(set(old) | set(new))
            if not any(k == i or k.startswith(i + ".") for i in ignored) and old.get(k, absent) != new.get(k, absent)]


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
        _check_world_size(cfg, out, world_size if world_size is not None else batch.world_size(), old_cfg)
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


def apply_plan(plan: RunFolderPlan) -> list[tuple[int, str]]:
    """Carry out a plan (call on rank 0 only): move the old run away, or archive its config.yaml before a resume.

    Returns:
        The messages printed, as (logging level, text), for the run's log (`start_run`).
    """
    if plan.action == "move":
        plan.move_to.mkdir(parents=True, exist_ok=False)
        for p in plan.to_move:
            shutil.move(str(p), str(plan.move_to / p.name))
    elif plan.action == "resume" and plan.history_file is not None:
        plan.history_file.parent.mkdir(exist_ok=True)
        with atomic_output(plan.history_file) as tmp:  # all or nothing; a full disk is named
            shutil.copy2(plan.output_dir / "config.yaml", tmp)
    notes = [(logging.INFO, f"dinov2_eqcoh: {plan.summary()}")] if plan.action != "new" else []
    notes += [(logging.WARNING, f"dinov2_eqcoh: warning: {w}") for w in plan.warnings]
    return notes


# ---------------------------------------------------------------------------------------------- a training start


def start_run(cfg, output_dir: str | os.PathLike, no_resume: bool) -> dict:
    """The run-folder step of a training start, before DINOv2 writes or loads anything in `output_dir`.

    Called by `EqCohMetaArch.build_cfg` with DINOv2's `--output-dir` and `--no-resume` (patch 0001 passes DINOv2's
    arguments). Every rank checks the global batch, the folder's lock and plans; rank 0 takes the lock and carries
    the plan out. What was decided is printed now and returned as the start record, which travels in the config as
    `eqcoh.start` (DINOv2 writes it into `config.yaml`) to the model, where `log_start` and `resume_readable` act on
    it once DINOv2's log and process group exist.

    Returns:
        {"action": "new" | "resume" | "restart" | "move", "log": [{"level": "INFO", "message": ...}, ...]}; the
        log is rank 0's (other ranks print nothing).
    """
    from dinov2_eqcoh.run.lock import acquire_lock, check_lock

    processes = batch.world_size()
    batch_warning = check_global_batch(cfg, processes)  # every rank stops when strict
    check_lock(output_dir)  # every rank: none waits for a rank 0 that stopped here
    this_rank = batch.rank()
    plan = plan_run_folder(cfg, output_dir, no_resume=no_resume, rank=this_rank)
    notes: list[tuple[int, str]] = []
    if this_rank == 0:
        acquire_lock(output_dir)  # one writer per folder, before anything is written (run/lock.py)
        notes = apply_plan(plan)
        notes.append((logging.INFO, f"dinov2_eqcoh: {describe_batch(cfg, processes)}"))
        if batch_warning:
            notes.append((logging.WARNING, f"dinov2_eqcoh: warning: {batch_warning}"))
        for level, msg in notes:
            print(msg, file=sys.stderr if level >= logging.WARNING else sys.stdout, flush=True)
    return {"action": plan.action, "log": [{"level": logging.getLevelName(lv), "message": m} for lv, m in notes]}


def log_start(start: Mapping) -> None:
    """Log a start record's messages into DINOv2's log (`logs/log.txt`, which did not exist at the check)."""
    for note in start.get("log") or ():
        logger.log(logging.getLevelName(note["level"]), note["message"])


def resume_readable(start: Mapping, output_dir: str | os.PathLike) -> None:
    """For a start that resumes: make every rank's `last_checkpoint` name a readable checkpoint of one common
    iteration (`dinov2_eqcoh.run.recover`). Call after DINOv2 has set up torch.distributed and before it resumes."""
    if start.get("action") != "resume":
        return
    import torch.distributed as dist

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
