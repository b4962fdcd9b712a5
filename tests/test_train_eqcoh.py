"""End to end on a CPU: the tiny EqCoh config trains through DINOv2's entry and through the plugin's entry.

Both runs are the real thing: DINOv2's `main` (FSDP on gloo, world size 1), the plugin's augmentation and collate
on the built-in dataset, checkpoints on disk.
"""

import pytest
import torch
from helpers import PYTHON, REPO, read_metrics, run

TINY = "configs/tiny/eqcoh_cpu.yaml"
# one intra-op thread: on a shared 2-core machine two threads per process are up to 10x slower (as torchrun does)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_dinov2_entry_trains_eqcoh_and_recon_loss_falls(tmp_path):
    out = tmp_path / "run"
    # 100 iterations of batch 4 at a raised lr (base_lr 0.1 -> lr 6e-3) with a wider decoder (C = 64): about 8 s
    # on 2 idle cores, 17 s on busy ones. It went 0.585 -> 0.319 when written (below the targets' variance, ~0.4).
    run([PYTHON, "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", out,
         "train.OFFICIAL_EPOCH_LENGTH=20", "optim.epochs=5", "optim.base_lr=0.1", "eqcoh.decoder.dim=64",
         "evaluation.eval_period_iterations=50"], timeout=600, env=ONE_THREAD)

    metrics = read_metrics(out)
    assert [m["iteration"] for m in metrics][-1] == 99
    # the decoders' diagnostics (eqcoh.diagnostics_every 10) are logged beside the losses, outside total_loss
    K = 2
    keys = [f"eqcoh_diag_k{k}_{name}" for k in range(1, K + 1)
            for name in ("mse", "copy_v2", "pooled_v2", "grid_floor", "shuffled_v1", "path")] + ["eqcoh_diag_gap_k1"]
    for m in metrics:
        assert all(key in m for key in keys), sorted(m)
        assert all(0.0 <= m[f"eqcoh_diag_k{k}_path"] <= 1.0 for k in (1, 2))
        assert m["eqcoh_diag_k1_grid_floor"] < m["eqcoh_diag_k1_pooled_v2"]
    loss_terms = [k for k in metrics[-1] if k.endswith("_loss") and k != "total_loss"]
    assert not [k for k in loss_terms if "diag" in k]
    assert all("eqcoh_recon_loss" in m and torch.isfinite(torch.tensor(m["total_loss"])) for m in metrics)
    # DINOv2 logs every 10 iterations the median over the last 20: iteration 10's entry is the median of
    # iterations 0-10, the last entry the median of iterations 80-99
    first, last = metrics[1]["eqcoh_recon_loss"], metrics[-1]["eqcoh_recon_loss"]
    assert metrics[1]["iteration"] == 10
    assert last < 0.85 * first, f"eqcoh_recon_loss did not fall: {first:.4f} -> {last:.4f}"

    # the training checkpoint holds the new modules; the teacher's backbone is a plain DINOv2 ViT
    model = torch.load(out / "model_final.rank_0.pth", map_location="cpu", weights_only=True)["model"]
    for key in ("student.eqcoh_head", "student.eqcoh_decoders", "teacher.eqcoh_head"):
        assert any(k.startswith(key) for k in model), key
    assert not any(k.startswith("teacher.eqcoh_decoders") for k in model)  # the teacher never decodes
    teacher = torch.load(out / "eval/training_99/teacher_checkpoint.pth", map_location="cpu", weights_only=True)
    backbone = {k.removeprefix("backbone."): v for k, v in teacher["teacher"].items() if k.startswith("backbone.")}
    from dinov2.models import build_model_from_cfg
    from omegaconf import OmegaConf

    vit, _ = build_model_from_cfg(OmegaConf.load(out / "config.yaml"), only_teacher=True)  # as DINOv2's evals do
    vit.load_state_dict(backbone, strict=True)
    assert teacher["teacher"]["eqcoh_head.proj.weight"].shape == (64, 64)  # d_patch x embed_dim


@pytest.mark.slow
def test_plugin_entry_trains_and_defaults_to_eqcoh_meta_arch(tmp_path):
    """`python -m dinov2_eqcoh.train` with a config that names no meta-architecture still trains EqCoh."""
    config = tmp_path / "no_meta_arch.yaml"
    text = (REPO / TINY).read_text()
    assert "  meta_arch: dinov2_eqcoh.meta_arch:EqCohMetaArch\n" in text
    config.write_text(text.replace("  meta_arch: dinov2_eqcoh.meta_arch:EqCohMetaArch\n", ""))
    out = tmp_path / "run"
    proc = run([PYTHON, "-m", "dinov2_eqcoh.train", "--config-file", config, "--output-dir", out], timeout=300,
               env=ONE_THREAD)

    assert (out / "model_final.rank_0.pth").is_file()
    assert "meta_arch: dinov2_eqcoh.meta_arch:EqCohMetaArch" in (out / "config.yaml").read_text()
    assert "OPTIONS -- EQCOH -- n_intermediate: 2" in proc.stdout
    metrics = read_metrics(out)
    assert [m["iteration"] for m in metrics][-1] == 3
    assert all(torch.isfinite(torch.tensor(m["eqcoh_recon_loss"])) for m in metrics)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_sharded_mixed_precision_with_extra_unmasked_pass(tmp_path):
    """torchrun, gloo, world size 2: the new modules sharded, a bf16 NO_SHARD backbone, an extra student pass.

    Guards two FSDP pitfalls. The teacher's decoders never run but must reshard and follow the EMA when sharded.
    Gradients into the backbone must enter through tensors of its output: FSDP's pre-backward hook, registered on
    them, re-materialises the low-precision parameters that a NO_SHARD mixed-precision module frees after each
    forward (with the extra pass, the gradient of L_recon otherwise reaches them first: "data is not allocated").
    """
    out = tmp_path / "run"
    precision = [f"compute_precision.{side}.backbone.mixed_precision.param_dtype=bf16"
                 for side in ("student", "teacher")]
    sharding = [f"compute_precision.{side}.{key}.sharding_strategy={strategy}" for side in ("student", "teacher")
                for key, strategy in (("backbone", "NO_SHARD"), ("eqcoh_head", "FULL_SHARD"),
                                      ("eqcoh_decoders", "SHARD_GRAD_OP"))]
    proc = run([PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port(),
                "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", out,
                "eqcoh.extra_unmasked_pass=true", *precision, *sharding], timeout=600)
    assert (out / "model_final.rank_0.pth").is_file() and (out / "model_final.rank_1.pth").is_file()
    assert "Traceback" not in proc.stdout
    metrics = read_metrics(out)
    assert [m["iteration"] for m in metrics][-1] == 3
    assert all(torch.isfinite(torch.tensor(m["eqcoh_recon_loss"])) for m in metrics)
