# SPDX-License-Identifier: Apache-2.0
# The pos-embed resize follows DINOv2's DinoVisionTransformer.interpolate_pos_encoding (Meta Platforms, Apache-2.0).
"""Backbone weights from every checkpoint kind DINOv2 and this plugin write, as one raw DINOv2 state dict.

Kinds read by `load_backbone_state_dict` (teacher weights preferred wherever both exist):

- a training checkpoint `<run>/model_*.rank_0.pth`: {"model": SSLMetaArch state (`teacher.backbone.*`, ...),
  "optimizer", "iteration"} (fvcore's FSDPCheckpointer, world size 1 or NO_SHARD);
- an eval dump `<run>/eval/training_N/teacher_checkpoint.pth`: {"teacher": {"backbone.*", "dino_head.*", ...}};
- a released DINOv2 file or an export of this project (`dinov2_eqcoh.weights.export`): the raw state dict of a
  DinoVisionTransformer (`cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.{i}.*`, `norm.*`, `mask_token`,
  maybe `register_tokens`), or the same wrapped as {"model": ...} as DINOv2's `student.pretrained_weights` wants;
- HF transformers and timm weights: an HF folder, a `.safetensors` file, a torch file with an HF or timm state dict
  (converted to the raw layout by `dinov2_eqcoh.weights.interop`, as strictly).

Chunked blocks (`student.block_chunks > 0`): DINOv2's BlockChunk c holds `[Identity] * (c·depth/n)` followed by
its blocks, so block i keeps its global index inside the chunk and its keys are `blocks.{c}.{i}.*`. The raw format
drops the chunk index (`blocks.{i}.*`); `load_pretrained_backbone` adds it back for a chunked target.

Files are read with `torch.load(weights_only=True)`: tensors, plain containers and the numpy scalars DINOv2's
optimizer state holds (the same allow-list as patch 0004). A file that needs full unpickling (arbitrary objects,
hence arbitrary code) is refused unless the caller opts in with `allow_pickle=True`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dinov2_eqcoh.weights.files import (  # noqa: F401
    _CHUNKED_KEY,
    _numpy_safe_globals,
    load_checkpoint_file,
    unchunk_state_dict,
)
from dinov2_eqcoh.weights.interop import (
    convert_foreign_state_dict,
    drop_neutral_extras,
    is_foreign_weights_path,
    read_foreign_weights,
)
from dinov2_eqcoh.weights.run_config import config_for_checkpoint

logger = logging.getLogger("dinov2.eqcoh")

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")  # blocks.{i}.rest (raw) or blocks.{chunk}.{i}.rest
_RAW_MARKERS = ("cls_token", "pos_embed", "patch_embed.proj.weight")


def _strip_prefix(state: Mapping, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _is_raw_backbone(state: Mapping) -> bool:
    return all(k in state for k in _RAW_MARKERS)


def _format_keys(keys: Sequence[str], limit: int = 20) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def extract_backbone_state_dict(checkpoint: Any, source: str = "<checkpoint>") -> tuple[dict[str, torch.Tensor], str]:
    """The raw backbone state dict inside a loaded checkpoint object, and the name of the kind found.

    Args:
        checkpoint: what `load_checkpoint_file` returned.
        source: the file name, for messages.

    Returns:
        (state dict with raw, unchunked DinoVisionTransformer keys, kind) where kind is one of "training checkpoint
        (teacher)", "training checkpoint (student)", "teacher_checkpoint", "raw backbone".

    Raises:
        ValueError: an unknown format (the message names the top-level keys found) or a sharded FSDP checkpoint.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: expected a dict-like checkpoint, found {type(checkpoint).__name__}")
    model = checkpoint.get("model")
    teacher = checkpoint.get("teacher")
    if isinstance(teacher, Mapping):  # DINO-style wrappers also prefix "module." (DINOv2's loader strips it too)
        teacher = {k.removeprefix("module."): v for k, v in teacher.items()}
    foreign = convert_foreign_state_dict(checkpoint, source)
    if foreign is not None:  # HF transformers or timm keys
        state, kind = foreign
    elif isinstance(teacher, Mapping) and any(k.startswith("backbone.") for k in teacher):
        state, kind = _strip_prefix(teacher, "backbone."), "teacher_checkpoint"
    elif isinstance(model, Mapping) and any(k.startswith("teacher.backbone.") for k in model):
        state, kind = _strip_prefix(model, "teacher.backbone."), "training checkpoint (teacher)"
    elif isinstance(model, Mapping) and any(k.startswith("student.backbone.") for k in model):
        logger.warning(f"{source}: no teacher backbone in the training checkpoint; using the student's")
        state, kind = _strip_prefix(model, "student.backbone."), "training checkpoint (student)"
    elif isinstance(model, Mapping) and _is_raw_backbone(model):
        state, kind = dict(model), "raw backbone"
    elif _is_raw_backbone(checkpoint):
        state, kind = dict(checkpoint), "raw backbone"
    elif _is_raw_backbone(_strip_prefix(checkpoint, "backbone.")):
        state, kind = _strip_prefix(checkpoint, "backbone."), "raw backbone"
    else:
        inner = f"; keys under 'model': {_format_keys(model)}" if isinstance(model, Mapping) else ""
        raise ValueError(
            f"{source}: unknown checkpoint format; top-level keys found: {_format_keys(checkpoint)}{inner}. Expected a "
            "training checkpoint {'model': {'teacher.backbone.*', ...}}, a teacher_checkpoint.pth "
            "{'teacher': {'backbone.*', ...}} or a raw DINOv2 backbone state dict (cls_token, pos_embed, blocks.*)"
        )
    if any("flat_param" in k for k in state):
        raise ValueError(
            f"{source}: holds FSDP flat-parameter shards (a training checkpoint of a run with world size > 1), not "
            "full weights; use that run's eval/training_N/teacher_checkpoint.pth instead"
        )
    state = {k.replace("_fsdp_wrapped_module.", ""): v for k, v in state.items()}
    not_tensors = [k for k, v in state.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise ValueError(f"{source}: backbone entries that are not tensors: {_format_keys(not_tensors)}")
    return unchunk_state_dict(state), kind


def load_backbone_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read any checkpoint kind (see the module docstring) and return the raw, unchunked backbone state dict.

    Args:
        path: a training checkpoint, a teacher_checkpoint.pth, an exported or released DINOv2 backbone file, an HF
            folder or .safetensors file, a timm checkpoint.
        allow_pickle: allow full unpickling of a file the safe loader refuses (trusted files only).

    Returns:
        {key: tensor} with DinoVisionTransformer keys (`cls_token`, `pos_embed`, `blocks.{i}.*`, ...), teacher
        weights when the file has both.
    """
    read = read_foreign_weights if is_foreign_weights_path(path) else load_checkpoint_file  # HF folder, .safetensors
    state, kind = extract_backbone_state_dict(read(path, allow_pickle), source=os.fspath(path))
    logger.info(f"read {len(state)} backbone tensors from {path} ({kind})")
    return state


# --------------------------------------------------------------------------------------------------------------
# loading into a backbone
# --------------------------------------------------------------------------------------------------------------


def resize_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], interpolate_offset: float = 0.1, antialias: bool = False
) -> torch.Tensor:
    """Resize a (1, 1 + M·M, D) position embedding to (1, 1 + h·w, D): CLS entry kept, patch grid bicubic.

    The same operation DINOv2's `interpolate_pos_encoding` performs at run time for another input size (scale
    factor (n + offset) / M when `interpolate_offset` is set, else the target size), so a backbone loaded with the
    resized table gives the outputs the original backbone gives on images of the new size.

    Args:
        pos_embed: (1, 1 + M·M, D).
        grid: (h, w) patches of the target.
        interpolate_offset, antialias: the target backbone's settings.

    Returns:
        (1, 1 + h·w, D), the input's dtype.
    """
    n = pos_embed.shape[1] - 1
    M = int(round(math.sqrt(n)))
    if M * M != n:
        raise ValueError(f"pos_embed has {n} patch entries, not a square grid; cannot resize it")
    h, w = grid
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed.float()[:, :1], pos_embed.float()[:, 1:]
    if interpolate_offset:
        kwargs = {"scale_factor": (float(h + interpolate_offset) / M, float(w + interpolate_offset) / M)}
    else:
        kwargs = {"size": (h, w)}
    patch_pos = F.interpolate(
        patch_pos.reshape(1, M, M, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=antialias, **kwargs
    )
    if tuple(patch_pos.shape[-2:]) != (h, w):
        raise ValueError(f"pos_embed resize from {M}x{M} gave {tuple(patch_pos.shape[-2:])}, expected {(h, w)}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat([cls_pos, patch_pos], dim=1).to(pos_embed.dtype)


def _rechunk_for(target_keys: Sequence[str], state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw `blocks.{i}.*` keys -> the target's layout (`blocks.{chunk}.{i}.*` when the target is chunked)."""
    chunk_of = {}
    for key in target_keys:
        m = _CHUNKED_KEY.match(key)
        if m:
            chunk_of[m.group(2)] = m.group(1)
    if not chunk_of:
        return dict(state)
    out = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m and m.group(1) in chunk_of:
            key = f"blocks.{chunk_of[m.group(1)]}.{m.group(1)}.{m.group(2)}"
        out[key] = value
    return out


def _grid_of(backbone: nn.Module) -> tuple[int, int]:
    patch_embed = getattr(backbone, "patch_embed", None)
    resolution = getattr(patch_embed, "patches_resolution", None)
    if resolution is not None:
        return int(resolution[0]), int(resolution[1])
    n = backbone.pos_embed.shape[1] - 1
    M = int(round(math.sqrt(n)))
    return M, M


def load_pretrained_backbone(
    backbone: nn.Module, weights: str | os.PathLike | Mapping[str, torch.Tensor], allow_pickle: bool = False
) -> nn.Module:
    """Load backbone weights (any checkpoint kind) into a DinoVisionTransformer, strictly.

    For `student.pretrained_weights`, the evaluation tools and the export. Resizes `pos_embed` to the backbone's
    patch grid (bicubic, CLS kept, as `interpolate_pos_encoding`), maps between chunked and unchunked block layouts
    in either direction, then `load_state_dict(strict=True)`.

    Args:
        backbone: the target DinoVisionTransformer (any `block_chunks`, any crop size).
        weights: a checkpoint path, or a state dict (raw or chunked keys).
        allow_pickle: see `load_checkpoint_file`.

    Returns:
        The backbone, loaded in place.

    Raises:
        KeyError: keys missing from the weights or unexpected in them (all named); nothing is silently skipped.
        ValueError: shapes that differ for other reasons than the pos-embed grid (named with both shapes).
    """
    source = "<state dict>"
    if isinstance(weights, (str, os.PathLike)):
        source = os.fspath(weights)
        state = load_backbone_state_dict(weights, allow_pickle=allow_pickle)
    else:
        state = unchunk_state_dict(weights)
    target = backbone.state_dict()
    actions = []

    if "pos_embed" in state and "pos_embed" in target and state["pos_embed"].shape != target["pos_embed"].shape:
        old, new = state["pos_embed"].shape, target["pos_embed"].shape
        if old[-1] != new[-1]:
            raise ValueError(f"{source}: pos_embed width {old[-1]} does not match the backbone's {new[-1]}")
        state["pos_embed"] = resize_pos_embed(
            state["pos_embed"],
            _grid_of(backbone),
            interpolate_offset=getattr(backbone, "interpolate_offset", 0.1),
            antialias=getattr(backbone, "interpolate_antialias", False),
        )
        actions.append(f"pos_embed resized {tuple(old)} -> {tuple(new)}")

    state = _rechunk_for(list(target), state)
    if getattr(backbone, "chunked_blocks", False):
        actions.append(f"block keys mapped to {len(backbone.blocks)} chunks")

    state = drop_neutral_extras(state, target, actions)

    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the weights: {_format_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected in the weights: {_format_keys(unexpected)}")
        raise KeyError(f"{source} does not match the backbone ({type(backbone).__name__}): " + "; ".join(parts))
    mismatched = [f"{k} {tuple(state[k].shape)} vs backbone {tuple(v.shape)}" for k, v in target.items()
                  if state[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"{source}: shape mismatch (weights vs backbone): {_format_keys(mismatched, 10)}")
    backbone.load_state_dict(state, strict=True)
    logger.info(f"loaded {len(state)} backbone tensors from {source} (strict){'; ' if actions else ''}{'; '.join(actions)}")
    return backbone


# --------------------------------------------------------------------------------------------------------------
# building a matching backbone
# --------------------------------------------------------------------------------------------------------------

# (embed_dim, depth) -> factory of a known architecture, for files that come without a config
KNOWN_ARCHS = {
    (384, 12): "vit_small",
    (768, 12): "vit_base",
    (1024, 24): "vit_large",
    (1536, 40): "vit_giant2",
    (64, 2): "dinov2_eqcoh.models:vit_test",
    (128, 6): "dinov2_eqcoh.models:vit_mini",
    (192, 12): "dinov2_eqcoh.models:vit_tiny",
}


def infer_backbone_options(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """DINOv2 `student.*` options (plus `crops.global_crops_size`) that rebuild the backbone of a raw state dict.

    The width and depth select a known factory (KNOWN_ARCHS: DINOv2's vit_small/base/large/giant2 and this
    project's vit_test/mini/tiny); patch size, registers, FFN kind, layer scale and biases are read off the keys.
    The crop size is the one the pos-embed grid was trained at. Files with registers get the hub's
    `interpolate_antialias: true`, `interpolate_offset: 0.0` (as `dinov2_vit*14_reg`).

    Raises:
        ValueError: an architecture outside KNOWN_ARCHS (give a config file instead).
    """
    missing = [k for k in _RAW_MARKERS if k not in state]
    if missing:
        raise ValueError(f"not a raw backbone state dict (no {', '.join(missing)})")
    embed_dim = int(state["cls_token"].shape[-1])
    depth = len({m.group(1) for m in map(_BLOCK_KEY.match, state) if m})
    arch = KNOWN_ARCHS.get((embed_dim, depth))
    if arch is None:
        raise ValueError(
            f"cannot infer the architecture of a {embed_dim}-d, {depth}-block backbone (known: "
            f"{', '.join(f'{a} {d}-d/{n} blocks' for (d, n), a in KNOWN_ARCHS.items())}); pass --config-file"
        )
    patch_size = int(state["patch_embed.proj.weight"].shape[-1])
    grid = int(round(math.sqrt(state["pos_embed"].shape[1] - 1)))
    registers = int(state["register_tokens"].shape[1]) if "register_tokens" in state else 0
    if "blocks.0.mlp.fc1.weight" in state:
        ffn = "mlp"
    elif "blocks.0.mlp.w12.weight" in state:
        hidden = state["blocks.0.mlp.w12.weight"].shape[0] // 2
        ffn = "swiglu" if hidden == 4 * embed_dim else "swiglufused"
    else:
        ffn = "identity"
    opts = {
        "student.arch": arch,
        "student.patch_size": patch_size,
        "student.num_register_tokens": registers,
        "student.ffn_layer": ffn,
        "student.layerscale": 1.0e-5 if "blocks.0.ls1.gamma" in state else 0.0,
        "student.qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "student.proj_bias": "blocks.0.attn.proj.bias" in state,
        "student.ffn_bias": any(k.startswith("blocks.0.mlp.") and k.endswith(".bias") for k in state) or ffn == "identity",
        "student.block_chunks": 0,
        "crops.global_crops_size": grid * patch_size,
    }
    if registers:
        opts.update({"student.interpolate_antialias": True, "student.interpolate_offset": 0.0})
    return opts


def find_run_config(checkpoint: str | os.PathLike) -> Path | None:
    """The config a checkpoint inside a run directory (`<run>/model_*.pth` or
    `<run>/eval/training_N/teacher_checkpoint.pth`) was trained with, or None: `<run>/config.yaml`, or the
    `<run>/config_history/` file of the segment that trained its iteration (`run_folder.config_for_checkpoint`)."""
    return config_for_checkpoint(checkpoint)


def backbone_config(
    config_file: str | os.PathLike | None = None,
    opts: Sequence[str] = (),
    checkpoint: str | os.PathLike | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
):
    """The DINOv2 config that describes a checkpoint's backbone.

    DINOv2's default config, merged with (first found) `config_file`, the run's config.yaml next to `checkpoint`,
    or options inferred from `state` (`infer_backbone_options`); then the dotlist `opts` (e.g.
    `student.arch=vit_small`). Only `student.*` and `crops.global_crops_size` matter for the backbone.
    """
    from dinov2.configs import dinov2_default_config
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(dinov2_default_config)
    if config_file is None and checkpoint is not None:
        config_file = find_run_config(checkpoint)
        if config_file is not None:
            logger.info(f"using the run's config {config_file}")
    if config_file is not None:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file {config_file} does not exist")
        from dinov2_eqcoh.method.config import upgrade_old_config

        file_cfg = OmegaConf.load(config_file)
        upgrade_old_config(file_cfg, str(config_file))  # a run folder of an earlier version
        cfg = OmegaConf.merge(cfg, file_cfg)
    elif state is not None:
        inferred = infer_backbone_options(state)
        logger.info(f"no config file: backbone options inferred from the weights: {inferred}")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in inferred.items()]))
    else:
        raise ValueError("backbone_config needs a config file, a checkpoint inside a run directory, or a state dict")
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(opts)))


def build_backbone_for_checkpoint(cfg, img_size: int | None = None, block_chunks: int | None = None) -> nn.Module:
    """A DinoVisionTransformer built as DINOv2 builds its teacher (`build_model_from_cfg(cfg, only_teacher=True)`).

    Args:
        cfg: a DINOv2 config (`student.arch` may be an import path, e.g. `dinov2_eqcoh.models:vit_test`).
        img_size: the crop size that sets the pos-embed grid (default `crops.global_crops_size`).
        block_chunks: override `student.block_chunks` (0: the raw, released layout).

    Returns:
        The backbone in eval mode (randomly initialised; load weights with `load_pretrained_backbone`).
    """
    from dinov2.models import build_model_from_cfg
    from omegaconf import OmegaConf

    overrides = []
    if img_size is not None:
        overrides.append(f"crops.global_crops_size={int(img_size)}")
    if block_chunks is not None:
        overrides.append(f"student.block_chunks={int(block_chunks)}")
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    backbone, _ = build_model_from_cfg(cfg, only_teacher=True)
    return backbone.eval()


def load_backbone(
    weights: str | os.PathLike,
    config_file: str | os.PathLike | None = None,
    opts: Sequence[str] = (),
    img_size: int | None = None,
    allow_pickle: bool = False,
):
    """Build the backbone a checkpoint describes and load its (teacher) weights: (backbone, cfg).

    Args:
        weights: any checkpoint kind (see `load_backbone_state_dict`).
        config_file, opts: see `backbone_config` (a run's config.yaml is found automatically).
        img_size: pos-embed grid of the built backbone (default: the config's crop size; DINOv2 interpolates the
            table at run time for other input sizes anyway).
        allow_pickle: see `load_checkpoint_file`.
    """
    state = load_backbone_state_dict(weights, allow_pickle=allow_pickle)
    cfg = backbone_config(config_file, opts, checkpoint=weights, state=state)
    backbone = build_backbone_for_checkpoint(cfg, img_size=img_size)
    load_pretrained_backbone(backbone, state)
    return backbone.eval(), cfg
