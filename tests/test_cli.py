"""One CLI vocabulary (issue 23): DINOv2's inherited help texts say what the option does here, the backbone
option has the same names everywhere, the dense probes' --image-size help states their own default, and the
benchmark runs on the GPU of a GPU node by default."""

import argparse

import pytest


def _help(parser: argparse.ArgumentParser) -> str:
    return parser.format_help()


def test_launcher_help_has_no_dinov2_leftovers():
    from dinov2_eqcoh.run.train import get_args_parser

    text = _help(get_args_parser())
    assert "Yacs" not in text and "LazyConfig" not in text and "--eval-only" not in text
    assert "time limit in minutes" in text and "python -m dinov2_eqcoh.run.train" in text
    assert "submitting the same command again resumes" in " ".join(text.split())


@pytest.mark.parametrize("module", ["homography", "segmentation", "propagation"])
def test_dense_probe_image_size_help_states_its_own_default(module):
    import importlib

    mod = importlib.import_module(f"dinov2_eqcoh.eval.{module}")
    text = " ".join(_help(mod.get_args_parser()).split())
    assert "the config's crops.global_crops_size" not in text
    assert "(default 64" in text or "(default 480 for DAVIS" in text


def test_weights_and_checkpoint_name_the_same_option_everywhere():
    from dinov2_eqcoh.eval.equivariance import get_args_parser as eq
    from dinov2_eqcoh.weights.export import get_args_parser as export

    for parser, dest in ((eq(), "weights"), (export(), "checkpoint")):
        for flag in ("--weights", "--checkpoint"):
            args = parser.parse_args([flag, "x.pth", "--output-dir" if dest == "weights" else "--output", "o"])
            assert getattr(args, dest) == "x.pth"


def test_bench_device_defaults_to_the_gpu_when_there_is_one(monkeypatch):
    import torch

    from dinov2_eqcoh.experiments.bench.cli import check_args, get_args_parser

    for available, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda a=available: a)
        args = get_args_parser().parse_args(["--preset", "tiny"])
        try:
            check_args(args)
        except SystemExit:  # cuda "available" but absent: refused later, after the default was chosen
            pass
        assert args.device == expected
