"""g_θ and its intermediate states (dinov2_eqcoh.method.transforms) against independent computations.

Geometry is checked two ways: a per-pixel inverse map with bilinear sampling written in numpy (every pixel, zero fill
included) and torchvision's own rotate/affine (interior pixels; torchvision blends its fill at the border). Colour
and blur are checked against torchvision's adjust_* / gaussian_blur at the parameters METHOD.md prescribes for the
intermediate states: θ_k = k·θ/(K+1) for every parameter.
"""

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from dinov2_eqcoh.method import transforms as T

MEAN = torch.tensor(T.IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
STD = torch.tensor(T.IMAGENET_DEFAULT_STD).view(3, 1, 1)
PAPER_RANGES = {  # Table 2 of the paper, translation as a fraction of the crop (10 px at 224 px)
    "rotation": [-45.0, 45.0],
    "translation": [-10 / 224, 10 / 224],
    "brightness": [-0.4, 0.4],
    "contrast": [-0.4, 0.4],
    "saturation": [-0.4, 0.4],
    "hue": [-0.1, 0.1],
    "blur_sigma": [0.1, 2.0],
}
GEOMETRIC_THETA = {  # away from 0 and from symmetric values, so a wrong sign or scale shows
    "rotation": [37.0],
    "translation": [0.11, -0.07],
    "se2": [-29.0, -0.09, 0.06],
}


def smooth_image(G, seed=0):
    """A smooth random image in [0, 1] (bilinear sampling of it is well conditioned), and its normalised form u."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 7, 7, generator=g)
    x01 = torch.nn.functional.interpolate(coarse, size=(G, G), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    return x01, (x01 - MEAN) / STD


def expected_intermediates(theta, K):
    """θ_k = k·θ/(K+1), k = 1..K, written out from METHOD.md."""
    return [[k * float(t) / (K + 1) for t in theta] for k in range(1, K + 1)]


def numpy_affine(u, phi_deg, tx, ty, zoom=1.0):
    """g(u) by the inverse map, pixel by pixel: the output at p (pixel units from the centre, y down) shows
    u at zoom·R(φ)^-1 (p - t·G), R(φ) a counter-clockwise rotation on screen; bilinear, 0 outside the image.

    Returns the image and a mask of pixels whose four source neighbours are all inside the crop.
    """
    u = u.numpy().astype(np.float64)
    _, H, W = u.shape
    c = (W - 1) / 2.0
    a = math.radians(phi_deg)
    out = np.zeros_like(u)
    interior = np.zeros((H, W), dtype=bool)
    for i in range(H):
        for j in range(W):
            px, py = j - c - tx * W, i - c - ty * H
            # on screen with y down, a counter-clockwise rotation by φ is x' = x cos φ + y sin φ, y' = -x sin φ + y cos φ
            sx = zoom * (math.cos(a) * px - math.sin(a) * py) + c
            sy = zoom * (math.sin(a) * px + math.cos(a) * py) + c
            x0, y0 = math.floor(sx), math.floor(sy)
            wx, wy = sx - x0, sy - y0
            inside = 0
            for yy, xx, w in (
                (y0, x0, (1 - wx) * (1 - wy)),
                (y0, x0 + 1, wx * (1 - wy)),
                (y0 + 1, x0, (1 - wx) * wy),
                (y0 + 1, x0 + 1, wx * wy),
            ):
                if 0 <= yy < H and 0 <= xx < W:
                    out[:, i, j] += w * u[:, yy, xx]
                    inside += 1
            interior[i, j] = inside == 4
    return torch.from_numpy(out).float(), torch.from_numpy(interior)


def torchvision_affine(u, name, theta):
    """torchvision's rendering of g_θ(u) with zero fill (rotate's angle is counter-clockwise, affine's clockwise)."""
    G = u.shape[-1]
    if name == "rotation":
        return TF.rotate(u, theta[0], interpolation=InterpolationMode.BILINEAR, fill=0.0)
    phi, (tx, ty) = (theta[0] if name == "se2" else 0.0), theta[-2:]
    return TF.affine(
        u,
        angle=-phi,
        translate=[tx * G, ty * G],
        scale=1.0,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
        fill=0.0,
    )


@pytest.mark.parametrize("name", ["rotation", "translation", "se2"])
@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("G", [28, 32])
def test_geometric_intermediates_match_independent_rendering(name, K, G):
    _, u = smooth_image(G)
    theta = torch.tensor(GEOMETRIC_THETA[name])
    states = T.render(u, name, T.path_thetas(theta, K))
    assert states.shape == (K + 1, 3, G, G)
    for k, theta_k in enumerate(expected_intermediates(theta, K) + [theta.tolist()]):
        phi = theta_k[0] if name != "translation" else 0.0
        tx, ty = theta_k[-2:] if name != "rotation" else (0.0, 0.0)
        ref, interior = numpy_affine(u, phi, tx, ty)
        assert interior.float().mean() > 0.4
        torch.testing.assert_close(states[k], ref, atol=2e-5, rtol=0, msg=f"state {k + 1} of {K + 1}")
        tv = torchvision_affine(u, name, theta_k)
        torch.testing.assert_close(states[k][:, interior], tv[:, interior], atol=2e-4, rtol=0)


@pytest.mark.parametrize("name", ["rotation", "translation", "se2"])
def test_geometric_states_come_from_one_grid_sample_call(name, monkeypatch):
    calls = []
    grid_sample = torch.nn.functional.grid_sample

    def counting(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return grid_sample(x, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "grid_sample", counting)
    _, u = smooth_image(32)
    T.render(u, name, T.path_thetas(torch.tensor(GEOMETRIC_THETA[name]), 2))
    assert calls == [(3, 3, 32, 32)]


@pytest.mark.parametrize("name", T.TRANSFORMS)
def test_theta_zero_is_identity(name):
    x01, u = smooth_image(32, seed=1)
    states = T.render(u, name, T.path_thetas(torch.zeros(T.theta_dim(name)), 2))
    for state in states:
        torch.testing.assert_close(state, u, atol=2e-5, rtol=0)


@pytest.mark.parametrize("K", [1, 2, 3])
def test_color_intermediates_match_torchvision(K):
    x01, u = smooth_image(32, seed=2)
    theta = torch.tensor([0.35, -0.3, 0.25, 0.09])  # b, c, s, h
    states = T.render(u, "color", T.path_thetas(theta, K))
    for k, (b, c, s, h) in enumerate(expected_intermediates(theta, K) + [theta.tolist()]):
        ref = TF.adjust_brightness(x01, 1 + b)
        ref = TF.adjust_contrast(ref, 1 + c)
        ref = TF.adjust_saturation(ref, 1 + s)
        ref = TF.adjust_hue(ref, h)
        torch.testing.assert_close(states[k], (ref - MEAN) / STD, atol=5e-5, rtol=0, msg=f"state {k + 1}")


def test_color_uses_the_given_normalisation():
    x01, _ = smooth_image(16, seed=3)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    m, sd = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    out = T.render((x01 - m) / sd, "color", torch.tensor([[0.2, 0.0, 0.0, 0.0]]), mean=mean, std=std)[0]
    torch.testing.assert_close(out, (TF.adjust_brightness(x01, 1.2) - m) / sd, atol=2e-5, rtol=0)


@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("G", [32, 224])
def test_blur_intermediates_match_torchvision(K, G):
    _, u = smooth_image(G, seed=4)
    u = u + 0.3 * torch.randn(u.shape, generator=torch.Generator().manual_seed(5))  # some high frequencies
    sigma = 1.7  # pixels at 224 px
    states = T.render(u, "blur", T.path_thetas(torch.tensor([sigma]), K))
    size = T.blur_kernel_size(sigma * G / 224)  # one kernel size for all states, from the largest σ
    for k, (sigma_k,) in enumerate(expected_intermediates([sigma], K) + [[sigma]]):
        ref = TF.gaussian_blur(u, [size, size], [sigma_k * G / 224] * 2)
        torch.testing.assert_close(states[k], ref, atol=1e-5, rtol=0, msg=f"state {k + 1}")
    assert (states[-1] - u).abs().mean() > 1e-4  # the blur did something (σ is only 0.24 px at 32 px)


def test_interpolate_thetas_shape_and_values():
    theta = torch.tensor([30.0, 0.06, -0.03])
    for K in (1, 2, 3):
        inter = T.interpolate_thetas(theta, K)
        assert inter.shape == (K, 3)
        torch.testing.assert_close(inter, torch.tensor(expected_intermediates(theta, K)))
    torch.testing.assert_close(T.path_thetas(theta, 2)[-1], theta)
    assert T.interpolate_thetas(torch.zeros(4, 2), 3).shape == (4, 3, 2)  # batched θ
    with pytest.raises(ValueError, match="n_intermediate"):
        T.interpolate_thetas(theta, 0)


def test_render_batched_variants_match_single_image_calls():
    us = torch.stack([smooth_image(32, seed=s)[1] for s in range(3)])  # (N, 3, G, G)
    thetas = torch.stack([T.path_thetas(torch.tensor([10.0 * (n + 1), 0.02, -0.01]), 2) for n in range(3)])
    per_state = T.render(us, "se2", thetas)  # (N, S, 3, G, G)
    per_image = T.render(us, "se2", thetas[:, -1])  # (N, 3, G, G)
    assert per_state.shape == (3, 3, 3, 32, 32) and per_image.shape == (3, 3, 32, 32)
    for n in range(3):
        torch.testing.assert_close(per_state[n], T.render(us[n], "se2", thetas[n]))
        torch.testing.assert_close(per_image[n], T.render(us[n], "se2", thetas[n, -1:])[0])
    with pytest.raises(ValueError, match="P=3"):
        T.render(us[0], "se2", torch.zeros(2, 2))


@pytest.mark.parametrize("name", T.TRANSFORMS)
def test_sample_theta_in_ranges_and_reproducible(name):
    draws = torch.stack([T.sample_theta(name, PAPER_RANGES, torch.Generator().manual_seed(s)) for s in range(200)])
    assert draws.shape == (200, T.theta_dim(name)) and draws.dtype == torch.float32
    for p, key in enumerate(T.RANGE_KEYS[name]):
        lo, hi = PAPER_RANGES[key]
        assert lo <= draws[:, p].min() and draws[:, p].max() <= hi
        assert draws[:, p].max() - draws[:, p].min() > 0.8 * (hi - lo)  # spread over the range
    again = T.sample_theta(name, PAPER_RANGES, torch.Generator().manual_seed(7))
    torch.testing.assert_close(again, draws[7])


def test_theta_dims():
    assert {n: T.theta_dim(n) for n in T.TRANSFORMS} == {n: len(T.THETA_NAMES[n]) for n in T.TRANSFORMS}
    assert [T.theta_dim(n) for n in ("rotation", "translation", "se2", "color", "blur")] == [1, 2, 3, 4, 1]


def test_unknown_transform_names_it_and_the_allowed_ones():
    for call in (
        lambda: T.sample_theta("shear", PAPER_RANGES, torch.Generator()),
        lambda: T.theta_dim("shear"),
        lambda: T.render(torch.zeros(3, 8, 8), "shear", torch.zeros(1, 1)),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert "'shear'" in str(info.value)
        assert all(n in str(info.value) for n in T.TRANSFORMS)


@pytest.mark.parametrize(
    "key, bad, match",
    [
        ("rotation", [10.0, -10.0], "eqcoh.ranges.rotation"),
        ("translation", [0.1], "eqcoh.ranges.translation"),
        ("brightness", [-1.5, 0.4], "eqcoh.ranges.brightness"),
        ("hue", [-0.1, 0.7], "eqcoh.ranges.hue"),
        ("blur_sigma", [-0.5, 2.0], "eqcoh.ranges.blur_sigma"),
        ("scale", [0.5, 2.0], "unknown key 'scale'"),
    ],
)
def test_bad_ranges_name_the_key(key, bad, match):
    ranges = {**PAPER_RANGES, key: bad}
    with pytest.raises(ValueError, match=match):
        T.sample_theta("se2", ranges, torch.Generator())


def test_missing_range_key_names_it():
    ranges = {k: v for k, v in PAPER_RANGES.items() if k != "hue"}
    T.sample_theta("se2", ranges, torch.Generator())  # se2 does not need hue
    with pytest.raises(ValueError, match="hue"):
        T.sample_theta("color", ranges, torch.Generator())


# ---------------------------------------------------------------------------------------------- fill-free zoom


@pytest.mark.parametrize("lo, hi", [(-45.0, 45.0), (0.0, 30.0), (-10.0, 10.0), (100.0, 120.0), (-200.0, -150.0),
                                    (20.0, 20.0)])
def test_corner_factor_is_the_maximum_over_the_range(lo, hi):
    angles = np.radians(np.linspace(lo, hi, 20001))
    brute = float(np.max(np.abs(np.cos(angles)) + np.abs(np.sin(angles))))
    assert T.corner_factor(lo, hi) == pytest.approx(brute, abs=1e-6)


def extreme_thetas(name, ranges):
    """θ at every corner of the configured box (and 0): where fill would appear first."""
    axes = [ranges[k] for k in T.RANGE_KEYS[name]]
    corners = torch.cartesian_prod(*[torch.tensor([float(lo), float(hi)]) for lo, hi in axes]).reshape(-1, len(axes))
    return torch.cat([corners, torch.zeros(1, len(axes))])


@pytest.mark.parametrize("name", ["rotation", "translation", "se2"])
@pytest.mark.parametrize("G", [32, 224])
def test_fill_free_zoom_leaves_no_fill_for_any_theta_in_range(name, G):
    """A constant image stays constant under g_θ at the fill-free zoom for every extreme θ, while the full view
    (zoom 1) and a 3 % wider view do show the fill: the bound is met, and nearly tight."""
    u = torch.full((3, G, G), 5.0)
    thetas = extreme_thetas(name, PAPER_RANGES)
    c = T.fill_free_zoom(name, PAPER_RANGES, G)
    assert 0.5 < c < 1.0
    torch.testing.assert_close(T.render(u, name, thetas, zoom=c), torch.full((len(thetas), 3, G, G), 5.0))
    for wider in (1.0, min(1.0, c * 1.03)):
        assert T.render(u, name, thetas, zoom=wider).min() < 4.9  # zero fill blended in somewhere


@pytest.mark.parametrize("name", ["rotation", "translation", "se2"])
def test_fill_free_zoom_matches_the_inverse_map(name):
    """Every pixel against the numpy inverse map with the zoom: θ keeps its meaning (a shift is a fraction of the
    shown image; the rotation is about the centre), only the shown region shrinks to the centred fraction c."""
    G = 32
    _, u = smooth_image(G, seed=4)
    theta = GEOMETRIC_THETA[name]
    c = T.fill_free_zoom(name, PAPER_RANGES, G)
    phi = theta[0] if name != "translation" else 0.0
    tx, ty = theta[-2:] if name != "rotation" else (0.0, 0.0)
    expected, _ = numpy_affine(u, phi, tx, ty, zoom=c)  # p - t·G in shown pixels, then scaled by c into u
    got = T.render(u, name, torch.tensor([theta]), zoom=c)[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_fill_free_zoom_is_one_for_colour_and_blur_and_render_refuses_another():
    u = torch.zeros(3, 16, 16)
    for name in ("color", "blur"):
        assert T.fill_free_zoom(name, PAPER_RANGES, 16) == 1.0
        with pytest.raises(ValueError, match="zoom = 0.5.*non-geometric"):
            T.render(u, name, torch.zeros(1, T.theta_dim(name)), zoom=0.5)
    with pytest.raises(ValueError, match=r"zoom = 1.5 must be in \(0, 1\]"):
        T.render(u, "rotation", torch.zeros(1, 1), zoom=1.5)
