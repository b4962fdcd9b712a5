"""Issue 16: a run folder belongs to one model.

Rerunning into a used `--output-dir` with a model-changing config is refused before anything is written or loaded
(plugin entry, DINOv2's entry, the SLURM launcher at submission), the folder is byte-for-byte unchanged;
allowed changes resume and are logged; the config of every checkpoint is kept and found; `--no-resume` moves the
old run away; weights loaded by path fail on a shape mismatch, naming the tensors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import pytest
from helpers import PYTHON, run

from dinov2_eqcoh.method.config import load_config
from dinov2_eqcoh.run import folder as run_folder
from dinov2_eqcoh.weights.run_config import SHARDED, config_for_checkpoint, history_entries

CFG = "configs/tiny/eqcoh_cpu.yaml"
PLUGIN = [PYTHON, "-m", "dinov2_eqcoh.train"]
DINOV2 = [PYTHON, "-m", "dinov2.train.train"]


def tree_hashes(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file, and '<dir>' for every folder, under `folder`."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = "<dir>"
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """configs/tiny/eqcoh_cpu.yaml trained for its 4 iterations (checkpoint at iteration 3, eval dumps 1 and 3)."""
    out = tmp_path_factory.mktemp("run") / "run"
    run([*PLUGIN, "--config-file", CFG, "--output-dir", out])
    assert (out / "model_final.rank_0.pth").is_file() and (out / "eval/training_3/teacher_checkpoint.pth").is_file()
    return out


@pytest.fixture
def used(trained, tmp_path) -> Path:
    """A private copy of the trained folder (mtimes kept)."""
    dst = tmp_path / "used"
    shutil.copytree(trained, dst)
    return dst


def assert_refused(proc, folder: Path, before: dict, *expected: str) -> None:
    assert proc.returncode != 0, proc.stdout[-3000:]
    for text in ("holds a run of another model", "would not load", "--no-resume", "old_runs", *expected):
        assert text in proc.stdout, f"{text!r} missing from:\n{proc.stdout[-4000:]}"
    assert "Skip loading parameter" not in proc.stdout
    assert tree_hashes(folder) == before, "the refused folder changed"


def test_plugin_entry_refuses_a_model_change_and_changes_nothing(used):
    before = tree_hashes(used)
    proc = run([*PLUGIN, "--config-file", CFG, "--output-dir", used, "eqcoh.d_equi=32"], check=False)
    assert_refused(
        proc, used, before,
        "eqcoh.d_equi: 16 -> 32",
        "student.eqcoh_decoders.decoders.0.embed.weight (32, 32) -> (32, 64)",
        "teacher.dino_head.mlp.0.weight (32, 48) -> (32, 32)",
        "4 of the new model's",  # the teacher has no decoders
        "optimizer state does not fit",
        "model_final.rank_0.pth (iteration 3)",
    )
    assert "Traceback" not in proc.stdout  # the plugin entry prints the message only


def test_dinov2_entry_refuses_another_config_file(used):
    # DINOv2's own entry with another file: the vanilla config run by EqCohMetaArch (λ 0: no eqcoh modules)
    before = tree_hashes(used)
    proc = run([*DINOV2, "--config-file", "configs/tiny/dinov2_cpu.yaml", "--output-dir", used,
                "train.meta_arch=dinov2_eqcoh.meta_arch:EqCohMetaArch"], check=False)
    assert_refused(proc, used, before, "eqcoh.loss_weight: 1.0 -> 0\n", "only in the checkpoint: student.eqcoh_head")


def test_allowed_changes_resume_log_the_keys_and_keep_the_config_history(used, tmp_path, caplog):
    first_config = (used / "config.yaml").read_bytes()
    proc = run([*PLUGIN, "--config-file", CFG, "--output-dir", used, "optim.epochs=3", "optim.base_lr=0.002",
                "train.batch_size_per_gpu=2"])
    assert "Starting training from iteration 4" in proc.stdout
    log = (used / "logs/log.txt").read_text()
    for key in ("optim.epochs: 2 -> 3", "optim.base_lr: 0.004 -> 0.002", "train.batch_size_per_gpu: 4 -> 2"):
        assert key in log, key
    [(history, start, end)] = history_entries(used)
    assert (start, end) == (0, 3) and history.read_bytes() == first_config  # the first segment's config, verbatim
    assert "epochs: 3" in (used / "config.yaml").read_text()  # config.yaml: the latest segment's, as DINOv2 writes

    # every checkpoint's config is found: iterations 0..3 trained with the first config, 4.. with config.yaml
    for ckpt, expected in (("eval/training_1/teacher_checkpoint.pth", history),
                           ("eval/training_3/teacher_checkpoint.pth", history),
                           ("eval/training_5/teacher_checkpoint.pth", used / "config.yaml"),
                           ("model_final.rank_0.pth", used / "config.yaml")):
        assert config_for_checkpoint(used / ckpt) == expected, ckpt

    # export and the eval CLIs read it through checkpoints.find_run_config / backbone_config
    from dinov2_eqcoh.weights.export import export_backbone

    with caplog.at_level(logging.INFO, logger="dinov2.eqcoh"):
        export_backbone(used / "eval/training_1/teacher_checkpoint.pth", tmp_path / "backbone.pth")
    assert f"using the run's config {history}" in caplog.text
    assert (tmp_path / "backbone.pth").is_file()

    # a second resume adds the next segment, 4..5
    run([*PLUGIN, "--config-file", CFG, "--output-dir", used, "optim.epochs=4"])
    assert [(s, e) for _, s, e in history_entries(used)] == [(0, 3), (4, 5)]
    assert "epochs: 3" in config_for_checkpoint(used / "eval/training_5/teacher_checkpoint.pth").read_text()


# what a 0.1 run folder's config.yaml named (the package was flat then): key -> component string
OLD_COMPONENTS = {
    "train.data_transform": "dinov2_eqcoh.data.augmentation:build_data_transform",
    "train.collate_fn": "dinov2_eqcoh.data.collate:build_collate_fn",
}


def make_pre_0_2_folder(folder: Path) -> int:
    """Turn a run folder into one written by 0.1: its teacher carried an EMA copy of the decoders (its checkpoint
    and eval dumps hold `teacher.eqcoh_decoders.*`, its config.yaml a teacher precision entry for them), and its
    config.yaml names the data seams by their 0.1 module names, which no longer exist.
    Returns the number of retired tensors added to the checkpoint."""
    import torch
    from omegaconf import OmegaConf

    ckpt = folder / "model_final.rank_0.pth"
    data = torch.load(ckpt, weights_only=False)
    old = {f"teacher.{k[len('student.'):]}": v.clone() for k, v in data["model"].items()
           if k.startswith("student.eqcoh_decoders.")}
    assert old
    data["model"].update(old)
    torch.save(data, ckpt)
    for dump in folder.glob("eval/training_*/teacher_checkpoint.pth"):
        d = torch.load(dump, weights_only=False)
        d["teacher"].update({k[len("teacher."):]: v for k, v in old.items()})
        torch.save(d, dump)
    cfg = OmegaConf.load(folder / "config.yaml")
    cfg.compute_precision.teacher.eqcoh_decoders = OmegaConf.to_container(cfg.compute_precision.student.eqcoh_decoders)
    for key, value in OLD_COMPONENTS.items():
        OmegaConf.update(cfg, key, value)
    OmegaConf.save(cfg, folder / "config.yaml")
    return len(old)


def test_folder_of_a_version_whose_teacher_had_decoders_resumes_and_loads_strictly(used):
    import torch

    from dinov2_eqcoh.meta_arch import EqCohMetaArch
    from dinov2_eqcoh.weights.files import load_checkpoint_file

    n_old = make_pre_0_2_folder(used)
    import importlib

    for value in OLD_COMPONENTS.values():  # the 0.1 modules are gone: only the rewrite makes the folder readable
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(value.partition(":")[0])
    # the old checkpoint loads strictly into today's model (the demo's picture loads this way), its config's
    # component strings rewritten with a warning naming the new spelling
    with pytest.warns(FutureWarning, match="dinov2_eqcoh.method.augmentation:build_data_transform"):
        old_cfg = load_config(used / "config.yaml")
    assert old_cfg.train.collate_fn == "dinov2_eqcoh.method.collate:build_collate_fn"
    model = EqCohMetaArch(old_cfg)
    model.load_state_dict(load_checkpoint_file(used / "model_final.rank_0.pth")["model"])
    # ... and an unknown key still fails, naming it
    bad = dict(load_checkpoint_file(used / "model_final.rank_0.pth")["model"], **{"teacher.nonsense.weight": torch.ones(1)})
    with pytest.raises(RuntimeError, match="teacher.nonsense.weight"):
        model.load_state_dict(bad)

    proc = run([*PLUGIN, "--config-file", CFG, "--output-dir", used, "optim.epochs=3"])
    assert "Starting training from iteration 4" in proc.stdout
    assert f"ignored {n_old} retired tensors (teacher.eqcoh_decoders.*)" in proc.stdout
    assert "is spelt 'dinov2_eqcoh.method.collate:build_collate_fn' since 0.2" in proc.stdout  # compared, rewritten
    # and resumed again with the old run's own config.yaml as the config file (a common way to continue a run)
    shutil.copy(used / "config_history" / sorted(os.listdir(used / "config_history"))[0], used.parent / "old.yaml")
    proc = run([*PLUGIN, "--config-file", used.parent / "old.yaml", "--output-dir", used, "optim.epochs=4"])
    assert "Starting training from iteration 6" in proc.stdout
    new = load_checkpoint_file(used / "model_final.rank_0.pth")["model"]
    assert not [k for k in new if k.startswith("teacher.eqcoh_decoders.")]  # the teacher holds no decoders
    assert [k for k in new if k.startswith("student.eqcoh_decoders.")]


def test_no_resume_moves_the_old_run_intact_and_trains_the_new_model(used):
    before = tree_hashes(used)
    proc = run([*PLUGIN, "--config-file", CFG, "--output-dir", used, "--no-resume", "eqcoh.d_equi=32"])
    assert "Skip loading parameter" not in proc.stdout and "Starting training from iteration 0" in proc.stdout
    [moved] = list((used / "old_runs").iterdir())
    assert tree_hashes(moved) == before  # every old file, byte for byte, in the same layout
    assert "d_equi: 32" in (used / "config.yaml").read_text()
    assert "moved to" in (used / "logs/log.txt").read_text()
    new = sorted(p for p in tree_hashes(used) if not p.startswith("old_runs"))
    assert "model_final.rank_0.pth" in new and "eval/training_3/teacher_checkpoint.pth" in new
    # the moved run is still a run folder: its checkpoints resolve to its own config
    assert config_for_checkpoint(moved / "eval/training_3/teacher_checkpoint.pth") == moved / "config.yaml"
    assert "d_equi: 16" in (moved / "config.yaml").read_text()


def test_slurm_launcher_refuses_before_submitting(used, capsys):
    from dinov2_eqcoh.run import train as launcher

    before = tree_hashes(used)
    rc = launcher.main(["--cluster", "slurm", "--nodes", "1", "--ngpus", "1", "--config-file", CFG,
                        "--output-dir", str(used), "eqcoh.d_equi=32"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and "eqcoh.d_equi: 16 -> 32" in err and "--no-resume" in err
    assert tree_hashes(used) == before

    # allowed changes and --no-resume pass the pre-submission check, which itself writes nothing
    plan = run_folder.check_before_submit(CFG, ["optim.epochs=5"], str(used), no_resume=False)
    assert plan.action == "resume" and plan.iteration == 3 and [k for k, _, _ in plan.changed] == ["optim.epochs"]
    plan = run_folder.check_before_submit(CFG, ["eqcoh.d_equi=32"], str(used), no_resume=True)
    assert plan.action == "move" and "model_final.rank_0.pth" in {p.name for p in plan.to_move}
    assert run_folder.check_before_submit(CFG, [], str(used) + "/%j", no_resume=False) is None
    assert tree_hashes(used) == before


def test_submission_checks_config_and_dataset_for_templated_folders(tmp_path, capsys):
    """A `%j` folder (a new one per job) is not compared, but a misspelt key and the `<set me>` dataset placeholder
    are still refused at submission, before anything is queued (issue 23)."""
    from dinov2_eqcoh.method.config import ConfigError
    from dinov2_eqcoh.run import train as launcher

    templated = str(tmp_path / "%j")
    with pytest.raises(ConfigError, match="did you mean 'eqcoh.n_intermediate'"):
        run_folder.check_before_submit(CFG, ["eqcoh.n_intermediat=3"], templated, no_resume=False)
    placeholder = "train.dataset_path=ImageNet:split=TRAIN:root=<set me>:extra=<set me>"
    with pytest.raises(ValueError, match="ImageNet needs root=<dir>"):
        run_folder.check_before_submit(CFG, [placeholder], templated, no_resume=False)
    rc = launcher.main(["--cluster", "slurm", "--nodes", "1", "--ngpus", "1", "--config-file", CFG,
                        "--output-dir", templated, "eqcoh.n_intermediat=3"])
    assert rc == 2 and "did you mean 'eqcoh.n_intermediate'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_requeued_no_resume_job_resumes_its_own_run(tmp_path):
    from dinov2_eqcoh.run import train as launcher

    args, _ = launcher.prepare(["--cluster", "local", "--config-file", CFG, "--output-dir", str(tmp_path / "%j"),
                                "--no-resume"])
    assert args.no_resume
    requeued = launcher.Trainer(args).checkpoint()
    assert requeued.function.args.no_resume is False


def test_folder_without_a_tagged_checkpoint_is_compared_through_eval_dump_or_config(used):
    for p in [*used.glob("model_*.pth"), *used.glob("last_checkpoint.*")]:
        p.unlink()
    with pytest.raises(run_folder.RunFolderError, match=r"teacher_checkpoint.pth \(iteration 3\)") as e:
        run_folder.plan_run_folder(load_config(CFG, ["eqcoh.d_equi=32"]), used)
    assert "eqcoh.d_equi: 16 -> 32" in str(e.value) and "teacher.dino_head.mlp.0.weight (32, 48) -> (32, 32)" in str(e.value)
    # the teacher has no decoders: a change of the student's alone is found through the folder's config.yaml
    with pytest.raises(run_folder.RunFolderError, match=r"Compared with .*config.yaml:") as e:
        run_folder.plan_run_folder(load_config(CFG, ["eqcoh.n_intermediate=3"]), used)
    assert "eqcoh.n_intermediate: 2 -> 3" in str(e.value) and "student.eqcoh_decoders.decoders.2" in str(e.value)
    assert run_folder.plan_run_folder(load_config(CFG), used).action == "restart"
    shutil.rmtree(used / "eval")  # only config.yaml and logs: the model config.yaml builds is the reference
    with pytest.raises(run_folder.RunFolderError, match=r"eqcoh.d_patch: 64 -> 80"):
        run_folder.plan_run_folder(load_config(CFG, ["eqcoh.d_patch=80"]), used)
    assert run_folder.plan_run_folder(load_config(CFG, ["optim.epochs=9"]), used).action == "restart"


def test_layerwise_decay_change_resumes_with_a_warning(used):
    plan = run_folder.plan_run_folder(load_config(CFG, ["optim.layerwise_decay=0.5"]), used)
    assert plan.action == "resume"
    assert any("optim.layerwise_decay" in w and "old multipliers stay" in w for w in plan.warnings)


def test_weights_loaded_by_path_must_fit(trained, tmp_path):
    from dinov2_eqcoh.weights.export import export_backbone

    teacher = trained / "eval/training_3/teacher_checkpoint.pth"
    # export --checkpoint / eval CLIs with a config that builds another backbone: an error naming the tensor
    with pytest.raises(ValueError, match=r"patch_embed.proj.weight \(64, 3, 8, 8\) vs backbone \(64, 3, 16, 16\)"):
        export_backbone(teacher, tmp_path / "x.pth", opts=["student.patch_size=16"])
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.invariance", "--weights", teacher, "--output-dir", tmp_path / "inv",
                "student.patch_size=16"], check=False)
    assert proc.returncode != 0 and "patch_embed.proj.weight (64, 3, 8, 8) vs backbone (64, 3, 16, 16)" in proc.stdout
    assert not (tmp_path / "x.pth").exists()

    # student.pretrained_weights and MODEL.WEIGHTS into a new folder: refused before the folder exists
    backbone = tmp_path / "backbone.pth"
    export_backbone(teacher, backbone)
    for opts, expected in (
        ([f"student.pretrained_weights={backbone}", "student.patch_size=16"], "patch_embed.proj.weight"),
        ([f"MODEL.WEIGHTS={trained / 'model_final.rank_0.pth'}", "eqcoh.d_equi=32"],
         "student.eqcoh_decoders.decoders.0.embed.weight (32, 32) -> (32, 64)"),
    ):
        out = tmp_path / "new"
        proc = run([*PLUGIN, "--config-file", CFG, "--output-dir", out, *opts], check=False)
        assert proc.returncode != 0 and expected in proc.stdout, proc.stdout[-3000:]
        assert "Nothing was written or loaded" in proc.stdout and not out.exists()


def test_two_rank_sharded_run_resumes_and_refuses_through_its_config(tmp_path):
    # sharded checkpoints (FSDP LOCAL_STATE_DICT) cannot be unpickled without the run's process group: the folder's
    # config.yaml stands in for them; a resume must still pass, on every rank
    from helpers import free_port

    out = tmp_path / "run"
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    run([*torchrun, free_port(), "-m", "dinov2_eqcoh.train", "--config-file", CFG, "--output-dir", out])
    assert run_folder.read_checkpoint_meta(out / "model_final.rank_1.pth") is SHARDED
    before = tree_hashes(out)
    for rank in (0, 1):
        with pytest.raises(run_folder.RunFolderError, match=r"(?s)Compared with .*config.yaml.*eqcoh.d_equi: 16 -> 32"):
            run_folder.plan_run_folder(load_config(CFG, ["eqcoh.d_equi=32"]), out, rank=rank, world_size=2)
    assert tree_hashes(out) == before
    for rank in (0, 1):  # an allowed change resumes each rank's own shard (a real two-rank resume that passes
        # this check: tests/test_slurm.py, requeue)
        plan = run_folder.plan_run_folder(load_config(CFG, ["optim.epochs=3"]), out, rank=rank, world_size=2)
        assert (plan.action, plan.checkpoint.name, plan.iteration) == ("resume", f"model_final.rank_{rank}.pth", 3)
        assert plan.history_file.name.endswith(".it0-3.yaml")
    assert tree_hashes(out) == before


def test_default_output_folder_is_one_per_command():
    from dinov2_eqcoh.run.train import default_output_dir, parse

    a = default_output_dir("configs/train/vitl16_in1k_ep100_eqcoh_se2.yaml", ["optim.epochs=5"])
    assert a == default_output_dir("configs/train/vitl16_in1k_ep100_eqcoh_se2.yaml", ["optim.epochs=5"])
    assert a != default_output_dir("configs/train/vitl16_in1k_ep100_eqcoh_se2.yaml", ["optim.epochs=6"])
    assert a.startswith("./experiments/vitl16_in1k_ep100_eqcoh_se2-")
    args = parse(["--cluster", "slurm", "--nodes", "1", "--ngpus", "1", "--config-file", CFG])
    assert args.output_dir.endswith("/experiments/" + Path(CFG).stem) and "%j" not in args.output_dir
