# SPDX-License-Identifier: Apache-2.0
"""Does the auxiliary task do its job? Diagnostics of the decoders D_k of a trained EqCoh run.

    python -m dinov2_eqcoh.eval.reconstruction --run-dir RUN [--checkpoint RUN/model_final.rank_0.pth]
        [--n 256] [--batch-size 64] [--output-dir RUN/diagnostics]

On a fresh batch of the run's own pipeline (built-in images by default, 8 px larger than the crop, as the demo's
picture), rendered as in training (`render_second_view`: v1, v2 = g_θ(u), targets u_k = g_{kθ/(K+1)}(u)), the
student's unmasked z_equi of v1 and v2 goes through the decoders, and for each k (all MSEs in the crops'
normalised pixel space, averaged over images, channels and pixels):

    mse            MSE(D_k, u_k): the reconstruction loss of decoder k
    copy_v2        MSE(v2, u_k): a θ-blind predictor that copies the second view
    pooled_v2      MSE(pool(v2), u_k): v2 average-pooled to the token grid and upsampled (θ-blind, at the
                   resolution of the decoder's input)
    grid_floor     MSE(pool(u_k), u_k): what knowing the target only at the token grid's resolution costs
    shuffled_v1    MSE(D_k with z_equi(v1) permuted across the batch, u_k): how much D_k uses v1
    path_position  the f in {0, 1/S, ..., 1} whose g_{fθ}(u) is closest to D_k's output, both pooled to the token
                   grid (MECHANISM_NOTES.md): a decoder that uses θ lands near k/(K+1), one that ignores it at 1
    target_position  k/(K+1)

and for the pairs: `decoder_gap` MSE(D_k, D_{k+1}) (0: the decoders coincide). `grad_ratio` is
‖∇_backbone λ·L_recon‖ / ‖∇_backbone L_SSL‖ over the student backbone's parameters, from two `forward_backward`
calls on the same batch and state (one with λ = 0). The mechanism acts (the mechanism criteria) when every D_k is below
both θ-blind predictors and lands within 1/6 of k/(K+1): `acts` in the JSON.

The pure functions (`pool_to_grid`, `path_position`, `summarize_outputs`) live in `dinov2_eqcoh.method.diagnostics`,
which training also uses to log the same figures (but the gradient ratio) every `eqcoh.diagnostics_every`
iterations; known answers test them (tests/test_reconstruction_diagnostics.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from dinov2_eqcoh.method.augmentation import render_options
from dinov2_eqcoh.method.diagnostics import (  # noqa: F401 - the pure functions, importable from here too
    PATH_STEPS,
    TOLERANCE,
    n_decoders,
    path_position,
    path_states,
    pool_to_grid,
    record_acts,
    summarize_outputs,
)

logger = logging.getLogger("dinov2.eqcoh")

# ---------------------------------------------------------------------------------------------- a trained model


def diagnostic_batch(cfg, n: int, seed: int = 2, dataset: str | None = None) -> dict[str, Any]:
    """n images of the run's pipeline (the plugin's augmentation and collate, float32), seeded."""
    import random

    from dinov2_eqcoh.data.datasets import make_dataset
    from dinov2_eqcoh.method.augmentation import build_data_transform
    from dinov2_eqcoh.method.collate import build_collate_fn

    size = int(cfg.crops.global_crops_size)
    dataset = dataset or f"Synthetic:n={n}:size={size + 8}:classes=10:seed={seed}"
    random.seed(seed)
    torch.manual_seed(seed)
    ds = make_dataset(dataset_str=dataset, transform=build_data_transform(cfg))
    if len(ds) < n:
        raise ValueError(f"--dataset {dataset}: {len(ds)} images, fewer than --n {n}")
    return build_collate_fn(cfg, torch.float32)([ds[i] for i in range(n)])


@torch.no_grad()
def decoder_outputs(model, batch: dict[str, Any], shift: int = 1) -> dict[str, torch.Tensor]:
    """Render as in training, encode v1 and v2 unmasked, decode; also with z_equi(v1) shuffled across the batch.

    Args:
        model: an `EqCohSSLMetaArch` (λ > 0).
        batch: the plugin's collated batch.

    Returns:
        {"pred", "pred_shuffled", "targets": (K, B, 3, G, G), "v2", "u": (B, 3, G, G), "theta": (B, P)}.
    """
    images, targets = model.render_second_view(batch)
    crops = images["collated_global_crops"].float()  # (2B, 3, G, G): v1 then v2
    B = crops.shape[0] // 2
    training = model.student.backbone.training
    model.student.backbone.eval()  # no drop-path: the trained network, not a sample of it
    try:
        out = model.student.backbone(crops, is_training=True)  # the student hook adds z_equi (unmasked here)
    finally:
        model.student.backbone.train(training)
    z1, z2 = out["eqcoh_z_equi_patchtokens"].float().chunk(2)
    decoders = model.student["eqcoh_decoders"]
    pred = decoders(torch.cat([z1, z2], dim=-1))
    pred_shuffled = decoders(torch.cat([z1.roll(shift, dims=0), z2], dim=-1))  # each v2 paired with another v1
    u = batch["collated_global_crops"][B:].float().to(crops.device)
    return {"pred": pred, "pred_shuffled": pred_shuffled, "targets": targets, "v2": crops[B:], "u": u,
            "theta": batch["eqcoh_theta"].to(crops.device)}


def backbone_gradient_ratio(model, batch: dict[str, Any], teacher_temp: float, seed: int = 0) -> dict[str, float]:
    """‖∇ λ·L_recon‖ / ‖∇ L_SSL‖ over the student backbone's parameters.

    Two `forward_backward` calls on the same batch from the same state and seed (drop-path, masks), the second
    with λ = 0; ∇ λ·L_recon = ∇_total − ∇_SSL. The model's buffers (DINOv2's centres) are restored in between
    and after; the gradients are cleared.
    """
    params = [p for p in model.student.backbone.parameters() if p.requires_grad]
    state = copy.deepcopy(model.state_dict())
    weight = model.eqcoh_loss_weight
    grads = []
    try:
        for lam in (weight, 0.0):
            model.load_state_dict(state)
            model.eqcoh_loss_weight = lam
            for p in params:
                p.grad = None
            torch.manual_seed(seed)
            model.forward_backward(batch, teacher_temp=teacher_temp)
            grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]))
    finally:
        model.eqcoh_loss_weight = weight
        model.load_state_dict(state)
        for p in model.parameters():
            p.grad = None
    total, ssl = grads
    recon = total - ssl
    return {"grad_norm_recon": recon.norm().item(), "grad_norm_ssl": ssl.norm().item(),
            "grad_ratio": (recon.norm() / ssl.norm().clamp_min(1e-30)).item()}


def load_student_model(checkpoint: str | Path, config: str | Path | None = None):
    """An `EqCohSSLMetaArch` with a training checkpoint's weights (strict), and its config.

    Args:
        checkpoint: `<run>/model_*.rank_0.pth` (the student holds the decoders; eval dumps hold the teacher only).
        config: the run's config (default: the one the checkpoint was trained with).
    """
    from dinov2_eqcoh.method.config import load_config
    from dinov2_eqcoh.method.ssl_meta_arch import EqCohSSLMetaArch
    from dinov2_eqcoh.weights.files import load_checkpoint_file
    from dinov2_eqcoh.weights.run_config import config_for_checkpoint

    checkpoint = Path(checkpoint)
    config = Path(config) if config else config_for_checkpoint(checkpoint)
    if config is None or not Path(config).is_file():
        raise FileNotFoundError(f"{checkpoint}: no config.yaml of its run found next to it; pass --config-file")
    cfg = load_config(config)
    if float(cfg.eqcoh.loss_weight) <= 0:
        raise ValueError(f"{config}: eqcoh.loss_weight = {cfg.eqcoh.loss_weight}: this run has no decoders "
                         "(diagnostics need an EqCoh run, λ > 0)")
    data = load_checkpoint_file(checkpoint)
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError(f"{checkpoint}: not a training checkpoint (no 'model'; an eval dump "
                         "eval/training_N/teacher_checkpoint.pth holds the teacher, which has no decoders): pass "
                         "<run>/model_*.rank_0.pth")
    model = EqCohSSLMetaArch(cfg)
    model.load_state_dict(data["model"])  # strict
    model.train()  # as in training (drop-path in the gradient ratio); the decoders have no dropout or norm
    return model, cfg, data.get("iteration")


def diagnose(checkpoint: str | Path, *, n: int = 256, config: str | Path | None = None, dataset: str | None = None,
             seed: int = 2, steps: int = PATH_STEPS, grad_batch: int = 64) -> dict[str, Any]:
    """Every diagnostic of one training checkpoint (see the module docstring)."""
    t0 = time.time()
    model, cfg, iteration = load_student_model(checkpoint, config)
    report = diagnose_model(model, cfg, n=n, dataset=dataset, seed=seed, steps=steps, grad_batch=grad_batch)
    report.update(checkpoint=str(checkpoint), iteration=iteration, seconds=round(time.time() - t0, 1))
    return report


def diagnose_model(model, cfg, *, n: int = 256, dataset: str | None = None, seed: int = 2, steps: int = PATH_STEPS,
                   grad_batch: int = 64) -> dict[str, Any]:
    """`diagnose` of a model already loaded (`load_student_model`)."""
    batch = diagnostic_batch(cfg, n, seed, dataset)
    out = decoder_outputs(model, batch)
    transform = str(cfg.eqcoh.transform)
    fractions, states = path_states(out["u"], out["theta"], transform, steps, **render_options(cfg))
    grid = int(cfg.crops.global_crops_size) // int(cfg.student.patch_size)
    report = summarize_outputs(out["pred"], out["targets"], out["v2"], fractions, states, grid, out["pred_shuffled"])
    try:  # on a smaller batch of the same pipeline (two full forward_backward calls)
        grad_batch = diagnostic_batch(cfg, min(grad_batch, n), seed + 1, dataset)
        report.update(backbone_gradient_ratio(model, grad_batch, float(cfg.teacher.teacher_temp)))
    except Exception as e:  # a diagnostic, not the run: say why it is missing
        logger.warning(f"gradient ratio not computed: {type(e).__name__}: {e}")
        report["grad_ratio"] = None
    report.update(n=n, transform=transform, path_steps=steps, loss_weight=float(cfg.eqcoh.loss_weight),
                  decoder_dim=int(cfg.eqcoh.decoder.dim))
    return report


def format_table(report: dict[str, Any]) -> str:
    rows = [("k", "D_k MSE", "copy v2", "pooled v2", "grid floor", "shuffled v1", "lands at f", "target f")]
    for r in report["per_k"]:
        sh = f"{r['shuffled_v1']:.3f}" if r["shuffled_v1"] is not None else "-"
        rows.append((str(r["k"]), f"{r['mse']:.3f}", f"{r['copy_v2']:.3f}", f"{r['pooled_v2']:.3f}",
                     f"{r['grid_floor']:.3f}", sh, f"{r['path_position']:.2f}", f"{r['target_position']:.2f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    gap = ", ".join(f"{g:.3f}" for g in report["decoder_gap"]) or "-"
    ratio = f"{report['grad_ratio']:.3f}" if report.get("grad_ratio") is not None else "n/a"
    lines.append(f"MSE(D_k, D_k+1): {gap}; backbone gradient ratio recon/SSL: {ratio}; "
                 f"mechanism acts (every D_k below both θ-blind predictors, within 1/6 of k/(K+1)): {report['acts']}")
    return "\n".join(lines)


def markdown_table(report: dict[str, Any]) -> list[str]:
    """The per-k diagnostics as markdown lines (demo and study reports)."""
    lines = ["| k | D_k MSE | copy v2 | pooled v2 | grid floor | shuffled v1 | lands at f | target f |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["per_k"]:
        sh = f"{r['shuffled_v1']:.3f}" if r["shuffled_v1"] is not None else "–"
        lines.append(f"| {r['k']} | {r['mse']:.3f} | {r['copy_v2']:.3f} | {r['pooled_v2']:.3f} | {r['grid_floor']:.3f} "
                     f"| {sh} | {r['path_position']:.2f} | {r['target_position']:.2f} |")
    ratio = f"{report['grad_ratio']:.3f}" if report.get("grad_ratio") is not None else "n/a"
    gap = ", ".join(f"{g:.3f}" for g in report["decoder_gap"]) or "–"
    lines += ["", f"MSE between consecutive decoders: {gap}; backbone gradient ratio ‖∇ λ·L_recon‖ / ‖∇ L_SSL‖: "
              f"{ratio}; the mechanism acts (every D_k below copy v2 and pooled v2, within 1/6 of k/(K+1)): "
              f"**{'yes' if report['acts'] else 'no'}** (iteration {report.get('iteration')}, {report['n']} images)."]
    return lines


def training_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's training_metrics.json that hold the decoders' diagnostics (`eqcoh_diag_*`)."""
    path = Path(run_dir) / "training_metrics.json"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if "eqcoh_diag_k1_mse" in r]


def acting_since(records: Sequence[dict[str, Any]]) -> int | None:
    """The first logged iteration from which every later record meets the target (None: the last one does not)."""
    since = None
    for r in records:
        if record_acts(r):
            since = r["iteration"] if since is None else since
        else:
            since = None
    return since


def plot_training_diagnostics(records: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> bool:
    """Two panels against iterations: each D_k's MSE with its θ-blind predictors, and its path position with the
    target k/(K+1) and the ±1/6 band. Returns False (and draws nothing) without records or matplotlib."""
    if not records:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no diagnostics picture (pip install matplotlib)")
        return False
    K = n_decoders(records[0])
    its = [r["iteration"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k in range(1, K + 1):
        c = colors[(k - 1) % len(colors)]
        ax1.plot(its, [r[f"eqcoh_diag_k{k}_mse"] for r in records], color=c, label=f"D_{k}")
        ax1.plot(its, [r[f"eqcoh_diag_k{k}_copy_v2"] for r in records], color=c, ls="--", lw=1, label=f"copy v2 (u_{k})")
        ax1.plot(its, [r[f"eqcoh_diag_k{k}_pooled_v2"] for r in records], color=c, ls=":", lw=1,
                 label=f"pooled v2 (u_{k})")
        ax2.plot(its, [r[f"eqcoh_diag_k{k}_path"] for r in records], color=c, label=f"D_{k}")
        target = k / (K + 1)
        ax2.axhline(target, color=c, ls="--", lw=1)
        ax2.axhspan(target - TOLERANCE, target + TOLERANCE, color=c, alpha=0.08)
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("MSE to u_k (normalised pixels)")
    ax1.legend(fontsize=6, ncol=2)
    ax1.set_title("reconstruction vs θ-blind predictors", fontsize=9)
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("path position f of D_k's output")
    ax2.legend(fontsize=6)
    ax2.set_title("where D_k lands on g_{fθ}(u) (target k/(K+1), band ±1/6)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def grid_columns(model, cfg, n: int = 6, dataset: str | None = None) -> tuple[list[tuple[str, torch.Tensor]], torch.Tensor]:
    """The reconstruction grid's columns [(title, (n, 3, G, G) images in [0, 1])] for v1, v2 = g_θ(u), then u_k
    and D_k([z_equi(v1); z_equi(v2)]) for k = 1..K, on n images of the run's pipeline (`diagnostic_batch`), and
    their θ (n, P).

    Args:
        model, cfg: the eqcoh run's student (`load_student_model`).
        dataset: a dataset string (default: the built-in images of `diagnostic_batch`).
    """
    from dinov2_eqcoh.method.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    batch = diagnostic_batch(cfg, n, dataset=dataset)  # the diagnostics' images and rendering, as in training
    out = decoder_outputs(model, batch)
    targets, pred = out["targets"], out["pred"]  # (K, n, 3, G, G)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    cols = [("v1", batch["collated_global_crops"][:n]), ("v2 = g_θ(u)", out["v2"])]
    for k in range(targets.shape[0]):
        cols += [(f"u_{k + 1} target", targets[k]), (f"D_{k + 1} prediction", pred[k])]
    return [(title, (imgs.detach().float().cpu() * std + mean).clamp(0, 1)) for title, imgs in cols], batch["eqcoh_theta"]


def reconstruction_tiles(model, cfg, n: int = 6, dataset: str | None = None) -> torch.Tensor:
    """`grid_columns` as one (3, H, W) image in [0, 1] (a row per image: v1, v2, u_1, D_1, ...), no matplotlib:
    for TensorBoard."""
    from torchvision.utils import make_grid

    cols = [imgs for _, imgs in grid_columns(model, cfg, n, dataset)[0]]
    rows = torch.stack(cols, dim=1).flatten(0, 1)  # (n·C, 3, G, G): row-major, one row per image
    return make_grid(rows, nrow=len(cols), padding=2, pad_value=1.0)


def reconstruction_grid(model, cfg, path: str | Path, n: int = 6, title: str = "") -> None:
    """v1, v2, the targets u_k and the decoders' predictions D_k([z_equi(v1); z_equi(v2)]) for a few images.

    Args:
        model, cfg: the eqcoh run's student (`dinov2_eqcoh.eval.reconstruction.load_student_model`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, thetas = grid_columns(model, cfg, n)
    fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.6 * n))
    for j, (col_title, imgs) in enumerate(cols):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(imgs[i].permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(col_title, fontsize=8)
    for i in range(n):
        axes[i, 0].set_ylabel("θ=" + ",".join(f"{v:.2g}" for v in thetas[i].tolist()), fontsize=6)
    fig.suptitle(title or "EqCoh reconstructions of the intermediate states (student, final checkpoint)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "python -m dinov2_eqcoh.eval.reconstruction",
        description="Diagnostics of the reconstruction decoders of an EqCoh run (MSE against θ-blind predictors, "
        "path position, shuffled v1, decoder gap, backbone gradient ratio).",
    )
    parser.add_argument("--run-dir", default=None, help="a run folder: its model_final.rank_0.pth (or newest "
                        "model_*.rank_0.pth) is diagnosed")
    parser.add_argument("--checkpoint", default=None, help="a training checkpoint model_*.rank_0.pth instead")
    parser.add_argument("--config-file", default=None, help="the run's config (default: found next to the checkpoint)")
    parser.add_argument("--n", type=int, default=256, help="images in the diagnostic batch (default 256)")
    parser.add_argument("--dataset", default=None,
                        help="dataset string (default: built-in Synthetic images 8 px larger than the crop, seed 2)")
    parser.add_argument("--grad-batch", type=int, default=64, help="images for the gradient ratio (default 64)")
    parser.add_argument("--output-dir", default=None, help="where reconstruction_diagnostics.json goes "
                        "(default: <run>/diagnostics)")
    return parser


def find_training_checkpoint(run_dir: str | Path) -> Path:
    """model_final.rank_0.pth, else the newest model_*.rank_0.pth of a run folder."""
    run_dir = Path(run_dir)
    final = run_dir / "model_final.rank_0.pth"
    if final.is_file():
        return final
    found = sorted(run_dir.glob("model_*.rank_0.pth"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"--run-dir {run_dir}: no training checkpoint model_*.rank_0.pth in it")
    return found[-1]


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if bool(args.run_dir) == bool(args.checkpoint):
        print("error: give one of --run-dir or --checkpoint", file=sys.stderr)
        return 2
    if args.n < 2 or args.grad_batch < 2:
        print(f"error: --n ({args.n}) and --grad-batch ({args.grad_batch}) must be >= 2", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        checkpoint = Path(args.checkpoint) if args.checkpoint else find_training_checkpoint(args.run_dir)
        report = diagnose(checkpoint, n=args.n, config=args.config_file, dataset=args.dataset,
                          grad_batch=args.grad_batch)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output_dir) if args.output_dir else checkpoint.parent / "diagnostics"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "reconstruction_diagnostics.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)  # the numbers first: a failing picture loses nothing
    print(format_table(report))
    print(f"wrote {path}")
    records = training_records(checkpoint.parent)
    if records:
        since = acting_since(records)
        print("training logs: " + (f"the target holds from iteration {since} to the end" if since is not None
                                   else "the target does not hold at the last logged iteration"))
    if plot_training_diagnostics(records, out / "training_diagnostics.png",
                                 f"{checkpoint.parent.name}: diagnostics logged during training"):
        print(f"wrote {out / 'training_diagnostics.png'}")
    model, cfg, iteration = load_student_model(checkpoint, args.config_file)  # strict
    title = f"{checkpoint.parent.name}, {checkpoint.name} (iteration {iteration}): v1, v2, u_k and D_k"
    from dinov2_eqcoh.eval.features import draw

    if draw(reconstruction_grid, str(out / "reconstructions.png"), model, cfg, title=title):
        print(f"wrote {out / 'reconstructions.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
