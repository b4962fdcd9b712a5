# SPDX-License-Identifier: Apache-2.0
# Key layouts follow transformers' convert_dinov2_to_hf.py / conversion_mapping.py (HuggingFace, Apache-2.0) and
# timm's vision_transformer._convert_dinov2 (Ross Wightman, Apache-2.0); no code is copied from either.
"""DINOv2 backbones to and from HF transformers and timm: key layouts, export folders, foreign weight files.

Export (`python -m dinov2_eqcoh.weights.export --format hf|timm`) writes a folder:

- `hf`: `config.json` (`Dinov2Config`, or `Dinov2WithRegistersConfig` for register models), `model.safetensors`
  in the key layout transformers' own conversion script writes and every release reads (`attention.attention.query`,
  `mlp.weights_in`, ...: transformers >= 5.17 renames these on load to `attention.q_proj`, `mlp.gate_proj`, ... and
  back on save), and `preprocessor_config.json` (BitImageProcessor, ImageNet mean/std, crop = the export size).
  `Dinov2Model.from_pretrained(folder)` loads it with no missing or unexpected keys.
- `timm`: `config.json` (timm's hub format: architecture, model_args, pretrained_cfg) and `model.safetensors` in
  timm's own layout (what timm's DINOv2 checkpoint filter produces from Meta's file: no `mask_token`, registers
  as `reg_token` with the class position folded into `cls_token`, SwiGLU `w12/w3` as `fc1/fc2`), loaded by
  `timm.create_model("local-dir:<folder>", pretrained=True)`, and for the released sizes also by
  `timm.create_model("vit_small_patch14_dinov2", pretrained=True, pretrained_cfg_overlay=dict(file=...))`.

Import (`student.pretrained_weights`, every eval CLI, the export): `dinov2_eqcoh.weights.checkpoints` reads, besides its
own kinds, an HF folder (`model.safetensors`, sharded `model.safetensors.index.json`, or `pytorch_model.bin`), a
`.safetensors` file, and torch files holding HF or timm state dicts (also timm training checkpoints with
`state_dict` / `state_dict_ema`, and HF `Dinov2ForImageClassification` weights under `dinov2.`). Both HF key
layouts are read: the on-disk one above and the in-memory one of transformers >= 5.17 (`q_proj`, `k_proj`,
`v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`). The result is a raw DINOv2 state dict, loaded as strictly
as DINOv2's own files: keys the conversion does not know keep their names and fail the load as unexpected, and
missing ones fail it as missing. Two additions are made and logged: a zero `mask_token` where the file has none
(timm drops it; it is DINOv2's init and only iBOT masking reads it), and classifier heads (`head.*`,
`classifier.*`) are dropped, as are all-zero biases and all-one layer scales that the target backbone lacks
(`drop_neutral_extras`: HF and timm always have them, DINOv2 not with `proj_bias`/`ffn_bias` false, `layerscale: 0`).

Numerics. At the export's own resolution the three libraries compute the same function (tests/test_interop.py:
max |difference| ≤ 1e-4 on CLS and patch tokens). At another resolution each library interpolates the position
embedding its own way (DINOv2: bicubic with scale factor (n + 0.1)/M, no antialias, for models without
registers; HF: bicubic to the target size; timm: bicubic with antialias), so outputs differ slightly; export with
`--image-size <target>` to have the table resized by DINOv2's rule once, after which they agree again.

transformers, timm and safetensors are optional (`pip install 'dinov2-eqcoh[interop]'`); this module imports
safetensors only to read or write such files, and never imports transformers or timm.

Length: two libraries' key maps in both directions, their export folders and their file readers; each map sits
beside its inverse so that a round trip is read in one place.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("dinov2.eqcoh")

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.pth")
FORMATS = ("hub", "timm", "hf")

_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_TIMM_FC = re.compile(r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$")
_RELEASED = {(384, 12): "small", (768, 12): "base", (1024, 24): "large", (1536, 40): "giant"}


def _require_safetensors():
    try:
        import safetensors.torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading or writing .safetensors needs the `safetensors` package: pip install 'dinov2-eqcoh[interop]'"
        ) from e
    return safetensors.torch


# --------------------------------------------------------------------------------------------------------------
# reading foreign files
# --------------------------------------------------------------------------------------------------------------


def is_foreign_weights_path(path: str | os.PathLike) -> bool:
    """True for a folder holding HF/timm weights (`model.safetensors`, its index, `pytorch_model.bin`) or a
    `.safetensors` file: the paths `read_foreign_weights` reads (torch files go through the usual loader)."""
    p = Path(path)
    if p.is_dir():
        return any((p / name).is_file() for name in HF_WEIGHT_FILES) or any(p.glob("*.safetensors"))
    return p.suffix == ".safetensors"


def read_foreign_weights(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an HF/timm folder or a `.safetensors` file (CPU, as stored), for `extract_backbone_state_dict`.

    A folder: `model.safetensors`, else the shards of `model.safetensors.index.json`, else `pytorch_model.bin` /
    `.pth` (through `files.load_checkpoint_file`, so the pickle policy holds), else its one `*.safetensors`.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"weights {p} do not exist")
    if p.is_file():
        return dict(_require_safetensors().load_file(str(p), device="cpu"))
    if (p / "model.safetensors").is_file():
        return read_foreign_weights(p / "model.safetensors")
    index = p / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_foreign_weights(p / shard))
        return state
    for name in ("pytorch_model.bin", "pytorch_model.pth"):
        if (p / name).is_file():
            from dinov2_eqcoh.weights.files import load_checkpoint_file

            return load_checkpoint_file(p / name, allow_pickle=allow_pickle)
    files = sorted(p.glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"{p}: expected one weights file (model.safetensors, pytorch_model.bin), found "
                         f"{[f.name for f in files] or 'none'}")
    return read_foreign_weights(files[0])


# --------------------------------------------------------------------------------------------------------------
# layouts -> raw DINOv2
# --------------------------------------------------------------------------------------------------------------


def _strip_common_prefix(state: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def detect_layout(state: Mapping[str, Any]) -> str | None:
    """"hf" (transformers Dinov2Model / Dinov2WithRegistersModel keys), "timm" (timm VisionTransformer keys), or
    None (DINOv2's own raw layout, or something else)."""
    keys = list(state)
    if any(k.startswith("embeddings.patch_embeddings.") for k in keys):
        return "hf"
    if "reg_token" in state or ("cls_token" in state and "patch_embed.proj.weight" in state
                                and "mask_token" not in state and "blocks.0.attn.qkv.weight" in state):
        return "timm"
    return None


def convert_foreign_state_dict(checkpoint: Any, source: str = "<checkpoint>") -> tuple[dict, str] | None:
    """(raw DINOv2 state dict, kind) for an HF or timm state dict (possibly wrapped), else None.

    Wrappers looked into: timm's training checkpoints (`state_dict_ema`, `model_ema` preferred over `state_dict`,
    `model`, as timm's own loader does), `module.` and, for HF classification models, `dinov2.` prefixes.
    """
    if not isinstance(checkpoint, Mapping):
        return None
    candidates = [checkpoint] + [checkpoint[k] for k in ("state_dict_ema", "model_ema", "state_dict", "model")
                                 if isinstance(checkpoint.get(k), Mapping)]
    for cand in candidates:
        cand = _strip_common_prefix(cand, "module.")
        layout = detect_layout(cand)
        if layout is None and any(k.startswith("dinov2.embeddings.") for k in cand):
            dropped = [k for k in cand if not k.startswith("dinov2.")]
            if dropped:
                logger.info(f"{source}: dropped the non-backbone entries {', '.join(dropped)}")
            cand, layout = {k[len("dinov2."):]: v for k, v in cand.items() if k.startswith("dinov2.")}, "hf"
        if layout == "hf":
            return hf_to_dinov2(cand, source), "HF transformers"
        if layout == "timm":
            return timm_to_dinov2(cand, source), "timm"
    return None


def _zero_mask_token(out: dict[str, torch.Tensor], source: str, layout: str) -> None:
    if "mask_token" not in out and "cls_token" in out:
        out["mask_token"] = torch.zeros(1, out["cls_token"].shape[-1], dtype=out["cls_token"].dtype)
        logger.info(f"{source}: no mask_token in the {layout} weights; set to zeros (DINOv2's init; only iBOT "
                    "masking reads it)")


def hf_to_dinov2(state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """HF Dinov2Model / Dinov2WithRegistersModel keys (either layout, see the module docstring) -> raw DINOv2.

    Keys that are not recognised keep their names, so a strict load names them.
    """
    top = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    renames = {
        "layer_scale1.lambda1": "ls1.gamma",
        "layer_scale2.lambda1": "ls2.gamma",
        "mlp.weights_in.weight": "mlp.w12.weight",
        "mlp.weights_in.bias": "mlp.w12.bias",
        "mlp.weights_out.weight": "mlp.w3.weight",
        "mlp.weights_out.bias": "mlp.w3.bias",
        "mlp.down_proj.weight": "mlp.w3.weight",
        "mlp.down_proj.bias": "mlp.w3.bias",
        "attention.output.dense.weight": "attn.proj.weight",
        "attention.output.dense.bias": "attn.proj.bias",
        "attention.o_proj.weight": "attn.proj.weight",
        "attention.o_proj.bias": "attn.proj.bias",
    }
    # (parts concatenated along dim 0, in order) -> DINOv2 name
    stacks = [
        (("attention.attention.query", "attention.attention.key", "attention.attention.value"), "attn.qkv"),
        (("attention.q_proj", "attention.k_proj", "attention.v_proj"), "attn.qkv"),
        (("mlp.gate_proj", "mlp.up_proj"), "mlp.w12"),  # DINOv2: silu(first half) * second half
    ]
    out: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
            continue
        m = _HF_LAYER.match(key)
        if m:
            layers.setdefault(m.group(1), {})[m.group(2)] = value
        else:
            out[key] = value  # unknown: a strict load names it
    for i, rest in layers.items():
        prefix = f"blocks.{i}."
        for parts, target in stacks:
            for suffix in ("weight", "bias"):
                names = [f"{p}.{suffix}" for p in parts]
                if all(n in rest for n in names):
                    out[prefix + f"{target}.{suffix}"] = torch.cat([rest.pop(n) for n in names], dim=0)
        for key, value in rest.items():
            if key in renames:
                out[prefix + renames[key]] = value
            elif key.split(".")[0] in ("norm1", "norm2") or key.startswith(("mlp.fc1.", "mlp.fc2.")):
                out[prefix + key] = value
            else:
                out[f"encoder.layer.{i}.{key}"] = value  # unknown: keep the HF name for the error message
    _zero_mask_token(out, source, "HF")
    return out


def _square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def timm_to_dinov2(state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """timm VisionTransformer keys (a DINOv2 model as timm holds it) -> raw DINOv2.

    The exact inverse of timm's `_convert_dinov2`: `reg_token` -> `register_tokens`, a position table without a
    class entry (timm's `no_embed_class`, used for register models, whose `cls_token` already holds the class
    position) gets a zero class entry, and packed SwiGLU `fc1/fc2` (fc1 twice as wide as fc2's input) become
    `w12/w3`. A classifier `head.*` is dropped.
    """
    out: dict[str, torch.Tensor] = {}
    swiglu = False
    fc1, fc2 = state.get("blocks.0.mlp.fc1.weight"), state.get("blocks.0.mlp.fc2.weight")
    if fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]:
        swiglu = True  # timm's SwiGLUPacked (GluMlp, gate first): act(x1) * x2, as DINOv2's SwiGLUFFN
    dropped = []
    for key, value in state.items():
        if key in ("head.weight", "head.bias"):
            dropped.append(key)
            continue
        m = _TIMM_FC.match(key)
        if m and swiglu:
            key = f"blocks.{m.group(1)}.mlp.{'w12' if m.group(2) == 'fc1' else 'w3'}.{m.group(3)}"
        elif key == "reg_token":
            key = "register_tokens"
        out[key] = value
    if dropped:
        logger.info(f"{source}: dropped the classifier head ({', '.join(dropped)})")
    pos = out.get("pos_embed")
    if pos is not None:
        n = pos.shape[1]
        registers = out["register_tokens"].shape[1] if "register_tokens" in out else 0
        if _square(n):  # no class entry: the class position is already in cls_token
            out["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
        elif registers and _square(n - 1 - registers):
            raise ValueError(f"{source}: timm model with position embeddings on its {registers} register tokens "
                             "(no_embed_class=False); DINOv2's registers have none, so it has no DINOv2 equivalent")
    _zero_mask_token(out, source, "timm")
    return out


_NEUTRAL_BIAS = re.compile(r"^blocks\.(\d+\.)?\d+\.(attn\.proj|attn\.qkv|mlp\.fc1|mlp\.fc2|mlp\.w12|mlp\.w3)\.bias$")
_NEUTRAL_SCALE = re.compile(r"^blocks\.(\d+\.)?\d+\.ls[12]\.gamma$")


def drop_neutral_extras(state: Mapping[str, torch.Tensor], target: Mapping[str, Any], actions: list) -> dict:
    """Drop block entries the target backbone lacks that hold neutral values: all-zero biases (the target has
    `proj_bias` / `ffn_bias` / `qkv_bias` false) and all-one layer scales (`layerscale: 0`), which an HF or timm
    export adds because those libraries always have them. Exact (the function is unchanged); noted in `actions`.
    Any other extra entry stays and fails the strict load."""
    drop = [k for k, v in state.items() if k not in target and (
        (_NEUTRAL_BIAS.match(k) and not v.any()) or (_NEUTRAL_SCALE.match(k) and bool((v == 1).all())))]
    if drop:
        actions.append(f"{len(drop)} neutral entries the backbone lacks dropped (zero biases, unit layer scales)")
    return {k: v for k, v in state.items() if k not in drop}


# --------------------------------------------------------------------------------------------------------------
# raw DINOv2 -> layouts
# --------------------------------------------------------------------------------------------------------------


def _bias_or_zeros(state: Mapping[str, torch.Tensor], weight_key: str) -> torch.Tensor:
    bias = state.get(weight_key.removesuffix("weight") + "bias")
    if bias is not None:
        return bias
    return torch.zeros(state[weight_key].shape[0], dtype=state[weight_key].dtype)


def _depth(state: Mapping[str, torch.Tensor]) -> int:
    return len({k.split(".")[1] for k in state if k.startswith("blocks.")})


def dinov2_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw (unchunked) DINOv2 -> HF in the on-disk layout of transformers' conversion script.

    Parts HF always has and DINOv2 may lack get their neutral values (exact): zero biases for `proj_bias` /
    `ffn_bias` false, unit layer scales for `layerscale: 0`.
    """
    dim = state["cls_token"].shape[-1]
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": state.get("mask_token", torch.zeros(1, dim)),
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": _bias_or_zeros(state, "patch_embed.proj.weight"),
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    if "register_tokens" in state:
        out["embeddings.register_tokens"] = state["register_tokens"]
    for i in range(_depth(state)):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for n in ("norm1", "norm2"):
            out[h + f"{n}.weight"], out[h + f"{n}.bias"] = state[b + f"{n}.weight"], state[b + f"{n}.bias"]
        qkv_w = state[b + "attn.qkv.weight"]
        for name, part in zip(("query", "key", "value"), qkv_w.chunk(3, dim=0)):
            out[h + f"attention.attention.{name}.weight"] = part
        if b + "attn.qkv.bias" in state:
            for name, part in zip(("query", "key", "value"), state[b + "attn.qkv.bias"].chunk(3, dim=0)):
                out[h + f"attention.attention.{name}.bias"] = part
        out[h + "attention.output.dense.weight"] = state[b + "attn.proj.weight"]
        out[h + "attention.output.dense.bias"] = _bias_or_zeros(state, b + "attn.proj.weight")
        for s in ("1", "2"):
            gamma = state.get(b + f"ls{s}.gamma")
            out[h + f"layer_scale{s}.lambda1"] = gamma if gamma is not None else torch.ones(dim)
        if b + "mlp.w12.weight" in state:
            pairs = (("w12", "weights_in"), ("w3", "weights_out"))
        else:
            pairs = (("fc1", "fc1"), ("fc2", "fc2"))
        for ours, theirs in pairs:
            out[h + f"mlp.{theirs}.weight"] = state[b + f"mlp.{ours}.weight"]
            out[h + f"mlp.{theirs}.bias"] = _bias_or_zeros(state, b + f"mlp.{ours}.weight")
    return out


def dinov2_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw (unchunked) DINOv2 -> timm VisionTransformer keys: the output of timm's own `_convert_dinov2` filter,
    plus zero biases where DINOv2 has none (timm ties attention-proj and MLP biases to one flag)."""
    out = {}
    registers = "register_tokens" in state
    for key, value in state.items():
        if key == "mask_token":
            continue
        if key == "register_tokens":
            out["reg_token"] = value
        elif key == "cls_token" and registers:
            out["cls_token"] = value + state["pos_embed"][:, :1]
        elif key == "pos_embed" and registers:
            out["pos_embed"] = value[:, 1:]
        else:
            key = re.sub(r"^(blocks\.\d+\.mlp\.)w12\.", r"\1fc1.", key)
            out[re.sub(r"^(blocks\.\d+\.mlp\.)w3\.", r"\1fc2.", key)] = value
    for i in range(_depth(state)):
        for weight in (f"blocks.{i}.attn.proj.weight", f"blocks.{i}.mlp.fc1.weight", f"blocks.{i}.mlp.fc2.weight"):
            if weight in out:
                out.setdefault(weight.removesuffix("weight") + "bias", _bias_or_zeros(out, weight))
    return out


# --------------------------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------------------------


def _hf_swiglu_hidden(dim: int, mlp_ratio: int) -> int:
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8  # Dinov2SwiGLUFFN (== DINOv2's SwiGLUFFNFused)


def _describe(backbone, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    dim = int(state["cls_token"].shape[-1])
    patch = int(backbone.patch_size)
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    swiglu = "blocks.0.mlp.w12.weight" in state
    hidden = int(state["blocks.0.mlp.w3.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[-1 if swiglu else 0])
    return {
        "dim": dim, "depth": _depth(state), "heads": int(backbone.num_heads), "patch": patch,
        "image_size": grid * patch, "registers": int(getattr(backbone, "num_register_tokens", 0)),
        "swiglu": swiglu, "hidden": hidden, "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "layerscale": "blocks.0.ls1.gamma" in state,
    }


def hf_config(backbone, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """`config.json` of the HF model that computes what `backbone` computes (at its pos-embed grid)."""
    d = _describe(backbone, state)
    if d["swiglu"]:
        mlp_ratio = next((r for r in range(1, 17) if _hf_swiglu_hidden(d["dim"], r) == d["hidden"]), None)
    else:
        mlp_ratio = d["hidden"] // d["dim"] if d["hidden"] % d["dim"] == 0 else None
    if mlp_ratio is None:
        raise ValueError(f"an FFN of width {d['hidden']} on {d['dim']}-d tokens has no integer HF mlp_ratio")
    reg = d["registers"] > 0
    config = {
        "architectures": ["Dinov2WithRegistersModel" if reg else "Dinov2Model"],
        "model_type": "dinov2_with_registers" if reg else "dinov2",
        "hidden_size": d["dim"],
        "num_hidden_layers": d["depth"],
        "num_attention_heads": d["heads"],
        "mlp_ratio": mlp_ratio,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": d["image_size"],
        "patch_size": d["patch"],
        "num_channels": 3,
        "qkv_bias": d["qkv_bias"],
        "layerscale_value": 1.0,
        "drop_path_rate": 0.0,
        "use_swiglu_ffn": d["swiglu"],
        "use_mask_token": True,
        "apply_layernorm": True,
        "reshape_hidden_states": True,
        "torch_dtype": "float32",
    }
    if reg:
        config["num_register_tokens"] = d["registers"]
    return config


def hf_preprocessor_config(image_size: int) -> dict[str, Any]:
    """`preprocessor_config.json` as facebook/dinov2-*: resize the short side to size·256/224, centre-crop."""
    from dinov2_eqcoh.method.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True, "size": {"shortest_edge": int(round(image_size * 256 / 224))}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(IMAGENET_DEFAULT_MEAN), "image_std": list(IMAGENET_DEFAULT_STD), "do_convert_rgb": True,
    }


def timm_config(backbone, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """timm's hub `config.json` (architecture, model_args, pretrained_cfg) for the backbone."""
    from dinov2_eqcoh.method.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    d = _describe(backbone, state)
    size = _RELEASED.get((d["dim"], d["depth"]), "base")
    family = "giant" if d["swiglu"] else size  # timm's giant factories hold the packed SwiGLU (SiLU)
    architecture = f"vit_{family}_patch14{'_reg4' if d['registers'] else ''}_dinov2"
    # packed fc1 width = int(dim · mlp_ratio); the half-unit margin keeps int() off a rounding edge
    width = 2 * d["hidden"] if d["swiglu"] else d["hidden"]
    mlp_ratio = width / d["dim"] if width % d["dim"] == 0 else (width + 0.5) / d["dim"]
    model_args = {
        "img_size": d["image_size"], "patch_size": d["patch"], "embed_dim": d["dim"], "depth": d["depth"],
        "num_heads": d["heads"], "mlp_ratio": mlp_ratio, "qkv_bias": d["qkv_bias"],
        "init_values": 1e-5 if d["layerscale"] else None, "reg_tokens": d["registers"],
        "no_embed_class": d["registers"] > 0,
    }
    pretrained_cfg = {
        "input_size": [3, d["image_size"], d["image_size"]], "fixed_input_size": True, "interpolation": "bicubic",
        "crop_pct": 1.0, "crop_mode": "center", "mean": list(IMAGENET_DEFAULT_MEAN), "std": list(IMAGENET_DEFAULT_STD),
        "num_classes": 0, "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0",
    }
    return {"architecture": architecture, "num_classes": 0, "num_features": d["dim"], "model_args": model_args,
            "pretrained_cfg": pretrained_cfg}


# --------------------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------------------


def _save_safetensors(state: Mapping[str, torch.Tensor], path: Path) -> None:
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in state.items()}
    from dinov2_eqcoh.weights.files import atomic_output

    with atomic_output(path) as tmp:
        _require_safetensors().save_file(tensors, tmp, metadata={"format": "pt"})


def write_hf_folder(backbone, state: Mapping[str, torch.Tensor], output: str | os.PathLike) -> dict[str, Any]:
    """Write `config.json`, `model.safetensors`, `preprocessor_config.json` to `output`; returns the config.

    `state` is the backbone's state dict (chunked block keys are flattened)."""
    from dinov2_eqcoh.weights.files import unchunk_state_dict, write_text_atomic

    state, out = unchunk_state_dict(state), Path(output)
    out.mkdir(parents=True, exist_ok=True)
    config = hf_config(backbone, state)
    write_text_atomic(out / "config.json", json.dumps(config, indent=2) + "\n")
    write_text_atomic(out / "preprocessor_config.json",
                      json.dumps(hf_preprocessor_config(config["image_size"]), indent=2) + "\n")
    _save_safetensors(dinov2_to_hf(state), out / "model.safetensors")
    return config


def write_timm_folder(backbone, state: Mapping[str, torch.Tensor], output: str | os.PathLike) -> dict[str, Any]:
    """Write timm's `config.json` and `model.safetensors` (timm layout) to `output`; returns the config."""
    from dinov2_eqcoh.weights.files import unchunk_state_dict, write_text_atomic

    state, out = unchunk_state_dict(state), Path(output)
    out.mkdir(parents=True, exist_ok=True)
    config = timm_config(backbone, state)
    write_text_atomic(out / "config.json", json.dumps(config, indent=2) + "\n")
    _save_safetensors(dinov2_to_timm(state), out / "model.safetensors")
    return config
