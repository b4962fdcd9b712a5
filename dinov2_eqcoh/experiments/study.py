"""`make study`: the method against its baselines over training seeds, with paired 95 % intervals.

Trains S training seeds (`train.seed`, honoured by patches/0008) × the models

- `dinov2`:     vanilla DINOv2 (`eqcoh.loss_weight=0 eqcoh.apply_to_view=false`: exactly SSLMetaArch),
- `dinov2_aug`: DINOv2 with g_θ applied to the second view, no reconstruction (`eqcoh.loss_weight=0`),
- `eqcoh`:      DINOv2 + EqCoh (λ 1, K 2, SE(2)),
- `eqcoh_k1`:   the same with K = 1 (one intermediate state; the paper's Table 9 ablation),
- `eqcoh_head_only` (on request): EqCoh's head split with λ = 0 (`eqcoh.keep_head_split=true`), which separates
  the reconstruction loss from the extra head,

all on one config and budget, through DINOv2's own training loop (`python -m dinov2.train.train`, one process per
run), probes every final teacher backbone with the demo's probes (R² tasks, k-NN, linear; `demo.probe_backbone`),
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
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from dinov2_eqcoh.experiments.runner import hold_folder, progress_reporter, run_logged

REPO = Path(__file__).resolve().parents[2]
MODELS = {
    "dinov2": ["eqcoh.loss_weight=0", "eqcoh.apply_to_view=false"],
    "dinov2_aug": ["eqcoh.loss_weight=0"],
    "eqcoh": ["eqcoh.n_intermediate=2"],
    "eqcoh_k1": ["eqcoh.n_intermediate=1"],
    "eqcoh_head_only": ["eqcoh.loss_weight=0", "eqcoh.keep_head_split=true"],
    # issue 21 part 4: the same two models trained with fill-free geometry (no corner a rotation or shift uncovers)
    "dinov2_aug_fill_free": ["eqcoh.loss_weight=0", "eqcoh.fill_free=true"],
    "eqcoh_fill_free": ["eqcoh.n_intermediate=2", "eqcoh.fill_free=true"],
}
DEFAULT_MODELS = ("dinov2", "dinov2_aug", "eqcoh", "eqcoh_k1")
DESCRIPTIONS = {
    "dinov2": "vanilla DINOv2",
    "dinov2_aug": "DINOv2 + g on the second view, no reconstruction",
    "eqcoh": "DINOv2 + EqCoh (λ 1, K 2)",
    "eqcoh_k1": "DINOv2 + EqCoh (λ 1, K 1)",
    "eqcoh_head_only": "EqCoh's head split (z_inv to DINOv2's heads) with λ 0: the architecture without L_recon",
    "dinov2_aug_fill_free": "DINOv2 + g, g rendered fill-free (eqcoh.fill_free)",
    "eqcoh_fill_free": "DINOv2 + EqCoh (λ 1, K 2), g rendered fill-free (eqcoh.fill_free)",
}
# (metric key in a score record, label); R² tasks as in the demo, mean over the paper's four
METRICS = {
    "r2.rot": "R²(rot)", "r2.color": "R²(color)", "r2.blur": "R²(blur)", "r2.trans": "R²(trans)",
    "r2.se2": "R²(se2)", "r2.mean": "mean R²", "r2_fill_free.rot": "R²(rot) fill-free",
    "r2_fill_free.trans": "R²(trans) fill-free", "r2_fill_free.se2": "R²(se2) fill-free", "knn_top1": "k-NN top-1", "linear_top1": "linear top-1",
    "dense.mce": "homography MCE (px, lower better)", "dense.jf_mean": "propagation J&F", "dense.miou": "segmentation mIoU",
    "dino_ratio_end": "DINO loss / ln K (end)", "dino_ratio_last_quarter_max": "DINO / ln K, last-quarter max",
}
HEADLINE = ("r2.rot", "r2.mean", "knn_top1")
# the report's (and the README's) first table: the paper's R²(rot) and mean R², the fill-free geometry (docs/fill_leak),
# k-NN, linear and the geometric dense probe; the comparisons issue 29 asks for, and what training does at all
HEADLINE_TABLE = ("r2.rot", "r2.mean", "r2_fill_free.trans", "r2_fill_free.se2", "knn_top1", "linear_top1", "dense.mce")
HEADLINE_COMPARISONS = ("eqcoh - dinov2_aug", "eqcoh - eqcoh_head_only", "eqcoh - eqcoh_k1", "dinov2 - untrained",
                        "dinov2_aug_fill_free - dinov2_aug", "eqcoh_fill_free - eqcoh")
# (a, b): a − b paired by seed
COMPARISONS = (("eqcoh", "dinov2"), ("eqcoh", "dinov2_aug"), ("eqcoh", "eqcoh_k1"), ("eqcoh", "eqcoh_head_only"),
               ("dinov2_aug", "dinov2"), ("dinov2", "untrained"), ("eqcoh", "untrained"),
               ("dinov2_aug_fill_free", "dinov2_aug"), ("eqcoh_fill_free", "eqcoh"),
               ("eqcoh_fill_free", "dinov2_aug_fill_free"))
# two-sided 95 % Student-t quantiles t_{0.975, df}
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
    """Two-sided 95 % Student-t quantile (tabulated; the next smaller tabulated df, i.e. conservative)."""
    if df <= 0:
        return math.nan
    if df > 30:
        return 1.960 if df > 120 else 2.0
    return _T975[max(k for k in _T975 if k <= df)]


def interval(values: list[float]) -> dict:
    """Mean, sample standard deviation and the 95 % t-interval of the mean of `values` (n ≥ 2 for an interval)."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    half = t975(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "half_width": half}


def get_metric(score: dict, key: str):
    value = score
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


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


# --- the folder's identity --------------------------------------------------------------------------------------

def config_fingerprint(config_file: str | Path) -> dict:
    """The config file's identity: `config_sha256` of its bytes and `config_content_sha256` of its content as
    OmegaConf reads it (comments and layout do not count), so that a comment edited in a shipped config does not
    orphan the studies trained from it."""
    from omegaconf import OmegaConf

    text = Path(config_file).read_bytes()
    content = OmegaConf.to_yaml(OmegaConf.load(config_file)).encode()
    return {"config_sha256": hashlib.sha256(text).hexdigest(),
            "config_content_sha256": hashlib.sha256(content).hexdigest()}


def study_identity(args, base_epochs: int) -> dict:
    """What makes two studies comparable: config file contents, overrides, budget and probe settings."""
    return {
        "config_file": str(args.config_file),
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


def check_identity(output_dir: Path, identity: dict, name: str = "study") -> None:
    """Refuse a folder that holds another configuration of this experiment (`{name}_config.json`); record the
    identity in a new one."""
    path = output_dir / f"{name}_config.json"
    if path.exists():
        old = json.loads(path.read_text())
        # the config's text may change where its content does not (a comment): same content, same experiment. A
        # folder recorded before the content fingerprint existed is matched on the bytes and gets it added.
        same_text = old.get("config_sha256") == identity.get("config_sha256")
        same_content = old.get("config_content_sha256", identity.get("config_content_sha256") if same_text else None) \
            == identity.get("config_content_sha256")
        ignore = {"config_file"} | ({"config_sha256", "config_content_sha256"} if same_content else set())
        diff = {k: (old.get(k), identity.get(k)) for k in sorted(set(old) | set(identity))
                if old.get(k) != identity.get(k) and k not in ignore}
        if not diff and (not same_text or "config_content_sha256" not in old):
            if not same_text:
                print(f"[{name}] {identity['config_file']}: its text changed, not its content (comments or layout): "
                      "resuming", flush=True)
            path.write_text(json.dumps({**old, **{k: identity[k] for k in ("config_sha256", "config_content_sha256")
                                                  if k in identity}}, indent=1) + "\n")
        if diff:
            lines = "\n".join(f"  {k}: {a!r} in the folder, {b!r} now" for k, (a, b) in diff.items())
            raise SystemExit(
                f"[{name}] {output_dir} holds a {name} of another configuration ({path}):\n{lines}\n"
                "Use another --output-dir for this configuration, or rerun with the folder's settings to resume it. "
                "Nothing was changed."
            )
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=1) + "\n")


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
    cmd = [sys.executable, "-m", "dinov2.train.train", "--config-file", str(args.config_file),
           "--output-dir", str(run_dir), *MODELS[model], f"train.seed={seed}", f"optim.epochs={epochs}",
           f"evaluation.eval_period_iterations={iterations}", *args.opts]
    print(f"[study] {progress} training {name} ({DESCRIPTIONS[model]}, seed {seed}, {iterations} iterations)",
          flush=True)
    start = time.time()
    log_path = output_dir / "runs" / f"{name}.train.log"
    rc = run_logged(cmd, log_path, progress_reporter("[study]", name))
    if rc != 0:
        raise SystemExit(f"[study] training {name} failed (exit {rc}); see {log_path}")
    seconds = time.time() - start
    (run_dir / "study_train.json").write_text(json.dumps({"train_seconds": seconds, "command": cmd[1:]}) + "\n")
    return seconds


def dino_trajectory(run_dir: Path, n_prototypes: int, iterations: int) -> dict:
    """DINOv2's image-level DINO term over ln K along training (as demo.dino_loss_at_end, for the whole log).

    DINOv2 logs the median of the last 20 iterations every 10; "last quarter" = records at iterations ≥ 3/4 of
    `iterations` (the last record when the log is shorter than that)."""
    records = [json.loads(line) for line in (run_dir / "training_metrics.json").read_text().splitlines()
               if line.strip()]
    records = [r for r in records if "dino_local_crops_loss" in r and "dino_global_crops_loss" in r]
    uniform = math.log(n_prototypes)
    if not records:
        return {}
    ratio = {int(r["iteration"]): (r["dino_local_crops_loss"] + r["dino_global_crops_loss"]) / uniform
             for r in records}
    last_it = max(ratio)
    quarter = [v for it, v in ratio.items() if it >= 0.75 * iterations] or [ratio[last_it]]
    low_it = min(ratio, key=ratio.get)
    return {
        "dino_ratio_end": ratio[last_it],
        "dino_ratio_last_quarter_max": max(quarter),
        "dino_ratio_last_quarter_mean": sum(quarter) / len(quarter),
        "dino_ratio_min": ratio[low_it],
        "dino_ratio_min_iteration": low_it,
        "dino_ratio": {str(k): round(v, 4) for k, v in sorted(ratio.items())},
        "dino_uniform": uniform,
    }


# --- scoring ----------------------------------------------------------------------------------------------------

def probe_args(args) -> argparse.Namespace:
    return argparse.Namespace(eval_images=args.eval_images, class_images=args.class_images,
                              probe_epochs=args.probe_epochs, features=args.features, dense=False, fill_free=False)


def global_probes(name: str, backbone, size: int, args, run_dir: Path | None = None) -> dict:
    """The demo's probes: R² tasks, k-NN and linear on held-out built-in images (probe seed 0 for every run)."""
    from dinov2_eqcoh.experiments.demo import probe_backbone

    out = probe_backbone(name, backbone, size, probe_args(args))
    return {"r2": out["r2"], "knn_top1": out["knn_top1"], "linear_top1": out["linear_top1"],
            "blur_sigma_definition": out["equivariance"].get("blur_sigma_definition")}


def dense_group(name: str, backbone, size: int, args, run_dir: Path | None = None) -> dict:
    """The dense probes (homography MCE, label-propagation J&F, segmentation mIoU) at DENSE_SIZE px, built-in data."""
    from dinov2_eqcoh.eval.dense import DEFAULT_SIZE, dense_probes, headline

    return {"dense": headline(dense_probes(backbone, size=DEFAULT_SIZE, seed=0, scale=args.dense_scale))}


def fill_free_group(name: str, backbone, size: int, args, run_dir: Path | None = None) -> dict:
    """R² of rot, trans, se2 without the fill (`experiments.demo.fill_free_r2`; issue 21, docs/fill_leak)."""
    from dinov2_eqcoh.experiments.demo import fill_free_r2

    return fill_free_r2(name, backbone, size, probe_args(args))


def reconstruction_group(name: str, backbone, size: int, args, run_dir: Path | None = None) -> dict:
    """The decoders' diagnostics (`eval.reconstruction.diagnose`: each D_k's MSE against copy v2 and v2 pooled to the
    token grid, where it lands on the path, the gradient ratio) on the final student of a run trained with λ > 0,
    DIAGNOSTIC_IMAGES fresh built-in images, and the first iteration from which the training logs meet issue 29's
    target to the end (`acting_since`). Runs without decoders (λ 0) and the references have none: nothing."""
    from dinov2_eqcoh.method.config import load_config

    if run_dir is None or float(load_config(run_dir / "config.yaml").eqcoh.loss_weight) <= 0:
        return {}
    from dinov2_eqcoh.eval.reconstruction import acting_since, diagnose, training_records

    report = diagnose(run_dir / "model_final.rank_0.pth", n=DIAGNOSTIC_IMAGES)
    return {"reconstruction": {**report, "acting_since": acting_since(training_records(run_dir))}}


PROBE_GROUPS = {"global": global_probes, "dense": dense_group, "fill_free": fill_free_group,
                "reconstruction": reconstruction_group}
DIAGNOSTIC_IMAGES = 256


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


# --- summary ----------------------------------------------------------------------------------------------------

def summarise(scores: dict[str, dict[int, dict]]) -> dict:
    """Per model and metric: the per-seed values and their interval; paired differences by seed."""
    per_model = {}
    for model, by_seed in scores.items():
        per_model[model] = {}
        for key in METRICS:
            values = {s: get_metric(sc, key) for s, sc in sorted(by_seed.items())}
            values = {s: v for s, v in values.items() if v is not None}
            if values:
                per_model[model][key] = {"per_seed": {str(s): v for s, v in values.items()},
                                         **interval(list(values.values()))}
    paired = {}
    for a, b in COMPARISONS:
        if a not in scores or b not in scores:
            continue
        seeds = sorted(set(scores[a]) & set(scores[b]))
        comp = {}
        for key in METRICS:
            diffs = {s: get_metric(scores[a][s], key) - get_metric(scores[b][s], key) for s in seeds
                     if get_metric(scores[a][s], key) is not None and get_metric(scores[b][s], key) is not None}
            if diffs:
                iv = interval(list(diffs.values()))
                lo, hi = iv["ci95"]
                comp[key] = {"per_seed": {str(s): d for s, d in diffs.items()}, **iv,
                             "significant": bool(len(diffs) > 1 and (lo > 0 or hi < 0)),
                             "positive_seeds": sum(d > 0 for d in diffs.values())}
        paired[f"{a} - {b}"] = comp
    return {"per_model": per_model, "paired": paired}


def fmt(key: str, v: float) -> str:
    return f"{100 * v:.1f}" if key in ("knn_top1", "linear_top1") else f"{v:.3f}"


def fmt_iv(key: str, iv: dict, signed: bool = False) -> str:
    scale = 100 if key in ("knn_top1", "linear_top1") else 1
    digits = 1 if scale == 100 else 3
    mean, half = scale * iv["mean"], scale * iv["half_width"]
    sign = "+" if signed else ""
    if math.isnan(half):
        return f"{mean:{sign}.{digits}f}"
    return f"{mean:{sign}.{digits}f} ± {half:.{digits}f}"


def model_table(s: dict, models: list[str], keys: list[str]) -> list[str]:
    """Markdown rows: per model, n and mean ± 95 % half-width of each metric."""
    lines = ["| model | n | " + " | ".join(METRICS[k] for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for m in models:
        pm = s["per_model"][m]
        n = max((pm[k]["n"] for k in pm), default=0)
        lines.append(f"| {m} | {n} | " + " | ".join(fmt_iv(k, pm[k]) if k in pm else "–" for k in keys) + " |")
    return lines


def paired_table(s: dict, comps: list[str], keys: list[str]) -> list[str]:
    """Markdown rows: per comparison a − b, the paired mean ± 95 % half-width (bold: excludes 0) and the seeds with a
    positive difference."""
    keys = [k for k in keys if not k.startswith("dino")]
    lines = ["| a − b | " + " | ".join(METRICS[k] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for comp in comps:
        per = s["paired"][comp]
        cells = []
        for k in keys:
            if k not in per:
                cells.append("–")
                continue
            text = f"{fmt_iv(k, per[k], signed=True)} ({per[k]['positive_seeds']}/{per[k]['n']})"
            cells.append(f"**{text}**" if per[k]["significant"] else text)
        lines.append(f"| {comp} | " + " | ".join(cells) + " |")
    return lines


def write_report(study: dict, output_dir: Path) -> None:
    s = study["summary"]
    models = [m for m in ("raw_pixels", "untrained", *MODELS) if m in s["per_model"]]
    keys = [k for k in METRICS if any(k in s["per_model"][m] for m in models)]
    head_keys = [k for k in HEADLINE_TABLE if k in keys]
    head_comps = [c for c in HEADLINE_COMPARISONS if c in s["paired"]]
    lines = [
        "# dinov2-eqcoh study: training seeds × models",
        "",
        f"Command: `{study['command']}`  ",
        f"Config: `{study['identity']['config_file']}` (sha256 {study['identity']['config_sha256'][:12]}), overrides "
        f"`{' '.join(study['identity']['opts']) or '(none)'}`, budget {study['identity']['budget']} "
        f"({study['iterations']} iterations per run). Machine: {study['machine']}. Seeds: "
        f"{', '.join(map(str, study['seeds']))}. Runs finished: {study['runs_finished']} of {study['runs_planned']}.",
        "",
        "Headline (a subset of the tables below; k-NN and linear in %; mean over training seeds ± 95 % half-width; "
        "paired by seed, **bold** = the interval excludes 0, in brackets the seeds with a positive difference):",
        "",
        *model_table(s, models, head_keys),
        "",
        *paired_table(s, head_comps, head_keys),
        "",
        "Mean over training seeds ± half-width of the 95 % t-interval of the mean (k-NN and linear in %):",
        "",
        *model_table(s, models, keys),
        "",
        "Paired differences (a − b, paired by training seed; ± half-width of the 95 % t-interval; "
        "**bold** = the interval excludes 0; in brackets: seeds with a positive difference):",
        "",
        *paired_table(s, list(s["paired"]), keys),
    ]
    lines += reconstruction_section(study)
    blur = next((sc.get("blur_sigma_definition") for by in study["scores"].values() for sc in by.values()
                 if sc.get("blur_sigma_definition")), None)
    lines += [
        "",
        "Probes (as `make demo`): the frozen teacher backbone of each run's final checkpoint; R²: an MLP probe "
        f"(2d → 1024 → 1024 → dim θ, early-stopped) fitted on 2/3 and scored on 1/3 of {study['identity']['eval_images']} "
        "held-out built-in images (seed 1), the same images and θ draws for every run; mean R² over rot, color, "
        f"blur, trans as in the paper. Blur: {blur or 'n/a'}. k-NN (k 20) and linear probe on the CLS token of "
        f"{study['identity']['class_images']} held-out images (10 classes, chance 10 %). `untrained`: a randomly "
        "initialised backbone of the same architecture, seeded as DINOv2 seeds a run of that training seed; "
        "`raw_pixels`: the pixels as features (CLS = the image flattened, patch tokens = each patch's pixels), "
        "probed once. DINO "
        "loss / ln K: DINOv2's cross-view (invariance) term over its uniform-solution value (1 = nothing learned); "
        "'last-quarter max' is its largest logged value over the last quarter of training.",
        "",
        *dense_paragraph(study),
        "Every per-seed figure is in `study.json` (`scores`, and `summary.per_model.*.per_seed`).",
        "",
        "![study](study.png)",
    ]
    (output_dir / "study.md").write_text("\n".join(lines) + "\n")


def reconstruction_section(study: dict) -> list[str]:
    """The decoders' diagnostics of every run trained with λ > 0 (`reconstruction_group`): per model and k, the mean
    over seeds ± the 95 % half-width, and in how many seeds the mechanism acts (issue 29's target)."""
    runs = {m: {s: sc["reconstruction"] for s, sc in by.items() if sc.get("reconstruction")}
            for m, by in study["scores"].items()}
    runs = {m: by for m, by in runs.items() if by}
    if not runs:
        return []

    def cell(values: list[float], digits: int = 3) -> str:
        iv = interval(values)
        return f"{iv['mean']:.{digits}f}" + ("" if math.isnan(iv["half_width"]) else f" ± {iv['half_width']:.{digits}f}")

    lines = ["", f"The decoders' diagnostics (`eval.reconstruction` on each final student, {DIAGNOSTIC_IMAGES} fresh "
             "built-in images rendered as in training; mean over training seeds ± 95 % half-width; MSE in normalised "
             "pixels): D_k acts when it is below both θ-blind predictors (copy v2; v2 pooled to the token grid) and "
             "lands within 1/6 of k/(K+1) on the path g_{fθ}(u); 'acts' counts the seeds where every D_k of the run "
             "does; 'acting from' is the first logged training iteration from which the target holds to the end "
             "(– : not at the end).", "",
             "| model | n | k | D_k MSE | copy v2 | pooled v2 | lands at f | target f | acts | acting from | "
             "gradient ratio recon / SSL |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, by in runs.items():
        seeds = sorted(by)
        for k in range(1, by[seeds[0]]["K"] + 1):
            rows = [by[s]["per_k"][k - 1] for s in seeds]
            ratios = [by[s]["grad_ratio"] for s in seeds if by[s].get("grad_ratio") is not None]
            since = ", ".join(str(by[s]["acting_since"]) if by[s].get("acting_since") is not None else "–"
                              for s in seeds)
            lines.append(
                f"| {m} | {len(seeds)} | {k} | " + " | ".join(cell([r[key] for r in rows])
                                                          for key in ("mse", "copy_v2", "pooled_v2"))
                + f" | {cell([r['path_position'] for r in rows], 2)} | {rows[0]['target_position']:.2f} | "
                f"{sum(bool(by[s]['acts']) for s in seeds)}/{len(seeds)} | {since} | "
                + (cell(ratios) if ratios else "n/a") + " |")
    return lines


def dense_paragraph(study: dict) -> list[str]:
    """How the dense rows were made (only when a score has them)."""
    from dinov2_eqcoh.eval.dense import describe

    dense = next((sc["dense"] for by in study["scores"].values() for sc in by.values() if "dense" in sc), None)
    if dense is None:
        return []
    return [f"Dense probes (`dinov2_eqcoh.eval.dense.dense_probes`, docs/dense_probes.md), the same for every run "
            f"(probe seed 0) on the final teacher: {describe(dense)}.", ""]


def plot_study(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = study["summary"]
    keys = [k for k in ("r2.rot", "r2.mean", "r2_fill_free.trans", "r2_fill_free.se2", "r2.blur", "knn_top1",
                        "linear_top1", "dense.mce", "dense.jf_mean", "dense.miou")
            if any(k in pm for pm in s["per_model"].values())]
    if not keys:  # nothing probed yet (e.g. only the decoders' diagnostics): no picture
        return
    models = [m for m in ("raw_pixels", "untrained", *MODELS) if m in s["per_model"]]
    comps = [c for c in s["paired"] if "untrained" not in c]
    fig, axes = plt.subplots(2, len(keys), figsize=(3.1 * len(keys), 6.4), squeeze=False)
    colors = {"raw_pixels": "0.3", "untrained": "0.6", "dinov2": "C0", "dinov2_aug": "C1", "eqcoh": "C2", "eqcoh_k1": "C3",
              "eqcoh_head_only": "C4", "dinov2_aug_fill_free": "C5", "eqcoh_fill_free": "C6"}
    for j, k in enumerate(keys):
        ax = axes[0, j]
        for i, m in enumerate(models):
            if k not in s["per_model"][m]:
                continue
            iv = s["per_model"][m][k]
            pts = list(iv["per_seed"].values())
            ax.scatter([i + 0.12 * (t - (len(pts) - 1) / 2) for t in range(len(pts))], pts, s=12,
                       color=colors.get(m, "k"), alpha=0.7)
            if iv["n"] > 1:
                ax.errorbar(i + 0.32, iv["mean"], yerr=iv["half_width"], fmt="o", color="k", ms=3, capsize=3)
        ax.set_xticks(range(len(models)), models, rotation=40, ha="right", fontsize=7)
        ax.set_title(METRICS[k], fontsize=9)
        ax = axes[1, j]
        for i, c in enumerate(comps):
            per = s["paired"][c].get(k)
            if not per:
                continue
            pts = list(per["per_seed"].values())
            ax.scatter([i + 0.1 * (t - (len(pts) - 1) / 2) for t in range(len(pts))], pts, s=12, color="C7")
            if per["n"] > 1:
                ax.errorbar(i + 0.3, per["mean"], yerr=per["half_width"], fmt="o", ms=3, capsize=3,
                            color="C3" if per["significant"] else "k")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xticks(range(len(comps)), comps, rotation=40, ha="right", fontsize=7)
        ax.set_title(f"Δ {METRICS[k]} (paired)", fontsize=9)
    fig.suptitle(f"{study['title']}: per-seed points, mean ± 95 % interval (black; red = interval excludes 0)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
                        "reconstruction (the decoders' diagnostics of runs trained with λ > 0); a group added later is "
                        "scored on the finished runs only")
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
