"""`python -m dinov2_eqcoh.experiments.study` on a tiny budget: seeds × models, paired intervals, resume, refusal."""

import hashlib
import json
import math
import subprocess
import sys

import pytest
from helpers import PYTHON, REPO, run

from dinov2_eqcoh.experiments.stats import interval
from dinov2_eqcoh.experiments.study_report import summarise

TINY = ["--config-file", "configs/tiny/eqcoh_cpu.yaml", "--budget", "0.5", "--eval-images", "30",
        "--class-images", "30", "--probe-epochs", "1", "--probes", "global", "--dense-scale", "0.01"]


def _tree(folder):
    """{relative path: sha256} of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_interval_and_pairing_by_seed():
    iv = interval([1.0, 2.0, 3.0])
    assert iv["mean"] == 2.0 and math.isclose(iv["sd"], 1.0)
    assert math.isclose(iv["half_width"], 4.303 / math.sqrt(3), rel_tol=1e-6)  # t_{0.975, 2}
    # paired by seed: a constant offset over seeds is significant even when the per-model spread is large
    a = {s: {"r2": {"rot": 0.5 + s * 0.2 + 0.01}} for s in range(3)}
    b = {s: {"r2": {"rot": 0.5 + s * 0.2}} for s in range(3)}
    summary = summarise({"eqcoh": a, "dinov2": b})
    d = summary["paired"]["eqcoh - dinov2"]["r2.rot"]
    assert math.isclose(d["mean"], 0.01, abs_tol=1e-12) and d["half_width"] < 1e-9 and d["positive_seeds"] == 3
    assert summary["per_model"]["eqcoh"]["r2.rot"]["half_width"] > 0.1


@pytest.mark.slow
def test_study_trains_scores_resumes_and_refuses_another_configuration(tmp_path):
    out = tmp_path / "study"
    # one model x two seeds: the pairing by seed is the same code for every pair of models (dinov2 - untrained here)
    cmd = [PYTHON, "-m", "dinov2_eqcoh.experiments.study", "--output-dir", out, "--models", "dinov2", "--seeds", "2", *TINY]
    # interrupt the study while it trains its second run: it loses that run only
    proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **_env()})
    for line in proc.stdout:
        if "run 2 of 2" in line and "training dinov2_s1" in line:
            break
    for line in proc.stdout:  # kill it once DINOv2 has started writing the run folder
        if "dinov2_s1 [" in line:
            break
    subprocess.run(["pkill", "-KILL", "-f", str(out / "runs" / "dinov2_s1")])
    proc.kill()
    proc.wait()
    assert (out / "runs" / "dinov2_s0" / "study_train.json").exists()
    assert not (out / "runs" / "dinov2_s1" / "study_train.json").exists()
    first = (out / "runs" / "dinov2_s0" / "model_final.rank_0.pth").stat().st_mtime_ns
    first_score = (out / "scores" / "dinov2_s0.json").read_bytes()

    resumed = run(cmd, timeout=900).stdout
    assert "2 runs" in resumed and "1 finished, 1 to train" in resumed
    assert "training dinov2_s0" not in resumed and "removing the unfinished run" in resumed
    assert (out / "runs" / "dinov2_s0" / "model_final.rank_0.pth").stat().st_mtime_ns == first
    assert (out / "scores" / "dinov2_s0.json").read_bytes() == first_score, "a finished run was scored again"
    study = json.loads((out / "study.json").read_text())
    assert study["runs_finished"] == 2 and set(study["scores"]) == {"raw_pixels", "untrained", "dinov2"}
    assert all(set(study["scores"][m]) == {"0", "1"} for m in ("untrained", "dinov2"))
    assert set(study["scores"]["raw_pixels"]) == {"0"}  # probed once, not trained
    raw = study["summary"]["per_model"]["raw_pixels"]["r2.rot"]
    assert raw["n"] == 1 and "| raw_pixels | 1 |" in (out / "study.md").read_text()
    assert not any("raw_pixels" in comp for comp in study["summary"]["paired"])
    per = study["summary"]["per_model"]["dinov2"]["r2.rot"]
    assert per["n"] == 2 and set(per["per_seed"]) == {"0", "1"}
    pair = study["summary"]["paired"]["dinov2 - untrained"]["r2.rot"]
    expected = [study["scores"]["dinov2"][s]["r2"]["rot"] - study["scores"]["untrained"][s]["r2"]["rot"] for s in "01"]
    assert pair["per_seed"] == dict(zip("01", expected))
    # the two seeds really are two runs
    assert study["scores"]["dinov2"]["0"]["dino_ratio"] != study["scores"]["dinov2"]["1"]["dino_ratio"]
    assert (out / "study.png").stat().st_size > 10_000 and "dinov2 - untrained" in (out / "study.md").read_text()

    # the same command again: nothing is trained or scored
    before = _tree(out / "scores")
    again = run(cmd, timeout=300).stdout
    assert "0 to train" in again and "probing" not in again and "training " not in again
    assert _tree(out / "scores") == before

    # a probe group added later is scored on the finished runs only; nothing global is run again
    bookkeeping = ("probes_done", "probe_seconds", "dense", "r2_fill_free", "fill_free_canvas", "reconstruction")
    global_before = {p.name: {k: v for k, v in json.loads(p.read_text()).items() if k not in bookkeeping}
                     for p in (out / "scores").glob("*.json")}
    denser = run([*cmd[:cmd.index("global")], "global,dense,fill_free,reconstruction",
                  *cmd[cmd.index("global") + 1:]], timeout=300).stdout
    assert "0 to train" in denser and "training " not in denser and ": global" not in denser
    assert denser.count(": dense") == len(global_before) == 5  # 2 runs, the untrained backbone of each seed, pixels
    assert denser.count(": fill_free") == 5
    study = json.loads((out / "study.json").read_text())
    for p in (out / "scores").glob("*.json"):
        score = json.loads(p.read_text())
        assert score["probes_done"] == ["global", "dense", "fill_free", "reconstruction"]
        assert "reconstruction" not in score  # vanilla DINOv2 (λ 0) and the references have no decoders
        assert set(score["r2_fill_free"]) == {"rot", "trans", "se2"}
        assert {k: v for k, v in score.items() if k not in bookkeeping} == global_before[p.name]
        assert score["dense"]["mce_zero"] > 0 and 0 <= score["dense"]["miou"] <= 1
    assert "dense.mce" in study["summary"]["paired"]["dinov2 - untrained"]
    assert "homography MCE" in (out / "study.md").read_text() and "Dense probes" in (out / "study.md").read_text()
    assert "r2_fill_free.trans" in study["summary"]["paired"]["dinov2 - untrained"]
    assert "R²(trans) fill-free" in (out / "study.md").read_text()

    # --score-only with nothing missing: nothing runs, and the report still names the command that trained
    trained_command = study["command"]
    scored = run([*cmd, "--score-only"], timeout=300).stdout
    assert "2 finished, 0 left untrained (--score-only)" in scored and "probing" not in scored
    assert json.loads((out / "study.json").read_text())["command"] == trained_command
    assert "--score-only" not in (out / "study.md").read_text()

    # another configuration into this folder is refused by name, and the folder is left as it was
    before = _tree(out)
    for extra, field in ((["--budget", "1.0"], "budget"), (["optim.base_lr=0.01"], "opts")):
        other = list(cmd)
        if extra[0] == "--budget":
            other[other.index("--budget") + 1] = extra[1]
        else:
            other += extra
        proc = run(other, check=False, timeout=120)
        assert proc.returncode != 0
        assert "another configuration" in proc.stdout and field in proc.stdout and str(out) in proc.stdout
    assert _tree(out) == before


def _env():
    import os

    return dict(os.environ)


def test_a_folder_another_process_holds_is_left_alone(tmp_path):
    """A second study training into a folder a live one holds stops before anything is trained or removed, naming the
    holder; so does a study that finds a live training (any process) in a run folder it would call unfinished."""
    from dataclasses import asdict

    from dinov2_eqcoh.run import lock

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        me = lock.me()
        me.pid, me.pid_start = holder.pid, lock._proc_start(holder.pid)
        cmd = [PYTHON, "-m", "dinov2_eqcoh.experiments.study", "--models", "dinov2", "--seeds", "1", *TINY]
        out = tmp_path / "held"
        out.mkdir()
        (out / lock.LOCK_NAME).write_text(json.dumps(asdict(me)))
        proc = run([*cmd, "--output-dir", out], check=False, timeout=120)
        assert proc.returncode != 0 and f"is in use by another run: host {me.host}, pid {holder.pid}" in proc.stdout
        assert not (out / "runs").exists() and "Traceback" not in proc.stdout
        # the study folder is free, one of its run folders is not
        out = tmp_path / "run_held"
        run_dir = out / "runs" / "dinov2_s0"
        run_dir.mkdir(parents=True)
        (run_dir / lock.LOCK_NAME).write_text(json.dumps(asdict(me)))
        (run_dir / "model_0000001.rank_0.pth").write_bytes(b"the other process's checkpoint")
        before = _tree(run_dir)
        proc = run([*cmd, "--output-dir", out], check=False, timeout=120)
        assert proc.returncode != 0 and f"pid {holder.pid}" in proc.stdout and "removing" not in proc.stdout
        assert _tree(run_dir) == before
        assert not (out / lock.LOCK_NAME).exists()  # the refused study released its own folder lock
    finally:
        holder.kill()
        holder.wait()


def test_progress_reporter_reads_dinov2s_metric_logger_line(tmp_path):
    """Every training runner (study, curves, regime, demo) prints DINOv2's progress through one reporter, from a
    real subprocess's output, and keeps every line in the log."""
    import sys

    from dinov2_eqcoh.experiments.runner import progress_reporter, run_logged

    line = ("I20261206 05:10:47 25413 dinov2 helpers.py:122] Training  [ 10/800]  eta: 0:10:35  lr: 0.0001 (0.0001)  "
            "total_loss: 5.8468 (5.9563)  dino_local_crops_loss: 2.7138 (2.7219)  time: 0.80418")
    report = progress_reporter("[study]", "dinov2_s0")
    assert report(line) == "[study]   dinov2_s0 [10/800] total_loss 5.8468 eta 0:10:35"
    assert report("I20261206 dinov2 train.py:300] Starting training from iteration 0") is None
    log = tmp_path / "run.train.log"
    rc = run_logged([sys.executable, "-c", f"print({line!r}); print('done')"], log, report)
    assert rc == 0
    assert log.read_text().splitlines()[1:] == [line, "done"]


def test_bad_arguments_are_named(tmp_path):
    for args, text in ((["--seeds", "two"], "--seeds"), (["--models", "dinov3"], "unknown ['dinov3']"),
                       (["--budget", "0"], "--budget"), (["--dense-scale", "0"], "--dense-scale"),
                       (["--probes", "global,depth"], "allowed groups global, dense, fill_free, reconstruction, frozen_reconstruction")):
        proc = run([sys.executable, "-m", "dinov2_eqcoh.experiments.study", "--output-dir", tmp_path / "s", *args], check=False)
        assert proc.returncode != 0 and text in proc.stdout, proc.stdout
    assert not (tmp_path / "s").exists()


def test_every_study_model_is_a_valid_config_that_differs_only_in_its_switches():
    from dinov2_eqcoh.experiments.registry import DESCRIPTIONS, MODELS
    from dinov2_eqcoh.experiments.study_report import COMPARISONS
    from dinov2_eqcoh.method.config import load_config

    base = "configs/demo/eqcoh_demo.yaml"
    cfgs = {m: load_config(base, opts) for m, opts in MODELS.items()}
    assert set(DESCRIPTIONS) == set(MODELS)
    assert {m for pair in COMPARISONS for m in pair} <= {*MODELS, "untrained"}
    assert cfgs["eqcoh_fill_free"].eqcoh.fill_free and not cfgs["eqcoh"].eqcoh.fill_free
    assert cfgs["dinov2_aug_fill_free"].eqcoh.fill_free and cfgs["dinov2_aug_fill_free"].eqcoh.loss_weight == 0
    # a fill-free twin differs from its filled model in that one key
    for twin, model in (("eqcoh_fill_free", "eqcoh"), ("dinov2_aug_fill_free", "dinov2_aug")):
        a, b = cfgs[twin].eqcoh, cfgs[model].eqcoh
        assert [k for k in a if a[k] != b[k]] == ["fill_free"]


def test_a_comment_in_the_config_does_not_orphan_a_study_a_changed_value_does(tmp_path, capsys):
    import argparse
    import shutil

    import pytest

    from dinov2_eqcoh.experiments.identity import check_identity
    from dinov2_eqcoh.experiments.study import study_identity

    config = tmp_path / "demo.yaml"
    shutil.copy("configs/demo/eqcoh_demo.yaml", config)
    args = argparse.Namespace(config_file=str(config), opts=[], budget=1.0, eval_images=30, class_images=30,
                              probe_epochs=1, features="concat", dense_scale=1.0)
    out = tmp_path / "study"
    first = study_identity(args, 4)
    check_identity(out, first)
    recorded = json.loads((out / "study_config.json").read_text())
    assert recorded == first and "config_content_sha256" in recorded

    config.write_text(config.read_text() + "# eqcoh.fill_free: false, the default (a comment only)\n")
    check_identity(out, study_identity(args, 4))  # resumes
    assert "its text changed, not its content" in capsys.readouterr().out
    assert json.loads((out / "study_config.json").read_text())["config_sha256"] != first["config_sha256"]

    config.write_text(config.read_text().replace("base_lr: 0.004", "base_lr: 0.005"))
    before = (out / "study_config.json").read_text()
    with pytest.raises(SystemExit, match="config_content_sha256"):
        check_identity(out, study_identity(args, 4))
    assert (out / "study_config.json").read_text() == before

    # a folder recorded before the content fingerprint: matched on the bytes, then upgraded in place
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    now = study_identity(args, 4)
    (legacy / "study_config.json").write_text(json.dumps({k: v for k, v in now.items()
                                                          if k != "config_content_sha256"}))
    check_identity(legacy, now)
    assert json.loads((legacy / "study_config.json").read_text()) == now


def test_reports_record_paths_inside_the_repository_relative_to_it(tmp_path):
    from dinov2_eqcoh.experiments.runner import REPO, shown

    assert shown(REPO / "configs/demo/eqcoh_demo.yaml") == "configs/demo/eqcoh_demo.yaml"
    assert shown(tmp_path / "x.yaml") == str(tmp_path / "x.yaml")
