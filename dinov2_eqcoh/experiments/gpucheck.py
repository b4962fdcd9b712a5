# SPDX-License-Identifier: Apache-2.0
"""One-shot check of a machine, ready before a GPU appears: `python -m dinov2_eqcoh.experiments.gpucheck --output-dir D`.

On a GPU (about 5 of its 8 minutes budget on one H200-class GPU; `--budget-s`):

1. **Training through DINOv2's loop** (`python -m dinov2_eqcoh.train`, i.e. `dinov2.train.train.main`: FSDP wrapping,
   the mixed precision of the paper config `configs/train/vitl16_in1k_ep100_eqcoh_se2.yaml`, which is DINOv2's
   default compute precision: fp16 parameters, fp16 gradient scaler), ViT-L/16 at 224 px, batch 32 (the paper's
   per-GPU batch), EqCoh λ 1, K 2, SE(2), d_patch 2048 / d_equi 512, on the built-in `Synthetic` dataset: 4
   iterations that end in `model_final` and a teacher checkpoint, then a second start in the same folder with two
   more epochs that must resume from iteration 4 and run to 8. Once with xFormers when it is installed, and once
   without it (`XFORMERS_DISABLED=1`: DINOv2's attention falls back to torch's SDPA). Each run is a fresh process.
   Checked: exit status, `Starting training from iteration 0` then `4`, finite losses in every logged record (and
   DINOv2's patched loop stops on any non-finite loss, patches/0006), `model_final.rank_0.pth`, `last_checkpoint.rank_0`,
   `eval/training_3/` and `eval/training_7/teacher_checkpoint.pth` (loaded back, `teacher` key), seconds per iteration.
2. **The bench's vitl16 preset** (`python -m dinov2_eqcoh.experiments.bench --preset vitl16 --device cuda`): step time,
   peak memory and augmentation ratios, counted FLOPs.

On a CPU (or `--preset tiny`) the same with the tiny config (`configs/tiny/eqcoh_cpu.yaml`) and the bench's tiny
preset at a few iterations; the test suite runs it that way (tests/test_gpucheck.py).

Output: `D/gpucheck.json` with the hardware (GPU, driver, CUDA, cuDNN, torch, xFormers, CPU, memory), every
command, every check and every figure (the bench report is embedded), and `D/runs/<variant>/` with the runs' logs.
The checkpoints (about 5 GB each for ViT-L) are deleted at the end unless `--keep-checkpoints`; their sizes are in the
JSON. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]
STARTED = re.compile(r"Starting training from iteration (\d+)")
PER_ITER = re.compile(r"Training Total time: \S+ \(([0-9.]+) s / it\)")

# the runs: first start (iterations 0..3, model_final + teacher at 3), then a resume to iteration 7
ITERS_PER_EPOCH = 4  # train.OFFICIAL_EPOCH_LENGTH; DINOv2 checkpoints every 3 epochs: only model_final is written
FIRST_EPOCHS, RESUMED_EPOCHS = 1, 2
COMMON_OPTS = (
    f"train.OFFICIAL_EPOCH_LENGTH={ITERS_PER_EPOCH}",
    f"evaluation.eval_period_iterations={ITERS_PER_EPOCH}",
    "optim.warmup_epochs=0",  # the paper's 10 warm-up epochs do not fit in 2 epochs (DINOv2's schedules assert)
    "teacher.warmup_teacher_temp_epochs=0",
    "optim.freeze_last_layer_epochs=0",
)
PRESETS: dict[str, dict[str, Any]] = {
    "vitl16": {
        "config": "configs/train/vitl16_in1k_ep100_eqcoh_se2.yaml",  # its compute precision is the paper's
        "opts": ("train.dataset_path=Synthetic:n=1024:size=256:classes=10:seed=0", "train.batch_size_per_gpu=32"),
        "bench": ("--preset", "vitl16"),  # the preset's defaults: batch 32, 3 warm-up + 20 timed steps
        "workers": None,  # min(10, cores - 2)
    },
    "tiny": {
        "config": "configs/tiny/eqcoh_cpu.yaml",
        "opts": (),
        "bench": ("--preset", "tiny", "--iters", "2", "--warmup", "1", "--aug-rounds", "2", "--memory-iters", "1"),
        "workers": 0,
    },
}


def log(msg: str) -> None:
    print(f"[gpucheck {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- hardware


def _run_text(cmd: Sequence[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def xformers_version() -> str | None:
    """The installed xFormers' version, if `xformers.ops` imports (in a child: a broken build must not stop us)."""
    out = _run_text([sys.executable, "-c", "import xformers, xformers.ops; print(xformers.__version__)"])
    return out.splitlines()[-1] if out else None


def hardware(device: str) -> dict[str, Any]:
    """What this ran on: GPU(s), driver, CUDA, cuDNN, torch, xFormers, CPU, memory, DINOv2 pin."""
    import torch

    from dinov2_eqcoh import _upstream

    lscpu = _run_text(["lscpu"]) or ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), None)
    mem_kib = next(
        (int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal:")), 0
    ) if Path("/proc/meminfo").exists() else 0
    info: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "xformers": xformers_version(),
        "python": platform.python_version(),
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "dinov2": _upstream.pin(),
        "loadavg": Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else None,
    }
    if device == "cuda":
        info["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
            }
            for i in range(torch.cuda.device_count())
        ]
        info["nvidia_smi"] = _run_text(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm", "--format=csv"]
        )
    return info


# ---------------------------------------------------------------------------------------------- training runs


class Budget:
    """Wall-clock budget of the whole check: each child gets what is left."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def run_child(cmd: list[str], log_file: Path, budget: Budget, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `cmd` with stdout + stderr into `log_file`; returns the command, exit status, seconds, timed_out."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    timeout = max(1.0, budget.left())
    with log_file.open("w") as out:
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=timeout).returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
    return {"command": shlex.join(cmd), "returncode": rc, "seconds": round(time.monotonic() - t0, 1),
            "timed_out": timed_out, "log": str(log_file)}


def _records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "training_metrics.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _loss_keys(record: dict[str, Any]) -> list[str]:
    return [k for k in record if k.endswith("_loss")]


def check_teacher(path: Path) -> str | None:
    """None if `path` loads as DINOv2's teacher dump ({"teacher": state dict}), else what is wrong."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return f"{type(e).__name__}: {e}"
    if not isinstance(data, dict) or "teacher" not in data or not data["teacher"]:
        return f"no 'teacher' state dict (keys: {list(data) if isinstance(data, dict) else type(data).__name__})"
    return None


def training_variant(name: str, preset: dict[str, Any], out: Path, budget: Budget, xformers: bool) -> dict[str, Any]:
    """First start + resume of one variant; returns its commands, figures and checks."""
    run_dir = out / "runs" / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    env = dict(os.environ)
    if not xformers:
        env["XFORMERS_DISABLED"] = "1"  # DINOv2's layers read it at import: attention through torch's SDPA
    workers = preset["workers"]
    if workers is None:
        workers = max(1, min(10, (os.cpu_count() or 4) - 2))
    base = [
        sys.executable, "-m", "dinov2_eqcoh.train", "--config-file", str(REPO / preset["config"]),
        "--output-dir", str(run_dir), *COMMON_OPTS, *preset["opts"], f"train.num_workers={workers}",
    ]
    result: dict[str, Any] = {"xformers": xformers, "output_dir": str(run_dir)}
    checks: list[dict[str, Any]] = []

    def check(what: str, ok: bool, detail: Any = None) -> bool:
        checks.append({"check": f"{name}: {what}", "ok": bool(ok), "detail": detail})
        log(f"{name}: {what}: {'ok' if ok else 'FAILED'}{f' ({detail})' if detail is not None and not ok else ''}")
        return ok

    for stage, epochs in (("first", FIRST_EPOCHS), ("resume", RESUMED_EPOCHS)):
        log(f"{name}: {stage} start, optim.epochs={epochs} ({epochs * ITERS_PER_EPOCH} iterations in all)")
        child = run_child([*base, f"optim.epochs={epochs}"], run_dir / f"{stage}.log", budget, env)
        result[stage] = child
        if not check(f"{stage} start exits 0", child["returncode"] == 0,
                     f"exit {child['returncode']}, timed out {child['timed_out']}, see {child['log']}"):
            break
    text = (run_dir / "logs" / "log.txt").read_text(errors="replace") if (run_dir / "logs" / "log.txt").exists() else ""
    starts = [int(n) for n in STARTED.findall(text)]
    result["start_iterations"] = starts
    check("starts at iteration 0, resumes at 4", starts == [0, FIRST_EPOCHS * ITERS_PER_EPOCH], starts)
    records = _records(run_dir)
    result["records"] = records
    losses = {r["iteration"]: {k: r[k] for k in _loss_keys(r)} for r in records}
    result["losses"] = losses
    finite = bool(losses) and all(math.isfinite(v) for d in losses.values() for v in d.values())
    check("finite losses in every logged record", finite, losses)
    check("eqcoh_recon_loss logged", bool(losses) and all("eqcoh_recon_loss" in d for d in losses.values()))
    last = RESUMED_EPOCHS * ITERS_PER_EPOCH - 1
    check("reached the last iteration", last in losses, sorted(losses))
    result["seconds_per_iteration"] = [float(x) for x in PER_ITER.findall(text)]
    result["iter_time_s"] = {r["iteration"]: r.get("iter_time") for r in records}
    files = {p.name: p.stat().st_size for p in sorted(run_dir.glob("model_*.pth"))}
    result["checkpoint_bytes"] = files
    check("model_final.rank_0.pth and last_checkpoint.rank_0 written",
          "model_final.rank_0.pth" in files and (run_dir / "last_checkpoint.rank_0").is_file(), files)
    for it in (FIRST_EPOCHS * ITERS_PER_EPOCH - 1, last):
        teacher = run_dir / "eval" / f"training_{it}" / "teacher_checkpoint.pth"
        problem = check_teacher(teacher) if teacher.is_file() else "missing"
        check(f"teacher checkpoint of iteration {it} loads", problem is None, problem)
    config = run_dir / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(config)
        result["compute_precision"] = OmegaConf.to_container(cfg.compute_precision)
        result["arch"] = {"arch": cfg.student.arch, "patch_size": cfg.student.patch_size,
                          "global_crops_size": cfg.crops.global_crops_size, "batch_size_per_gpu": cfg.train.batch_size_per_gpu}
    first_log = (run_dir / "first.log").read_text(errors="replace") if (run_dir / "first.log").exists() else ""
    # DINOv2's attention layer says at import which attention it uses
    attention = re.search(r"xFormers is (available|disabled|not available) \(Attention\)", first_log)
    result["attention"] = {"available": "xformers", "disabled": "sdpa (XFORMERS_DISABLED)",
                           "not available": "sdpa (no xFormers)"}.get(attention.group(1)) if attention else None
    check("attention as intended", (result["attention"] == "xformers") == xformers and attention is not None,
          result["attention"])
    result["checks"] = checks
    return result


def remove_checkpoints(out: Path) -> list[str]:
    removed = []
    for p in sorted((out / "runs").glob("*/model_*.pth")) + sorted((out / "runs").glob("*/eval/*/teacher_checkpoint.pth")):
        p.unlink()
        removed.append(str(p))
    return removed


# ---------------------------------------------------------------------------------------------- main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "python -m dinov2_eqcoh.experiments.gpucheck",
        description="One-shot check: EqCoh training through DINOv2's loop (FSDP, mixed precision, with and without "
        "xFormers), checkpoint, resume, then the bench; one JSON with the hardware and every figure.",
    )
    parser.add_argument("--output-dir", required=True, help="folder for gpucheck.json, the runs and the bench JSON")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="auto: cuda if available")
    parser.add_argument("--preset", default="auto", choices=("auto", *PRESETS),
                        help="auto: vitl16 on cuda, tiny on cpu")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole check (480)")
    parser.add_argument("--skip-bench", action="store_true", help="training checks only")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep the runs' checkpoints (GBs for ViT-L)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    import torch

    t0 = time.monotonic()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    preset_name = args.preset if args.preset != "auto" else ("vitl16" if device == "cuda" else "tiny")
    preset = PRESETS[preset_name]
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    report: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, "-m", "dinov2_eqcoh.experiments.gpucheck",
                               *(sys.argv[1:] if argv is None else argv)]),
        "preset": preset_name,
        "config": preset["config"],
        "config_opts": [*COMMON_OPTS, *preset["opts"]],
        "budget_s": args.budget_s,
        "hardware": hardware(device),
    }
    log(f"device {device}, preset {preset_name}, budget {args.budget_s:.0f} s; "
        f"xFormers {report['hardware']['xformers'] or 'not installed'}")
    variants = []
    if device == "cuda" and report["hardware"]["xformers"]:
        variants.append(("xformers", True))
    variants.append(("sdpa", False))  # without xFormers (always; on a CPU the only one)
    report["training"] = {}
    for name, with_xformers in variants:
        report["training"][name] = training_variant(name, preset, out, budget, with_xformers)
    if device == "cuda" and not report["hardware"]["xformers"]:
        report["training_skipped"] = {"xformers": "xFormers is not installed (pip install -e '.[xformers]')"}
    checks = [c for v in report["training"].values() for c in v.pop("checks")]

    if not args.skip_bench:
        bench_json = out / f"bench_{preset_name}_{device}.json"
        cmd = [sys.executable, "-m", "dinov2_eqcoh.experiments.bench", *preset["bench"], "--device", device,
               "--output", str(bench_json)]
        if device == "cpu":
            cmd += ["--threads", "1"]
        log(f"bench: {shlex.join(cmd[1:])}")
        child = run_child(cmd, out / "bench.log", budget)
        report["bench_run"] = child
        ok = child["returncode"] == 0 and bench_json.is_file()
        checks.append({"check": "bench exits 0 and writes its JSON", "ok": ok, "detail": child})
        if ok:
            bench = json.loads(bench_json.read_text())
            report["bench"] = bench
            figures = {
                "step_time_ratio": bench.get("step_time", {}).get("ratio_of_medians"),
                "step_time_paired_ratio": bench.get("step_time", {}).get("paired_ratio_median"),
                "step_median_s": {m: bench.get("step_time", {}).get(m, {}).get("median_s") for m in ("dinov2", "eqcoh")},
                "memory_ratio": bench.get("memory", {}).get("ratio"),
                "peak_memory_mib": {m: bench.get("memory", {}).get(m, {}).get("peak_bytes", 0) / 2**20
                                    for m in ("dinov2", "eqcoh")},
                "augmentation_ratio": bench.get("augmentation", {}).get("ratio"),
                "flop_ratio": bench.get("flops", {}).get("ratio"),
            }
            report["bench_figures"] = figures
            log(f"bench: {json.dumps(figures)}")
    if not args.keep_checkpoints:
        report["removed_checkpoints"] = remove_checkpoints(out)
    report["checks"] = checks
    report["ok"] = bool(checks) and all(c["ok"] for c in checks)
    report["seconds"] = round(time.monotonic() - t0, 1)
    (out / "gpucheck.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    failed = [c["check"] for c in checks if not c["ok"]]
    log(f"{'ALL CHECKS PASSED' if not failed else 'FAILED: ' + '; '.join(failed)} in {report['seconds']:.0f} s; "
        f"wrote {out / 'gpucheck.json'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
