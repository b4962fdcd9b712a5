"""Interop with HF transformers and timm (`dinov2_eqcoh.weights.interop`, `export --format`), with the real libraries.

Every model is randomly initialised (nothing is downloaded) and then given random weights of unit scale, so that
attention, layer scale and every FFN matter (DINOv2's init, LayerScale 1e-5, would let a wrong block mapping pass).
Equality: our DinoVisionTransformer, transformers' Dinov2Model / Dinov2WithRegistersModel and timm's
VisionTransformer on the same weights give the same CLS and patch tokens within TOL at 518 px. At 224 px each
library interpolates the position table its own way: the difference is bounded by BOUND_224 (docs/checkpoints.md)
and disappears when the export resizes the table by DINOv2's rule (`--image-size 224`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import timm
import torch
import transformers
from helpers import PYTHON, REPO, read_metrics, run
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from dinov2_eqcoh.weights.checkpoints import build_backbone_for_checkpoint, load_backbone

TOL = 1e-4  # max |difference| of CLS and patch tokens at the export's own resolution
BOUND_224 = 0.1  # models without registers at 224 px (measured: HF 0.031, timm 0.061; docs/checkpoints.md)
TINY = "configs/tiny/eqcoh_cpu.yaml"

# the backbones compared: DINOv2 `student.*` options at 518 px, patch 14
VARIANTS = {
    "vits14": ["student.arch=vit_small"],
    "reg4": ["student.arch=dinov2_eqcoh.models:vit_test", "student.num_register_tokens=4",
             "student.interpolate_antialias=true", "student.interpolate_offset=0.0"],  # as the hub's *_reg models
    "swiglu": ["student.arch=dinov2_eqcoh.models:vit_test", "student.ffn_layer=swiglufused"],
    "chunked_reg4_swiglu": ["student.arch=dinov2_eqcoh.models:vit_mini", "student.block_chunks=2",
                            "student.num_register_tokens=4", "student.ffn_layer=swiglu"],
    "no_biases_no_layerscale": ["student.arch=dinov2_eqcoh.models:vit_test", "student.layerscale=0",
                                "student.qkv_bias=false", "student.proj_bias=false", "student.ffn_bias=false"],
}


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Unit-scale random weights by parameter name, the same rule for DINOv2, HF and timm models."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("gamma", "lambda1"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif "norm" in name and leaf == "weight":
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "pos_embed" in name or "position_embeddings" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))  # DINOv2's init scale
            elif p.dim() >= 2 and "token" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def images(size: int, n: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def ours(backbone, x) -> torch.Tensor:
    """[CLS, registers, patches] normed, as HF's last_hidden_state and timm's forward_features."""
    with torch.no_grad():
        o = backbone.forward_features(x)
    return torch.cat([o["x_norm_clstoken"][:, None], o["x_norm_regtokens"], o["x_norm_patchtokens"]], dim=1)


def max_diffs(ref: torch.Tensor, other: torch.Tensor, registers: int) -> tuple[float, float]:
    """(max |Δ| on CLS, max |Δ| on patch tokens)."""
    assert other.shape == ref.shape, (other.shape, ref.shape)
    d = (ref - other).abs()
    return float(d[:, 0].max()), float(d[:, 1 + registers:].max())


def hf_load(folder):
    model, info = transformers.AutoModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def hf_tokens(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x).last_hidden_state


def timm_tokens(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(x)


class Run:
    """A random backbone saved as a run's eval/training_9/teacher_checkpoint.pth with its config.yaml."""

    def __init__(self, root: Path, opts, seed=0):
        from dinov2.configs import dinov2_default_config

        self.opts = ["student.patch_size=14", "crops.global_crops_size=518", *opts]
        cfg = OmegaConf.merge(OmegaConf.create(dinov2_default_config), OmegaConf.from_dotlist(self.opts))
        self.backbone = randomize(build_backbone_for_checkpoint(cfg), seed)
        self.registers = int(cfg.student.num_register_tokens)
        self.root = root
        self.config = root / "config.yaml"
        self.config.write_text(OmegaConf.to_yaml(cfg))
        self.checkpoint = root / "eval" / "training_9" / "teacher_checkpoint.pth"
        self.checkpoint.parent.mkdir(parents=True)
        torch.save({"teacher": {f"backbone.{k}": v for k, v in self.backbone.state_dict().items()}}, self.checkpoint)

    def export(self, fmt: str, image_size: int | None = None) -> Path:
        from dinov2_eqcoh.weights.export import main

        out = self.root / f"export_{fmt}_{image_size}" / ("backbone.pth" if fmt == "hub" else "")
        argv = ["--format", fmt, "--config-file", str(self.config), "--checkpoint", str(self.checkpoint),
                "--output", str(out)] + (["--image-size", str(image_size)] if image_size else [])
        assert main(argv) == 0
        return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = {}

    def get(variant):
        if variant not in cache:
            cache[variant] = Run(tmp_path_factory.mktemp(variant), VARIANTS[variant])
        return cache[variant]

    return get


# ---------------------------------------------------------------------------------------------------------------
# export: the same function in all three libraries
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exports_compute_our_backbone_in_hf_and_timm_at_518(runs, variant):
    r = runs(variant)
    hf_dir, timm_dir = r.export("hf"), r.export("timm")
    hf = hf_load(hf_dir)
    assert type(hf).__name__ == ("Dinov2WithRegistersModel" if r.registers else "Dinov2Model")
    tm = timm.create_model(f"local-dir:{timm_dir}", pretrained=True).eval()
    x = images(518)
    ref = ours(r.backbone, x)
    for name, out in (("hf", hf_tokens(hf, x)), ("timm", timm_tokens(tm, x))):
        cls_d, patch_d = max_diffs(ref, out, r.registers)
        assert cls_d <= TOL and patch_d <= TOL, f"{variant} {name}: CLS {cls_d:.2e}, patches {patch_d:.2e}"
    if variant == "vits14":
        processor = transformers.AutoImageProcessor.from_pretrained(hf_dir)
        assert processor.crop_size == {"height": 518, "width": 518}
        back, _ = load_backbone(hf_dir)  # and back, from inside the run folder
        original = r.backbone.state_dict()
        assert all(torch.equal(v, original[k]) for k, v in back.state_dict().items())
    else:
        for folder in (hf_dir, timm_dir):
            back, _ = load_backbone(folder)
            assert max(max_diffs(ref, ours(back, x), r.registers)) <= TOL, folder


def test_negative_control_a_wrong_mapping_is_detected(runs, tmp_path):
    """Swapping query and key in the HF file, or not folding the class position into timm's cls_token, breaks
    the equality by orders of magnitude more than TOL (the comparison can fail)."""
    r = runs("reg4")
    hf_dir = r.export("hf")
    state = load_file(hf_dir / "model.safetensors")
    q, k = "encoder.layer.0.attention.attention.query.weight", "encoder.layer.0.attention.attention.key.weight"
    state[q], state[k] = state[k], state[q]
    save_file(state, hf_dir / "model.safetensors", metadata={"format": "pt"})
    x = images(518)
    ref = ours(r.backbone, x)
    assert max(max_diffs(ref, hf_tokens(hf_load(hf_dir), x), r.registers)) > 1e-2

    timm_dir = r.export("timm")
    state = load_file(timm_dir / "model.safetensors")
    state["cls_token"] = r.backbone.state_dict()["cls_token"]  # without + pos_embed[:, 0]
    save_file(state, timm_dir / "model.safetensors", metadata={"format": "pt"})
    tm = timm.create_model(f"local-dir:{timm_dir}", pretrained=True).eval()
    assert max_diffs(ref, timm_tokens(tm, x), r.registers)[0] > 1e-2


@pytest.mark.parametrize("variant", ["vits14", "reg4"])
def test_224_px_differs_only_by_each_librarys_interpolation(runs, variant):
    """At 224 px HF and timm interpolate the 37x37 table differently from DINOv2 (no +0.1 offset; timm with
    antialias): bounded by BOUND_224 without registers, exact for register models with the hub's settings.
    Exporting with --image-size 224 resizes the table by DINOv2's rule: exact again."""
    r = runs(variant)
    x = images(224)
    ref = ours(r.backbone, x)
    hf = hf_load(r.export("hf"))
    tm = timm.create_model(f"local-dir:{r.export('timm')}", pretrained=True, img_size=224).eval()
    bound = BOUND_224 if not r.registers else TOL
    for name, out in (("hf", hf_tokens(hf, x)), ("timm", timm_tokens(tm, x))):
        cls_d, patch_d = max_diffs(ref, out, r.registers)
        assert cls_d <= bound and patch_d <= bound, f"{variant} {name} 224 px: CLS {cls_d:.3g}, patches {patch_d:.3g}"
    hf = hf_load(r.export("hf", image_size=224))
    tm = timm.create_model(f"local-dir:{r.export('timm', image_size=224)}", pretrained=True).eval()
    for name, out in (("hf", hf_tokens(hf, x)), ("timm", timm_tokens(tm, x))):
        assert max(max_diffs(ref, out, r.registers)) <= TOL, name


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_timm_export_is_what_timms_dinov2_filter_makes_of_the_hub_file(runs, variant):
    """timm's own checkpoint_filter_fn on our hub export (Meta's layout) gives our timm export, tensor for tensor
    (plus the zero biases timm needs where DINOv2 has none)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    r = runs(variant)
    hub = torch.load(r.export("hub"), map_location="cpu", weights_only=True)
    ours_timm = load_file(r.export("timm") / "model.safetensors")
    model = timm.create_model(f"local-dir:{r.export('timm')}", pretrained=False)
    filtered = checkpoint_filter_fn(dict(hub), model)
    assert set(filtered) <= set(ours_timm)
    for key, value in filtered.items():
        assert torch.equal(value, ours_timm[key]), key
    for key in set(ours_timm) - set(filtered):
        assert key.endswith(".bias") and not ours_timm[key].any(), key
    assert set(ours_timm) == set(model.state_dict())


def test_released_sizes_load_by_timm_name_from_either_file(runs):
    """The README one-liners: timm's named DINOv2 model reads the hub export (through its filter) and the timm
    export's model.safetensors."""
    r = runs("vits14")
    x = images(518)
    ref = ours(r.backbone, x)
    from_hub = timm.create_model("vit_small_patch14_dinov2", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(r.export("hub")))).eval()
    assert max(max_diffs(ref, timm_tokens(from_hub, x), 0)) <= TOL
    from_timm = timm.create_model("vit_small_patch14_dinov2", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(r.export("timm") / "model.safetensors")))
    for key, value in from_hub.state_dict().items():
        assert torch.equal(value, from_timm.state_dict()[key]), key


# ---------------------------------------------------------------------------------------------------------------
# import: the libraries' own models and files
# ---------------------------------------------------------------------------------------------------------------


def _hf_model(registers=0, swiglu=False, patch=14, image_size=224, classifier=False, seed=3):
    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=patch,
                  image_size=image_size, use_swiglu_ffn=swiglu)
    if registers:
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
        cls = transformers.Dinov2WithRegistersModel
    else:
        config = transformers.Dinov2Config(**common)
        cls = transformers.Dinov2ForImageClassification if classifier else transformers.Dinov2Model
    if classifier:
        config.num_labels = 3
    return randomize(cls(config), seed)


@pytest.mark.parametrize("registers,swiglu", [(0, False), (4, True)])
def test_hf_folders_files_and_both_key_layouts_import(tmp_path, registers, swiglu):
    """save_pretrained's folder, its model.safetensors, and a torch file of the in-memory state dict (the key
    layout of transformers >= 5.17: q_proj, gate_proj, ...) load strictly and compute HF's function."""
    hf = _hf_model(registers, swiglu)
    hf.save_pretrained(tmp_path / "hf")
    torch.save(hf.state_dict(), tmp_path / "in_memory.bin")
    x = images(224)
    ref = hf_tokens(hf, x)
    for path in (tmp_path / "hf", tmp_path / "hf" / "model.safetensors", tmp_path / "in_memory.bin"):
        backbone, _ = load_backbone(path)
        assert max(max_diffs(ref, ours(backbone, x), registers)) <= TOL, path


def test_hf_classifier_folder_imports_its_backbone(tmp_path):
    hf = _hf_model(classifier=True)
    hf.save_pretrained(tmp_path / "cls")
    backbone, _ = load_backbone(tmp_path / "cls")
    x = images(224)
    assert max(max_diffs(hf_tokens(hf.dinov2, x), ours(backbone, x), 0)) <= TOL


@pytest.mark.parametrize("name,kwargs", [
    ("vit_small_patch14_dinov2", {}),
    ("vit_small_patch14_reg4_dinov2", {}),
    ("vit_giant_patch14_dinov2", {"mlp_ratio": 2 * 176 / 64}),  # packed SwiGLU, DINOv2's width for 64-d
])
def test_timm_checkpoints_import(tmp_path, name, kwargs):
    """timm's state dict as a .pth, a .safetensors and a timm training checkpoint (state_dict_ema preferred)."""
    tm = randomize(timm.create_model(name, pretrained=False, embed_dim=64, depth=2, num_heads=2, img_size=224,
                                     **kwargs), 5)
    registers = tm.num_reg_tokens
    torch.save(tm.state_dict(), tmp_path / "timm.pth")
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, tmp_path / "timm.safetensors")
    noise = {k: torch.randn_like(v) for k, v in tm.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": noise, "state_dict_ema": tm.state_dict()}, tmp_path / "train.pth.tar")
    x = images(224)
    ref = timm_tokens(tm, x)
    for path in ("timm.pth", "timm.safetensors", "train.pth.tar"):
        backbone, _ = load_backbone(tmp_path / path)
        assert max(max_diffs(ref, ours(backbone, x), registers)) <= TOL, path


def test_foreign_files_load_strictly(tmp_path):
    """A missing tensor or an unknown one fails the load and is named, in DINOv2's terms or the file's."""
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    missing = {k: v for k, v in state.items() if k != "encoder.layer.1.norm2.weight"}
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(KeyError, match=r"missing from the weights: blocks\.1\.norm2\.weight"):
        load_backbone(tmp_path / "missing.safetensors")
    extra = dict(state, **{"encoder.layer.0.adapter.weight": torch.zeros(2, 2)})
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(KeyError, match=r"unexpected in the weights: encoder\.layer\.0\.adapter\.weight"):
        load_backbone(tmp_path / "extra.safetensors")
    tm = timm.create_model("vit_small_patch14_dinov2", pretrained=False, embed_dim=64, depth=2, num_heads=2,
                           img_size=224)
    torch.save({k: v for k, v in tm.state_dict().items() if not k.startswith("norm.")}, tmp_path / "timm.pth")
    with pytest.raises(KeyError, match=r"missing from the weights: norm\.weight, norm\.bias"):
        load_backbone(tmp_path / "timm.pth")


@pytest.mark.slow
def test_hf_folder_seeds_eqcoh_training(tmp_path):
    """student.pretrained_weights=<HF folder>: the student starts with HF's weights, and DINOv2's training loop
    runs the tiny EqCoh config from them."""
    from dinov2_eqcoh.meta_arch import EqCohMetaArch
    from dinov2_eqcoh.method.config import load_config

    hf = _hf_model(patch=8, image_size=32, seed=11)  # the tiny config's backbone: vit_test, patch 8, 32 px crops
    hf.save_pretrained(tmp_path / "hf")
    model = EqCohMetaArch(load_config(REPO / TINY, [f"student.pretrained_weights={tmp_path / 'hf'}"]))
    x = images(32, n=2)
    assert max(max_diffs(hf_tokens(hf, x), ours(model.student.backbone.eval(), x), 0)) <= TOL

    out = tmp_path / "run"
    proc = run([PYTHON, "-m", "dinov2_eqcoh.train", "--config-file", TINY, "--output-dir", out,
                f"student.pretrained_weights={tmp_path / 'hf'}"])
    assert f"from {tmp_path / 'hf'} (strict)" in proc.stdout
    metrics = read_metrics(out)
    assert metrics[-1]["iteration"] == 3 and all(math.isfinite(m["total_loss"]) for m in metrics)  # 4 iterations
    assert "eqcoh_recon_loss" in metrics[-1]


# ---------------------------------------------------------------------------------------------------------------
# eval CLIs: DINOv2's argument names and dataset strings, small folders
# ---------------------------------------------------------------------------------------------------------------


def _png_folder(root: Path, n: int, classes: int = 3, size: int = 40) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(n):
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(d / f"img{i}.png")
    return root


def _fake_imagenet(root: Path, monkeypatch, per_split: dict[str, int]) -> tuple[Path, Path]:
    """DINOv2's ImageNet layout (labels.txt, train/<id>/<id>_<i>.JPEG, val/<id>/ILSVRC2012_val_<i>.JPEG) with the
    extra files written by DINOv2's own dump_extra. DINOv2 asserts the full ImageNet split lengths; patched here."""
    from dinov2.data.datasets import ImageNet
    from dinov2.data.datasets.image_net import _Split
    from PIL import Image

    ids = ["n00000001", "n00000002"]
    root.mkdir(parents=True)
    (root / "labels.txt").write_text("".join(f"{c},class {c}\n" for c in ids))
    g = torch.Generator().manual_seed(0)
    for split, n in per_split.items():
        for i in range(1, n + 1):
            c = ids[i % 2]
            name = f"{c}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{i:08d}.JPEG"
            (root / split / c).mkdir(parents=True, exist_ok=True)
            pixels = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / split / c / name, format="JPEG")
    lengths = {_Split[s.upper()]: n for s, n in per_split.items()}
    monkeypatch.setattr(_Split, "length", property(lambda self: lengths[self]))
    extra = root.parent / "extra"
    extra.mkdir()
    for split in per_split:
        ImageNet(split=ImageNet.Split[split.upper()], root=str(root), extra=str(extra)).dump_extra()
    return root, extra


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_eval_clis_take_dinov2_names_strings_and_foreign_weights(tmp_path, monkeypatch):
    from dinov2_eqcoh.eval import equivariance, invariance

    hf = _hf_model(patch=8, image_size=32, seed=13)
    hf.save_pretrained(tmp_path / "hf")
    tm = randomize(timm.create_model("vit_small_patch14_dinov2", pretrained=False, embed_dim=64, depth=2,
                                     num_heads=2, img_size=28), 7)
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, tmp_path / "timm.safetensors")
    records = _Records()
    logging.getLogger("dinov2.eqcoh").addHandler(records)
    try:
        # a folder of 9 images for 60 + 30 requested: 6 fit, 3 score, with a warning
        folder = _png_folder(tmp_path / "folder", 9)
        out = tmp_path / "eq"
        assert equivariance.main([
            "--pretrained-weights", str(tmp_path / "hf"), "--config-file", str(REPO / TINY), "--output-dir", str(out),
            "--dataset", f"ImageFolder:root={folder}", "--n-train", "60", "--n-test", "30", "--tasks", "rot",
            "--features", "cls", "--epochs", "2", "--image-size", "32"]) == 0
        results = json.loads((out / "equivariance.json").read_text())
        assert (results["n_train"], results["n_test"]) == (6, 3)
        assert any("exceeds the 9 images" in m and "on 6 images (2/3)" in m and "other 3 (1/3)" in m
                   for m in records.messages), records.messages

        root, extra = _fake_imagenet(tmp_path / "imagenet", monkeypatch, {"train": 10, "val": 6})
        out = tmp_path / "eq_imagenet"
        assert equivariance.main([
            "--pretrained-weights", str(tmp_path / "timm.safetensors"), "--output-dir", str(out), "--dataset",
            f"ImageNet:split=VAL:root={root}:extra={extra}", "--n-train", "4", "--n-test", "2", "--tasks", "rot",
            "--features", "cls", "--epochs", "1", "--image-size", "28"]) == 0
        assert json.loads((out / "equivariance.json").read_text())["dataset"].startswith("ImageNet:split=VAL")

        out = tmp_path / "inv"
        assert invariance.main([
            "--pretrained-weights", str(tmp_path / "timm.safetensors"), "--output-dir", str(out),
            "--train-dataset", f"ImageNet:split=TRAIN:root={root}:extra={extra}",
            "--val-dataset", f"ImageNet:split=VAL:root={root}:extra={extra}", "--image-size", "28", "--k", "3",
            "--linear-steps", "5"]) == 0
        results = json.loads((out / "invariance.json").read_text())
        assert (results["n_train"], results["n_test"], results["num_classes"]) == (10, 6, 2)
    finally:
        logging.getLogger("dinov2.eqcoh").removeHandler(records)


def test_core_imports_none_of_the_interop_libraries(tmp_path):
    """The plugin, its loaders and eval CLIs import transformers, timm and safetensors only for such files."""
    code = (
        "import sys, torch\n"
        "import dinov2_eqcoh.meta_arch, dinov2_eqcoh.weights.export, dinov2_eqcoh.weights.interop, dinov2_eqcoh.eval.equivariance\n"
        "import dinov2_eqcoh.eval.invariance\n"
        "from dinov2_eqcoh.weights.checkpoints import load_backbone\n"
        f"backbone, _ = load_backbone({str(tmp_path / 'b.pth')!r})\n"
        "loaded = {'transformers', 'timm', 'safetensors'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    tm = timm.create_model("vit_small_patch14_dinov2", pretrained=False, embed_dim=64, depth=2, num_heads=2,
                           img_size=224)
    torch.save(tm.state_dict(), tmp_path / "b.pth")  # a timm file in torch format: converted without timm
    run([PYTHON, "-c", code])
