# SPDX-License-Identifier: Apache-2.0
"""The study's report: per-model intervals and paired differences over training seeds (`summarise`), the markdown
report with its headline table (`write_report`) and the picture (`plot_study`)."""

from __future__ import annotations

import math
from pathlib import Path

from dinov2_eqcoh.experiments.probes import DIAGNOSTIC_IMAGES
from dinov2_eqcoh.experiments.registry import MODELS
from dinov2_eqcoh.experiments.stats import get_metric, interval

# (metric key in a score record, label); R² tasks as in the demo, mean over the paper's four
METRICS = {
    "r2.rot": "R²(rot)", "r2.color": "R²(color)", "r2.blur": "R²(blur)", "r2.trans": "R²(trans)",
    "r2.se2": "R²(se2)", "r2.mean": "mean R²", "r2_fill_free.rot": "R²(rot) fill-free",
    "r2_fill_free.trans": "R²(trans) fill-free", "r2_fill_free.se2": "R²(se2) fill-free", "knn_top1": "k-NN top-1", "linear_top1": "linear top-1",
    "dense.mce": "homography MCE (px, lower better)", "dense.jf_mean": "propagation J&F", "dense.miou": "segmentation mIoU",
    "frozen_reconstruction.mse_ratio": "frozen recon. MSE / mean image (lower better)",
    "frozen_reconstruction.k1_path": "frozen recon. D_1 path (target 1/3)",
    "dino_ratio_end": "DINO loss / ln K (end)", "dino_ratio_last_quarter_max": "DINO / ln K, last-quarter max",
}
HEADLINE = ("r2.rot", "r2.mean", "knn_top1")
# the report's (and the README's) first table: the paper's R²(rot) and mean R², the fill-free geometry (docs/fill_leak),
# k-NN, linear and the geometric dense probe; the comparisons that separate L_recon from the head split, and what training does at all
HEADLINE_TABLE = ("r2.rot", "r2.mean", "r2_fill_free.trans", "r2_fill_free.se2", "knn_top1", "linear_top1", "dense.mce")
HEADLINE_COMPARISONS = ("eqcoh - dinov2_aug", "eqcoh - eqcoh_head_only", "eqcoh - eqcoh_k1", "dinov2 - untrained",
                        "dinov2_aug_fill_free - dinov2_aug", "eqcoh_fill_free - eqcoh")
# (a, b): a − b paired by seed
COMPARISONS = (("eqcoh", "dinov2"), ("eqcoh", "dinov2_aug"), ("eqcoh", "eqcoh_k1"), ("eqcoh", "eqcoh_head_only"),
               ("dinov2_aug", "dinov2"), ("dinov2", "untrained"), ("eqcoh", "untrained"),
               ("dinov2_aug_fill_free", "dinov2_aug"), ("eqcoh_fill_free", "eqcoh"),
               ("eqcoh_fill_free", "dinov2_aug_fill_free"))
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
    over seeds ± the 95 % half-width, and in how many seeds the mechanism acts (the mechanism criteria)."""
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
