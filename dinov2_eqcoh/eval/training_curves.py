# SPDX-License-Identifier: Apache-2.0
"""Training curves of a run folder, from DINOv2's `training_metrics.json` (one JSON object per logged iteration).

    python -m dinov2_eqcoh.eval.training_curves <run-dir> [--output <png>]

Draws, against iterations: every loss term (DINOv2's and `eqcoh_recon_loss`), the schedules (lr, wd, teacher
momentum), DINOv2's image-level DINO term over ln K (K = `dino.head_n_prototypes` of the run's config: 1 = the
uniform solution, the term carries no information), and, for an EqCoh run, the decoders' diagnostics
(`eval.reconstruction.plot_training_diagnostics`, a second picture), into `<run-dir>/plots/` (or `--output`).
`--tensorboard` also writes every logged number as TensorBoard scalars to `<run-dir>/tensorboard` (losses,
schedules, the decoders' diagnostics, timing) and, for an EqCoh run, the reconstruction grid (v1, v2, u_k, D_k) of
every training checkpoint at its iteration (so every `train.saveckp_freq` epochs, from the strictly loaded student);
`--follow S` keeps adding new records and checkpoints every S seconds while the run trains: TensorBoard without
touching DINOv2's loop.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

SCHEDULES = ("lr", "wd", "mom")
NOT_LOSSES = {"iteration", "iter_time", "data_time", "current_batch_size", "last_layer_lr", *SCHEDULES}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of `<run_dir>/training_metrics.json` (a resumed run logs some iterations twice: the later
    record wins)."""
    path = Path(run_dir) / "training_metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a DINOv2 run folder, or nothing logged yet")
    by_it: dict[int, dict] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not a JSON object ({e})") from None
            by_it[int(record["iteration"])] = record
    return [by_it[k] for k in sorted(by_it)]


def loss_keys(records: list[dict]) -> list[str]:
    keys = sorted({k for r in records for k in r if k not in NOT_LOSSES and not k.startswith(("eqcoh_diag_", "bad_",
                                                                                            "loaded_"))})
    return [k for k in keys if k == "total_loss"] + [k for k in keys if k != "total_loss"]


def plot_training_curves(records: list[dict], path: str | Path, n_prototypes: int | None = None,
                         title: str = "") -> None:
    """Three panels (losses, schedules, DINO / ln K) against iterations. Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [r["iteration"] for r in records]
    panels = 3 if n_prototypes else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    for key in loss_keys(records):
        xs = [r["iteration"] for r in records if key in r]
        axes[0].plot(xs, [r[key] for r in records if key in r], label=key, lw=2 if key == "total_loss" else 1)
    axes[0].set_title("losses (median of the last 20 iterations)", fontsize=9)
    axes[0].legend(fontsize=6)
    for key in SCHEDULES:
        if any(key in r for r in records):
            axes[1].plot(its, [r.get(key, math.nan) for r in records], label=key)
    axes[1].set_yscale("log")
    axes[1].set_title("schedules", fontsize=9)
    axes[1].legend(fontsize=7)
    if n_prototypes:
        dino = [(r["iteration"], (r["dino_local_crops_loss"] + r["dino_global_crops_loss"]) / math.log(n_prototypes))
                for r in records if "dino_local_crops_loss" in r and "dino_global_crops_loss" in r]
        axes[2].plot([d[0] for d in dino], [d[1] for d in dino])
        axes[2].axhline(1.0, color="grey", ls="--", label="uniform (no information)")
        axes[2].set_title(f"DINO loss / ln K (K = {n_prototypes})", fontsize=9)
        axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("iteration")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_tensorboard(records: list[dict], logdir: str | Path, since: int = -1) -> int:
    """Every number of every record after iteration `since` as a TensorBoard scalar (tag = the metric's name,
    grouped: losses, schedules, eqcoh_diag/...), at its iteration; returns the last iteration written (or `since`).
    Needs the `tensorboard` package (`pip install tensorboard`)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(logdir))
    last = since
    try:
        for r in records:
            it = int(r["iteration"])
            if it <= since:
                continue
            for key, value in r.items():
                if key == "iteration" or not isinstance(value, (int, float)):
                    continue
                group = ("schedules" if key in SCHEDULES or key == "last_layer_lr" else
                         "eqcoh_diag" if key.startswith("eqcoh_diag_") else
                         "timing" if key in ("iter_time", "data_time") else "losses")
                writer.add_scalar(f"{group}/{key}", float(value), it)
            last = it
    finally:
        writer.close()
    return last


def write_tensorboard_reconstructions(run_dir: str | Path, logdir: str | Path, done: set[int],
                                     n: int = 6, dataset: str | None = None) -> set[int]:
    """The reconstruction grid of every training checkpoint `model_*.rank_0.pth` of an EqCoh run not in `done`
    (iterations), as the TensorBoard image `reconstructions` at the checkpoint's iteration; returns `done` with them.

    Runs without decoders (λ = 0) and FSDP-sharded checkpoints (each rank's file holds a shard; the decoders
    cannot be loaded from one) are skipped with a message, once. Needs the `tensorboard` package.
    """
    from omegaconf import OmegaConf
    from torch.utils.tensorboard import SummaryWriter

    from dinov2_eqcoh.eval.reconstruction import load_student_model, reconstruction_tiles
    from dinov2_eqcoh.weights.run_config import checkpoint_iteration, holds_sharded_tensors

    run_dir = Path(run_dir)
    done = set(done)
    config = run_dir / "config.yaml"
    if not config.is_file() or float(OmegaConf.load(config).eqcoh.get("loss_weight", 0)) <= 0:
        return done  # no decoders: nothing to draw
    new = []
    for path in sorted(run_dir.glob("model_*.rank_0.pth")):
        it = checkpoint_iteration(path)
        if it is None or it in done or any(it == i for i, _ in new):  # model_final repeats the last iteration
            continue
        if holds_sharded_tensors(path):
            print(f"reconstructions: {path.name} is one rank's FSDP shard; no grid drawn from it (python -m "
                  f"dinov2_eqcoh.weights.consolidate {run_dir} --iteration {it} writes a whole checkpoint)")
            done.add(it)
            continue
        new.append((it, path))
    if not new:
        return done
    writer = SummaryWriter(log_dir=str(logdir))
    try:
        for it, path in new:
            model, cfg, _ = load_student_model(path)  # strict
            writer.add_image("reconstructions", reconstruction_tiles(model, cfg, n, dataset), it)
            print(f"wrote the reconstruction grid of {path.name} (iteration {it}) to TensorBoard")
            done.add(it)
    finally:
        writer.close()
    return done


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m dinov2_eqcoh.eval.training_curves", description="Training curves of a run folder.")
    p.add_argument("run_dir", help="a DINOv2 run folder (holds training_metrics.json and config.yaml)")
    p.add_argument("--output", default=None, help="the PNG to write (default: <run-dir>/plots/training_curves.png)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write every logged number as TensorBoard scalars, and for an EqCoh run each training "
                        "checkpoint's reconstruction grid, to <run-dir>/tensorboard "
                        "(`tensorboard --logdir <run-dir>/tensorboard`; needs the tensorboard package)")
    p.add_argument("--dataset", default=None,
                   help="with --tensorboard: the reconstruction grid's images, a DINOv2 dataset string (default: "
                        "built-in synthetic images; e.g. ImageNet:split=VAL:root=<ROOT>:extra=<EXTRA> for an "
                        "ImageNet run)")
    p.add_argument("--follow", type=float, default=None, metavar="SECONDS",
                   help="with --tensorboard: keep adding new records and checkpoints every SECONDS while the run "
                        "trains (Ctrl-C ends)")
    return p


def main(argv=None) -> int:
    from dinov2_eqcoh.eval.reconstruction import plot_training_diagnostics, training_records

    args = get_args_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    try:
        records = read_metrics(run_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_prototypes = None
    if (run_dir / "config.yaml").is_file():
        from omegaconf import OmegaConf

        n_prototypes = int(OmegaConf.load(run_dir / "config.yaml").dino.head_n_prototypes)
    out = Path(args.output) if args.output else run_dir / "plots" / "training_curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        plot_training_curves(records, out, n_prototypes, title=f"{run_dir.name}: {len(records)} logged iterations, "
                             f"last {records[-1]['iteration'] if records else '-'}")
    except ImportError as e:
        print(f"{'warning' if args.tensorboard else 'error'}: drawing needs matplotlib ({e}); the numbers are in "
              f"{run_dir / 'training_metrics.json'}", file=sys.stderr)
        if not args.tensorboard:
            return 2
    else:
        print(f"wrote {out}")
        diag = out.with_name(out.stem.replace("training_curves", "training_diagnostics") + out.suffix)
        if diag != out and plot_training_diagnostics(training_records(run_dir), diag,
                                                     f"{run_dir.name}: decoders' diagnostics"):
            print(f"wrote {diag}")
    if args.tensorboard:
        logdir = run_dir / "tensorboard"
        try:
            last = write_tensorboard(records, logdir)
            drawn = write_tensorboard_reconstructions(run_dir, logdir, set(), dataset=args.dataset)
        except ImportError as e:
            print(f"error: --tensorboard needs the tensorboard package ({e}): pip install tensorboard", file=sys.stderr)
            return 2
        print(f"wrote TensorBoard scalars up to iteration {last} to {logdir}")
        try:
            while args.follow:
                import time

                time.sleep(args.follow)
                last = write_tensorboard(read_metrics(run_dir), logdir, since=last)
                drawn = write_tensorboard_reconstructions(run_dir, logdir, drawn, dataset=args.dataset)
        except KeyboardInterrupt:
            print(f"stopped following; TensorBoard holds iterations up to {last}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
