# SPDX-License-Identifier: Apache-2.0
"""Export a run's teacher backbone in the released DINOv2 format, or for timm or HF transformers.

    python -m dinov2_eqcoh.weights.export --config-file <run>/config.yaml --checkpoint <ckpt> --output <file.pth>
    python -m dinov2_eqcoh.weights.export --format timm --checkpoint <ckpt> --output <folder>   # timm.create_model("local-dir:<folder>", pretrained=True)
    python -m dinov2_eqcoh.weights.export --format hf --checkpoint <ckpt> --output <folder>     # Dinov2Model.from_pretrained(<folder>)

`<ckpt>` is any checkpoint kind (`model_*.rank_0.pth`, `eval/training_N/teacher_checkpoint.pth`, a raw file).
The output is a raw, unchunked DinoVisionTransformer state dict (fp32) with no wrapper key and no prefix, exactly
what DINOv2's hub files hold, so it loads with `strict=True` into `dinov2.hub.backbones._make_dinov2_model(...,
pretrained=False)` of the same architecture, into `load_pretrained_backbone`, and into every DINOv2 eval script.
The plugin's heads and decoders (`eqcoh_*`) and DINOv2's dino/ibot heads are not part of it.
`--format timm|hf` writes the same weights as a folder for those libraries (`dinov2_eqcoh.weights.interop`; needs the
`interop` extra). `--image-size S` resizes the position table to S px by DINOv2's own interpolation rule first.
Default for `--format hub` with patch 14: 518 px, the grid of DINOv2's released files, so the file loads strictly
into `dinov2.hub.backbones.dinov2_vit*14()` as a released one does; otherwise the run's crop size.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Sequence

import torch

from dinov2_eqcoh.weights.checkpoints import (
    backbone_config,
    build_backbone_for_checkpoint,
    load_backbone_state_dict,
    load_pretrained_backbone,
)
from dinov2_eqcoh.weights.files import atomic_output

logger = logging.getLogger("dinov2.eqcoh")


RELEASED_PATCH, RELEASED_SIZE = 14, 518  # DINOv2's released backbones: patch 14, a 37 x 37 position table


def hub_kwargs(cfg) -> dict[str, Any]:
    """Keyword arguments of `dinov2.hub.backbones._make_dinov2_model` that rebuild the exported backbone."""
    s = cfg.student
    return {
        "arch_name": str(s.arch).removesuffix("_memeff"),
        "img_size": int(cfg.crops.global_crops_size),
        "patch_size": int(s.patch_size),
        "init_values": float(s.layerscale),
        "ffn_layer": str(s.ffn_layer),
        "block_chunks": 0,
        "num_register_tokens": int(s.num_register_tokens),
        "interpolate_antialias": bool(s.interpolate_antialias),
        "interpolate_offset": float(s.interpolate_offset),
        "qkv_bias": bool(s.qkv_bias),
        "proj_bias": bool(s.proj_bias),
        "ffn_bias": bool(s.ffn_bias),
    }


def export_backbone(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    config_file: str | os.PathLike | None = None,
    opts: Sequence[str] = (),
    allow_pickle: bool = False,
    fmt: str = "hub",
    image_size: int | None = None,
) -> dict[str, Any]:
    """Write the teacher backbone of `checkpoint` to `output` as a raw DINOv2 state dict (or a timm / HF folder).

    The weights go through a backbone built from the config (block_chunks 0, the run's crop size) with a strict
    load, so a file that does not describe that architecture fails here rather than at the consumer.

    Args:
        checkpoint: any checkpoint kind.
        output: the .pth file to write (parent folders are created).
        config_file, opts: the run's config (found next to the checkpoint when omitted) and dotlist overrides.
        allow_pickle: see `dinov2_eqcoh.weights.checkpoints.load_checkpoint_file`.
        fmt: "hub" (a .pth file), "timm" or "hf" (a folder, see `dinov2_eqcoh.weights.interop`).
        image_size: pos-embed grid of the export in px (default: 518 for "hub" with patch 14, as DINOv2's
            released files; else the config's crop size).

    Returns:
        The `_make_dinov2_model` keyword arguments that rebuild the backbone (also logged); for timm and hf the
        config.json written.
    """
    if fmt not in ("hub", "timm", "hf"):
        raise ValueError(f"--format {fmt!r}: allowed hub, timm, hf")
    state = load_backbone_state_dict(checkpoint, allow_pickle=allow_pickle)
    cfg = backbone_config(config_file, opts, checkpoint=checkpoint, state=state)
    if image_size is None and fmt == "hub" and int(cfg.student.patch_size) == RELEASED_PATCH:
        image_size = RELEASED_SIZE  # as DINOv2's released files: loads strictly into dinov2.hub's constructors
        logger.info(f"position table at {RELEASED_SIZE} px ({RELEASED_SIZE // RELEASED_PATCH}² patches), the grid of "
                    "DINOv2's released files; --image-size to keep another (the run trained at "
                    f"{cfg.crops.global_crops_size} px)")
    if image_size is not None:
        cfg.crops.global_crops_size = int(image_size)
    backbone = build_backbone_for_checkpoint(cfg, block_chunks=0)
    load_pretrained_backbone(backbone, state)
    raw = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in backbone.state_dict().items()}
    if fmt != "hub":
        from dinov2_eqcoh.weights import interop

        write = interop.write_timm_folder if fmt == "timm" else interop.write_hf_folder
        config = write(backbone, raw, output)
        load = (f'timm.create_model("local-dir:{output}", pretrained=True)' if fmt == "timm" else
                f'transformers.{config["architectures"][0]}.from_pretrained("{output}")')
        logger.info(f"wrote {fmt} folder {output}; load with {load}")
        return config
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with atomic_output(output) as tmp, open(tmp, "wb") as f:  # all or nothing; a full disk is named
        torch.save(raw, f)
    kwargs = hub_kwargs(cfg)
    call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    logger.info(f"wrote {len(raw)} backbone tensors to {output}; rebuild with "
                f"dinov2.hub.backbones._make_dinov2_model({call}, pretrained=False) then load_state_dict(strict=True)"
                + (" (register the factory first: the arch is an import path)" if ":" in kwargs["arch_name"] else ""))
    return kwargs


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("dinov2_eqcoh.weights.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=None, help="the run's config.yaml (default: found next to the checkpoint)")
    parser.add_argument("--checkpoint", "--weights", dest="checkpoint", required=True,
                        help="model_*.rank_0.pth, teacher_checkpoint.pth or a raw file (--weights: the evaluations' name)")
    parser.add_argument("--output", required=True, help="the .pth file to write (hub) or the folder (timm, hf)")
    parser.add_argument("--format", default="hub", choices=("hub", "timm", "hf"),
                        help="hub: raw DINOv2 state dict (default); timm: folder for timm.create_model('local-dir:"
                             "...'); hf: folder for transformers' Dinov2Model / Dinov2WithRegistersModel")
    parser.add_argument("--image-size", type=int, default=None,
                        help="pos-embed grid of the export in px, resized by DINOv2's rule (default: 518 for --format "
                             "hub with patch 14, as DINOv2's released files; else the run's crop size)")
    parser.add_argument("--allow-pickle", action="store_true", help="allow full unpickling (trusted files only)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. student.arch=vit_small")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    kwargs = export_backbone(args.checkpoint, args.output, args.config_file, args.opts, args.allow_pickle,
                             fmt=args.format, image_size=args.image_size)
    if args.format == "hub":
        print(f"{args.output}: {kwargs}")
    else:
        print(f"{args.output}: {args.format} folder, {kwargs.get('architecture') or kwargs['architectures'][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
