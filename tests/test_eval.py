"""The evaluation probes on encoders with a known answer, and the eval entry points on a real DINOv2 backbone.

Known-answer encoders expose DINOv2's `forward_features` interface:
- `Moments` reads the orientation and centroid of the single blob in the image from its intensity moments, so
  θ of rotation / translation / SE(2) is an exact (linear) function of [f(I); f(g_θ(I))] -> R² ≈ 1;
- `Constant` and `FixedNoise` ignore the image -> no information about θ or the class -> R² ≈ 0 (or below),
  accuracy ≈ chance;
- `ReadLabel` reads the class the dataset wrote into the pixel values -> one-hot features -> accuracy 1.
"""

import json
import math

import pytest
import torch
from helpers import PYTHON, run
from torch import nn

from dinov2_eqcoh.eval.equivariance import evaluate_equivariance, fit_theta_probe, r2_score
from dinov2_eqcoh.eval.invariance import evaluate_invariance, evaluate_invariance_features

SIZE = 32


class Blobs(torch.utils.data.Dataset):
    """One elongated Gaussian blob at the image centre, orientation α ∈ [-40°, 40°], on a 0 (normalised) ground.

    With rotations φ ∈ [-45°, 45°] the blob's orientation stays inside (-90°, 90°): no wrap-around.
    """

    def __init__(self, n, size=SIZE, seed=0):
        self.alpha = torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 80 - 40
        self.size = size

    def __len__(self):
        return len(self.alpha)

    def __getitem__(self, i):
        s, a = self.size, math.radians(float(self.alpha[i]))
        yy, xx = torch.meshgrid(torch.arange(s) - (s - 1) / 2, torch.arange(s) - (s - 1) / 2, indexing="ij")
        u, v = xx * math.cos(a) + yy * math.sin(a), -xx * math.sin(a) + yy * math.cos(a)
        blob = torch.exp(-0.5 * ((u / (0.18 * s)) ** 2 + (v / (0.06 * s)) ** 2))
        return 2.0 * blob.expand(3, s, s).clone(), i % 10


class Moments(nn.Module):
    """[orientation (degrees), centroid x, centroid y] of |image| as a CLS token."""

    patch_size = 1

    def forward_features(self, x):
        w = x.abs().sum(1)  # (B, H, W)
        B, H, W = w.shape
        yy, xx = torch.meshgrid(torch.arange(H, dtype=x.dtype), torch.arange(W, dtype=x.dtype), indexing="ij")
        m = w.sum((1, 2))
        cx, cy = (w * xx).sum((1, 2)) / m, (w * yy).sum((1, 2)) / m
        dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
        mu20, mu02, mu11 = (w * dx * dx).sum((1, 2)), (w * dy * dy).sum((1, 2)), (w * dx * dy).sum((1, 2))
        alpha = torch.rad2deg(0.5 * torch.atan2(2 * mu11, mu20 - mu02))
        f = torch.stack([alpha, cx, cy], 1)  # (B, 3)
        return {"x_norm_clstoken": f, "x_norm_patchtokens": f[:, None]}


class Constant(nn.Module):
    patch_size = 1

    def forward_features(self, x):
        f = torch.ones(x.shape[0], 16)
        return {"x_norm_clstoken": f, "x_norm_patchtokens": f[:, None]}


class FixedNoise(nn.Module):
    """Random features from a fixed seed, independent of the image content."""

    patch_size = 1

    def __init__(self):
        super().__init__()
        self.gen = torch.Generator().manual_seed(123)

    def forward_features(self, x):
        f = torch.randn(x.shape[0], 16, generator=self.gen)
        return {"x_norm_clstoken": f, "x_norm_patchtokens": f[:, None]}


class LabelImages(torch.utils.data.Dataset):
    """Class c written into the image: every pixel = c / 10 (normalised space)."""

    def __init__(self, n, classes=10):
        self.n, self.classes = n, classes

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        c = (i * 7) % self.classes
        return torch.full((3, 16, 16), c / 10), c


class ReadLabel(nn.Module):
    """One-hot of the class written into the pixels."""

    patch_size = 1

    def forward_features(self, x):
        c = (x.mean(dim=(1, 2, 3)) * 10).round().long()
        f = nn.functional.one_hot(c, 10).float()
        return {"x_norm_clstoken": f, "x_norm_patchtokens": f[:, None].repeat(1, 4, 1)}


PROBE = dict(n_train=300, n_test=100, epochs=20, device="cpu", features="cls")


def test_r2_score_definition():
    target = torch.randn(50, 3)
    assert r2_score(target, target) == pytest.approx(1.0)
    assert r2_score(torch.full_like(target, float(target.mean())), target) == pytest.approx(0.0, abs=1e-6)
    # one global mean over all components (not per component)
    shifted = torch.stack([torch.zeros(50), torch.full((50,), 10.0)], 1)
    assert r2_score(shifted, shifted + 0.1) > 0.99


def test_equivariance_probe_reads_theta_from_an_encoder_that_exposes_it():
    results = evaluate_equivariance(Moments(), Blobs(400), tasks=("rot", "trans"), **PROBE)
    r2 = results["r2"]["cls"]
    assert r2["rot"] > 0.95 and r2["trans"] > 0.95, r2
    assert min(min(v) for v in results["r2_per_dim"]["cls"].values()) > 0.9, results["r2_per_dim"]
    assert r2["mean"] == pytest.approx((r2["rot"] + r2["trans"]) / 2)
    assert results["tasks"]["trans"] == {"transform": "translation", "theta": ["t_x", "t_y"]}


@pytest.mark.parametrize("encoder", [Constant, FixedNoise])
def test_equivariance_probe_finds_nothing_in_features_that_ignore_the_image(encoder):
    results = evaluate_equivariance(encoder(), Blobs(400), tasks=("rot", "trans"), **PROBE)
    r2 = results["r2"]["cls"]
    assert r2["rot"] <= 0.1 and r2["trans"] <= 0.1, r2


def test_equivariance_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown or no task.*allowed: rot"):
        evaluate_equivariance(Moments(), Blobs(10), tasks=("spin",))
    with pytest.raises(ValueError, match="has 3 images; the R² probe needs at least 4"):
        evaluate_equivariance(Moments(), Blobs(3), n_train=8, n_test=8)  # fewer than asked: 2/3 + 1/3 (test_interop)
    with pytest.raises(ValueError, match="unknown kind 'pooled'"):
        evaluate_equivariance(Moments(), Blobs(10), features="pooled", n_train=4, n_test=4)


def test_knn_and_linear_accuracy_one_on_label_features_and_chance_on_noise():
    train, test = LabelImages(300), LabelImages(200)
    results = evaluate_invariance(ReadLabel(), train, test, features=("cls", "avgpool", "concat"), device="cpu")
    for kind in ("cls", "avgpool", "concat"):
        assert results["knn"][kind] == 1.0 and results["linear"][kind] == 1.0, results
    assert results["chance"] == pytest.approx(0.1) and results["n_test"] == 200

    noise = evaluate_invariance(FixedNoise(), train, test, device="cpu", features="cls")
    # 200 test images, 10 classes: chance 0.1; 0.25 is > 4 binomial standard deviations above it
    assert noise["knn"]["cls"] < 0.25 and noise["linear"]["cls"] < 0.25, noise


def test_knn_vote_is_temperature_weighted():
    # two close neighbours of class 1 outvote three farther ones of class 0 only at a low temperature
    train = torch.tensor([[1.0, 0.0], [1.0, 0.02], [1.0, -0.6], [1.0, 0.6], [1.0, 0.7]])
    labels = torch.tensor([1, 1, 0, 0, 0])
    test, test_labels = torch.tensor([[1.0, 0.01]]), torch.tensor([1])
    sharp = evaluate_invariance_features({"cls": train}, labels, {"cls": test}, test_labels, k=5, temperature=0.01)
    flat = evaluate_invariance_features({"cls": train}, labels, {"cls": test}, test_labels, k=5, temperature=100.0)
    assert sharp["knn"]["cls"] == 1.0 and flat["knn"]["cls"] == 0.0


@pytest.fixture(scope="module")
def random_vit_test(tmp_path_factory):
    """A released-format file of a freshly initialised vit_test/8 (no config next to it: options are inferred)."""
    from dinov2_eqcoh.models import vit_test

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vit_test_random.pth"
    torch.save(vit_test(patch_size=8, img_size=32, init_values=1e-5, block_chunks=0).state_dict(), path)
    return path


@pytest.mark.slow
def test_equivariance_and_invariance_entry_points(random_vit_test, tmp_path):
    out = tmp_path / "eval"
    common = ["--weights", random_vit_test, "--image-size", "32", "--output-dir", out, "--batch-size", "50"]
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.equivariance", *common, "--tasks", "rot,color,blur,trans,se2",
                "--features", "cls", "--n-train", "60", "--n-test", "40", "--epochs", "2"], timeout=600)
    assert "equivariance features" in proc.stdout  # the progress display
    results = json.loads((out / "equivariance.json").read_text())
    assert set(results["r2"]["cls"]) == {"rot", "color", "blur", "trans", "se2", "mean"}
    assert all(math.isfinite(v) and v <= 1.0 for v in results["r2"]["cls"].values())
    assert results["ranges"]["rotation"] == [-45.0, 45.0] and results["image_size"] == 32
    assert (out / "equivariance.png").stat().st_size > 1000

    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.invariance", *common, "--dataset",
                "Synthetic:n=100:size=32:classes=5:seed=3", "--linear-steps", "20"], timeout=600)
    results = json.loads((out / "invariance.json").read_text())
    assert results["num_classes"] == 5 and results["n_train"] == 70 and results["n_test"] == 30
    assert all(0.0 <= results[m][k] <= 1.0 for m in ("knn", "linear") for k in ("cls", "concat"))

    bad = run([PYTHON, "-m", "dinov2_eqcoh.eval.equivariance", *common, "--image-size", "30"], check=False)
    assert bad.returncode != 0 and "--image-size 30 must be a positive multiple of the patch size 8" in bad.stdout


def test_probe_early_stopping_keeps_noise_near_zero():
    """Pairs of pure noise: a 1024-wide probe trained to the end memorises them (held-out R² well below 0);
    early stopping on the held-back tenth keeps the weights of an early epoch (R² about 0)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(1300, 64, generator=gen), torch.randn(1300, 1, generator=gen)
    memorised = fit_theta_probe(x[:1000], y[:1000], x[1000:], y[1000:], epochs=40, patience=None, device="cpu")
    stopped = fit_theta_probe(x[:1000], y[:1000], x[1000:], y[1000:], epochs=40, patience=5, device="cpu")
    assert memorised["r2"] < -0.2 and memorised["epochs_run"] == 40, memorised
    assert stopped["r2"] > -0.05 and stopped["best_epoch"] < 10 and stopped["epochs_run"] < 40, stopped


def test_probe_rejects_bad_validation_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        fit_theta_probe(torch.zeros(4, 2), torch.zeros(4, 1), torch.zeros(2, 2), torch.zeros(2, 1), val_fraction=1.0)


def test_blur_task_sigma_is_in_pixels_of_the_probed_image():
    """At 32 px the blur task renders σ = 2 px of the 32 px image (the paper's σ in probe pixels), not 2·32/224."""
    import torchvision.transforms.functional as TF

    from dinov2_eqcoh.eval.equivariance import blur_sigma_definition, render_theta
    from dinov2_eqcoh.method.transforms import render

    torch.manual_seed(0)
    image = torch.randn(1, 3, 32, 32)
    theta = torch.tensor([[2.0]])
    ours = render(image, "blur", render_theta("blur", theta, 32, "probe_px"))
    reference = TF.gaussian_blur(image, kernel_size=13, sigma=2.0)
    assert torch.allclose(ours, reference, atol=1e-5)
    # the old convention (σ at 224 px) leaves a 32 px image almost untouched: the task was unresolvable
    old = render(image, "blur", render_theta("blur", theta, 32, "px_at_224"))
    assert (old - image).abs().mean() < 0.25 * (ours - image).abs().mean()
    # at 224 px both conventions are the paper's
    assert torch.equal(render_theta("blur", theta, 224, "probe_px"), render_theta("blur", theta, 224, "px_at_224"))
    assert "32 px probe image" in blur_sigma_definition("probe_px", 32)


# ---------------------------------------------------------------------------------------------------------------
# known answers on the rendering itself: content whose rotation cannot be observed (issue 21)
# ---------------------------------------------------------------------------------------------------------------


class Rings(torch.utils.data.Dataset):
    """Centred concentric rings (random period and phase) reaching into the corners: a rotation about the centre
    leaves the image unchanged except where the rendering invents content (the corners it uncovers, resampling).
    Any θ a probe reads from f(I), f(g_θ(I)) of these images comes from the rendering, not from the content."""

    def __init__(self, n, size=SIZE, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.period = 4 + 6 * torch.rand(n, generator=gen)
        self.phase = torch.rand(n, generator=gen) * 2 * math.pi
        self.size = size

    def __len__(self):
        return len(self.period)

    def __getitem__(self, i):
        s = self.size
        yy, xx = torch.meshgrid(torch.arange(s) - (s - 1) / 2, torch.arange(s) - (s - 1) / 2, indexing="ij")
        img = torch.cos(2 * math.pi * (xx**2 + yy**2).sqrt() / self.period[i] + self.phase[i])
        return img.expand(3, s, s).clone(), i % 10


class RadialProfile(nn.Module):
    """Mean |intensity| per one-pixel ring of the inscribed disk: rotation-invariant by construction."""

    patch_size = 1

    def forward_features(self, x):
        s = x.shape[-1]
        yy, xx = torch.meshgrid(torch.arange(s) - (s - 1) / 2, torch.arange(s) - (s - 1) / 2, indexing="ij")
        ring = (xx**2 + yy**2).sqrt().floor().long()
        w = x.abs().mean(1)  # (B, S, S)
        f = torch.stack([w[:, ring == r].mean(1) for r in range(s // 2 - 1)], 1)  # (B, S/2 - 1)
        return {"x_norm_clstoken": f, "x_norm_patchtokens": f[:, None]}


@pytest.mark.parametrize("encoder", ["raw_pixels", "random_vit"])
def test_rotation_of_rings_is_read_only_from_the_filled_corners(encoder, random_vit_test):
    """Rings rendered as the probes render by default (the corners a rotation uncovers filled with zeros): raw
    pixels read no θ (R² < 0.1; the same probe reads rotation from raw pixels of the oriented blobs, so it could
    fail), but a random ViT reads R²(rot) about 0.4, and only from the corners: zeroing everything outside the
    inscribed disk, in I and in g_θ(I), takes it back to 0. This is the leak fill-free probing removes
    (test_fill_free_probe_reads_no_rotation_from_rings)."""
    from dinov2_eqcoh.eval.features import RawPixels
    from dinov2_eqcoh.weights.checkpoints import load_backbone

    backbone = RawPixels(8) if encoder == "raw_pixels" else load_backbone(random_vit_test)[0]
    probe = dict(PROBE, n_train=400, n_test=200, epochs=30)
    rings = evaluate_equivariance(backbone, Rings(600), tasks=("rot",), **probe)["r2"]["cls"]["rot"]
    if encoder == "raw_pixels":
        assert rings < 0.1, rings
        blobs = evaluate_equivariance(backbone, Blobs(600), tasks=("rot",), **probe)["r2"]["cls"]["rot"]
        assert blobs > 0.5, blobs
        return
    assert rings > 0.2, rings  # the fill leaks θ to a ViT

    class InscribedDisk(nn.Module):
        patch_size = 8

        def forward_features(self, x):
            s = x.shape[-1]
            yy, xx = torch.meshgrid(torch.arange(s) - (s - 1) / 2, torch.arange(s) - (s - 1) / 2, indexing="ij")
            return backbone.forward_features(x * ((xx**2 + yy**2).sqrt() < s / 2 - 1))

    disk = evaluate_equivariance(InscribedDisk(), Rings(600), tasks=("rot",), **probe)["r2"]["cls"]["rot"]
    assert disk < 0.1, disk


def test_rotation_invariant_features_score_zero_on_rotated_content():
    """A feature map invariant to rotation by construction reads no θ from the oriented blobs, whose rotation
    raw pixels and image moments do show (test_equivariance_probe_reads_theta_from_an_encoder_that_exposes_it)."""
    r2 = evaluate_equivariance(RadialProfile(), Blobs(600), tasks=("rot",), **dict(PROBE, n_train=400, n_test=200,
                                                                                   epochs=30))["r2"]["cls"]["rot"]
    assert r2 < 0.1, r2


def test_fill_free_rendering_shows_g_of_the_crop_without_fill():
    """On a larger canvas, the centred crop of g_θ(canvas) is g_θ(crop) rendered at the crop's own scale, without
    the fill of uncovered corners: for a shift the crop is the crop of the shifted canvas, shifted by t·crop px."""
    from dinov2_eqcoh.eval.equivariance import EVAL_RANGES, _to_canvas, center_crop, fill_free_size
    from dinov2_eqcoh.method.transforms import render

    crop, canvas = 32, fill_free_size(32)
    assert canvas == math.ceil(32 * math.sqrt(2) * (1 + 2 * 10 / 224)) + 2
    img = torch.randn(1, 3, canvas, canvas)
    theta = torch.tensor([[4 / 32, 0.0]])  # a 4 px shift of the 32 px crop
    moved = center_crop(render(img, "translation", _to_canvas("trans", theta, crop, canvas)), crop)
    top = (canvas - crop) // 2
    assert torch.allclose(moved, img[..., top : top + crop, top - 4 : top - 4 + crop], atol=1e-4)
    rotated = center_crop(render(img, "rotation", torch.tensor([[45.0]])), crop)
    assert (rotated == 0).float().mean() < 0.01  # no fill reaches the crop (zero = the fill value)
    corners = render(center_crop(img, crop), "rotation", torch.tensor([[45.0]]))
    assert (corners == 0).float().mean() > 0.1  # rendered on the crop itself, the corners are filled
    with pytest.raises(ValueError, match="needs images of at least"):
        evaluate_equivariance(Moments(), Blobs(40, size=40), tasks=("rot",), crop=32, **dict(PROBE, n_train=20,
                                                                                               n_test=10))
    assert EVAL_RANGES["rotation"] == (-45.0, 45.0)


def test_fill_free_probe_reads_no_rotation_from_rings(random_vit_test):
    """The ring known answer again, rendered fill-free: the random ViT that read R²(rot) 0.40 from the filled corners
    of rings (test_rotation_of_rings_is_read_only_from_the_filled_corners) reads nothing."""
    from dinov2_eqcoh.eval.equivariance import fill_free_size
    from dinov2_eqcoh.weights.checkpoints import load_backbone

    backbone = load_backbone(random_vit_test)[0]
    r2 = evaluate_equivariance(backbone, Rings(600, size=fill_free_size(SIZE)), tasks=("rot",), crop=SIZE,
                               **dict(PROBE, n_train=400, n_test=200, epochs=30))
    assert r2["r2"]["cls"]["rot"] < 0.1, r2["r2"]
    assert r2["image_size"] == SIZE and r2["rendering"].startswith("fill-free")
