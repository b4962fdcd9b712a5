"""Checkpoint handling: every checkpoint kind -> one raw backbone; pos-embed resize and chunk remap; strict loads;
the export's round trip through DINOv2's hub constructor; DINOv2's own eval loader on our runs' checkpoints."""

import argparse

import pytest
import torch
from helpers import PYTHON, dinov2_cfg, run
from torch import nn

from dinov2_eqcoh.models import vit_test
from dinov2_eqcoh.weights.checkpoints import (
    build_backbone_for_checkpoint,
    load_backbone,
    load_backbone_state_dict,
    load_pretrained_backbone,
)

TINY = "configs/tiny/dinov2_cpu.yaml"


def _released_vit_test(img_size, registers=0, seed=0):
    """A freshly built vit_test/8 in the released format (raw, unchunked), with non-trivial layer scales."""
    torch.manual_seed(seed)
    kwargs = dict(interpolate_offset=0.0, interpolate_antialias=True) if registers else {}
    model = vit_test(patch_size=8, img_size=img_size, init_values=1e-5, block_chunks=0,
                     num_register_tokens=registers, **kwargs).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gamma" in name or name in ("cls_token", "register_tokens", "mask_token"):
                p.normal_(0, 0.5)  # make every tensor matter for the outputs
    return model


def _unchunked(state):
    from dinov2_eqcoh.weights.checkpoints import unchunk_state_dict

    return unchunk_state_dict(state)


@pytest.mark.parametrize("block_chunks", [0, 1, 2])
@pytest.mark.parametrize("registers", [0, 4])
def test_released_file_loads_into_another_crop_size_and_chunk_layout(tmp_path, block_chunks, registers):
    source = _released_vit_test(img_size=64, registers=registers)  # an 8x8 pos-embed grid, as 518 px is for /14
    path = tmp_path / "released.pth"
    torch.save(source.state_dict(), path)

    opts = [f"student.block_chunks={block_chunks}", f"student.num_register_tokens={registers}"]
    if registers:
        opts += ["student.interpolate_offset=0.0", "student.interpolate_antialias=true"]
    torch.manual_seed(1)  # a different random init, so that loading must change every tensor
    target = build_backbone_for_checkpoint(dinov2_cfg(TINY, *opts))  # 32 px crops: a 4x4 grid
    assert target.pos_embed.shape == (1, 17, 64)
    load_pretrained_backbone(target, path)

    state = target.state_dict()
    if block_chunks == 2:
        assert "blocks.1.1.mlp.fc2.weight" in state and "blocks.1.mlp.fc2.weight" not in state
    loaded, released = _unchunked(state), source.state_dict()
    assert sorted(loaded) == sorted(released)
    for key in released:
        if key != "pos_embed":
            assert torch.equal(loaded[key], released[key]), key
    assert loaded["pos_embed"].shape == (1, 17, 64) and torch.equal(loaded["pos_embed"][:, 0], released["pos_embed"][:, 0])

    # the resized table is what the source model computes at run time for 32 px inputs: same outputs
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, ref = target.forward_features(x), source.forward_features(x)
    for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_norm_regtokens"):
        assert torch.isfinite(out[key]).all()
        torch.testing.assert_close(out[key], ref[key], atol=1e-5, rtol=1e-5)


def test_load_backbone_infers_the_architecture_of_a_raw_file(tmp_path):
    source = _released_vit_test(img_size=48, registers=4)
    path = tmp_path / "no_config_here.pth"
    torch.save(source.state_dict(), path)
    backbone, cfg = load_backbone(path)
    assert cfg.student.arch == "dinov2_eqcoh.models:vit_test" and cfg.student.patch_size == 8
    assert cfg.crops.global_crops_size == 48 and backbone.num_register_tokens == 4
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), source(x))


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = _released_vit_test(img_size=32).state_dict()
    del state["blocks.1.mlp.fc2.bias"], state["norm.weight"]
    state["extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "incomplete.pth"
    torch.save(state, path)
    target = build_backbone_for_checkpoint(dinov2_cfg(TINY, "student.block_chunks=2"))
    with pytest.raises(KeyError) as err:
        load_pretrained_backbone(target, path)
    message = str(err.value)
    assert str(path) in message
    assert "blocks.1.1.mlp.fc2.bias" in message and "norm.weight" in message and "extra_head.weight" in message

    state = _released_vit_test(img_size=32).state_dict()
    state["blocks.0.attn.qkv.weight"] = torch.zeros(3, 64)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight \(3, 64\) vs backbone \(192, 64\)"):
        load_pretrained_backbone(build_backbone_for_checkpoint(dinov2_cfg(TINY)), state)


def test_file_needing_full_unpickling_is_refused_unless_opted_in(tmp_path):
    backbone = _released_vit_test(img_size=32).state_dict()
    path = tmp_path / "dino_style.pth"  # DINO(v1)-style: wrapped teacher plus the argparse namespace
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in backbone.items()},
                "args": argparse.Namespace(arch="vit_test")}, path)
    with pytest.raises(ValueError, match="needs full unpickling") as err:
        load_backbone_state_dict(path)
    assert str(path) in str(err.value) and "argparse.Namespace" in str(err.value)
    state = load_backbone_state_dict(path, allow_pickle=True)
    assert sorted(state) == sorted(backbone) and all(torch.equal(state[k], backbone[k]) for k in backbone)


def test_unknown_format_names_the_keys_found(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weights": {"conv1.weight": torch.zeros(1)}, "epoch": 3}, path)
    with pytest.raises(ValueError, match=r"unknown checkpoint format; top-level keys found: weights, epoch"):
        load_backbone_state_dict(path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="is not a readable torch checkpoint"):
        load_backbone_state_dict(garbage)
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        load_backbone_state_dict(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------------------------------------
# real checkpoints of a real DINOv2 training run (block_chunks 2, so the chunked layout is exercised)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    run([PYTHON, "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", out, "student.block_chunks=2"])
    return out


def _raw_training_model(run_dir):
    from dinov2_eqcoh.weights.checkpoints import load_checkpoint_file

    return load_checkpoint_file(run_dir / "model_final.rank_0.pth")["model"]


@pytest.mark.slow
def test_training_and_teacher_checkpoints_give_the_teacher_backbone(tiny_run):
    from_training = load_backbone_state_dict(tiny_run / "model_final.rank_0.pth")
    teacher_ckpt = sorted(tiny_run.glob("eval/*/teacher_checkpoint.pth"))[-1]
    from_teacher = load_backbone_state_dict(teacher_ckpt)
    model = _raw_training_model(tiny_run)
    assert sorted(from_training) == sorted(from_teacher)
    assert "blocks.1.mlp.fc2.weight" in from_training and not any(k.startswith("blocks.1.1.") for k in from_training)
    for key in from_training:
        assert torch.equal(from_training[key], from_teacher[key]), key
    teacher, student = model["teacher.backbone.blocks.1.1.attn.qkv.weight"], model["student.backbone.blocks.1.1.attn.qkv.weight"]
    assert torch.equal(from_training["blocks.1.attn.qkv.weight"], teacher)
    assert not torch.equal(teacher, student)  # the EMA teacher, not the student


@pytest.mark.slow
def test_dinov2_eval_loader_reads_our_teacher_checkpoint(tiny_run, monkeypatch):
    """DINOv2's `build_model_for_eval` (build_model_from_cfg + load_pretrained_weights(..., "teacher")) on the run.

    Without a GPU, its final `.cuda()` is the one step that cannot run here: it is replaced by the identity (and only
    then); everything else is DINOv2's own code. `load_pretrained_weights` loads with strict=False, so the test
    compares every tensor instead of trusting the load.
    """
    from dinov2.eval.setup import build_model_for_eval
    from omegaconf import OmegaConf

    if not torch.cuda.is_available():
        monkeypatch.setattr(nn.Module, "cuda", lambda self, *a, **k: self)
    cfg = OmegaConf.load(tiny_run / "config.yaml")
    teacher_ckpt = sorted(tiny_run.glob("eval/*/teacher_checkpoint.pth"))[-1]
    model = build_model_for_eval(cfg, str(teacher_ckpt))
    expected = load_backbone_state_dict(teacher_ckpt)
    loaded = _unchunked({k: v.cpu() for k, v in model.state_dict().items()})
    assert sorted(loaded) == sorted(expected)
    for key in expected:
        assert torch.equal(loaded[key], expected[key]), key


@pytest.mark.slow
def test_export_round_trip_through_dinov2_hub_constructor(tiny_run, tmp_path):
    from dinov2.hub.backbones import _make_dinov2_model
    from dinov2.models import build_model_from_cfg
    from dinov2.models import vision_transformer as vits
    from dinov2.utils.utils import load_pretrained_weights
    from omegaconf import OmegaConf

    out = tmp_path / "exported" / "backbone.pth"
    run([PYTHON, "-m", "dinov2_eqcoh.weights.export", "--config-file", tiny_run / "config.yaml",
         "--checkpoint", tiny_run / "model_final.rank_0.pth", "--output", out])
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert "cls_token" in raw and "blocks.1.norm1.weight" in raw
    assert not any(k.startswith(("backbone.", "teacher.", "blocks.1.1.", "dino_head", "ibot_head")) for k in raw)

    cfg = OmegaConf.load(tiny_run / "config.yaml")
    s = cfg.student
    vits.__dict__.setdefault(s.arch, vit_test)  # as DINOv2's build_model registers an import-path arch
    hub = _make_dinov2_model(
        arch_name=s.arch, img_size=cfg.crops.global_crops_size, patch_size=s.patch_size, init_values=s.layerscale,
        ffn_layer=s.ffn_layer, block_chunks=0, num_register_tokens=s.num_register_tokens,
        interpolate_antialias=s.interpolate_antialias, interpolate_offset=s.interpolate_offset, pretrained=False,
    ).eval()
    hub.load_state_dict(raw, strict=True)

    # reference: the teacher as DINOv2 builds it for evaluation (chunked, from teacher_checkpoint.pth)
    reference, _ = build_model_from_cfg(cfg, only_teacher=True)
    load_pretrained_weights(reference, str(sorted(tiny_run.glob("eval/*/teacher_checkpoint.pth"))[-1]), "teacher")
    reference.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hub(x), reference(x))

    # exporting from the teacher checkpoint, with the run's config found on its own, writes the same tensors
    again = tmp_path / "again.pth"
    teacher_ckpt = sorted(tiny_run.glob("eval/*/teacher_checkpoint.pth"))[-1]
    run([PYTHON, "-m", "dinov2_eqcoh.weights.export", "--checkpoint", teacher_ckpt, "--output", again])
    raw2 = torch.load(again, map_location="cpu", weights_only=True)
    assert sorted(raw2) == sorted(raw) and all(torch.equal(raw2[k], raw[k]) for k in raw)


@pytest.mark.slow
def test_eqcoh_run_backbone_exports_and_loads_like_dinov2s(tmp_path):
    """A run of the plugin (extra eqcoh_* teacher modules): the export, our loader and DINOv2's eval loader agree."""
    from dinov2.models import build_model_from_cfg
    from dinov2.utils.utils import load_pretrained_weights
    from omegaconf import OmegaConf

    out = tmp_path / "eqcoh"
    run([PYTHON, "-m", "dinov2_eqcoh.train", "--config-file", "configs/tiny/eqcoh_cpu.yaml", "--output-dir", out])
    teacher_ckpt = sorted(out.glob("eval/*/teacher_checkpoint.pth"))[-1]
    assert any(k.startswith("eqcoh_") for k in torch.load(teacher_ckpt, weights_only=True)["teacher"])
    exported = tmp_path / "eqcoh_backbone.pth"
    run([PYTHON, "-m", "dinov2_eqcoh.weights.export", "--checkpoint", out / "model_final.rank_0.pth", "--output", exported])
    raw = torch.load(exported, map_location="cpu", weights_only=True)
    assert not any("eqcoh" in k or "head" in k for k in raw)

    ours, cfg = load_backbone(exported)  # no config: the architecture is inferred from the file
    reference, _ = build_model_from_cfg(OmegaConf.load(out / "config.yaml"), only_teacher=True)
    load_pretrained_weights(reference, str(teacher_ckpt), "teacher")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), reference.eval()(x))


@pytest.mark.slow
def test_hub_export_of_a_patch_14_run_has_the_released_grid(tmp_path):
    """A patch-14 run trained at 28 px exports (by default) a 37 x 37 position table, so the file loads strictly into
    DINOv2's hub constructor at its default 518 px, as a released file does; --image-size keeps the crop grid."""
    from dinov2.hub.backbones import _make_dinov2_model
    from dinov2.models import vision_transformer as vits
    from omegaconf import OmegaConf

    out = tmp_path / "p14"
    run([PYTHON, "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", out, "student.patch_size=14",
         "crops.global_crops_size=28", "crops.local_crops_size=14"])
    exported, cropped = tmp_path / "backbone.pth", tmp_path / "backbone_28.pth"
    run([PYTHON, "-m", "dinov2_eqcoh.weights.export", "--checkpoint", out / "model_final.rank_0.pth", "--output",
         exported])
    run([PYTHON, "-m", "dinov2_eqcoh.weights.export", "--checkpoint", out / "model_final.rank_0.pth", "--output",
         cropped, "--image-size", "28"])
    raw, raw28 = (torch.load(p, map_location="cpu", weights_only=True) for p in (exported, cropped))
    assert raw["pos_embed"].shape[1] == 1 + 37 * 37 and raw28["pos_embed"].shape[1] == 1 + 2 * 2

    s = OmegaConf.load(out / "config.yaml").student
    vits.__dict__.setdefault(s.arch, vit_test)
    hub = _make_dinov2_model(arch_name=s.arch, patch_size=14, init_values=s.layerscale, ffn_layer=s.ffn_layer,
                             block_chunks=0, num_register_tokens=s.num_register_tokens, pretrained=False)
    hub.load_state_dict(raw, strict=True)  # img_size: the constructor's default, 518
    with pytest.raises(RuntimeError, match="pos_embed"):
        hub.load_state_dict(raw28, strict=True)
