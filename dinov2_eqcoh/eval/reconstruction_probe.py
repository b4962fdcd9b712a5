# SPDX-License-Identifier: Apache-2.0
"""The frozen reconstruction probe: how much of the path between two views a frozen backbone's features carry.

    python -m dinov2_eqcoh.eval.reconstruction_probe --weights <ckpt> --output-dir <dir> \
        [--config-file <run>/config.yaml] [--v1 given|zeroed] [--iterations 800] [--batch-size 128]

The paper's definition of equivariance-coherence, read out directly. On the run's own pipeline (v1, v2 = g_θ(u),
the intermediate states u_k = g_{kθ/(K+1)}(u), as in training: `method.augmentation.render_views`), fresh
decoders are trained on the backbone's frozen, normalised patch tokens of v1 and v2 to reconstruct every u_k; the
backbone is never updated. The probe is the method's own reconstruction path, freshly initialised: the z_equi rows
of an eqcoh head (one linear map of each token to d_equi channels) and the K decoders D_k
(`method.decoder.EqCohDecoders`, the config's width), trained with the mean squared error over every pixel of the
K targets (L_recon's normalisation), AdamW with a cosine schedule.

Arms: `--v1 given` decodes [z(v1); z(v2)] as in training; `--v1 zeroed` replaces z(v1) by zeros, so only v2 is read
(what the decoders can do without the first view).

Data: a pool of `--pool` training items and `--n-eval` held-out items of the pipeline (built-in images 8 px larger
than the crop, seeds `--seed` and `--seed` + 1000), each rendered once and encoded once (the backbone is frozen, so
its features of a rendered item never change); batches are drawn from the pool.

Reported per k on the held-out items (`method.diagnostics.summarize_outputs`): `mse` MSE(D_k, u_k); the θ-blind
predictors `copy_v2` and `pooled_v2` (v2 average-pooled to the token grid); `grid_floor`; `shuffled_v1` (z(v1)
permuted across the batch); `path_position` (where D_k lands between u (0) and v2 (1); a decoder that uses θ lands
near k/(K+1)); and `mean_target`: the MSE of predicting the training pool's mean image of u_k, what features that
say nothing reach. Known answers (tests/test_reconstruction_probe.py): a constant feature map scores no better than
`mean_target`; features that carry the target (raw pixels, θ = 0 so that u_k = v2) score far below it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dinov2_eqcoh.method.augmentation import render_options, render_views
from dinov2_eqcoh.method.decoder import EqCohDecoders
from dinov2_eqcoh.method.diagnostics import PATH_STEPS, path_states, summarize_outputs

logger = logging.getLogger("dinov2.eqcoh")

V1_ARMS = ("given", "zeroed")
ITERATIONS, BATCH_SIZE, POOL, N_EVAL = 800, 128, 8192, 512
LR, WEIGHT_DECAY, WARMUP = 1e-2, 0.05, 50  # lr chosen on the known answers (docs/reconstruction_probe.md)
CHUNK = 512  # items rendered and encoded at a time


class ReconstructionProbe(nn.Module):
    """Fresh z_equi rows of an eqcoh head (Linear D -> d_equi per token) and K fresh decoders D_k.

    Args:
        embed_dim: D, the backbone's token width.
        d_equi: channels of z_equi.
        n_intermediate: K.
        dim: C, the decoders' width.
        patch_size, img_size: the backbone's patch size p and the crop side G.
    """

    def __init__(self, embed_dim: int, d_equi: int, n_intermediate: int, dim: int, patch_size: int,
                 img_size: int) -> None:
        super().__init__()
        self.z_equi = nn.Linear(embed_dim, d_equi)
        nn.init.trunc_normal_(self.z_equi.weight, std=0.02)  # as the eqcoh head
        nn.init.zeros_(self.z_equi.bias)
        self.decoders = EqCohDecoders(n_intermediate, 2 * d_equi, dim, patch_size, img_size)

    def forward(self, t1: torch.Tensor, t2: torch.Tensor, v1: str = "given", shift: int = 0) -> torch.Tensor:
        """(B, N, D) tokens of v1 and v2 -> (K, B, 3, G, G); `shift` rolls z(v1) across the batch (shuffled v1)."""
        z1, z2 = self.z_equi(t1), self.z_equi(t2)
        if v1 == "zeroed":
            z1 = torch.zeros_like(z1)
        elif shift:
            z1 = z1.roll(shift, dims=0)
        return self.decoders(torch.cat([z1, z2], dim=-1))


@torch.no_grad()
def patch_tokens(backbone: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(B, 3, G, G) -> (B, N, D) normalised patch tokens of a frozen backbone (eval mode)."""
    backbone.eval()
    out = [backbone.forward_features(images[i:i + batch_size])["x_norm_patchtokens"].float()
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


@torch.no_grad()
def encoded_pool(backbone: nn.Module, cfg, n: int, seed: int, dataset: str | None = None) -> dict[str, torch.Tensor]:
    """n items of the run's pipeline, rendered and encoded: tokens t1, t2 (n, N, D), targets (K, n, 3, G, G), v2,
    u (n, 3, G, G), θ (n, P). Built in chunks of CHUNK items (seeds `seed`, `seed` + 1, ...)."""
    from dinov2_eqcoh.eval.reconstruction import diagnostic_batch

    size = int(cfg.crops.global_crops_size)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("t1", "t2", "targets", "v2", "u", "theta")}
    for c, start in enumerate(range(0, n, CHUNK)):
        m = min(CHUNK, n - start)
        chunk_dataset = dataset or f"Synthetic:n={m}:size={size + 8}:classes=10:seed={seed * 100_003 + c}"
        batch = diagnostic_batch(cfg, m, seed=seed * 100_003 + c, dataset=chunk_dataset)
        crops = batch["collated_global_crops"].float()
        v1, u = crops[:m], crops[m:]
        v2, targets = render_views(batch, cfg)
        parts["t1"].append(patch_tokens(backbone, v1))
        parts["t2"].append(patch_tokens(backbone, v2.float()))
        parts["targets"].append(targets.float())
        parts["v2"].append(v2.float())
        parts["u"].append(u)
        parts["theta"].append(batch["eqcoh_theta"].float())
    return {k: torch.cat(v, dim=1 if k == "targets" else 0) for k, v in parts.items()}


def _lr(it: int, iterations: int, lr: float, warmup: int) -> float:
    if it < warmup:
        return lr * (it + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (it - warmup) / max(1, iterations - warmup)))


def train_probe(train: dict[str, torch.Tensor], cfg, *, v1: str = "given", iterations: int = ITERATIONS,
                batch_size: int = BATCH_SIZE, lr: float = LR, weight_decay: float = WEIGHT_DECAY, seed: int = 0,
                log_every: int = 100) -> tuple[ReconstructionProbe, list[dict[str, float]]]:
    """Fit a fresh `ReconstructionProbe` on an encoded pool; returns it and its loss curve."""
    if v1 not in V1_ARMS:
        raise ValueError(f"--v1 {v1!r}: allowed {', '.join(V1_ARMS)}")
    torch.manual_seed(seed)
    probe = ReconstructionProbe(train["t1"].shape[-1], int(cfg.eqcoh.d_equi), int(cfg.eqcoh.n_intermediate),
                                int(cfg.eqcoh.decoder.dim), int(cfg.student.patch_size),
                                int(cfg.crops.global_crops_size))
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = train["t1"].shape[0]
    curve, running = [], []
    for it in range(iterations):
        for group in opt.param_groups:
            group["lr"] = _lr(it, iterations, lr, min(WARMUP, iterations // 10 + 1))
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        pred = probe(train["t1"][idx], train["t2"][idx], v1=v1)
        loss = F.mse_loss(pred, train["targets"][:, idx])  # L_recon's normalisation: the mean over K·B·3·G·G
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())
        if (it + 1) % log_every == 0 or it + 1 == iterations:
            curve.append({"iteration": it + 1, "loss": sum(running) / len(running)})
            running = []
    return probe, curve


@torch.no_grad()
def score_probe(probe: ReconstructionProbe, held_out: dict[str, torch.Tensor], train_targets: torch.Tensor, cfg,
                v1: str = "given", steps: int = PATH_STEPS) -> dict[str, Any]:
    """The held-out figures of a fitted probe (see the module docstring)."""
    probe.eval()
    pred = probe(held_out["t1"], held_out["t2"], v1=v1)
    shuffled = probe(held_out["t1"], held_out["t2"], v1=v1, shift=1) if v1 == "given" else None
    fractions, states = path_states(held_out["u"], held_out["theta"], str(cfg.eqcoh.transform), steps,
                                    **render_options(cfg))
    grid = int(cfg.crops.global_crops_size) // int(cfg.student.patch_size)
    report = summarize_outputs(pred, held_out["targets"], held_out["v2"], fractions, states, grid, shuffled)
    mean_image = train_targets.mean(dim=1, keepdim=True)  # (K, 1, 3, G, G): the pool's mean u_k
    for k, row in enumerate(report["per_k"]):
        row["mean_target"] = F.mse_loss(mean_image[k].expand_as(held_out["targets"][k]), held_out["targets"][k]).item()
        row["below_mean_target"] = row["mse"] < row["mean_target"]
    return report


def probe_config(cfg):
    """The pipeline the probe reads for every backbone: the config's crops, g, θ ranges, K and decoder width, with
    g applied to the second view and the targets rendered (`eqcoh.apply_to_view` true, λ 1), whatever the backbone
    was trained with (vanilla DINOv2's config has neither)."""
    import copy

    from omegaconf import open_dict

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.eqcoh.apply_to_view = True
        cfg.eqcoh.loss_weight = 1.0
    return cfg


def probe_backbone(backbone: nn.Module, cfg, *, v1: str = "given", iterations: int = ITERATIONS,
                   batch_size: int = BATCH_SIZE, pool: int = POOL, n_eval: int = N_EVAL, seed: int = 0,
                   dataset: str | None = None) -> dict[str, Any]:
    """Encode a training pool and a held-out pool with the frozen backbone, fit the probe, score it."""
    t0 = time.time()
    cfg = probe_config(cfg)
    train = encoded_pool(backbone, cfg, pool, seed=seed, dataset=dataset)
    held_out = encoded_pool(backbone, cfg, n_eval, seed=seed + 1000, dataset=None)
    t_data = time.time() - t0
    probe, curve = train_probe(train, cfg, v1=v1, iterations=iterations, batch_size=batch_size, seed=seed)
    report = score_probe(probe, held_out, train["targets"], cfg, v1=v1)
    report.update(v1=v1, iterations=iterations, batch_size=batch_size, pool=pool, n_eval=n_eval, seed=seed,
                  lr=LR, weight_decay=WEIGHT_DECAY, curve=curve, transform=str(cfg.eqcoh.transform),
                  decoder_dim=int(cfg.eqcoh.decoder.dim), d_equi=int(cfg.eqcoh.d_equi),
                  probe_parameters=sum(p.numel() for p in probe.parameters()),
                  seconds={"data": round(t_data, 1), "total": round(time.time() - t0, 1)})
    return report


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The few numbers a study table shows: per k the MSE over the mean-target MSE, and the path position."""
    out = {}
    for row in report["per_k"]:
        out[f"k{row['k']}_mse_ratio"] = row["mse"] / row["mean_target"]
        out[f"k{row['k']}_path"] = row["path_position"]
    out["mse_ratio"] = sum(out[f"k{r['k']}_mse_ratio"] for r in report["per_k"]) / len(report["per_k"])
    return out


def format_table(report: dict[str, Any]) -> str:
    lines = [f"frozen reconstruction probe, v1 {report['v1']}, {report['iterations']} iterations:",
             "  k   mse     mean_target  copy_v2  pooled_v2  shuffled_v1  path (target)"]
    for r in report["per_k"]:
        shuffled = f"{r['shuffled_v1']:.4f}" if r.get("shuffled_v1") is not None else "  –   "
        lines.append(f"  {r['k']}   {r['mse']:.4f}  {r['mean_target']:.4f}       {r['copy_v2']:.4f}   "
                     f"{r['pooled_v2']:.4f}     {shuffled}       {r['path_position']:.2f} ({r['target_position']:.2f})")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m dinov2_eqcoh.eval.reconstruction_probe",
                                description="Train fresh decoders on a frozen backbone's features to reconstruct the "
                                            "intermediate states between two views; report how well they do.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--weights", "--checkpoint", dest="weights", default=None,
                       help="the backbone: model_*.rank_0.pth, eval/*/teacher_checkpoint.pth, an export or a released "
                            "DINOv2 file, an HF folder, a timm checkpoint")
    which.add_argument("--untrained", action="store_true", help="the reference: the config's backbone, untrained "
                       "(initialised as DINOv2 does with --seed)")
    which.add_argument("--raw-pixels", action="store_true", help="the reference: each patch's pixels as its token")
    p.add_argument("--config-file", default=None, help="the pipeline's config (crops, eqcoh.*): default the run's "
                   "config.yaml next to the weights; required otherwise")
    p.add_argument("--output-dir", required=True, help="folder for reconstruction_probe.json")
    p.add_argument("--v1", default="given", choices=V1_ARMS, help="decode [z(v1); z(v2)] (given, default) or z(v2) "
                   "alone (zeroed)")
    p.add_argument("--iterations", type=int, default=ITERATIONS, help=f"probe training steps (default {ITERATIONS})")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"items per step (default {BATCH_SIZE})")
    p.add_argument("--pool", type=int, default=POOL, help=f"training items, rendered and encoded once (default {POOL})")
    p.add_argument("--n-eval", type=int, default=N_EVAL, help=f"held-out items (default {N_EVAL})")
    p.add_argument("--seed", type=int, default=0, help="probe seed: its data and initialisation (default 0)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. eqcoh.decoder.dim=64")
    return p


def reference_or_backbone(args: argparse.Namespace):
    """(backbone, pipeline config) of the arguments."""
    from dinov2_eqcoh.eval.features import RawPixels
    from dinov2_eqcoh.method.config import load_config
    from dinov2_eqcoh.weights.checkpoints import find_run_config, load_backbone

    config = args.config_file or (find_run_config(args.weights) if args.weights else None)
    if config is None:
        raise SystemExit("--config-file: needed (the pipeline's crops and eqcoh.* settings); no run config.yaml "
                         "was found next to the weights")
    cfg = load_config(config, list(args.opts))
    if args.raw_pixels:
        return RawPixels(int(cfg.student.patch_size)), cfg
    if args.untrained:
        from dinov2.models import build_model_from_cfg

        torch.manual_seed(args.seed)
        return build_model_from_cfg(cfg, only_teacher=True)[0], cfg
    backbone, _ = load_backbone(args.weights, config_file=config)
    return backbone, cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    for name in ("iterations", "batch_size", "pool", "n_eval"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    backbone, cfg = reference_or_backbone(args)
    report = probe_backbone(backbone, cfg, v1=args.v1, iterations=args.iterations, batch_size=args.batch_size,
                            pool=args.pool, n_eval=args.n_eval, seed=args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reconstruction_probe.json").write_text(json.dumps(report, indent=1) + "\n")
    print(format_table(report))
    print(f"wrote {out / 'reconstruction_probe.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
