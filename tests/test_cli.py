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


def _cli_parsers():
    """(module, parser) of every command-line tool of the package: each module with a `get_args_parser`."""
    import importlib
    import pkgutil

    import dinov2_eqcoh

    out = []
    for info in pkgutil.walk_packages(dinov2_eqcoh.__path__, "dinov2_eqcoh."):
        mod = importlib.import_module(info.name)
        if callable(getattr(mod, "get_args_parser", None)) and mod.__name__ == info.name:
            try:
                parser = mod.get_args_parser()
            except TypeError:  # DINOv2's own get_args_parser(add_help=...) re-exported: not ours
                continue
            out.append((info.name, parser))
    return out


def test_every_option_of_every_tool_has_help_and_output_means_a_file_output_dir_a_folder():
    parsers = _cli_parsers()
    assert len(parsers) >= 15
    missing, wrong = [], []
    for name, parser in parsers:
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings:
                continue
            if not action.help:
                missing.append(f"{name} {action.option_strings[0]}")
            text = (action.help or "").lower()
            if action.option_strings[0] == "--output" and not any(w in text for w in ("file", ".png", ".json", ".pth")):
                wrong.append(f"{name} --output: {action.help!r} names no file")
            if action.option_strings[0] == "--output-dir" and not any(w in text for w in ("folder", "where", "dir")):
                wrong.append(f"{name} --output-dir: {action.help!r} names no folder")
    assert not missing, "options without help: " + ", ".join(missing)
    assert not wrong, "; ".join(wrong)


def test_no_help_text_cites_an_issue_or_a_development_part():
    import re

    pattern = re.compile(r"\b[Ii]ssue\s*#?\d+|\bpart \d+\b")
    assert pattern.search("Learning curves (issue 29, part 3)") and not pattern.search("the pipeline's parts")
    bad = [f"{name}: {m.group(0)!r}" for name, parser in _cli_parsers()
           for m in [pattern.search(" ".join(parser.format_help().split()))] if m]
    assert not bad, "help texts that cite development history: " + ", ".join(bad)
