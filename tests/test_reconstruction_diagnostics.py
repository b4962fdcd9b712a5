"""Diagnostics of the decoders (`dinov2_eqcoh.eval.reconstruction`): known answers, then a real run.

Known answers: a "decoder" that returns u_k pooled to the token grid lands at k/(K+1) on the path; one that returns
v2 lands at 1 and one that returns u at 0; a perfect decoder "acts", a copy of v2 does not.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import PYTHON, run

from dinov2_eqcoh.eval.reconstruction import path_position, path_states, pool_to_grid, summarize_outputs
from dinov2_eqcoh.method.transforms import path_thetas, render, sample_theta

CFG = "configs/tiny/eqcoh_cpu.yaml"


def real_images(n=16, size=32, seed=0):
    """n built-in images as (n, 3, size, size), ImageNet-normalised."""
    from dinov2_eqcoh.data.datasets import SyntheticGlyphs
    from dinov2_eqcoh.eval.patch_maps import to_normalised_tensor

    ds = SyntheticGlyphs(n=n, size=size, classes=10, seed=seed)
    return torch.stack([to_normalised_tensor(ds.render(i)) for i in range(n)])


def rendered(transform="se2", K=2, n=16, seed=0, zoom=1.0):
    """u, θ (ranges of the paper, Table 2), the targets u_k (K, n, ...) and v2 = g_θ(u) (at a fill-free zoom)."""
    u = real_images(n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    ranges = {"rotation": [-45.0, 45.0], "translation": [-0.25, 0.25]}
    theta = torch.stack([sample_theta(transform, ranges, g) for _ in range(n)])  # (n, P)
    states = render(u, transform, path_thetas(theta, K), zoom=zoom)  # (n, K+1, 3, G, G)
    return u, theta, states[:, :K].transpose(0, 1), states[:, K]


def test_pool_to_grid_keeps_what_the_grid_holds_and_removes_what_it_cannot():
    flat = torch.full((2, 3, 32, 32), 0.7)
    assert torch.allclose(pool_to_grid(flat, 4), flat)
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2  # a pixel-level pattern
    x = checker.float().expand(1, 3, 32, 32)
    assert torch.allclose(pool_to_grid(x, 4), torch.full_like(x, 0.5))


@pytest.mark.parametrize("transform,K", [("se2", 2), ("rotation", 1), ("rotation", 3), ("translation", 2)])
def test_path_position_of_known_decoders(transform, K):
    u, theta, targets, v2 = rendered(transform, K)
    fractions, states = path_states(u, theta, transform, steps=12)
    grid = 4
    for k in range(K):  # the target known at the token grid's resolution only: exactly its point of the path
        at_grid = F.interpolate(F.adaptive_avg_pool2d(targets[k], grid), scale_factor=32 // grid, mode="nearest")
        assert path_position(at_grid, fractions, states, grid) == pytest.approx((k + 1) / (K + 1))
        # and the bilinear low-pass of the MSE predictors stays within one step of it
        assert abs(path_position(pool_to_grid(targets[k], grid), fractions, states, grid) - (k + 1) / (K + 1)) <= 1 / 12 + 1e-6
    assert path_position(v2, fractions, states, grid) == 1.0  # θ-blind copy of v2
    assert path_position(u, fractions, states, grid) == 0.0


def test_path_position_with_the_fill_free_zoom():
    """eqcoh.fill_free: the path is rendered at the run's zoom; the known answers hold there, and the θ = 0 end is
    u's centre, not u."""
    from dinov2_eqcoh.method.diagnostics import step_diagnostics

    c = 0.65
    u, theta, targets, v2 = rendered("se2", 2, zoom=c)
    fractions, states = path_states(u, theta, "se2", steps=12, zoom=c)
    for k in range(2):
        at_grid = F.interpolate(F.adaptive_avg_pool2d(targets[k], 4), scale_factor=8, mode="nearest")
        assert path_position(at_grid, fractions, states, 4) == pytest.approx((k + 1) / 3)
    assert path_position(v2, fractions, states, 4) == 1.0
    assert path_position(render(u, "se2", torch.zeros_like(theta), zoom=c), fractions, states, 4) == 0.0
    step = step_diagnostics(targets, None, targets, v2, u, theta, "se2", grid=4, zoom=c)
    assert [step[f"eqcoh_diag_k{k}_path"].item() for k in (1, 2)] == pytest.approx([1 / 3, 2 / 3])


def test_summary_tells_a_working_decoder_from_a_theta_blind_one():
    u, theta, targets, v2 = rendered("se2", 2)
    fractions, states = path_states(u, theta, "se2")
    perfect = summarize_outputs(targets, targets, v2, fractions, states, 4, pred_shuffled=targets.roll(1, dims=1))
    assert perfect["acts"] and all(r["mse"] == 0 and r["on_path"] for r in perfect["per_k"])
    assert all(r["shuffled_v1"] > 0 for r in perfect["per_k"])
    assert perfect["decoder_gap"][0] == pytest.approx(torch.mean((targets[0] - targets[1]) ** 2).item())

    copy = summarize_outputs(v2.expand_as(targets), targets, v2, fractions, states, 4)
    assert not copy["acts"]
    for r in copy["per_k"]:
        assert r["mse"] == pytest.approx(r["copy_v2"]) and not r["below_copy_v2"] and r["path_position"] == 1.0
        assert r["grid_floor"] < r["pooled_v2"]  # pooling the target itself beats pooling v2
    assert copy["decoder_gap"] == [0.0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diag") / "run"
    run([PYTHON, "-m", "dinov2_eqcoh.train", "--config-file", CFG, "--output-dir", out])
    return out


def test_cli_on_a_trained_run_writes_every_diagnostic(tiny_run, tmp_path):
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.reconstruction", "--run-dir", tiny_run, "--n", "16",
                "--grad-batch", "4", "--output-dir", tmp_path])
    report = json.loads((tmp_path / "reconstruction_diagnostics.json").read_text())
    assert report["K"] == 2 and report["grid"] == 4 and report["iteration"] == 3
    for r in report["per_k"]:
        for key in ("mse", "copy_v2", "pooled_v2", "grid_floor", "shuffled_v1"):
            assert r[key] > 0, key
        assert r["shuffled_v1"] != r["mse"]  # the decoders read z_equi(v1)
        assert 0.0 <= r["path_position"] <= 1.0
    assert report["grad_norm_recon"] > 0 and report["grad_norm_ssl"] > 0 and report["grad_ratio"] > 0
    assert "lands at f" in proc.stdout and "gradient ratio" in proc.stdout


def test_cli_names_what_is_wrong(tiny_run, tmp_path):
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.reconstruction", "--checkpoint",
                tiny_run / "eval/training_3/teacher_checkpoint.pth"], check=False)
    assert proc.returncode == 2 and "not a training checkpoint" in proc.stdout and "model_*.rank_0.pth" in proc.stdout
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.reconstruction", "--run-dir", tmp_path], check=False)
    assert proc.returncode == 2 and "no training checkpoint" in proc.stdout


def test_a_study_reports_the_diagnostics_of_its_eqcoh_runs(tiny_run, tmp_path):
    """`study --score-only --probes reconstruction` on a folder holding one finished EqCoh run (the tiny run) and one
    unfinished: the finished run's final student is diagnosed, nothing is trained, the references get nothing, and
    study.md has a row per D_k with the figures of the run's own JSON."""
    import shutil

    out = tmp_path / "study"
    shutil.copytree(tiny_run, out / "runs" / "eqcoh_s0")
    (out / "runs" / "eqcoh_s0" / "study_train.json").write_text(json.dumps({"train_seconds": 1.0, "command": []}))
    proc = run([PYTHON, "-m", "dinov2_eqcoh.experiments.study", "--output-dir", out, "--config-file", CFG,
                "--models", "eqcoh", "--seeds", "2", "--probes", "reconstruction", "--score-only"], timeout=600)
    assert "1 finished, 1 left untrained (--score-only)" in proc.stdout and "training " not in proc.stdout
    assert not (out / "runs" / "eqcoh_s1").exists()
    score = json.loads((out / "scores" / "eqcoh_s0.json").read_text())
    rec = score["reconstruction"]
    assert rec["K"] == 2 and rec["iteration"] == 3 and rec["n"] == 256 and len(rec["per_k"]) == 2
    assert rec["grad_ratio"] > 0 and "acting_since" in rec
    for ref in ("untrained_s0", "raw_pixels"):  # no decoders: scored as done, nothing in them
        ref_score = json.loads((out / "scores" / f"{ref}.json").read_text())
        assert ref_score["probes_done"] == ["reconstruction"] and "reconstruction" not in ref_score
    report = (out / "study.md").read_text()
    assert "The decoders' diagnostics" in report
    for r in rec["per_k"]:
        row = next(line for line in report.splitlines() if line.startswith(f"| eqcoh | 1 | {r['k']} |"))
        assert f"| {r['mse']:.3f} | {r['copy_v2']:.3f} | {r['pooled_v2']:.3f} | {r['path_position']:.2f} |" in row
        assert f"| {'1/1' if rec['acts'] else '0/1'} |" in row


def test_acting_since_reads_the_training_logs():
    from dinov2_eqcoh.eval.reconstruction import acting_since, record_acts

    def rec(it, mse, path1, path2):  # K = 2; copy v2 0.3, pooled v2 0.4 for both k
        r = {"iteration": it}
        for k, path in ((1, path1), (2, path2)):
            r |= {f"eqcoh_diag_k{k}_mse": mse, f"eqcoh_diag_k{k}_copy_v2": 0.3, f"eqcoh_diag_k{k}_pooled_v2": 0.4,
                  f"eqcoh_diag_k{k}_path": path}
        return r

    good, blind, off_path = rec(0, 0.1, 1 / 3, 2 / 3), rec(0, 0.35, 1 / 3, 2 / 3), rec(0, 0.1, 0.58, 0.67)
    assert record_acts(good) and not record_acts(blind) and not record_acts(off_path)  # 0.58: 0.25 from 1/3
    log = [blind, good, blind, good, good]
    for i, r in enumerate(log):
        log[i] = {**r, "iteration": 10 * i}
    assert acting_since(log) == 30  # the target holds from the last miss on
    assert acting_since(log[:3]) is None


def test_training_step_diagnostics_agree_with_the_cli_figures():
    """The in-step version (per state, on the device, 0-d tensors) gives the CLI's numbers on the same tensors."""
    from dinov2_eqcoh.method.diagnostics import step_diagnostics

    u, theta, targets, v2 = rendered("se2", 2)
    pred = 0.5 * targets + 0.5 * v2  # halfway between each target and v2
    shuffled = pred.roll(1, dims=1)
    fractions, states = path_states(u, theta, "se2")
    cli = summarize_outputs(pred, targets, v2, fractions, states, 4, pred_shuffled=shuffled)
    step = step_diagnostics(pred, shuffled, targets, v2, u, theta, "se2", grid=4)
    for r in cli["per_k"]:
        k = r["k"]
        for name, key in (("mse", "mse"), ("copy_v2", "copy_v2"), ("pooled_v2", "pooled_v2"),
                          ("grid_floor", "grid_floor"), ("shuffled_v1", "shuffled_v1"), ("path_position", "path")):
            assert step[f"eqcoh_diag_k{k}_{key}"].item() == pytest.approx(r[name], rel=1e-5), (k, name)
    assert step["eqcoh_diag_gap_k1"].item() == pytest.approx(cli["decoder_gap"][0], rel=1e-5)
    assert 1 / 3 < cli["per_k"][0]["path_position"] < 1  # halfway to v2 lands between u_1 and v2
