# SPDX-License-Identifier: Apache-2.0
"""What a model is made of, compared without building it for real: the names and shapes of every parameter and
buffer of student and teacher, and the optimizer's parameter groups DINOv2 builds (count, sizes, shapes of the
Adam moments, lr / wd multipliers).

* `model_layout(cfg)`: the layout of the model DINOv2 would build from `cfg`, built on the meta device (no memory,
  no weights);
* `checkpoint_layout(data, source)`: the layout a DINOv2 checkpoint holds (a training checkpoint with its optimizer,
  or an eval dump holding the teacher only), read with `torch.load(mmap=True)` (`read_checkpoint_meta`);
* `compare_layouts(ref, new)`: what would not load, by kind (shape differs, missing, unexpected, optimizer).

`dinov2_eqcoh.run.folder` uses them to refuse a start that would mix two models in one folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from dinov2_eqcoh.weights.run_config import SHARDED, CheckpointReadError, _is_sharded
from dinov2_eqcoh.weights.run_config import read_checkpoint_meta as _read_checkpoint_meta

_SHOW = 12  # tensors named per kind of difference


class RunFolderError(ValueError):
    """The output folder (or a weights file) holds another model than the config builds; nothing was changed."""


def read_checkpoint_meta(path: str | os.PathLike) -> Any:
    """`dinov2_eqcoh.weights.run_config.read_checkpoint_meta`, failing with a `RunFolderError`."""
    try:
        return _read_checkpoint_meta(path)
    except CheckpointReadError as e:
        raise RunFolderError(str(e)) from e


def _shape(value) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


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
    with _quiet(), torch.device("meta"):
        return meta_arch_cls(cfg)  # never prepared for training: nothing of the run is logged or recovered


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
