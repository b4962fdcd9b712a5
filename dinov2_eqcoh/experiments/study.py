"""`make study`: the method against its baselines over training seeds, with paired 95 % intervals.

Trains S training seeds (`train.seed`, honoured by patches/0008) × the models

- `dinov2`:     vanilla DINOv2 (`eqcoh.loss_weight=0 eqcoh.apply_to_view=false`: exactly SSLMetaArch),
- `dinov2_aug`: DINOv2 with g_θ applied to the second view, no reconstruction (`eqcoh.loss_weight=0`),
- `eqcoh`:      DINOv2 + EqCoh (λ 1, K 2, SE(2)),
- `eqcoh_k1`:   the same with K = 1 (one intermediate state; the paper's Table 9 ablation),
- `eqcoh_head_only` (on request): EqCoh's head split with λ = 0 (`eqcoh.keep_head_split=true`), which separates
  the reconstruction loss from the extra head,

all on one config and budget, through DINOv2's own training loop (`python -m dinov2_eqcoh.train`, one process per
run), probes every final teacher backbone with the shared probes (R² tasks, k-NN, linear; `experiments.probes`),
the dense probes and the fill-free R², and, once per seed, an untrained backbone of the same architecture (raw pixels
once); the final student of every run trained with λ > 0 gets the decoders' diagnostics (`eval.reconstruction`).
Writes `study.json` (every per-seed figure), `study.md` (a headline table, then every probe and comparison) and
`study.png` (per-seed points, mean and 95 % interval per model and metric; paired differences EqCoh − each
baseline, paired by training seed, with their intervals).

Resumable: rerunning the same command skips finished runs and re-scores nothing already scored (`scores/`); an
interrupted study loses at most the run in flight (its folder is removed and it is trained again). The folder
belongs to one study configuration (config file contents, overrides, budget, probe settings: `study_config.json`);
another one is refused with the fields that differ. Seeds and models may be added to a folder. A second study
training into a folder that one holds stops at once, naming the holder (`run.lock`). `--score-only`
trains nothing: it scores the finished runs with the probe groups they miss and rewrites the report.

    python -m dinov2_eqcoh.experiments.study [--output-dir out/study] [--seeds 3 | 0,1,2] [--models dinov2,dinov2_aug,eqcoh,eqcoh_k1]
        [--budget 1.0] [--config-file configs/demo/eqcoh_demo.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from dinov2_eqcoh.experiments.identity import check_identity, config_fingerprint
from dinov2_eqcoh.experiments.probes import PROBE_GROUPS
from dinov2_eqcoh.experiments.registry import DEFAULT_MODELS, DESCRIPTIONS, MODELS
from dinov2_eqcoh.experiments.runner import dino_trajectory, hold_folder, run_training, shown, train_command
from dinov2_eqcoh.experiments.study_report import HEADLINE, METRICS, fmt_iv, plot_study, summarise, write_report

REPO = Path(__file__).resolve().parents[2]
def parse_seeds(spec: str) -> list[int]:
    """'3' -> [0, 1, 2]; '0,2,5' -> [0, 2, 5]."""
    spec = spec.strip()
    try:
        if "," not in spec:
            n = int(spec)
            if n < 1:
                raise ValueError
            return list(range(n))
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {spec!r}: a count (e.g. 3 = seeds 0,1,2) or a comma list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise SystemExit(f"--seeds {spec!r}: non-negative, distinct integers")
    return seeds


def study_identity(args, base_epochs: int) -> dict:
    """What makes two studies comparable: config file contents, overrides, budget and probe settings."""
    return {
        "config_file": shown(args.config_file),
        **config_fingerprint(args.config_file),
        "opts": list(args.opts),
        "budget": args.budget,
        "epochs": scaled_epochs(base_epochs, args.budget),
        "eval_images": args.eval_images,
        "class_images": args.class_images,
        "probe_epochs": args.probe_epochs,
        "features": args.features,
        "dense_scale": args.dense_scale,
    }


def scaled_epochs(base_epochs: int, budget: float) -> int:
    return max(1, round(base_epochs * budget))


# --- training ---------------------------------------------------------------------------------------------------

def run_name(model: str, seed: int) -> str:
    return f"{model}_s{seed}"


def train_run(model: str, seed: int, args, epochs: int, iterations: int, output_dir: Path, progress: str) -> float:
    """One DINOv2 training run in a subprocess; returns its wall time. A folder left by an interrupted run is
    removed first (it lost at most this run)."""
    name = run_name(model, seed)
    run_dir = output_dir / "runs" / name
    if run_dir.exists():
        from dinov2_eqcoh.run.lock import RunFolderLockedError, check_lock

        try:  # a run some other process is training is not "left": never remove it
            check_lock(run_dir)
        except RunFolderLockedError as e:
            raise SystemExit(f"[study] {e}") from None
        print(f"[study] {progress} {name}: removing the unfinished run left in {run_dir}", flush=True)
        shutil.rmtree(run_dir)
    cmd = train_command(args.config_file, run_dir, [*MODELS[model], f"train.seed={seed}", f"optim.epochs={epochs}",
                                                    f"evaluation.eval_period_iterations={iterations}", *args.opts])
    print(f"[study] {progress} training {name} ({DESCRIPTIONS[model]}, seed {seed}, {iterations} iterations)",
          flush=True)
    seconds = run_training("[study]", name, cmd, output_dir / "runs" / f"{name}.train.log")
    (run_dir / "study_train.json").write_text(json.dumps({"train_seconds": seconds, "command": cmd[1:]}) + "\n")
    return seconds


# --- scoring ----------------------------------------------------------------------------------------------------

def score_backbone(name: str, backbone, size: int, score_path: Path, args, extra: dict,
                   run_dir: Path | None = None) -> dict:
    """Run the probe groups missing from `score_path` (nothing already scored is run again) and save after each.
    `run_dir`: the trained run behind `backbone` (None for the references)."""
    score = json.loads(score_path.read_text()) if score_path.exists() else {}
    score.update({k: v for k, v in extra.items() if k not in score})
    for group in args.probes:
        fn = PROBE_GROUPS[group]
        if group in score.get("probes_done", []):
            continue
        print(f"[study]   probing {name}: {group}", flush=True)
        t0 = time.time()
        score.update(fn(name, backbone, size, args, run_dir))
        score.setdefault("probe_seconds", {})[group] = time.time() - t0
        score["probes_done"] = [*score.get("probes_done", []), group]
        tmp = score_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(score, indent=1))
        os.replace(tmp, score_path)
    return score


def all_scored(score_path: Path, groups) -> bool:
    if not score_path.exists():
        return False
    return set(groups) <= set(json.loads(score_path.read_text()).get("probes_done", []))


def score_run(model: str, seed: int, output_dir: Path, args) -> dict:
    from dinov2_eqcoh.weights.checkpoints import load_backbone

    name = run_name(model, seed)
    run_dir = output_dir / "runs" / name
    score_path = output_dir / "scores" / f"{name}.json"
    if all_scored(score_path, args.probes):
        return json.loads(score_path.read_text())
    backbone, cfg = load_backbone(run_dir / "model_final.rank_0.pth", config_file=run_dir / "config.yaml")
    train = json.loads((run_dir / "study_train.json").read_text())
    extra = {"model": model, "seed": seed, "description": DESCRIPTIONS[model], "run_dir": str(run_dir),
             "train_seconds": train["train_seconds"], "command": train["command"],
             **dino_trajectory(run_dir, cfg.dino.head_n_prototypes, int(cfg.optim.epochs) * int(cfg.train.OFFICIAL_EPOCH_LENGTH))}
    return score_backbone(name, backbone, cfg.crops.global_crops_size, score_path, args, extra, run_dir)


def score_untrained(seed: int, config_run_dir: Path, output_dir: Path, args) -> dict:
    """Untrained backbone of the runs' architecture, initialised as DINOv2 does for this seed (seed + rank 0)."""
    from dinov2.models import build_model_from_cfg

    from dinov2_eqcoh.method.config import load_config

    name = run_name("untrained", seed)
    score_path = output_dir / "scores" / f"{name}.json"
    if all_scored(score_path, args.probes):
        return json.loads(score_path.read_text())
    cfg = load_config(config_run_dir / "config.yaml")
    torch.manual_seed(seed)
    backbone, _ = build_model_from_cfg(cfg, only_teacher=True)
    extra = {"model": "untrained", "seed": seed, "description": "untrained backbone, same architecture"}
    return score_backbone(name, backbone, cfg.crops.global_crops_size, score_path, args, extra)


def score_raw_pixels(config_run_dir: Path, output_dir: Path, args) -> dict:
    """The pixels themselves as a backbone (`eval.features.RawPixels`), probed once: what needs no learning."""
    from dinov2_eqcoh.eval.features import RawPixels
    from dinov2_eqcoh.method.config import load_config

    score_path = output_dir / "scores" / "raw_pixels.json"
    if all_scored(score_path, args.probes):
        return json.loads(score_path.read_text())
    cfg = load_config(config_run_dir / "config.yaml")
    extra = {"model": "raw_pixels", "description": "raw pixels: CLS = the image flattened, patch tokens = the patches"}
    return score_backbone("raw_pixels", RawPixels(int(cfg.student.patch_size)), cfg.crops.global_crops_size,
                          score_path, args, extra)


def collect(output_dir: Path, seeds: list[int], models: list[str]) -> dict[str, dict[int, dict]]:
    scores: dict[str, dict[int, dict]] = {}
    raw = output_dir / "scores" / "raw_pixels.json"
    if raw.exists():  # not trained: one score (n 1), not paired with anything
        scores["raw_pixels"] = {seeds[0]: json.loads(raw.read_text())}
    for m in ("untrained", *models):
        for s in seeds:
            p = output_dir / "scores" / f"{run_name(m, s)}.json"
            if p.exists():
                scores.setdefault(m, {})[s] = json.loads(p.read_text())
    return scores


def write_outputs(output_dir: Path, args, identity, seeds, models, iterations, finished, planned, command) -> dict:
    scores = collect(output_dir, seeds, models)
    study = {
        "title": args.title,
        "command": command,
        "identity": identity,
        "seeds": seeds,
        "models": models,
        "iterations": iterations,
        "runs_finished": finished,
        "runs_planned": planned,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "scores": {m: {str(s): sc for s, sc in by.items()} for m, by in scores.items()},
        "summary": summarise(scores),
    }
    (output_dir / "study.json").write_text(json.dumps(study, indent=1))
    write_report(study, output_dir)
    if any(len(by) for by in scores.values()):
        plot_study(study, output_dir / "study.png")
    return study


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("dinov2_eqcoh.experiments.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="out/study", help="the folder of runs/, scores/, study.json/.md/.png (default out/study)")
    p.add_argument("--config-file", default=str(REPO / "configs/demo/eqcoh_demo.yaml"),
                   help="the config every run starts from (default configs/demo/eqcoh_demo.yaml)")
    p.add_argument("--seeds", default="3", help="a count (3 = seeds 0,1,2) or a comma list of training seeds")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"subset of {','.join(MODELS)}")
    p.add_argument("--budget", type=float, default=1.0,
                   help="scales the training iterations (optim.epochs × budget, at least one epoch)")
    p.add_argument("--eval-images", type=int, default=3000, help="held-out images for the R² probes")
    p.add_argument("--class-images", type=int, default=9000, help="held-out images for k-NN and linear")
    p.add_argument("--probe-epochs", type=int, default=100, help="at most this many epochs of the R² probe (early-stopped)")
    p.add_argument("--features", default="concat", choices=("cls", "avgpool", "concat"),
                   help="frozen features of the R² probe (concat = CLS and average-pooled patches)")
    p.add_argument("--probes", default="global,dense,fill_free,reconstruction",
                   help="probe groups: global (R² tasks, k-NN, linear), dense (homography, propagation, "
                        "segmentation at 64 px), fill_free (R² of rot, trans, se2 with no filled corners) and "
                        "reconstruction (the decoders' diagnostics of runs trained with λ > 0); on request "
                        "frozen_reconstruction (fresh decoders on the frozen backbone, about 5 min per backbone); a "
                        "group added later is scored on the finished runs only")
    p.add_argument("--score-only", action="store_true",
                   help="train nothing: score the finished runs (probe groups they miss) and rewrite the report")
    p.add_argument("--dense-scale", type=float, default=1.0,
                   help="multiplies the dense probes' image and video counts (1 = the demo's; dense_probes)")
    p.add_argument("--title", default="dinov2-eqcoh study", help="title of the picture")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run, key=value")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    args.config_file = str(Path(args.config_file))
    if not Path(args.config_file).is_file():
        raise SystemExit(f"--config-file {args.config_file}: no such file")
    if not args.budget > 0:
        raise SystemExit(f"--budget {args.budget}: must be > 0")
    if not args.dense_scale > 0:
        raise SystemExit(f"--dense-scale {args.dense_scale}: must be > 0")
    args.probes = [g.strip() for g in args.probes.split(",") if g.strip()]
    if not args.probes or any(g not in PROBE_GROUPS for g in args.probes):
        raise SystemExit(f"--probes {','.join(args.probes)}: allowed groups {', '.join(PROBE_GROUPS)}")
    seeds = parse_seeds(args.seeds)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise SystemExit(f"--models: unknown {unknown}; allowed: {', '.join(MODELS)}")
    bad = [o for o in args.opts if "=" not in o]
    if bad:
        raise SystemExit(f"config overrides must be key=value, got {bad}")
    from omegaconf import OmegaConf

    file_cfg = OmegaConf.load(args.config_file)
    base_epochs = int(OmegaConf.select(OmegaConf.merge(file_cfg, OmegaConf.from_dotlist(list(args.opts))),
                                       "optim.epochs", default=100))
    epoch_length = int(OmegaConf.select(OmegaConf.merge(file_cfg, OmegaConf.from_dotlist(list(args.opts))),
                                        "train.OFFICIAL_EPOCH_LENGTH", default=1250))
    identity = study_identity(args, base_epochs)
    epochs = identity["epochs"]
    iterations = epochs * epoch_length
    check_identity(output_dir, identity)
    if not args.score_only:  # one training study per folder (scoring alone writes each score file atomically)
        hold_folder(output_dir, "study")
    (output_dir / "runs").mkdir(exist_ok=True)
    (output_dir / "scores").mkdir(exist_ok=True)
    cli = list(argv) if argv is not None else sys.argv[1:]
    command = " ".join(["python -m dinov2_eqcoh.experiments.study", *cli])
    if args.score_only and (output_dir / "study.json").is_file():  # the report names the command that trained
        command = json.loads((output_dir / "study.json").read_text()).get("command", command)

    plan = [(m, s) for s in seeds for m in models]  # seed-major: a partial study has complete pairs
    done = lambda m, s: (output_dir / "runs" / run_name(m, s) / "study_train.json").exists()  # noqa: E731
    todo = [(m, s) for m, s in plan if not done(m, s)]
    print(f"[study] {output_dir}: {len(plan)} runs ({len(models)} models × {len(seeds)} seeds, {iterations} "
          f"iterations each), {len(plan) - len(todo)} finished, "
          + (f"{len(todo)} left untrained (--score-only)" if args.score_only else f"{len(todo)} to train"), flush=True)
    t0 = time.time()
    durations = []
    finished = len(plan) - len(todo)
    for i, (m, s) in enumerate(plan, start=1):
        if not done(m, s) and args.score_only:
            continue
        if not done(m, s):
            elapsed = time.time() - t0
            left = len([1 for mm, ss in plan[i - 1:] if not done(mm, ss)])
            eta = f"{sum(durations) / len(durations) * left / 60:.0f} min" if durations else "unknown"
            prog = f"run {i} of {len(plan)} (elapsed {elapsed / 60:.1f} min, estimated left {eta}):"
            ts = time.time()
            train_run(m, s, args, epochs, iterations, output_dir, prog)
            score_run(m, s, output_dir, args)
            durations.append(time.time() - ts)
            finished += 1
        else:
            score_run(m, s, output_dir, args)  # scores only what is missing
        score_untrained(s, output_dir / "runs" / run_name(m, s), output_dir, args)  # once per seed
        score_raw_pixels(output_dir / "runs" / run_name(m, s), output_dir, args)  # once
        write_outputs(output_dir, args, identity, seeds, models, iterations, finished, len(plan), command)
    study = write_outputs(output_dir, args, identity, seeds, models, iterations, finished, len(plan), command)
    for comp in ("eqcoh - dinov2", "eqcoh - dinov2_aug", "eqcoh - eqcoh_k1"):
        per = study["summary"]["paired"].get(comp, {})
        if per:
            print(f"[study] {comp}: " + ", ".join(f"{METRICS[k]} {fmt_iv(k, per[k], signed=True)}"
                                                 for k in HEADLINE if k in per), flush=True)
    print(f"[study] done in {(time.time() - t0) / 60:.1f} min: {output_dir / 'study.md'}, "
          f"{output_dir / 'study.json'}, {output_dir / 'study.png'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
