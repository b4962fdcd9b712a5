"""The method's augmentation: DINOv2's multi-crop plus the known transformation g_θ of the second crop.

For an image I, DINOv2's `DataAugmentationDINO` makes v1 = A1(I), u = A2(I) and the local crops. The method then
draws θ, shows the network v2 = g_θ(u) instead of u, and keeps the K intermediate states u_k = g_{kθ/(K+1)}(u) as
reconstruction targets (METHOD.md). The work is split in two:

- In the data-loader worker, `DataAugmentationEqCoh` calls DINOv2's augmentation object (it wraps it, it does not
  copy it) and draws θ, nothing more: its dict is DINOv2's (u is DINOv2's second global crop) plus `eqcoh_theta`.
  θ comes from a private `torch.Generator`, so the global `random`/`torch` streams DINOv2's crops draw from are left
  untouched, and v1, u and the local crops are the ones DINOv2 would make under the same random state.
- On the training device, `render_views(batch, cfg)` renders v2 and u_1..u_K for the whole collated batch in one
  batched `dinov2_eqcoh.method.transforms.render` call. `EqCohMetaArch.forward_backward` calls it before DINOv2's
  `forward_backward`; anything else that needs v2 or the targets of a batch (pictures, checks) calls it too.

`build_data_transform(cfg)` is the `train.data_transform` seam: with `eqcoh.loss_weight: 0` and
`eqcoh.apply_to_view: false` it returns DINOv2's own `DataAugmentationDINO` (exact vanilla).
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import torch

from dinov2_eqcoh.method.transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    RANGE_KEYS,
    check_ranges,
    check_transform,
    fill_free_zoom,
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
    """DINOv2's multi-crop augmentation plus θ of the transformation g_θ of the second global crop.

    Args:
        dino_augmentation: a `dinov2.data.augmentations.DataAugmentationDINO`; its crop pipelines are used as is.
            Its normalisation must be DINOv2's default (ImageNet mean/std), which `render_views` assumes.
        transform: g, one of `dinov2_eqcoh.method.transforms.TRANSFORMS`.
        ranges: `eqcoh.ranges`, {key: [lo, hi]} that θ is drawn from uniformly.

    Calling it on a PIL image returns DINOv2's dict (`global_crops` [v1, u], `global_crops_teacher` [v1, u],
    `local_crops`, `offsets`) plus `eqcoh_theta` (P,) float32. The second global crop is still u: v2 = g_θ(u) and
    the targets u_k are rendered for the whole batch on the training device (`render_views`).
    """

    def __init__(self, dino_augmentation, *, transform, ranges):
        self.dino = dino_augmentation
        self.transform = check_transform(str(transform))
        self.ranges = check_ranges(ranges, self.transform)
        normalize = dino_augmentation.normalize.transforms[-1]  # DINOv2's Normalize(mean, std)
        if (tuple(normalize.mean), tuple(normalize.std)) != (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD):
            raise ValueError(
                f"DataAugmentationEqCoh: the crops are normalised with mean {normalize.mean}, std {normalize.std}; "
                f"render_views (colour g on the device) assumes DINOv2's {IMAGENET_DEFAULT_MEAN}, {IMAGENET_DEFAULT_STD}"
            )
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
        output = self.dino(image)  # DINOv2's own call: global_crops [v1, u], global_crops_teacher, local_crops
        output["eqcoh_theta"] = sample_theta(self.transform, self.ranges, self.generator)  # (P,), private stream
        return output


def render_options(cfg) -> dict:
    """The keyword arguments of every `render` of a run's views and paths, from the config (python numbers only):

    - `max_blur_sigma`: blur's kernel size from the upper end of `eqcoh.ranges.blur_sigma`, not from the batch's σ
      (that would read σ back to the host); None for other g.
    - `zoom`: with `eqcoh.fill_free` and a geometric g, `fill_free_zoom` at `crops.global_crops_size` (the centred
      fraction of u every state shows, so that no corner is filled); 1 otherwise.
    """
    eqcoh = eqcoh_options(cfg)
    name = check_transform(str(eqcoh.transform))
    zoom = (fill_free_zoom(name, eqcoh.ranges, int(cfg.crops.global_crops_size))
            if bool(eqcoh.get("fill_free", False)) else 1.0)
    return {"max_blur_sigma": float(eqcoh.ranges.blur_sigma[1]) if name == "blur" else None, "zoom": zoom}


@torch.no_grad()
def render_views(batch, cfg, device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """v2 = g_θ(u) and the targets u_k = g_{θ_k}(u) of a collated batch, in one batched `render` call.

    Renders in float32 with autocast off; v2 is cast back to the crops' dtype. The batch is not modified. Nothing
    is read back from the device (no host synchronisation): see `render_options` (blur kernel size, fill-free
    zoom).

    Args:
        batch: a batch of the plugin's collate (`collate_eqcoh`): `collated_global_crops` (2B, 3, G, G) = [v1; u]
            and `eqcoh_theta` (B, P).
        cfg: the training config: `eqcoh.transform`, `eqcoh.n_intermediate` (K), `eqcoh.apply_to_view`,
            `eqcoh.loss_weight` (targets only when > 0), `eqcoh.fill_free`.
        device: where to render (default: where the crops are); the results are there.

    Returns:
        v2 (B, 3, G, G) in the crops' dtype: g_θ(u) (with `eqcoh.fill_free`, of u's centre), or u itself when
        `apply_to_view` is false; and the targets
        (K, B, 3, G, G) float32, u_1..u_K in the crops' normalised pixel space, or None when `loss_weight` is 0.
    """
    eqcoh = eqcoh_options(cfg)
    name, K = check_transform(str(eqcoh.transform)), int(eqcoh.n_intermediate)
    apply_to_view, with_targets = bool(eqcoh.apply_to_view), float(eqcoh.loss_weight) > 0
    if "eqcoh_theta" not in batch:
        raise KeyError(
            "the batch has no 'eqcoh_theta' (B, P) although eqcoh.loss_weight > 0 or eqcoh.apply_to_view: set "
            "train.data_transform / train.collate_fn to dinov2_eqcoh.method.augmentation:build_data_transform / "
            "dinov2_eqcoh.method.collate:build_collate_fn (the plugin defaults)"
        )
    crops = batch["collated_global_crops"]  # (2B, 3, G, G): v1 then u
    device = crops.device if device is None else torch.device(device)
    u = crops[crops.shape[0] // 2 :].to(device, non_blocking=True)  # (B, 3, G, G)
    if not (apply_to_view or with_targets):  # λ = 0 and no g: exact vanilla (no zoom either)
        return u, None
    options = render_options(cfg)
    thetas = path_thetas(batch["eqcoh_theta"].to(device, non_blocking=True), K)  # (B, K+1, P): θ_1..θ_K, θ
    if not apply_to_view:  # v2 is the θ = 0 state: u itself (not rendered), or u's centre when fill-free
        thetas = thetas[:, :-1] if options["zoom"] == 1.0 else torch.cat([thetas[:, :-1], 0 * thetas[:, -1:]], dim=1)
    if not with_targets:
        thetas = thetas[:, -1:]
    no_autocast = (
        torch.autocast(device.type, enabled=False) if torch.amp.is_autocast_available(device.type) else nullcontext()
    )
    with no_autocast:
        states = render(u.float(), name, thetas, **options)  # (B, S, 3, G, G), float32
    rendered_view = states.shape[1] > (K if with_targets else 0)  # the last state is v2 (else v2 = u, not rendered)
    v2 = states[:, -1].to(crops.dtype) if rendered_view else u
    targets = states[:, :K].transpose(0, 1) if with_targets else None  # (K, B, 3, G, G)
    return v2, targets


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
    augmentation = DataAugmentationEqCoh(dino_augmentation, transform=eqcoh.transform, ranges=eqcoh.ranges)
    logger.info(f"OPTIONS -- EQCOH -- transform: {augmentation.transform} (θ has {theta_dim(augmentation.transform)})")
    for key in dict.fromkeys(RANGE_KEYS[augmentation.transform]):  # the ranges this g samples from
        lo, hi = augmentation.ranges[key]
        logger.info(f"OPTIONS -- EQCOH -- ranges.{key}: [{lo}, {hi}]")
    logger.info("OPTIONS -- EQCOH -- the workers draw θ; v2 and the targets u_k are rendered on the training device")
    return augmentation
