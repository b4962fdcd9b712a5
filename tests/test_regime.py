"""The regime search runner (`python -m dinov2_eqcoh.experiments.regime`): trains, diagnoses, tabulates, resumes."""

import json

from helpers import PYTHON, run


def test_regime_runner_trains_diagnoses_and_skips_what_is_done(tmp_path):
    out = tmp_path / "regime"
    cmd = [PYTHON, "-m", "dinov2_eqcoh.experiments.regime", "--output-dir", out, "--config-file",
           "configs/tiny/eqcoh_cpu.yaml", "--candidates", "w256_masked_400"]
    run(cmd, timeout=600)  # the tiny recipe: 2 iterations per "epoch", so 16 iterations
    results = json.loads((out / "regime.json").read_text())
    d = results["w256_masked_400"]
    assert d["iterations"] == 16 and d["decoder_dim"] == 256 and d["train_seconds"] > 0
    assert len(d["per_k"]) == 2 and isinstance(d["acts"], bool) and d["grad_ratio"] > 0
    table = (out / "regime.md").read_text()
    assert "| w256_masked_400 | `eqcoh.decoder.dim=256 optim.epochs=8` | 16 |" in table
    assert (out / "w256_masked_400" / "training_diagnostics.png").stat().st_size > 1000
    again = run(cmd, timeout=120)
    assert "w256_masked_400: done" in again.stdout and "training w256_masked_400" not in again.stdout


def test_regime_runner_names_an_unknown_candidate(tmp_path):
    proc = run([PYTHON, "-m", "dinov2_eqcoh.experiments.regime", "--output-dir", tmp_path, "--candidates", "w999"],
               check=False, timeout=120)
    assert proc.returncode == 2 and "unknown w999" in proc.stdout and "w256_unmasked_800" in proc.stdout
