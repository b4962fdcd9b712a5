# SPDX-License-Identifier: Apache-2.0
"""Where DINOv2 meets the plugin: the one module that joins the method to config, run folders and weights I/O.

DINOv2 builds the class a config names in `train.meta_arch` (patch 0001); every shipped config names
`dinov2_eqcoh.meta_arch:EqCohMetaArch`, defined here as the method (`dinov2_eqcoh.method.EqCohSSLMetaArch`) plus
DINOv2's three seams, each a call into another subpackage:

1. config build: DINOv2's `get_cfg_from_args` calls `EqCohMetaArch.build_cfg` with the configs and its own
   arguments; it merges the plugin's defaults strictly and checks the values (`dinov2_eqcoh.method.config`),
   checks the training dataset (`dinov2_eqcoh.data.datasets.check_training_dataset`) and then the run folder
   (`dinov2_eqcoh.run.folder.start_run` with `--output-dir` and `--no-resume`), all before DINOv2 writes or loads
   anything in the folder. What the folder check decided comes back as a record, `eqcoh.start`, in the config;
2. the start, once DINOv2's log and process group exist (`prepare_for_distributed_training`, before DINOv2
   resumes): that record is logged, and a resume whose newest checkpoint is damaged resumes the newest readable
   one on every rank (`dinov2_eqcoh.run.folder.resume_readable`). A model that is never prepared for training (a
   tool's, or one built on the meta device to compare layouts) does neither;
3. pretrained weights: `student.pretrained_weights` is loaded by
   `dinov2_eqcoh.weights.checkpoints.load_pretrained_backbone` (released raw state dicts, HF / timm weights,
   position-embedding interpolation, chunked blocks, strict keys) instead of DINOv2's `{"model": ...}` loader.

Nothing in `dinov2_eqcoh.method` imports this module (tests/test_layout.py checks the import graph).
"""

from __future__ import annotations

import copy
import logging
from argparse import Namespace

from omegaconf import DictConfig, open_dict

from dinov2_eqcoh.data.datasets import check_training_dataset
from dinov2_eqcoh.method.config import build_cfg
from dinov2_eqcoh.method.ssl_meta_arch import EqCohSSLMetaArch
from dinov2_eqcoh.run.folder import log_start, resume_readable, start_run
from dinov2_eqcoh.weights.checkpoints import load_pretrained_backbone

logger = logging.getLogger("dinov2.eqcoh")

__all__ = ["EqCohMetaArch"]


class EqCohMetaArch(EqCohSSLMetaArch):
    """`EqCohSSLMetaArch` as DINOv2 trains it: with the config, run-folder and pretrained-weights seams.

    Args:
        cfg: The full training config (DINOv2's keys plus `eqcoh.*`), as `build_cfg` returned it.
    """

    def __init__(self, cfg: DictConfig) -> None:
        pretrained_weights = cfg.student.pretrained_weights
        base_cfg = cfg
        if pretrained_weights:  # DINOv2's loader wants {"model": ...}: keep it away, load ours below
            base_cfg = copy.deepcopy(cfg)
            with open_dict(base_cfg):
                base_cfg.student.pretrained_weights = ""
        super().__init__(base_cfg)
        self.cfg = cfg
        if pretrained_weights:
            logger.info(f"OPTIONS -- pretrained weights: loading from {pretrained_weights}")
            load_pretrained_backbone(self.student.backbone, pretrained_weights)

    def prepare_for_distributed_training(self) -> None:
        """DINOv2's step after building the model, before it resumes: the start's record first (seam 2)."""
        start = self.cfg.eqcoh.get("start")
        if start:
            log_start(start)  # what the run-folder check decided (resume, changed keys), now that DINOv2's log exists
            resume_readable(start, self.cfg.train.output_dir)  # a damaged newest checkpoint (run/recover.py)
        super().prepare_for_distributed_training()

    @classmethod
    def build_cfg(cls, default_cfg: DictConfig, file_cfg: DictConfig, cli_cfg: DictConfig,
                  args: Namespace | None) -> DictConfig:
        """Called by DINOv2's `get_cfg_from_args` (patch 0001): the strict config, the dataset and run-folder checks.

        Args:
            default_cfg, file_cfg, cli_cfg: DINOv2's defaults, `--config-file` and the command line's `key=value`s.
            args: DINOv2's training arguments: `--output-dir` (the run folder checked) and `--no-resume`. None
                checks no folder (a tool building a config).
        """
        cfg = build_cfg(default_cfg, file_cfg, cli_cfg)
        check_training_dataset(cfg)  # an ImageFolder root that is missing or empty fails now, not after the model
        output_dir = getattr(args, "output_dir", "") if args is not None else ""
        if output_dir:  # before DINOv2 writes or loads anything in --output-dir (dinov2_eqcoh.run.folder)
            start = start_run(cfg, output_dir, no_resume=bool(getattr(args, "no_resume", False)))
            with open_dict(cfg):
                cfg.eqcoh.start = start
        return cfg
