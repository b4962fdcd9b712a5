# SPDX-License-Identifier: Apache-2.0
"""Where DINOv2 meets the plugin: the one module that joins the method to config, run folders and weights I/O.

DINOv2 builds the class a config names in `train.meta_arch` (patch 0001); the shipped configs name
`dinov2_eqcoh.meta_arch:EqCohMetaArch`, defined here as the method (`dinov2_eqcoh.method.EqCohSSLMetaArch`) plus
DINOv2's three seams, each a call into another subpackage:

1. config build: DINOv2's `get_cfg_from_args` calls `EqCohMetaArch.build_cfg`, which merges the plugin's defaults
   strictly and checks the values (`dinov2_eqcoh.method.config.build_cfg`), checks the training dataset
   (`dinov2_eqcoh.data.datasets.check_training_dataset`) and then the run folder (`dinov2_eqcoh.run.folder`),
   all before DINOv2 writes or loads anything in `--output-dir`;
2. run-folder log: what that check decided is logged once DINOv2's log exists (`run.folder.log_pending`);
3. pretrained weights: `student.pretrained_weights` is loaded by
   `dinov2_eqcoh.weights.checkpoints.load_pretrained_backbone` (released raw state dicts, HF / timm weights,
   position-embedding interpolation, chunked blocks, strict keys) instead of DINOv2's `{"model": ...}` loader.

Nothing in `dinov2_eqcoh.method` imports this module (tests/test_layout.py checks the import graph).
"""

from __future__ import annotations

import copy
import logging

from omegaconf import DictConfig, open_dict

from dinov2_eqcoh.data.datasets import check_training_dataset
from dinov2_eqcoh.method.config import build_cfg
from dinov2_eqcoh.method.ssl_meta_arch import EqCohSSLMetaArch
from dinov2_eqcoh.run.folder import check_in_dinov2_setup, log_pending, recover_pending
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
        log_pending()  # what the run-folder check decided (resume, changed keys), now that DINOv2's log exists
        recover_pending()  # a damaged newest checkpoint: every rank resumes the newest readable one (run/recover.py)
        if pretrained_weights:
            logger.info(f"OPTIONS -- pretrained weights: loading from {pretrained_weights}")
            load_pretrained_backbone(self.student.backbone, pretrained_weights)

    @classmethod
    def build_cfg(cls, default_cfg: DictConfig, file_cfg: DictConfig, cli_cfg: DictConfig) -> DictConfig:
        """Called by DINOv2's `get_cfg_from_args`: the strict config, then the dataset and run-folder checks."""
        cfg = build_cfg(default_cfg, file_cfg, cli_cfg)
        check_training_dataset(cfg)  # an ImageFolder root that is missing or empty fails now, not after the model
        check_in_dinov2_setup(cfg)  # before DINOv2 writes or loads anything in --output-dir (dinov2_eqcoh.run.folder)
        return cfg
