# SPDX-License-Identifier: Apache-2.0
"""The machine a benchmark ran on and the side-by-side table printed at the end."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from dinov2_eqcoh.experiments.bench.presets import TARGETS


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model (lscpu), core count, torch version, load average, GPU name."""
    cpu = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True, check=True).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), cpu)
    except (OSError, subprocess.CalledProcessError):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg": _loadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def _gflops(flops: float) -> str:
    g = flops / 1e9
    return f"{g:.1f}" if g >= 10 else f"{g:.4f}"


def format_table(report: dict[str, Any]) -> str:
    """The side-by-side table printed at the end."""
    st, mem, aug = report.get("step_time"), report.get("memory"), report.get("augmentation")
    rows = [("measure", "DINOv2", "DINOv2 + EqCoh", "ratio", "target")]
    if st:
        def cell(s):
            return f"{s['median_s']:.3f} [{s['q1_s']:.3f}, {s['q3_s']:.3f}]"

        rows.append(
            ("step time, s: median [IQR]", cell(st["dinov2"]), cell(st["eqcoh"]), f"{st['ratio_of_medians']:.3f}",
             f"<= {TARGETS['step_time_ratio_max']:.2f}")
        )
        rows.append(("  paired ratio (median of per-step)", "", "", f"{st['paired_ratio_median']:.3f}", ""))
        if report.get("flops"):
            rows.append(("  step ratio - FLOP ratio", "", "", f"{st['ratio_of_medians'] - report['flops']['ratio']:+.3f}",
                         f"<= +{TARGETS['step_over_flop_ratio_max']:.2f}"))
    if mem:
        rows.append(
            ("peak memory, MiB", f"{mem['dinov2']['peak_bytes'] / 2**20:.1f}",
             f"{mem['eqcoh']['peak_bytes'] / 2**20:.1f}", f"{mem['ratio']:.3f}",
             f"<= {TARGETS['memory_ratio_max']:.2f}")
        )
        if "ratio_absolute_rss" in mem:
            rows.append(
                ("  absolute peak RSS, MiB", f"{mem['dinov2']['peak_rss_bytes'] / 2**20:.1f}",
                 f"{mem['eqcoh']['peak_rss_bytes'] / 2**20:.1f}", f"{mem['ratio_absolute_rss']:.3f}", "")
            )
    if aug:
        rows.append(
            ("augmentation, samples/s/worker", f"{aug['dinov2']['samples_per_s_median']:.1f}",
             f"{aug['eqcoh']['samples_per_s_median']:.1f}", f"{aug['ratio']:.3f}",
             f">= {TARGETS['augmentation_ratio_min']:.2f}")
        )
    fl = report.get("flops")
    if fl:
        rows.append(
            ("forward_backward GFLOPs (counted)", _gflops(fl["dinov2"]["total"]), _gflops(fl["eqcoh"]["total"]),
             f"{fl['ratio']:.3f}", "")
        )
    p = report.get("parameters")
    if p:
        rows.append(
            ("student parameters, M", f"{p['dinov2']['student'] / 1e6:.2f}", f"{p['eqcoh']['student'] / 1e6:.2f}",
             f"{p['student_ratio']:.3f}", "")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        f"preset {report['preset']} on {report['device']} ({report['machine']['cpu']}, {report['machine']['cores']} "
        f"cores, torch {report['machine']['torch']}), batch {report['batch_size']}, "
        f"loadavg {report['machine']['loadavg']}"
    ]
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
