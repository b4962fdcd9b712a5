"""The cost benchmark `python -m dinov2_eqcoh.experiments.bench`: runs end to end, reports consistent figures, really alternates.

No timing thresholds here: the targets live in docs/benchmarks.md and are checked by running the benchmark.
"""

import json

import pytest
import torch
from helpers import PYTHON, run

from dinov2_eqcoh.experiments import bench

TINY_ARGS = ["--preset", "tiny", "--iters", "3", "--warmup", "1", "--aug-rounds", "2", "--memory-iters", "1"]


@pytest.mark.slow
def test_tiny_preset_end_to_end_writes_the_documented_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run([PYTHON, "-m", "dinov2_eqcoh.experiments.bench", *TINY_ARGS, "--output", out], timeout=300)
    report = json.loads(out.read_text())

    # the table and the progress lines went to stdout
    assert "step time, s: median [IQR]" in proc.stdout and "augmentation, samples/s/worker" in proc.stdout
    assert "[bench" in proc.stdout
    for key in ("preset", "command", "batch_size", "machine", "parameters", "flops", "step_time", "memory",
                "augmentation"):
        assert key in report, key
    assert report["preset"] == "tiny" and report["batch_size"] == 4
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["cores"] >= 1

    st = report["step_time"]
    for name in bench.MODELS:
        s = st[name]
        assert s["n"] == 3 and len(s["times_s"]) == 3
        assert s["median_s"] > 0 and s["min_s"] <= s["q1_s"] <= s["median_s"] <= s["q3_s"] <= s["max_s"]
    assert st["ratio_of_medians"] == pytest.approx(st["eqcoh"]["median_s"] / st["dinov2"]["median_s"])
    # both models really trained: DINOv2's losses for both, the reconstruction loss only for EqCoh, all finite
    assert "eqcoh_recon_loss" in st["loss_keys"]["eqcoh"]
    assert "eqcoh_recon_loss" not in st["loss_keys"]["dinov2"]
    assert set(st["loss_keys"]["dinov2"]) < set(st["loss_keys"]["eqcoh"])
    assert all(torch.isfinite(torch.tensor(v)) for losses in st["last_losses"].values() for v in losses.values())

    mem = report["memory"]
    assert mem["dinov2"]["peak_bytes"] > 0 and mem["eqcoh"]["peak_bytes"] > 0
    assert mem["ratio"] == pytest.approx(mem["eqcoh"]["peak_bytes"] / mem["dinov2"]["peak_bytes"])
    assert "eqcoh_recon_loss" in mem["eqcoh"]["loss_keys"] and "eqcoh_recon_loss" not in mem["dinov2"]["loss_keys"]
    assert mem["method"]

    aug = report["augmentation"]
    for name in bench.MODELS:
        assert aug[name]["samples_per_s_median"] == pytest.approx(4 / aug[name]["median_s"])
    assert aug["ratio"] == pytest.approx(aug["eqcoh"]["samples_per_s_median"] / aug["dinov2"]["samples_per_s_median"])
    # the worker delivers θ; v2 and the targets u_k are rendered in the step, on the training device
    assert "eqcoh_theta" in aug["eqcoh"]["batch_keys"] and "eqcoh_theta" not in aug["dinov2"]["batch_keys"]
    assert "eqcoh_targets" not in aug["eqcoh"]["batch_keys"]

    fl = report["flops"]  # counted on the meta device: deterministic, so the method's extra modules must show up
    assert fl["eqcoh"]["total"] > fl["dinov2"]["total"] > 0
    assert fl["ratio"] == pytest.approx(fl["eqcoh"]["total"] / fl["dinov2"]["total"])
    assert fl["eqcoh"]["by_module"]["EqCohDecoders"] > 0 and fl["eqcoh"]["by_module"]["EqCohHead"] > 0
    assert "EqCohDecoders" not in fl["dinov2"]["by_module"]
    assert fl["eqcoh"]["by_module"]["DinoVisionTransformer"] == fl["dinov2"]["by_module"]["DinoVisionTransformer"]

    p = report["parameters"]
    assert p["eqcoh"]["student"] > p["dinov2"]["student"]
    assert p["student_ratio"] == pytest.approx(p["eqcoh"]["student"] / p["dinov2"]["student"])


def test_step_time_alternates_the_two_models_step_by_step(monkeypatch):
    """Record which meta-arch DINOv2's forward_backward runs for (EqCoh's goes through it via super())."""
    from dinov2.train.ssl_meta_arch import SSLMetaArch

    calls = []
    original = SSLMetaArch.forward_backward

    def recording(self, images, teacher_temp):
        calls.append(type(self).__name__)
        return original(self, images, teacher_temp)

    monkeypatch.setattr(SSLMetaArch, "forward_backward", recording)
    cfg = bench.build_bench_cfg("tiny")
    result = bench.measure_step_time(cfg, iters=3, warmup=1, device=torch.device("cpu"), seed=0,
                                     images=bench.render_images(cfg, 8, 48))

    names = {"SSLMetaArch": "dinov2", "EqCohMetaArch": "eqcoh"}
    recorded = [names[c] for c in calls]
    # ABBA: every step runs both models, and the one that goes first flips every step
    assert recorded == ["dinov2", "eqcoh", "eqcoh", "dinov2", "dinov2", "eqcoh", "eqcoh", "dinov2"]
    assert result["order"] == recorded[2:]  # the timed steps, after one warm-up step of each
    assert len(result["dinov2"]["times_s"]) == len(result["eqcoh"]["times_s"]) == 3


def test_augmentation_alternates_the_two_pipelines_batch_by_batch(monkeypatch):
    from dinov2.data.augmentations import DataAugmentationDINO

    from dinov2_eqcoh.method.augmentation import DataAugmentationEqCoh

    calls = []
    for cls in (DataAugmentationDINO, DataAugmentationEqCoh):
        original = cls.__call__

        def recording(self, image, _original=original, _name=cls.__name__):
            calls.append(_name)
            return _original(self, image)

        monkeypatch.setattr(cls, "__call__", recording)
    cfg = bench.build_bench_cfg("tiny")
    result = bench.measure_augmentation(cfg, bench.render_images(cfg, 8, 48), rounds=2, warmup=1, batch_size=4, seed=0)

    # the plugin's augmentation calls DINOv2's (for the crops) and adds θ
    dino, eq = ["DataAugmentationDINO"] * 4, ["DataAugmentationEqCoh", "DataAugmentationDINO"] * 4
    assert calls == dino + eq + eq + dino + dino + eq  # one warm-up round, then 2 timed rounds, ABBA
    assert result["order"] == ["eqcoh", "dinov2", "dinov2", "eqcoh"]
    assert result["eqcoh"]["samples_per_s_median"] > 0 and result["dinov2"]["samples_per_s_median"] > 0


def test_vitl16_preset_is_the_papers_setting_built_without_allocating():
    """The GPU preset's config builds, and on the meta device the method adds exactly the paper's modules."""
    cfg = bench.build_bench_cfg("vitl16")
    assert (cfg.student.arch, cfg.student.patch_size, cfg.crops.global_crops_size) == ("vit_large", 16, 224)
    assert (cfg.eqcoh.d_patch, cfg.eqcoh.d_equi, cfg.eqcoh.n_intermediate, cfg.eqcoh.decoder.dim) == (2048, 512, 2, 256)
    assert cfg.eqcoh.transform == "se2" and cfg.eqcoh.loss_weight == 1.0
    p = bench.count_parameters(cfg)
    D, d_patch, d_equi, C, K = 1024, 2048, 512, 256, 2
    eqcoh_head = D * d_patch + d_patch
    decoder = 2 * d_equi * C + C  # Linear(2·d_equi -> C), then 4 convs 3x3: C -> C/2 -> C/4 -> C/8 -> 3
    for c_in, c_out in ((C, C // 2), (C // 2, C // 4), (C // 4, C // 8), (C // 8, 3)):
        decoder += c_in * c_out * 9 + c_out
    dino_head_first_layer = (d_patch - d_equi - D) * 2048  # DINOv2's head now reads z_inv (1536) instead of 1024
    expected = eqcoh_head + K * decoder + dino_head_first_layer
    assert p["eqcoh"]["student"] - p["dinov2"]["student"] == expected
    assert p["eqcoh"]["teacher"] - p["dinov2"]["teacher"] == eqcoh_head + dino_head_first_layer  # no decoders
    assert p["dinov2"]["student_modules"]["backbone"] == p["eqcoh"]["student_modules"]["backbone"]


def test_bad_arguments_name_the_option():
    with pytest.raises(SystemExit, match="--iters = 0 must be >= 1"):
        bench.main(["--iters", "0"])
    with pytest.raises(ValueError, match="unknown preset 'vitx'.*tiny"):
        bench.build_bench_cfg("vitx")
    with pytest.raises(Exception, match="eqcoh.decoder.dimm"):  # a mistyped --opt is refused by the plugin's config
        bench.build_bench_cfg("tiny", extra_opts=["eqcoh.decoder.dimm=8"])


def test_config_overrides_are_positional_key_values_as_everywhere_and_opt_still_works():
    from dinov2_eqcoh.experiments.bench.cli import check_args, get_args_parser

    args = get_args_parser().parse_args(["--opt", "eqcoh.d_equi=32", "eqcoh.decoder.dim=128", "optim.clip_grad=1.0"])
    check_args(args)
    assert args.opts == ["eqcoh.d_equi=32", "eqcoh.decoder.dim=128", "optim.clip_grad=1.0"]
    with pytest.raises(SystemExit, match="KEY=VALUE, got \\['eqcoh.decoder.dim'\\]"):
        check_args(get_args_parser().parse_args(["eqcoh.decoder.dim"]))
