# SPDX-License-Identifier: Apache-2.0
"""The regime search: where do the decoders act? One command, resumable, chosen on the
decoders' diagnostics only (never on R², k-NN or dense probe scores).

Trains each candidate (the demo recipe plus overrides: decoder width, masked or unmasked z_equi, budget) through
DINOv2's own loop, then diagnoses its final student (`dinov2_eqcoh.eval.reconstruction.diagnose`, 256 fresh
images) and reads from its training logs the first iteration from which the target holds. Writes `regime.json`
(every figure) and `regime.md` (the table) after each candidate. Rerunning the same command skips finished
candidates (their diagnostics JSON is there) and resumes an interrupted one (DINOv2 resumes its checkpoint).

    python -m dinov2_eqcoh.experiments.regime [--output-dir out/regime] [--candidates a,b,...] [--list]

Target (the mechanism criteria): every D_k below copy v2 and below v2 pooled to the token grid, landing within 1/6 of k/(K+1).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from dinov2_eqcoh.experiments.runner import logged_train_seconds

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/demo/eqcoh_demo.yaml"  # 50 iterations per "epoch"
# name -> (overrides over the demo config, what it tests); cheapest first within a width
CANDIDATES: dict[str, tuple[list[str], str]] = {
    "w256_masked_400": (["eqcoh.decoder.dim=256", "optim.epochs=8"],
                        "the paper's decoder width, z_equi of the iBOT-masked pass (no extra forward), 400 iterations"),
    "w256_unmasked_400": (["eqcoh.decoder.dim=256", "eqcoh.extra_unmasked_pass=true", "optim.epochs=8"],
                          "width 256, unmasked z_equi (one extra student forward), 400 iterations"),
    "w256_masked_800": (["eqcoh.decoder.dim=256", "optim.epochs=16"], "width 256, masked z_equi, 800 iterations"),
    "w256_unmasked_800": (["eqcoh.decoder.dim=256", "eqcoh.extra_unmasked_pass=true", "optim.epochs=16"],
                          "width 256, unmasked z_equi, 800 iterations (MECHANISM_NOTES.md run C4)"),
    "w64_masked_200": ([], "the demo as shipped (width 64, masked, 200 iterations): the reference"),
}


def train(name: str, out: Path, config: str = CONFIG) -> float:
    """One candidate through DINOv2's loop (resumes its folder); returns the wall seconds of this call."""
    from dinov2_eqcoh.experiments.runner import run_training, train_command

    overrides, _ = CANDIDATES[name]
    cmd = train_command(config, out / name, [*overrides, "evaluation.eval_period_iterations=0"])
    print(f"[regime] training {name}: {shlex.join(cmd[1:])}", flush=True)
    return run_training("[regime]", name, cmd, out / f"{name}.train.log", append=True)


def planned_iterations(run_dir: Path) -> int:
    """optim.epochs × train.OFFICIAL_EPOCH_LENGTH of the run's config (a finished run resumed saves again)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    return int(cfg.optim.epochs) * int(cfg.train.OFFICIAL_EPOCH_LENGTH)


def row(name: str, d: dict) -> str:
    k = d["per_k"]

    def pair(key: str, f: str = ".3f") -> str:
        return " / ".join(format(r[key], f) for r in k)

    since = d.get("acting_since")
    return (f"| {name} | `{' '.join(CANDIDATES[name][0]) or '(demo)'}` | {d['iterations']} | {d['train_seconds']:.0f} "
            f"| {pair('mse')} | {pair('copy_v2')} | {pair('pooled_v2')} | {pair('grid_floor')} | {pair('shuffled_v1')} "
            f"| {pair('path_position', '.2f')} | {d['grad_ratio']:.3f} | {'yes' if d['acts'] else 'no'} "
            f"| {since if since is not None else '–'} |")


def write_outputs(out: Path, results: dict, config: str = CONFIG) -> None:
    (out / "regime.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Regime search: the decoders' diagnostics per candidate", "",
             f"Command: `python -m dinov2_eqcoh.experiments.regime --output-dir {out}`; config `{config}` plus the "
             "overrides; final student on 256 fresh images; single runs (one training seed).", "",
             "| run | overrides | iterations | train s | D_k MSE | copy v2 | pooled v2 | grid floor | shuffled v1 "
             "| lands at f | grad ratio | acts | acting since |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [row(n, d) for n, d in results.items()]
    (out / "regime.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser("python -m dinov2_eqcoh.experiments.regime", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="out/regime", help="runs, regime.json, regime.md (default out/regime)")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help=f"subset of {','.join(CANDIDATES)}")
    p.add_argument("--config-file", default=CONFIG, help=f"the recipe the overrides apply to (default {CONFIG})")
    p.add_argument("--list", action="store_true", help="print the candidates and exit")
    args = p.parse_args(argv)
    if args.list:
        for name, (overrides, what) in CANDIDATES.items():
            print(f"{name}: {what}\n    {' '.join(overrides) or '(the demo config as shipped)'}")
        return 0
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        print(f"error: --candidates: unknown {', '.join(unknown)}; allowed: {', '.join(CANDIDATES)}", file=sys.stderr)
        return 2
    from dinov2_eqcoh.eval.reconstruction import acting_since, diagnose, plot_training_diagnostics, training_records

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((out / "regime.json").read_text()) if (out / "regime.json").is_file() else {}
    for name in names:
        if name in results:
            print(f"[regime] {name}: done ({out / name}), skipped", flush=True)
            continue
        wall = train(name, out, args.config_file)
        # DINOv2's logged total over every segment (a resumed or finished folder), else this call's wall time
        seconds = logged_train_seconds(out / name) or wall
        d = diagnose(out / name / "model_final.rank_0.pth")
        records = training_records(out / name)
        d |= {"train_seconds": seconds, "iterations": planned_iterations(out / name),
              "acting_since": acting_since(records),
              "overrides": CANDIDATES[name][0], "what": CANDIDATES[name][1]}
        plot_training_diagnostics(records, out / name / "training_diagnostics.png", f"{name}: logged in training")
        results[name] = d
        write_outputs(out, results, args.config_file)
        lands = ", ".join(format(r["path_position"], ".2f") for r in d["per_k"])
        print(f"[regime] {name}: acts {d['acts']}, lands at {lands}", flush=True)
    write_outputs(out, results, args.config_file)
    print(f"[regime] wrote {out / 'regime.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
