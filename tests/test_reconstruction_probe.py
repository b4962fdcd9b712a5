"""The frozen reconstruction probe (`eval.reconstruction_probe`) on its known answers: features that say nothing
reach only the mean image, features that carry the target reach far below it; the v1 arms; the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import PYTHON, run

from dinov2_eqcoh.eval.features import RawPixels
from dinov2_eqcoh.eval.reconstruction_probe import probe_backbone
from dinov2_eqcoh.method.config import load_config

TINY = "configs/tiny/eqcoh_cpu.yaml"
NO_THETA = ["eqcoh.ranges.rotation=[0.0,0.0]", "eqcoh.ranges.translation=[0.0,0.0]"]  # u_k = u = v2
SMALL = dict(iterations=200, batch_size=64, pool=384, n_eval=96)


class Constant(torch.nn.Module):
    """A backbone whose tokens never depend on the image."""

    def forward_features(self, x):
        return {"x_norm_patchtokens": torch.ones(x.shape[0], (x.shape[-1] // 8) ** 2, 8)}


def test_features_that_say_nothing_reach_only_the_mean_image():
    report = probe_backbone(Constant(), load_config(TINY), **SMALL)
    for row in report["per_k"]:
        assert row["mse"] > 0.95 * row["mean_target"], row
        assert row["mse"] > row["copy_v2"]  # it cannot even copy v2: it never sees it


def test_features_that_carry_the_target_reach_far_below_the_mean_image():
    cfg = load_config(TINY, NO_THETA)
    report = probe_backbone(RawPixels(8), cfg, **SMALL)
    for row in report["per_k"]:
        assert row["copy_v2"] < 1e-6  # the known answer: with θ = 0 every u_k is v2
        assert row["mse"] < 0.35 * row["mean_target"], row
    assert report["curve"][-1]["loss"] < report["curve"][0]["loss"]


def test_v1_zeroed_reads_v2_alone():
    report = probe_backbone(RawPixels(8), load_config(TINY, NO_THETA), v1="zeroed", **SMALL)
    assert report["v1"] == "zeroed" and all(row["shuffled_v1"] is None for row in report["per_k"])
    assert all(row["mse"] < 0.35 * row["mean_target"] for row in report["per_k"])  # v2 carries it all here


def test_cli_on_the_references_and_its_refusals(tmp_path):
    out = tmp_path / "rp"
    run([PYTHON, "-m", "dinov2_eqcoh.eval.reconstruction_probe", "--untrained", "--config-file", TINY,
         "--output-dir", out, "--pool", "64", "--n-eval", "32", "--iterations", "5", "--batch-size", "16"])
    report = json.loads((out / "reconstruction_probe.json").read_text())
    assert report["iterations"] == 5 and len(report["per_k"]) == 2 and report["pool"] == 64
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.reconstruction_probe", "--raw-pixels", "--config-file", TINY,
                "--output-dir", out, "--iterations", "0"], check=False)
    assert proc.returncode != 0 and "--iterations 0: must be >= 1" in proc.stdout
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.reconstruction_probe", "--weights", tmp_path / "none.pth",
                "--output-dir", out], check=False)
    assert proc.returncode != 0 and "--config-file: needed" in proc.stdout


@pytest.mark.parametrize("bad", ["--v1=both"])
def test_unknown_arm_is_refused(tmp_path, bad):
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.reconstruction_probe", "--raw-pixels", "--config-file", TINY,
                "--output-dir", tmp_path, bad], check=False)
    assert proc.returncode != 0 and "invalid choice: 'both'" in proc.stdout
