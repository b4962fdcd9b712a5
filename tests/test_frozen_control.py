"""The frozen-backbone control (`experiments.frozen_control`): its report from per-item records, its refusals. The
training and probing it drives are tested where they live (test_reconstruction_probe, test_study)."""

from __future__ import annotations

import json

from helpers import PYTHON, run

from dinov2_eqcoh.experiments.frozen_control import summary, write_report


def item(backbone, seed, v1, mse, path):
    rows = [{"k": k, "mse": mse[k - 1], "path_position": path[k - 1], "copy_v2": 0.4, "pooled_v2": 0.3,
             "mean_target": 1.0} for k in (1, 2)]
    return {"backbone": backbone, "training_seed": seed, "v1": v1, "per_k": rows}


def test_report_groups_seeds_per_backbone_and_arm(tmp_path):
    items = [item("untrained", 0, "given", (0.5, 0.4), (0.9, 1.0)), item("untrained", 1, "given", (0.7, 0.6), (0.7, 0.8)),
             item("eqcoh", 0, "zeroed", (0.2, 0.1), (0.5, 0.9))]
    s = summary(items)
    assert set(s) == {"untrained, v1 given", "eqcoh, v1 zeroed"}
    k1 = s["untrained, v1 given"]["per_k"][0]
    assert s["untrained, v1 given"]["seeds"] == [0, 1] and abs(k1["mse"]["mean"] - 0.6) < 1e-12 and k1["mse"]["n"] == 2
    write_report(tmp_path, items, planned=10, command="python -m dinov2_eqcoh.experiments.frozen_control")
    md = (tmp_path / "frozen_control.md").read_text()
    assert "Items done: 3 of 10" in md and "| untrained, v1 given | 0,1 | 0.600 ± " in md
    assert "| eqcoh, v1 zeroed | 0 | 0.200 | 0.50 | 0.100 | 0.90 |" in md
    assert json.loads((tmp_path / "frozen_control.json").read_text())["planned"] == 10


def test_bad_arguments_are_named(tmp_path):
    for args, text in ((["--arms", "given,both"], "--arms given,both"), (["--seeds", "0"], "--seeds 0")):
        proc = run([PYTHON, "-m", "dinov2_eqcoh.experiments.frozen_control", "--output-dir", tmp_path / "f", *args],
                   check=False)
        assert proc.returncode != 0 and text in proc.stdout, proc.stdout
    assert not (tmp_path / "f").exists()
