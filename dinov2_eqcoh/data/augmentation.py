"""The method's per-image augmentation: DINOv2's multi-crop plus the known transformation g_θ of the second crop.

For an image I, DINOv2's `DataAugmentationDINO` makes v1 = A1(I), u = A2(I) and the local crops. The method then
draws θ, shows the network v2 = g_θ(u) instead of u, and keeps the K intermediate states u_k = g_{kθ/(K+1)}(u) as
reconstruction targets (METHOD.md). This module wraps DINOv2's augmentation object (it does not copy it): the crops
come from that object's own `geometric_augmentation_global`, `global_transfo1/2`, `geometric_augmentation_local` and
`local_transfo`, called in DINOv2's order, so v1, u and the local crops are the ones DINOv2 would make under the same
random state. θ comes from a private `torch.Generator`, so the global `random`/`torch` streams DINOv2's crops draw
from are left untouched.

`build_data_transform(cfg)` is the `train.data_transform` seam: with `eqcoh.loss_weight: 0` and
`eqcoh.apply_to_view: false` it returns DINOv2's own `DataAugmentationDINO` (exact vanilla).
"""

from __future__ import annotations

import logging
import os

import torch

from dinov2_eqcoh.transforms import (
    RANGE_KEYS,
    check_ranges,
    check_transform,
    path_thetas,
    render,
    sample_theta,
    theta_dim,
)

logger = logging.getLogger("dinov2")

_SEED_MIX = 0x5DEECE66D  # decorrelates θ's generator from the torch stream seeded with the same initial seed


def eqcoh_options(cfg):
    """The `eqcoh` block of `cfg`, with a clear error when the config was not built with the plugin's defaults."""
    eqcoh = cfg.get("eqcoh") if hasattr(cfg, "get") else None
    if eqcoh is None:
        raise ValueError(
            "config has no 'eqcoh' block: the dinov2_eqcoh data pipeline needs the plugin's default config "
            "(dinov2_eqcoh/configs/eqcoh_default_config.yaml) merged on top of DINOv2's"
        )
    return eqcoh


def eqcoh_pipeline_active(cfg) -> bool:
    """True when the plugin's augmentation/collate are needed: eqcoh.loss_weight > 0 or eqcoh.apply_to_view.

    False (loss_weight 0, apply_to_view false) means exact vanilla DINOv2: both builders return DINOv2's own pieces.
    """
    eqcoh = eqcoh_options(cfg)
    return float(eqcoh.loss_weight) > 0 or bool(eqcoh.apply_to_view)


class DataAugmentationEqCoh:
    """DINOv2's multi-crop augmentation plus g_θ on the second global crop and the intermediate targets u_k.

    Args:
        dino_augmentation: a `dinov2.data.augmentations.DataAugmentationDINO`; its crop pipelines are used as is.
        transform: g, one of `dinov2_eqcoh.transforms.TRANSFORMS`.
        ranges: `eqcoh.ranges`, {key: [lo, hi]} that θ is drawn from uniformly.
        n_intermediate: K, number of intermediate targets u_1..u_K.
        apply_to_view: v2 = g_θ(u) (True) or v2 = u (False).
        with_targets: return `eqcoh_targets` (the reconstruction loss is on, λ > 0).

    Calling it on a PIL image returns DINOv2's dict (`global_crops` [v1, v2], `global_crops_teacher` [v1, v2],
    `local_crops`, `offsets`) plus `eqcoh_theta` (P,) float32 and, with targets, `eqcoh_targets` (K, 3, G, G)
    in the crops' normalised pixel space.
    """

    def __init__(self, dino_augmentation, *, transform, ranges, n_intermediate, apply_to_view, with_targets):
        self.dino = dino_augmentation
        self.transform = check_transform(str(transform))
        self.ranges = check_ranges(ranges, self.transform)
        if int(n_intermediate) < 1:
            raise ValueError(f"eqcoh.n_intermediate: K must be >= 1, got {n_intermediate}")
        self.n_intermediate = int(n_intermediate)
        self.apply_to_view = bool(apply_to_view)
        self.with_targets = bool(with_targets)
        normalize = dino_augmentation.normalize.transforms[-1]  # DINOv2's Normalize(mean, std)
        self.mean, self.std = tuple(normalize.mean), tuple(normalize.std)
        self._generator = None
        self._generator_pid = None

    @property
    def generator(self) -> torch.Generator:
        """θ's random source, one per process, seeded from `torch.initial_seed()`.

        DataLoader workers get distinct torch seeds (base seed + worker id), so each worker draws its own θ stream;
        a generator inherited through fork is re-seeded in the child. The global RNG streams are not consumed.
        """
        if self._generator is None or self._generator_pid != os.getpid():
            self._generator = torch.Generator().manual_seed((torch.initial_seed() ^ _SEED_MIX) % (2**63))
            self._generator_pid = os.getpid()
        return self._generator

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_generator"] = state["_generator_pid"] = None  # re-seeded where it is unpickled (spawned workers)
        return state

    def __call__(self, image):
        dino = self.dino
        # v1, u and the local crops exactly as DataAugmentationDINO.__call__ makes them (same calls, same order)
        v1 = dino.global_transfo1(dino.geometric_augmentation_global(image))
        u = dino.global_transfo2(dino.geometric_augmentation_global(image))
        local_crops = [
            dino.local_transfo(dino.geometric_augmentation_local(image)) for _ in range(dino.local_crops_number)
        ]

        # θ and the states g_{θ_k}(u), rendered from u in one batched call: [θ_1, ..., θ_K] and/or θ
        theta = sample_theta(self.transform, self.ranges, self.generator)  # (P,)
        thetas = path_thetas(theta, self.n_intermediate)  # (K+1, P)
        if not self.with_targets:
            thetas = thetas[-1:]
        elif not self.apply_to_view:
            thetas = thetas[:-1]
        states = render(u, self.transform, thetas, self.mean, self.std)  # (S, 3, G, G)
        v2 = states[-1] if self.apply_to_view else u

        output = {
            "global_crops": [v1, v2],
            "global_crops_teacher": [v1, v2],
            "local_crops": local_crops,
            "offsets": (),
            "eqcoh_theta": theta,
        }
        if self.with_targets:
            output["eqcoh_targets"] = states[: self.n_intermediate].contiguous()  # (K, 3, G, G): u_1..u_K
        return output


def build_data_transform(cfg):
    """The `train.data_transform` seam: callable(PIL image) -> dict of crops for DINOv2's training loop.

    Returns DINOv2's own `DataAugmentationDINO` (built by `dinov2.train.train.build_data_transform`) when
    `eqcoh.loss_weight` is 0 and `eqcoh.apply_to_view` is false, else a `DataAugmentationEqCoh` around it.
    """
    from dinov2.train.train import build_data_transform as build_dinov2_data_transform

    active = eqcoh_pipeline_active(cfg)
    dino_augmentation = build_dinov2_data_transform(cfg)
    if not active:
        logger.info("OPTIONS -- EQCOH -- data pipeline off (loss_weight 0, apply_to_view false): DINOv2's own")
        return dino_augmentation
    eqcoh = eqcoh_options(cfg)
    augmentation = DataAugmentationEqCoh(
        dino_augmentation,
        transform=eqcoh.transform,
        ranges=eqcoh.ranges,
        n_intermediate=eqcoh.n_intermediate,
        apply_to_view=eqcoh.apply_to_view,
        with_targets=float(eqcoh.loss_weight) > 0,
    )
    logger.info(f"OPTIONS -- EQCOH -- transform: {augmentation.transform} (θ has {theta_dim(augmentation.transform)})")
    for key in dict.fromkeys(RANGE_KEYS[augmentation.transform]):  # the ranges this g samples from
        lo, hi = augmentation.ranges[key]
        logger.info(f"OPTIONS -- EQCOH -- ranges.{key}: [{lo}, {hi}]")
    logger.info(f"OPTIONS -- EQCOH -- n_intermediate (K): {augmentation.n_intermediate}")
    logger.info(f"OPTIONS -- EQCOH -- apply_to_view: {augmentation.apply_to_view}")
    logger.info(f"OPTIONS -- EQCOH -- targets: {augmentation.with_targets} (loss_weight {eqcoh.loss_weight})")
    return augmentation
