"""Pictures people look at, from a real tiny run: `python -m dinov2_eqcoh.eval.training_curves <run>` (training curves and the
decoders' diagnostics) and the reconstruction grid of `python -m dinov2_eqcoh.eval.reconstruction` (strict load)."""

import json

import pytest
from helpers import PYTHON, run

TINY = "configs/tiny/eqcoh_cpu.yaml"


@pytest.fixture(scope="module")
def tiny_eqcoh_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots") / "run"
    run([PYTHON, "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", out, "optim.epochs=6",
         "eqcoh.diagnostics_every=2"], timeout=600)
    return out


@pytest.mark.slow
def test_plot_cli_draws_training_curves_and_diagnostics(tiny_eqcoh_run):
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.training_curves", tiny_eqcoh_run], timeout=300)
    curves, diag = tiny_eqcoh_run / "plots" / "training_curves.png", tiny_eqcoh_run / "plots" / "training_diagnostics.png"
    assert f"wrote {curves}" in proc.stdout and f"wrote {diag}" in proc.stdout
    assert curves.stat().st_size > 10_000 and diag.stat().st_size > 10_000

    from dinov2_eqcoh.eval.training_curves import loss_keys, read_metrics

    records = read_metrics(tiny_eqcoh_run)
    assert [r["iteration"] for r in records] == sorted({r["iteration"] for r in records})
    keys = loss_keys(records)
    assert keys[0] == "total_loss" and "eqcoh_recon_loss" in keys and not any("diag" in k for k in keys)


@pytest.mark.slow
def test_tensorboard_scalars_are_every_logged_number_at_its_iteration(tiny_eqcoh_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dinov2_eqcoh.eval.training_curves import read_metrics

    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.training_curves", tiny_eqcoh_run, "--tensorboard"], timeout=300)
    assert "wrote TensorBoard scalars up to iteration 11" in proc.stdout
    acc = EventAccumulator(str(tiny_eqcoh_run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"losses/total_loss", "losses/eqcoh_recon_loss", "schedules/lr", "eqcoh_diag/eqcoh_diag_k1_path"} <= tags
    records = read_metrics(tiny_eqcoh_run)
    events = acc.Scalars("losses/total_loss")
    assert [e.step for e in events] == [r["iteration"] for r in records]
    assert [round(e.value, 5) for e in events] == [round(r["total_loss"], 5) for r in records]
    # the reconstruction grid of every training checkpoint, at its iteration: 6 images x (v1, v2, u_1, D_1, u_2, D_2)
    from dinov2_eqcoh.weights.run_config import checkpoint_iteration

    checkpoints = {checkpoint_iteration(p) for p in tiny_eqcoh_run.glob("model_*.rank_0.pth")}
    assert checkpoints and "reconstructions" in acc.Tags()["images"]
    images = acc.Images("reconstructions")
    assert sorted(e.step for e in images) == sorted(checkpoints)
    assert all((e.width, e.height) == (6 * 34 + 2, 6 * 34 + 2) for e in images)  # 32 px tiles, 2 px padding
    assert sum(f"(iteration {it})" in proc.stdout for it in checkpoints) == len(checkpoints)


def test_plot_cli_names_a_folder_without_metrics_and_a_broken_line(tmp_path):
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.training_curves", tmp_path], check=False, timeout=120)
    assert proc.returncode == 2 and "training_metrics.json does not exist" in proc.stdout
    (tmp_path / "training_metrics.json").write_text(json.dumps({"iteration": 0, "total_loss": 1.0}) + "\n{broken\n")
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.training_curves", tmp_path], check=False, timeout=120)
    assert proc.returncode == 2 and "line 2: not a JSON object" in proc.stdout


@pytest.mark.slow
def test_reconstruction_cli_draws_the_grid_of_a_strictly_loaded_student(tiny_eqcoh_run, tmp_path):
    out = tmp_path / "diag"
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.reconstruction", "--run-dir", tiny_eqcoh_run, "--n", "8",
                "--grad-batch", "4", "--output-dir", out], timeout=600)
    assert (out / "reconstruction_diagnostics.json").is_file()
    assert f"wrote {out / 'reconstructions.png'}" in proc.stdout and (out / "reconstructions.png").stat().st_size > 5000
