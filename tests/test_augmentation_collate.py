"""The method's augmentation and collate against DINOv2's own DataAugmentationDINO and collate_data_and_cast, and
`render_views`, which renders v2 = g_θ(u) and the targets u_k of a collated batch.

Configs come from `dinov2_eqcoh.method.config.load_default_config()` (DINOv2's defaults + the plugin's `eqcoh` block) with
small crops; images from the built-in Synthetic dataset.
"""

import functools
import logging
import pickle
import random

import pytest
import torch
from dinov2.configs import dinov2_default_config
from dinov2.data.augmentations import DataAugmentationDINO
from dinov2.data.collate import collate_data_and_cast
from dinov2.train.train import build_collate_fn as dinov2_build_collate_fn
from dinov2.train.train import build_data_transform as dinov2_build_data_transform
from omegaconf import OmegaConf

from dinov2_eqcoh.data.datasets import SyntheticGlyphs
from dinov2_eqcoh.method import transforms as T
from dinov2_eqcoh.method.augmentation import DataAugmentationEqCoh, build_data_transform, render_views
from dinov2_eqcoh.method.collate import build_collate_fn, collate_eqcoh
from dinov2_eqcoh.method.config import load_default_config


def make_cfg(G=32, patch=8, local=16, n_local=2, **eqcoh):
    cfg = load_default_config()
    overrides = {
        "crops": {"global_crops_size": G, "local_crops_size": local, "local_crops_number": n_local},
        "student": {"patch_size": patch},
        "eqcoh": eqcoh,
    }
    return OmegaConf.merge(cfg, overrides)


def images(n=4, size=48):
    ds = SyntheticGlyphs(n=n, size=size, classes=10, seed=3)
    return [ds.render(i) for i in range(n)]


def run_augmentation(aug, imgs, seed):
    torch.manual_seed(seed)
    random.seed(seed)
    return [aug(img) for img in imgs]


def test_vanilla_when_off():
    cfg = make_cfg(loss_weight=0.0, apply_to_view=False)
    aug = build_data_transform(cfg)
    assert type(aug) is DataAugmentationDINO
    collate = build_collate_fn(cfg, torch.half)
    assert isinstance(collate, functools.partial) and collate.func is collate_data_and_cast
    ref = dinov2_build_collate_fn(cfg, torch.half)
    assert {k: v for k, v in collate.keywords.items() if k != "mask_generator"} == {
        k: v for k, v in ref.keywords.items() if k != "mask_generator"
    }
    out = aug(images(1)[0])
    assert set(out) == {"global_crops", "global_crops_teacher", "local_crops", "offsets"}


@pytest.mark.parametrize("name", ["se2", "color"])
def test_worker_output_is_dinov2s_plus_theta(name):
    """The worker renders nothing: its crops (u as the second global crop) are DINOv2's, and θ is added."""
    cfg = make_cfg(transform=name, n_intermediate=2)
    aug = build_data_transform(cfg)
    assert isinstance(aug, DataAugmentationEqCoh)
    dino = dinov2_build_data_transform(cfg)
    imgs = images(3)
    ours, ref = run_augmentation(aug, imgs, seed=11), run_augmentation(dino, imgs, seed=11)
    thetas = set()
    for o, r in zip(ours, ref):  # the whole stream: θ draws do not disturb DINOv2's RNG consumption
        assert set(o) == set(r) | {"eqcoh_theta"}
        assert all(torch.equal(a, b) for a, b in zip(o["global_crops"], r["global_crops"]))  # [v1, u]
        assert all(torch.equal(a, b) for a, b in zip(o["global_crops_teacher"], r["global_crops_teacher"]))
        assert len(o["local_crops"]) == len(r["local_crops"]) == 2
        assert all(torch.equal(a, b) for a, b in zip(o["local_crops"], r["local_crops"]))
        theta = o["eqcoh_theta"]
        assert theta.shape == (T.theta_dim(name),) and theta.dtype == torch.float32
        thetas.add(tuple(theta.tolist()))
    assert len(thetas) == 3  # a fresh θ per image


@pytest.mark.parametrize("apply_to_view", [True, False])
@pytest.mark.parametrize("name", ["se2", "color", "blur"])
def test_render_views_gives_v2_and_targets_g_of_u(name, apply_to_view):
    K, B = 2, 3
    cfg = make_cfg(transform=name, apply_to_view=apply_to_view, n_intermediate=K)
    aug = build_data_transform(cfg)
    batch = build_collate_fn(cfg, torch.float32)([(aug(img), ()) for img in images(B)])
    crops_before = batch["collated_global_crops"].clone()
    v2, targets = render_views(batch, cfg)
    u = crops_before[B:]
    for b in range(B):
        states = T.render(u[b], name, T.path_thetas(batch["eqcoh_theta"][b], K))  # u_1, u_2, g_θ(u), per image
        if apply_to_view:
            torch.testing.assert_close(v2[b], states[-1])
        else:
            assert torch.equal(v2[b], u[b])
        torch.testing.assert_close(targets[:, b], states[:K])
    if apply_to_view:
        assert not torch.allclose(v2, u)
    assert torch.equal(batch["collated_global_crops"], crops_before)  # the batch is left as it is


@pytest.mark.parametrize("apply_to_view, loss_weight", [(True, 1.0), (False, 1.0), (True, 0.0)])
def test_fill_free_views_and_targets_show_the_centre_of_u(apply_to_view, loss_weight):
    """eqcoh.fill_free: v2 and every u_k are rendered at the fill-free zoom of the configured ranges (v2 = the θ = 0
    state, u's centre, when apply_to_view is false). Vanilla (λ 0, no g) renders nothing: DINOv2's own pipeline."""
    K, B, G = 2, 3, 32
    cfg = make_cfg(G=G, transform="se2", apply_to_view=apply_to_view, n_intermediate=K, fill_free=True,
                   loss_weight=loss_weight)
    aug = build_data_transform(cfg)
    batch = build_collate_fn(cfg, torch.float32)([(aug(img), ()) for img in images(B)])
    v2, targets = render_views(batch, cfg)
    u, theta = batch["collated_global_crops"][B:], batch["eqcoh_theta"]
    c = T.fill_free_zoom("se2", cfg.eqcoh.ranges, G)
    assert c < 0.7
    view_theta = theta if apply_to_view else torch.zeros_like(theta)
    torch.testing.assert_close(v2, T.render(u, "se2", view_theta, zoom=c))
    assert not torch.allclose(v2, u)
    if loss_weight > 0:
        for b in range(B):
            torch.testing.assert_close(targets[:, b], T.render(u[b], "se2", T.path_thetas(theta[b], K)[:K], zoom=c))
    else:
        assert targets is None


def test_view_only_baseline_has_no_targets():
    cfg = make_cfg(loss_weight=0.0, apply_to_view=True, transform="rotation")
    aug = build_data_transform(cfg)
    (out,) = run_augmentation(aug, images(1), seed=2)
    assert out["eqcoh_theta"].shape == (1,)
    batch = build_collate_fn(cfg, torch.float32)([(out, ())])
    assert batch["eqcoh_theta"].shape == (1, 1)
    v2, targets = render_views(batch, cfg)
    assert targets is None
    u = out["global_crops"][1]
    torch.testing.assert_close(v2, T.render(u, "rotation", out["eqcoh_theta"][None]))  # (1, 3, G, G)


@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("G, patch, local", [(32, 8, 16), (32, 16, 16), (28, 14, 14)])
@pytest.mark.parametrize("dtype", [torch.half, torch.float32])
def test_shapes_and_dtypes(K, G, patch, local, dtype):
    B = 3
    cfg = make_cfg(G=G, patch=patch, local=local, n_intermediate=K, transform="se2")
    aug, collate = build_data_transform(cfg), build_collate_fn(cfg, dtype)
    samples = [(aug(img), ()) for img in images(B)]
    batch = collate(samples)
    assert batch["collated_global_crops"].shape == (2 * B, 3, G, G)
    assert batch["collated_local_crops"].shape == (2 * B, 3, local, local)
    assert batch["collated_masks"].shape == (2 * B, (G // patch) ** 2)
    assert batch["eqcoh_theta"].shape == (B, 3) and batch["eqcoh_theta"].dtype == torch.float32
    for b, (sample, _) in enumerate(samples):
        assert torch.equal(batch["eqcoh_theta"][b], sample["eqcoh_theta"])
        assert torch.equal(batch["collated_global_crops"][B + b], sample["global_crops"][1].to(dtype))  # u
    v2, targets = render_views(batch, cfg)
    assert v2.shape == (B, 3, G, G) and v2.dtype == dtype  # cast back to the crops' dtype
    assert targets.shape == (K, B, 3, G, G) and targets.dtype == torch.float32  # rendered in fp32


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_collate_shared_keys_equal_dinov2s(seed):
    cfg = make_cfg(G=32, patch=8, n_intermediate=2)
    aug = build_data_transform(cfg)
    samples = [(aug(img), ()) for img in images(4)]
    ours_fn, ref_fn = build_collate_fn(cfg, torch.half), dinov2_build_collate_fn(cfg, torch.half)
    assert ours_fn.func is collate_eqcoh and ref_fn.func is collate_data_and_cast
    random.seed(seed)
    ours = ours_fn(samples)
    random.seed(seed)
    ref = ref_fn(samples)
    assert set(ours) == set(ref) | {"eqcoh_theta"}
    for key, value in ref.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == ours[key].dtype and torch.equal(value, ours[key]), key
        else:
            assert value == ours[key], key
    assert ref["collated_masks"].any()  # the masks were exercised


def test_collate_rejects_mixed_samples():
    cfg = make_cfg()
    aug = build_data_transform(cfg)
    a, b = aug(images(1)[0]), aug(images(1)[0])
    del b["eqcoh_theta"]
    with pytest.raises(ValueError, match="eqcoh_theta"):
        build_collate_fn(cfg, torch.float32)([(a, ()), (b, ())])


def test_theta_streams_differ_between_dataloader_workers():
    cfg = make_cfg(transform="rotation")
    aug = build_data_transform(cfg)
    ds = SyntheticGlyphs(n=4, size=48, transform=aug, target_transform=lambda _: ())
    ds[0]  # the generator now exists in this process; forked workers must not reuse its state
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context="fork", shuffle=False
    )
    thetas = [sample["eqcoh_theta"] for sample, _ in loader]  # worker 0: images 0, 2; worker 1: images 1, 3
    assert not torch.equal(thetas[0], thetas[1]) and not torch.equal(thetas[2], thetas[3])


def test_theta_generator_is_seeded_per_process_from_the_torch_seed():
    aug = build_data_transform(make_cfg(transform="rotation"))
    img = images(1)[0]
    aug(img)  # the parent's generator has advanced; a worker's copy must not carry it over

    def first_theta_in_fresh_worker(seed):
        clone = pickle.loads(pickle.dumps(aug))  # what a spawned DataLoader worker receives
        torch.manual_seed(seed)  # what DataLoader does in each worker (base seed + worker id)
        return clone(img)["eqcoh_theta"]

    assert torch.equal(first_theta_in_fresh_worker(5), first_theta_in_fresh_worker(5))
    assert not torch.equal(first_theta_in_fresh_worker(5), first_theta_in_fresh_worker(6))


def test_errors_name_the_key():
    with pytest.raises(ValueError) as info:
        build_data_transform(make_cfg(transform="shear"))
    assert "'shear'" in str(info.value) and all(n in str(info.value) for n in T.TRANSFORMS)
    with pytest.raises(ValueError, match=r"eqcoh\.ranges\.rotation"):
        build_data_transform(make_cfg(ranges={"rotation": [45.0, -45.0]}))
    cfg = make_cfg()
    batch = build_collate_fn(cfg, torch.float32)([(build_data_transform(cfg)(img), ()) for img in images(2)])
    with pytest.raises(ValueError, match="n_intermediate"):
        render_views(batch, make_cfg(n_intermediate=0))
    del batch["eqcoh_theta"]
    with pytest.raises(KeyError, match="eqcoh_theta"):
        render_views(batch, cfg)
    vanilla = OmegaConf.create(dinov2_default_config)  # DINOv2's config without the plugin's defaults
    with pytest.raises(ValueError, match="'eqcoh' block"):
        build_collate_fn(vanilla, torch.half)
    with pytest.raises(ValueError, match="'eqcoh' block"):
        build_data_transform(vanilla)


def test_options_are_logged(caplog):
    with caplog.at_level(logging.INFO, logger="dinov2"):
        build_data_transform(make_cfg(transform="se2", n_intermediate=3))
    text = caplog.text
    assert "OPTIONS -- EQCOH -- transform: se2" in text
    assert "OPTIONS -- EQCOH -- ranges.rotation: [-45.0, 45.0]" in text


def test_synthetic_scenes_have_an_up():
    """The rotation task needs an identifiable orientation (photographs have one): the sky above is lighter than
    the ground below in every image, and rotating by 180° breaks that, for every seed."""
    import numpy as np

    for seed in (0, 1):
        ds = SyntheticGlyphs(n=40, size=32, classes=10, seed=seed)
        for i in range(len(ds)):
            img = np.asarray(ds.render(i), dtype=np.float64).mean(axis=2)
            top, bottom = img[:6].mean(), img[-6:].mean()
            assert top > bottom + 20, (seed, i, top, bottom)
            flipped = np.rot90(img, 2)
            assert flipped[:6].mean() < flipped[-6:].mean()


def test_synthetic_is_deterministic_by_seed_and_index():
    import numpy as np

    a, b = SyntheticGlyphs(n=5, size=24, seed=7), SyntheticGlyphs(n=5, size=24, seed=7)
    assert all(np.array_equal(np.asarray(a.render(i)), np.asarray(b.render(i))) for i in range(5))
    assert not np.array_equal(np.asarray(a.render(0)), np.asarray(SyntheticGlyphs(n=5, size=24, seed=8).render(0)))
