# SPDX-License-Identifier: Apache-2.0
"""Train DINOv2 + EqCoh: `python -m dinov2_eqcoh.train --config-file F --output-dir D [key=value ...]`.

DINOv2's own argument parser and `dinov2.train.train.main`; the config file picks the plugin's pieces through
`train.meta_arch` (and the plugin defaults the data seams). A file that names no meta-architecture gets
`EqCohMetaArch`. Same as `python -m dinov2.train.train` with such a file, plus a log line with the DINOv2 pin.
"""

from __future__ import annotations

from typing import Sequence

from omegaconf import OmegaConf

META_ARCH = "dinov2_eqcoh.meta_arch:EqCohMetaArch"


def main(argv: Sequence[str] | None = None) -> None:
    """Parse DINOv2's training arguments and run DINOv2's training `main`."""
    from dinov2.train.train import get_args_parser
    from dinov2.train.train import main as dinov2_main

    from dinov2_eqcoh.run.train import INHERITED_HELP

    parser = get_args_parser(add_help=True)
    parser.prog = "python -m dinov2_eqcoh.train"
    for action in parser._actions:  # DINOv2's help texts where they mislead (Yacs syntax)
        if action.dest in ("opts", "config_file", "no_resume"):
            action.help = INHERITED_HELP[action.dest]
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error("--config-file is required (e.g. configs/train/vitl16_in1k_ep100_eqcoh_se2.yaml)")
    if not OmegaConf.select(OmegaConf.load(args.config_file), "train.meta_arch", default=""):
        args.opts = [f"train.meta_arch={META_ARCH}", *(args.opts or [])]  # the command line still wins
    from dinov2_eqcoh import _upstream

    _upstream.check_patched_dinov2()
    pin = _upstream.pin()
    # printed: DINOv2's main sets up logging only later
    print(f"dinov2_eqcoh: DINOv2 {pin.get('url', '?')} @ {pin.get('commit', '?')} + patches/", flush=True)
    from dinov2_eqcoh.run.folder import RunFolderError
    from dinov2_eqcoh.run.lock import RunFolderLockedError

    try:
        dinov2_main(args)
    except (RunFolderError, RunFolderLockedError) as e:  # raised before anything was written: the message says it all
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
