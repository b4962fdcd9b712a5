"""The learning-curve runner (`python -m dinov2_eqcoh.experiments.curves`) and its raw-pixel reference."""

import json

import pytest
import torch
from helpers import PYTHON, run

TINY = ["--config-file", "configs/tiny/eqcoh_cpu.yaml", "--iterations", "8", "--points", "2,8",
        "--eval-images", "45", "--class-images", "45", "--probe-epochs", "3", "--homography-pairs", "16"]


def test_raw_pixels_are_the_image_and_its_patches():
    from dinov2_eqcoh.eval.features import RawPixels

    x = torch.randn(2, 3, 16, 16)
    out = RawPixels(8).forward_features(x)
    assert torch.equal(out["x_norm_clstoken"], x.flatten(1))
    tokens = out["x_norm_patchtokens"]  # (2, 4, 192): patches row-major, channels first within a patch
    assert tokens.shape == (2, 4, 3 * 64)
    assert torch.equal(tokens[1, 1].view(3, 8, 8), x[1, :, :8, 8:])  # row 0, column 1
    assert torch.equal(tokens[0, 2].view(3, 8, 8), x[0, :, 8:, :8])  # row 1, column 0
    with pytest.raises(ValueError, match="not a multiple of patch_size 8"):
        RawPixels(8).forward_features(torch.randn(1, 3, 12, 12))


def test_curves_train_probe_resume_and_refuse_another_configuration(tmp_path):
    out = tmp_path / "curves"
    cmd = [PYTHON, "-m", "dinov2_eqcoh.experiments.curves", "--output-dir", out, "--models", "eqcoh,eqcoh_head_only",
           *TINY]
    run(cmd, timeout=900)
    curves = json.loads((out / "curves.json").read_text())
    assert curves["coverage"].startswith("complete: 4 points")
    assert set(curves["references"]) == {"untrained", "raw_pixels"}
    for model in ("eqcoh", "eqcoh_head_only"):
        assert set(curves["models"][model]) == {"2", "8"}
        for score in curves["models"][model].values():
            assert set(score["r2"]) == {"cls", "concat"} and "rot" in score["r2"]["cls"]
            assert 0 <= score["knn_top1"] <= 1 and score["homography"]["mce"] > 0 and score["dino_ratio"] > 0
        # every kept teacher is a different network: the probes read the checkpoint of their point
        assert curves["models"][model]["2"]["r2"]["cls"]["rot"] != curves["models"][model]["8"]["r2"]["cls"]["rot"]
    # the decoders' diagnostics of the last record logged before each point, for EqCoh only
    assert curves["models"]["eqcoh"]["8"]["diagnostics"]["iteration"] == 7
    assert curves["models"]["eqcoh"]["2"]["diagnostics"]["iteration"] <= 1
    assert "eqcoh_diag_k2_path" in curves["models"]["eqcoh"]["8"]["diagnostics"]
    assert curves["models"]["eqcoh_head_only"]["8"]["diagnostics"] == {}
    head_cfg = (out / "runs" / "eqcoh_head_only" / "config.yaml").read_text()
    assert "keep_head_split: true" in head_cfg and "loss_weight: 0" in head_cfg
    assert (out / "curves.png").stat().st_size > 5000
    assert "| raw_pixels | – |" in (out / "curves.md").read_text()

    # resumed: nothing is trained or probed again (a lost score is probed again, alone)
    (out / "scores" / "eqcoh_2.json").unlink()
    again = run(cmd, timeout=600)
    assert "training" not in again.stdout and "resuming" not in again.stdout
    assert again.stdout.count("[curves] probing") == 1 and "probing eqcoh_2" in again.stdout

    # the learned-invariance criterion on one of the runs: R²(rot) per probe seed, paired with the untrained backbone
    crit = run([PYTHON, "-m", "dinov2_eqcoh.experiments.invariance_criterion", "--run-dir",
                out / "runs" / "eqcoh_head_only", "--points", "2,8", "--probe-seeds", "0,1", "--images", "45",
                "--epochs", "3"], timeout=600)
    result = json.loads((out / "runs" / "eqcoh_head_only" / "invariance_criterion.json").read_text())
    assert set(result["r2_rot_cls"]) == {"untrained", "2", "8"} and set(result["r2_rot_cls"]["8"]) == {"0", "1"}
    d = result["by_point"]["8"]["untrained_minus_trained"]
    assert d["n"] == 2
    assert result["by_point"]["8"]["holds"] == (d["ci95"][0] > 0) and "wrote" in crit.stdout

    other = run([*cmd[:-1], "9"], check=False, timeout=120)  # --homography-pairs 9: another configuration
    assert other.returncode != 0 and "homography_pairs: 16 in the folder, 9 now" in other.stdout


def test_curves_name_bad_arguments(tmp_path):
    base = [PYTHON, "-m", "dinov2_eqcoh.experiments.curves", "--output-dir", tmp_path / "c"]
    proc = run([*base, "--models", "eqcoh,dinov3"], check=False, timeout=120)
    assert proc.returncode != 0 and "unknown ['dinov3']" in proc.stdout
    proc = run([*base, "--points", "50,100", "--iterations", "2000"], check=False, timeout=120)
    assert proc.returncode != 0 and "ending at --iterations 2000" in proc.stdout
    assert not (tmp_path / "c").exists()
