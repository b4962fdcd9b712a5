"""`make demo` end to end at a toy budget: three runs through DINOv2's loop, probes, report files."""

import json
import math

import pytest
from helpers import PYTHON, run
from omegaconf import OmegaConf


@pytest.mark.slow
def test_demo_writes_the_documented_report(tmp_path):
    out = tmp_path / "demo"
    # the regime preset (decoder width 256, unmasked z_equi, 16 epochs) with the tiny budget given explicitly:
    # a command-line override beats the preset
    proc = run([PYTHON, "-m", "dinov2_eqcoh.experiments.demo", "--output-dir", out, "--config-file", "configs/tiny/eqcoh_cpu.yaml",
                "--eval-images", "60", "--class-images", "90", "--probe-epochs", "2", "--dense-scale", "0.05",
                "--preset", "regime", "optim.epochs=2"], timeout=600)
    eqcoh_cfg = (out / "eqcoh" / "config.yaml").read_text()
    assert "dim: 256" in eqcoh_cfg and "extra_unmasked_pass: true" in eqcoh_cfg and "epochs: 2" in eqcoh_cfg
    assert "report.md" in proc.stdout  # it says where the results are
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["dinov2", "dinov2_aug", "eqcoh"]
    for name, m in report["models"].items():
        assert set(m["r2"]) == {"rot", "color", "blur", "trans", "se2", "mean"}
        assert abs(m["r2"]["mean"] - sum(m["r2"][t] for t in ("rot", "color", "blur", "trans")) / 4) < 1e-9  # paper's
        assert 0.0 <= m["knn_top1"] <= 1.0 and 0.0 <= m["linear_top1"] <= 1.0
        assert m["train_seconds"] > 0
        assert (out / name / "model_final.rank_0.pth").samefile(m["checkpoint"])
        # where DINOv2's invariance term ended, against ln K of the run's own config (K = dino.head_n_prototypes)
        k = OmegaConf.load(out / name / "config.yaml").dino.head_n_prototypes
        assert m["dino_uniform"] == pytest.approx(math.log(k)) and m["dino_loss_end"] > 0
        # the dense probes (issue 13) for every model: homography error against its zero-offset baseline, J&F, mIoU
        d = m["dense"]
        assert 0 < d["mce"] and d["mce_zero"] > 0 and 0 <= d["jf_mean"] <= 1 and 0 <= d["miou"] <= 1
        assert d["settings"]["homography"] == {"n_train": 60, "n_test": 20}  # --dense-scale 0.05 of 1200 / 400
    # the three runs really differ in the method's switches (and only there)
    cfgs = {n: (out / n / "config.yaml").read_text() for n in report["models"]}
    assert "loss_weight: 0" in cfgs["dinov2"] and "apply_to_view: false" in cfgs["dinov2"]
    assert "loss_weight: 0" in cfgs["dinov2_aug"] and "apply_to_view: true" in cfgs["dinov2_aug"]
    assert "loss_weight: 1.0" in cfgs["eqcoh"]
    # the decoders' diagnostics (issue 29): the final student on fresh images, and the curves logged in training
    rec = report["models"]["eqcoh"]["reconstruction"]
    assert [r["k"] for r in rec["per_k"]] == [1, 2] and rec["iteration"] == 3 and rec["grad_ratio"] > 0
    assert "reconstruction" not in report["models"]["dinov2_aug"]  # λ 0: no decoders to diagnose
    assert "Does the auxiliary task do its job?" in (out / "report.md").read_text()
    for picture in ("r2_bars.png", "reconstructions.png", "diagnostics.png"):
        assert (out / picture).stat().st_size > 1000
    assert "| eqcoh |" in (out / "report.md").read_text()
    # the untrained reference: the same probes on a randomly initialised backbone, in the JSON, table and bars
    ref = report["reference"]["untrained"]
    assert set(ref["r2"]) == {"rot", "color", "blur", "trans", "se2", "mean"} and 0.0 <= ref["knn_top1"] <= 1.0
    assert "| untrained (reference) |" in (out / "report.md").read_text()
    # raw pixels, the reference that needs no learning at all
    assert set(report["reference"]) == {"raw_pixels", "untrained"}
    assert report["reference"]["raw_pixels"]["r2"]["rot"] != ref["r2"]["rot"]
    assert "| raw_pixels (reference) |" in (out / "report.md").read_text()
    assert "mce" in ref["dense"] and "MCE px" in (out / "report.md").read_text()
    assert "homography 60 train / 20 test pairs" in (out / "report.md").read_text()
    assert report["settings"]["class_images"] == 90 and report["settings"]["eval_images"] == 60
    assert "EqCoh against each baseline" in (out / "report.md").read_text()
    # the geometric R² without the fill (issue 21) for every row, on 52 px images shown at their centred 32 px
    for m in [*report["models"].values(), *report["reference"].values()]:
        assert set(m["r2_fill_free"]) == {"rot", "trans", "se2"} and m["fill_free_canvas"] == 52
    assert report["reference"]["raw_pixels"]["r2_fill_free"]["trans"] != report["reference"]["raw_pixels"]["r2"]["trans"]
    assert "| R²(rot) fill-free | R²(trans) fill-free | R²(se2) fill-free |" in (out / "report.md").read_text()
    assert f"Command: `python -m dinov2_eqcoh.experiments.demo --output-dir {out} " in (out / "report.md").read_text()


def test_demo_refuses_an_output_dir_with_an_earlier_run(tmp_path):
    """DINOv2 would resume the old checkpoint (zero iterations) and the report would describe the wrong model."""
    run_dir = tmp_path / "demo" / "dinov2_aug"
    run_dir.mkdir(parents=True)
    (run_dir / "last_checkpoint.rank_0").write_text("model_0000349.rank_0.pth")
    proc = run([PYTHON, "-m", "dinov2_eqcoh.experiments.demo", "--output-dir", tmp_path / "demo", "--config-file",
                "configs/tiny/eqcoh_cpu.yaml"], check=False, timeout=120)
    assert proc.returncode != 0
    assert f"{run_dir} already hold(s) a training run" in proc.stdout
    assert not (tmp_path / "demo" / "dinov2").exists()  # refused before any training
    assert (run_dir / "last_checkpoint.rank_0").read_text() == "model_0000349.rank_0.pth"  # nothing lost
    bad = run([PYTHON, "-m", "dinov2_eqcoh.experiments.demo", "--output-dir", tmp_path / "demo2", "--dense-scale", "0"],
              check=False, timeout=120)
    assert bad.returncode != 0 and "--dense-scale 0.0: must be > 0" in bad.stdout
    assert not (tmp_path / "demo2" / "dinov2").exists()
