"""`python -m dinov2_eqcoh.weights.consolidate`: one whole checkpoint from a two-rank FSDP run's shards.

Known answer: DINOv2 itself writes the whole teacher at its evaluation points (`eval/training_N/teacher_checkpoint.pth`,
gathered by FSDP); the consolidated teacher must equal it tensor for tensor. The student (with the decoders, which no
DINOv2 file holds whole) must load strictly into an unwrapped model and feed the reconstruction diagnostics.
"""

import hashlib
import shutil

import pytest
import torch
from helpers import PYTHON, run

TINY = "configs/tiny/eqcoh_cpu.yaml"


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("consolidate") / "run"
    run([PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port(),
         "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", out], timeout=600)
    return out


@pytest.mark.slow
def test_consolidated_teacher_is_dinov2s_own_whole_teacher_and_the_student_loads_strictly(two_rank_run):
    from dinov2_eqcoh.eval.reconstruction import diagnose
    from dinov2_eqcoh.weights.run_config import holds_sharded_tensors

    assert holds_sharded_tensors(two_rank_run / "model_final.rank_0.pth")  # the premise: no rank file is whole
    before = digest(two_rank_run)
    proc = run([PYTHON, "-m", "dinov2_eqcoh.weights.consolidate", two_rank_run], timeout=600)
    out = two_rank_run / "consolidated" / "model_final.pth"
    assert f"wrote {out}" in proc.stdout and "from 2 rank files" in proc.stdout
    after = digest(two_rank_run)
    assert {k: v for k, v in after.items() if not k.startswith("consolidated/")} == before  # the run is only read

    data = torch.load(out, weights_only=True)
    state, iteration = data["model"], data["iteration"]
    teacher = torch.load(two_rank_run / "eval" / f"training_{iteration}" / "teacher_checkpoint.pth",
                         weights_only=True)["teacher"]
    assert len(teacher) > 20
    for key, value in teacher.items():
        assert torch.equal(state[f"teacher.{key}"], value.to(state[f"teacher.{key}"].dtype)), key
    assert any(k.startswith("student.eqcoh_decoders.") for k in state)
    assert not torch.equal(state["student.backbone.pos_embed"], state["teacher.backbone.pos_embed"])

    report = diagnose(out, n=8, grad_batch=4)  # strict load into EqCohSSLMetaArch, then every diagnostic
    assert report["iteration"] == iteration and len(report["per_k"]) == 2


@pytest.mark.slow
def test_readers_of_a_shard_name_the_consolidate_command_and_missing_ranks_are_named(two_rank_run, tmp_path):
    from dinov2_eqcoh.weights.checkpoints import load_backbone_state_dict

    with pytest.raises(ValueError, match=r"one rank's shard.*dinov2_eqcoh\.weights\.consolidate"):
        load_backbone_state_dict(two_rank_run / "model_final.rank_0.pth")
    partial = tmp_path / "partial"
    shutil.copytree(two_rank_run, partial, ignore=shutil.ignore_patterns("consolidated", "*.rank_1.pth"))
    shutil.copy(two_rank_run / "model_final.rank_1.pth", partial / "model_final.rank_2.pth")
    proc = run([PYTHON, "-m", "dinov2_eqcoh.weights.consolidate", partial], check=False, timeout=120)
    assert proc.returncode == 2 and "has no file for rank(s) [1]; found ranks [0, 2]" in proc.stdout
    proc = run([PYTHON, "-m", "dinov2_eqcoh.weights.consolidate", two_rank_run, "--iteration", "7"], check=False,
               timeout=120)
    assert proc.returncode == 2 and "no model_0000007.rank_*.pth; checkpoints there: model_final" in proc.stdout
