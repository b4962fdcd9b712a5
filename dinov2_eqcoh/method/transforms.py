"""The parametric transformation family g_θ of the method, on normalised image tensors.

The paper (Wang et al., AAAI-26, Table 2) transforms the second global crop u = A2(I) with a known g_θ and asks the
network to reconstruct the K intermediate states u_k = g_{θ_k}(u), θ_k = k·θ/(K+1), k = 1..K. This module holds g:

    name          θ (float32, P entries)           meaning
    rotation      [φ]                              φ degrees, counter-clockwise on screen, about the image centre
                                                   (as torchvision's rotate(angle=φ))
    translation   [t_x, t_y]                       fractions of the crop size (+t_x moves content right, +t_y down)
    se2           [φ, t_x, t_y]                    rotation about the centre, then translation; equals torchvision's
                                                   affine(angle=-φ, translate=(t_x·G, t_y·G)) (its angle is clockwise)
    color         [b, c, s, h]                     brightness/contrast/saturation factors 1+b, 1+c, 1+s, hue shift h
                                                   (fraction of a turn), applied in that order in [0, 1] pixel space
    blur          [σ]                              Gaussian σ in pixels at 224 px (scaled by G/224 at crop size G)

Every parameter is interpolated linearly (METHOD.md): θ_k = k·θ/(K+1), so brightness factor 1 + k·b/(K+1) and
σ_k = k·σ/(K+1); θ = 0 is the identity for every g.

Images are normalised tensors (what DINOv2's augmentation returns: ToTensor then Normalize(mean, std)). Geometry is
rendered in that space with zeros padding, so pixels uncovered by rotation/translation are 0 *after* normalisation
(the mean colour). Colour is applied in un-normalised [0, 1] space and re-normalised with `mean`/`std`. Blur is
linear with a unit-sum kernel and reflect padding, so it commutes with the per-channel normalisation and runs on
the normalised tensor directly.

Fill-free geometry (`eqcoh.fill_free`, `fill_free_zoom`): the crop u is treated as a canvas larger than the shown
image, whose centred fraction c (`zoom`) is what every state shows, resampled to G px. c is the largest fraction
for which no sample of any θ in the configured ranges falls outside u, so no fill appears; θ keeps its meaning (a
shift is a fraction of the *shown* image). The θ = 0 state is then u's centre magnified 1/c, not u.

All states are rendered from u directly, never by resampling a resampled image: `render(u, name, thetas)` takes
the (S, P) parameters [θ_1, ..., θ_K, θ] and returns the S images in one batched operation (one `affine_grid` +
`grid_sample` call for geometric g). No dinov2 import: the benchmark and the equivariance evaluation reuse this.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

TRANSFORMS = ("rotation", "translation", "se2", "color", "blur")
GEOMETRIC = ("rotation", "translation", "se2")  # the ones that uncover corners (fill) and take a fill-free zoom

# θ components per transform, and the `eqcoh.ranges` key each one is sampled from.
THETA_NAMES = {
    "rotation": ("phi_deg",),
    "translation": ("t_x", "t_y"),
    "se2": ("phi_deg", "t_x", "t_y"),
    "color": ("brightness", "contrast", "saturation", "hue"),
    "blur": ("sigma_px_at_224",),
}
RANGE_KEYS = {
    "rotation": ("rotation",),
    "translation": ("translation", "translation"),
    "se2": ("rotation", "translation", "translation"),
    "color": ("brightness", "contrast", "saturation", "hue"),
    "blur": ("blur_sigma",),
}
ALLOWED_RANGE_KEYS = ("rotation", "translation", "brightness", "contrast", "saturation", "hue", "blur_sigma")
_RANGE_LIMITS = {  # physical limits: factors 1 + b stay >= 0, hue shifts within half a turn, σ >= 0
    "brightness": (-1.0, math.inf, "factor 1 + b must be >= 0"),
    "contrast": (-1.0, math.inf, "factor 1 + c must be >= 0"),
    "saturation": (-1.0, math.inf, "factor 1 + s must be >= 0"),
    "hue": (-0.5, 0.5, "a shift of at most half a turn"),
    "blur_sigma": (0.0, math.inf, "σ must be >= 0"),
}

# DINOv2's normalisation (timm's ImageNet constants), repeated here so that this module needs no dinov2 import.
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

BLUR_REFERENCE_SIZE = 224  # σ is given in pixels at this crop size
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def check_transform(name: str) -> str:
    """Return `name` if it is one of TRANSFORMS, else raise a ValueError naming it and the allowed ones."""
    if name not in TRANSFORMS:
        raise ValueError(f"eqcoh.transform: unknown transform {name!r}; allowed: {', '.join(TRANSFORMS)}")
    return name


def theta_dim(name: str) -> int:
    """P, the number of parameters of transform `name` (rotation 1, translation 2, se2 3, color 4, blur 1)."""
    return len(THETA_NAMES[check_transform(name)])


def check_ranges(ranges: Mapping, name: str | None = None) -> dict[str, tuple[float, float]]:
    """Validate `eqcoh.ranges` and return it as {key: (lo, hi)} floats.

    Every key must be one of ALLOWED_RANGE_KEYS with a value [lo, hi], lo <= hi, within the physical limits
    (colour factors 1 + b >= 0, |hue| <= 0.5, σ >= 0).
    With `name`, the keys that transform samples from must be present.

    Raises:
        ValueError: naming the offending key and what is allowed.
    """
    def bad(key, value, reason):  # the config's message format: "<key> = <value> is not valid: <what is allowed>"
        return ValueError(f"eqcoh.ranges.{key} = {value!r} is not valid: {reason}")

    out = {}
    for key in ranges:
        if key not in ALLOWED_RANGE_KEYS:
            raise ValueError(f"eqcoh.ranges: unknown key {key!r}; allowed: {', '.join(ALLOWED_RANGE_KEYS)}")
        value = ranges[key]
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise bad(key, value, "must be a list of two numbers [lo, hi]") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise bad(key, [lo, hi], "must be finite and ordered lo <= hi")
        if key in _RANGE_LIMITS and not (_RANGE_LIMITS[key][0] <= lo and hi <= _RANGE_LIMITS[key][1]):
            raise bad(key, [lo, hi], f"must lie within [{_RANGE_LIMITS[key][0]}, {_RANGE_LIMITS[key][1]}] "
                                     f"({_RANGE_LIMITS[key][2]})")
        out[key] = (lo, hi)
    if name is not None:
        missing = [k for k in dict.fromkeys(RANGE_KEYS[check_transform(name)]) if k not in out]
        if missing:
            raise ValueError(f"eqcoh.ranges: transform {name!r} needs the keys {', '.join(missing)}; not found")
    return out


def sample_theta(name: str, ranges: Mapping, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw θ uniformly from the configured ranges.

    Args:
        name: one of TRANSFORMS.
        ranges: `eqcoh.ranges`, {key: [lo, hi]}; see RANGE_KEYS for which key each θ component uses
            (t_x and t_y both come from `translation`).
        generator: the random source (None: torch's global one).

    Returns:
        θ, float32 tensor (P,).
    """
    bounds = check_ranges(ranges, name)
    lo, hi = (torch.tensor([bounds[k][i] for k in RANGE_KEYS[name]], dtype=torch.float64) for i in (0, 1))
    u01 = torch.rand(len(lo), generator=generator, dtype=torch.float64)
    return (lo + (hi - lo) * u01).to(torch.float32)


def interpolate_thetas(theta: torch.Tensor, K: int) -> torch.Tensor:
    """The K intermediate parameters θ_k = k·θ/(K+1), k = 1..K.

    Args:
        theta: θ, (P,) or (..., P).
        K: number of intermediate states (>= 1).

    Returns:
        (K, P) (or (..., K, P)): row k-1 is θ_k.
    """
    if int(K) < 1:
        raise ValueError(f"eqcoh.n_intermediate: K must be >= 1, got {K}")
    k = torch.arange(1, int(K) + 1, dtype=theta.dtype, device=theta.device) / (int(K) + 1)
    return theta.unsqueeze(-2) * k.unsqueeze(-1)


def corner_factor(lo: float, hi: float) -> float:
    """max over φ in [lo, hi] degrees of |cos φ| + |sin φ|: how far a rotated square's corners reach (1 to √2).

    The maxima are at 45° + k·90° and the function is monotone between them, so the ends and those points suffice.
    """
    ks = range(math.floor((lo - 45.0) / 90.0), math.ceil((hi - 45.0) / 90.0) + 1)
    angles = [lo, hi] + [45.0 + 90.0 * k for k in ks if lo <= 45.0 + 90.0 * k <= hi]
    return max(abs(math.cos(math.radians(a))) + abs(math.sin(math.radians(a))) for a in angles)


def fill_free_zoom(name: str, ranges: Mapping, size: int) -> float:
    """c, the fraction of a `size` px image u to show so that g_θ needs no fill for any θ in `ranges`.

    Output pixel centres p (normalised, |p| <= 1 - 1/size) show u at q = c·R(φ)^-1 (p - 2t); bilinear sampling
    stays inside u while |q| <= 1 - 1/size on both axes. With |R^-1 v|_max <= (|cos φ| + |sin φ|)·|v|_max:
        c = (1 - 1/size) / (f·(1 - 1/size + 2·t_max)),   f = max over the φ range of |cos φ| + |sin φ|
    (the probes' `fill_free_size` in `dinov2_eqcoh.eval.equivariance` is the same bound as a canvas size).

    Args:
        name: one of TRANSFORMS; colour and blur uncover nothing: c = 1.
        ranges: `eqcoh.ranges` (rotation in degrees, translation as fractions of the shown image).
        size: G, the rendered side in pixels.

    Returns:
        c in (0, 1].
    """
    if check_transform(name) not in GEOMETRIC:
        return 1.0
    bounds = check_ranges(ranges, name)
    f = corner_factor(*bounds["rotation"]) if name != "translation" else 1.0
    t_max = max(abs(v) for v in bounds["translation"]) if name != "rotation" else 0.0
    inner = 1.0 - 1.0 / int(size)
    return inner / (f * (inner + 2.0 * t_max))


def path_thetas(theta: torch.Tensor, K: int) -> torch.Tensor:
    """[θ_1, ..., θ_K, θ]: the (K+1, P) parameters of all states along the path, for one `render` call."""
    return torch.cat([interpolate_thetas(theta, K), theta.unsqueeze(-2)], dim=-2)


# --------------------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------------------


def render(
    u: torch.Tensor,
    name: str,
    thetas: torch.Tensor,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    max_blur_sigma: float | None = None,
    zoom: float = 1.0,
) -> torch.Tensor:
    """Render g_θ(u) for every θ in `thetas`, all at once, from u directly.

    Args:
        u: normalised image(s), (3, G, G) or (N, 3, G, G).
        name: one of TRANSFORMS.
        thetas: (S, P) for one image u (3, G, G) -> S states of that image; or (N, P) / (N, S, P) for a batch u
            (N, 3, G, G) -> one / S states per image.
        mean, std: the normalisation of u (used by `color` only).
        max_blur_sigma: `blur` only: an upper bound of every σ in `thetas` (pixels at 224 px, a python number, e.g.
            the upper end of `eqcoh.ranges.blur_sigma`). It sets the one kernel size of the batch without reading σ
            back from the device (no host synchronisation; the training step passes it). None: the batch's
            largest σ, read with one device-to-host copy.
        zoom: geometric g only: show the centred fraction `zoom` of u (`fill_free_zoom`; 1 = all of u, corners
            filled with 0). A python number.

    Returns:
        (*thetas.shape[:-1], 3, G, G), same dtype as u: (S, 3, G, G), (N, 3, G, G) or (N, S, 3, G, G).
    """
    check_transform(name)
    zoom = float(zoom)
    if not 0.0 < zoom <= 1.0 or (zoom != 1.0 and name not in GEOMETRIC):
        raise ValueError(f"render({name!r}): zoom = {zoom} must be in (0, 1], and 1 for a non-geometric g "
                         f"({name} uncovers no corners)")
    P = theta_dim(name)
    if thetas.shape[-1] != P:
        raise ValueError(f"render({name!r}): thetas must end in P={P} parameters, got shape {tuple(thetas.shape)}")
    if u.dim() == 3:
        lead = thetas.shape[:-1]
        images = u.unsqueeze(0).expand(math.prod(lead), *u.shape)
    elif u.dim() == 4 and thetas.dim() in (2, 3) and thetas.shape[0] == u.shape[0]:
        lead = thetas.shape[:-1]
        per_image = 1 if thetas.dim() == 2 else thetas.shape[1]
        images = u.unsqueeze(1).expand(u.shape[0], per_image, *u.shape[1:]).flatten(0, 1)
    else:
        raise ValueError(
            f"render({name!r}): u must be (3, G, G) with thetas (S, P), or (N, 3, G, G) with thetas (N, P) or "
            f"(N, S, P); got u {tuple(u.shape)} and thetas {tuple(thetas.shape)}"
        )
    flat = thetas.reshape(-1, P).to(device=u.device, dtype=torch.float32)
    if name in ("rotation", "translation", "se2"):
        out = _render_affine(images, _affine_matrices(name, flat) * zoom)  # q = c·R^-1 (p - t)
    elif name == "color":
        out = _render_color(images, flat, mean, std)
    else:
        out = _render_blur(images, flat[:, 0], max_blur_sigma)
    return out.reshape(*lead, *u.shape[-3:])


def _affine_matrices(name: str, flat: torch.Tensor) -> torch.Tensor:
    """(S, P) θ -> (S, 2, 3) `affine_grid` matrices mapping output to input normalised coordinates.

    On screen (x right, y down) g rotates by φ counter-clockwise about the centre, then moves by t: an output point
    p shows the input at R(φ)^-1 (p - t). In normalised coordinates ([-1, 1] over the crop) t_n = 2·t.
    """
    zeros = torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
    phi = torch.deg2rad(flat[:, 0]) if name in ("rotation", "se2") else zeros
    t = flat[:, -2:] * 2.0 if name in ("translation", "se2") else torch.stack([zeros, zeros], dim=1)
    c, s = torch.cos(phi), torch.sin(phi)
    r_inv = torch.stack([torch.stack([c, -s], dim=1), torch.stack([s, c], dim=1)], dim=1)  # (S, 2, 2)
    offset = -(r_inv @ t.unsqueeze(-1))  # (S, 2, 1)
    return torch.cat([r_inv, offset], dim=2)


def _render_affine(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """(S, 3, G, G) images, (S, 2, 3) matrices -> (S, 3, G, G): one affine_grid + grid_sample, zero fill."""
    grid = F.affine_grid(matrices.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor·a + (1 - factor)·b, clamped to [0, 1] (torchvision's _blend for float images)."""
    return (factor * a + (1.0 - factor) * b).clamp_(0.0, 1.0)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """(S, 3, G, G) in [0, 1] -> (S, 1, G, G) luma."""
    w = torch.tensor(_GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _render_color(images: torch.Tensor, flat: torch.Tensor, mean, std) -> torch.Tensor:
    """Colour jitter with per-state factors 1+b, 1+c, 1+s and hue shift h, in [0, 1] space; then re-normalise."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    sd = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    x = images * sd + m  # un-normalised, [0, 1]
    f = (1.0 + flat[:, :3].to(images.dtype)).view(-1, 3, 1, 1, 1)
    x = _blend(x, torch.zeros_like(x), f[:, 0])  # brightness
    x = _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f[:, 1])  # contrast
    x = _blend(x, _grayscale(x), f[:, 2])  # saturation
    x = _shift_hue(x, flat[:, 3].to(images.dtype))
    return (x - m) / sd


def _shift_hue(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of (S, 3, G, G) RGB in [0, 1] by h[s] turns (RGB -> HSV -> RGB, as torchvision's adjust_hue)."""
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(r, torch.maximum(g, b))
    minc = torch.minimum(r, torch.minimum(g, b))
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    sat = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    is_r, is_g = maxc == r, (maxc == g) & (maxc != r)
    hue6 = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))  # hue in sixths of a turn
    hue6 = torch.remainder(hue6 + 6.0 * h.view(-1, 1, 1), 6.0)
    # HSV -> RGB, closed form: channel n (r: 5, g: 3, b: 1) is v - v·s·clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
    vs = maxc * sat
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(hue6 + n, 6.0)
        channels.append(maxc - vs * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(channels, dim=1)


def blur_kernel_size(sigma: float) -> int:
    """Odd Gaussian kernel size 2·⌈3σ⌉ + 1 for σ in pixels at the rendered size (1 for σ = 0)."""
    return 2 * math.ceil(3.0 * max(float(sigma), 0.0)) + 1


def _render_blur(images: torch.Tensor, sigma_224: torch.Tensor, max_sigma_224: float | None = None) -> torch.Tensor:
    """Gaussian blur, σ_s = sigma_224[s]·G/224 pixels, one separable grouped convolution over all states.

    One kernel size for all states (blur_kernel_size), from `max_sigma_224` when given (a python bound: no host
    synchronisation), else from the largest σ of the batch (read from the device); reflect padding as torchvision's
    gaussian_blur. σ -> 0 gives the identity kernel. A σ above `max_sigma_224` is clamped to it.
    """
    S, C, H, W = images.shape
    scale = H / BLUR_REFERENCE_SIZE
    sigma = sigma_224.to(images.dtype).clamp(min=0.0) * scale
    if max_sigma_224 is None:
        max_sigma = float(sigma.max())  # one device-to-host copy
    else:
        max_sigma = max(float(max_sigma_224), 0.0) * scale
        sigma = sigma.clamp(max=max_sigma)
    size = blur_kernel_size(max_sigma)
    radius = size // 2
    if radius == 0:
        return images.clone()
    if radius >= min(H, W):
        raise ValueError(f"blur: σ={max_sigma:.3g} px needs a kernel of {size} px, larger than the {H}px crop")
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma.clamp(min=1e-6).unsqueeze(1)) ** 2)  # (S, size)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(C, dim=0)  # (S·C, size)
    out = F.pad(images.reshape(1, S * C, H, W), [radius, radius, radius, radius], mode="reflect")
    out = F.conv2d(out, kernel.view(S * C, 1, 1, size), groups=S * C)
    out = F.conv2d(out, kernel.view(S * C, 1, size, 1), groups=S * C)
    return out.view(S, C, H, W)
