"""Dense and geometric probes (issue 13): metrics against hand-computed values, probes on known-answer encoders,
the readers' errors on bad folders, and the three entry points on the built-in data and DAVIS / ADE20K layouts.

Known-answer encoders expose DINOv2's `forward_features` (patch tokens in raster order):
- `PatchPixels(p)` returns each p x p patch's pixels as its token: with p = 1 a pixel's colour;
- `PatchMean(p)` returns each patch's mean colour: on coordinate-ramp images that is the patch's position;
- `Constant` ignores the image.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import PYTHON, run
from PIL import Image
from torch import nn

from dinov2_eqcoh.data.datasets import SyntheticGlyphs
from dinov2_eqcoh.data.dense_folders import ADE20KFolder, DavisFolder
from dinov2_eqcoh.data.synthetic_dense import GLYPH0, SyntheticSegmentation, SyntheticVideos
from dinov2_eqcoh.eval.homography import evaluate_homography, homography_from_corners, make_pairs, square_corners
from dinov2_eqcoh.eval.patch_maps import to_normalised_tensor
from dinov2_eqcoh.eval.propagation import (
    db_eval_iou,
    evaluate_propagation,
    f_measure,
    label_propagation,
    seg2bmap,
)
from dinov2_eqcoh.eval.segmentation import confusion, evaluate_segmentation, miou_from_confusion
from dinov2_eqcoh.method.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)


class PatchPixels(nn.Module):
    def __init__(self, patch=1):
        super().__init__()
        self.patch_size = patch

    def forward_features(self, x):
        tokens = F.unfold(x, self.patch_size, stride=self.patch_size).transpose(1, 2)  # (B, N, 3 p p)
        return {"x_norm_clstoken": tokens.mean(1), "x_norm_patchtokens": tokens}


class PatchMean(PatchPixels):
    def forward_features(self, x):
        p = self.patch_size
        tokens = F.avg_pool2d(x, p).flatten(2).transpose(1, 2)  # (B, N, 3)
        return {"x_norm_clstoken": tokens.mean(1), "x_norm_patchtokens": tokens}


class Constant(PatchPixels):
    def forward_features(self, x):
        n = (x.shape[-2] // self.patch_size) * (x.shape[-1] // self.patch_size)
        tokens = torch.ones(x.shape[0], n, 8)
        return {"x_norm_clstoken": tokens[:, 0], "x_norm_patchtokens": tokens}


# --------------------------------------------------------------------------------------------------------------
# built-in data
# --------------------------------------------------------------------------------------------------------------


def test_synthetic_segmentation_is_the_builtin_scenes_with_exact_labels():
    seg = SyntheticSegmentation(n=6, size=32, classes=10, seed=1)
    glyphs = SyntheticGlyphs(n=6, size=32, classes=10, seed=1)
    for i in range(6):
        image, labels = seg.render(i)
        assert np.array_equal(np.asarray(image), np.asarray(glyphs.render(i)))  # the same pixels
        values = set(np.unique(labels).tolist())
        assert {1, 2, GLYPH0 + i % 10} <= values <= set(range(1, seg.num_classes + 1))
    assert seg.num_classes == 14 and seg.class_names[GLYPH0] == "glyph L"


def test_synthetic_videos_two_moving_objects_in_every_frame():
    videos = SyntheticVideos(n=2, frames=6, size=48, seed=1)
    name, frames, masks = videos.sequence(0)
    assert name == "synthetic000" and len(frames) == len(masks) == 6 and frames[0].size == (48, 48)
    for m in masks:
        assert set(np.unique(m).tolist()) == {0, 1, 2}
    assert not np.array_equal(masks[0], masks[-1])  # the objects moved
    assert np.array_equal(videos.sequence(0)[2][3], masks[3])  # deterministic
    with pytest.raises(ValueError, match="frames >= 3"):
        SyntheticVideos(n=1, frames=2)


# --------------------------------------------------------------------------------------------------------------
# DAVIS' J and F on hand-made masks
# --------------------------------------------------------------------------------------------------------------


def square(top, left, h, w, size=6):
    m = np.zeros((size, size), bool)
    m[top:top + h, left:left + w] = True
    return m


def test_seg2bmap_marks_pixels_that_differ_from_right_lower_or_diagonal_neighbour():
    # 3x3 square at rows 1..3, cols 1..3 of 6x6: inside, the right column and the bottom row; outside, the row above
    # (cols 0..3) and the column to the left (rows 1..3)
    expected = {(1, 3), (2, 3), (3, 3), (3, 1), (3, 2), (0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (2, 0), (3, 0)}
    assert set(zip(*np.nonzero(seg2bmap(square(1, 1, 3, 3))))) == expected


def test_j_and_f_against_hand_computed_values():
    gt = square(1, 1, 3, 3)
    shifted = square(1, 2, 3, 3)  # one column to the right: 6 of 12 pixels shared
    small = square(1, 1, 2, 2)
    assert db_eval_iou(gt, shifted) == pytest.approx(6 / 12)
    assert db_eval_iou(gt, small) == pytest.approx(4 / 9)
    # bound_th 0: exact boundary matches. 12 boundary pixels each, 6 in common -> P = R = 1/2
    assert f_measure(shifted, gt, bound_th=0) == pytest.approx(0.5)
    # the 2x2 square has 8 boundary pixels, 5 of them on gt's 12: P = 5/8, R = 5/12, F = 2PR/(P+R) = 1/2
    assert f_measure(small, gt, bound_th=0) == pytest.approx(2 * (5 / 8) * (5 / 12) / (5 / 8 + 5 / 12))
    # DAVIS' default 0.008 of the diagonal (sqrt(72) -> ceil(0.068) = 1 px): a one-pixel shift matches everywhere
    assert f_measure(shifted, gt) == pytest.approx(1.0)
    assert f_measure(shifted, gt, bound_th=1) == pytest.approx(1.0)
    empty = np.zeros((6, 6), bool)
    assert db_eval_iou(empty, empty) == 1.0 and f_measure(empty, empty) == 1.0
    assert db_eval_iou(gt, empty) == 0.0 and f_measure(empty, gt) == 0.0


# --------------------------------------------------------------------------------------------------------------
# label propagation
# --------------------------------------------------------------------------------------------------------------


COLOURS = {0: (40, 40, 200), 1: (220, 30, 30), 2: (30, 200, 40)}  # background, object 1, object 2


def painted(mask):
    """A frame whose colour is its label: RGB uint8 PIL image."""
    rgb = np.zeros((*mask.shape, 3), np.uint8)
    for label, colour in COLOURS.items():
        rgb[mask == label] = colour
    return Image.fromarray(rgb)


class ListVideos:
    def __init__(self, masks):
        self.masks = masks

    def __len__(self):
        return 1

    def sequence(self, i):
        return "handmade", [painted(m) for m in self.masks], self.masks


def two_objects(shift=0, size=16):
    m = np.zeros((size, size), np.uint8)
    m[2:7, 2 + shift:8 + shift] = 1
    m[9:14, 8 - shift:13 - shift] = 2
    return m


def test_propagation_is_perfect_along_identical_frames_with_pixel_features():
    results = evaluate_propagation(PatchPixels(1), ListVideos([two_objects()] * 5), size=16, device="cpu")
    assert results["n_objects"] == 2
    assert results["j_mean"] == 1.0 and results["f_mean"] == 1.0 and results["jf_mean"] == 1.0
    # the soft labels of a frame identical to its only context frame are the context's one-hot labels
    feats = torch.randn(12, 5)
    seg = F.one_hot(torch.tensor([0, 1, 2] * 4), 3).T.reshape(1, 3, 3, 4).float()
    out = label_propagation(feats, feats[None], seg, None, topk=1)
    assert torch.allclose(out, seg[0])


def test_propagation_follows_a_moving_object_only_with_informative_features():
    video = ListVideos([two_objects(shift=t) for t in range(5)])  # both objects move one pixel per frame
    follows = evaluate_propagation(PatchPixels(1), video, size=16, device="cpu")
    assert follows["jf_mean"] == 1.0
    lost = evaluate_propagation(Constant(1), video, size=16, device="cpu")
    assert lost["j_mean"] < 0.5  # constant features cannot say where the objects went


# --------------------------------------------------------------------------------------------------------------
# homography
# --------------------------------------------------------------------------------------------------------------


def ramp_images(n, H, W):
    """x / W, y / H, 0.5 at the pixel centres: each pixel's colour is its position."""
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    return torch.stack([xx / W, yy / H, torch.full_like(xx, 0.5)]).expand(n, 3, H, W).clone()


def test_homography_maps_the_corners_and_the_warp_samples_the_displaced_quadrilateral():
    src = square_corners(32).expand(2, 4, 2)
    dst = src + torch.tensor([[[3.0, -2.0], [1.0, 4.0], [-5.0, 2.5], [0.5, -1.0]]])
    Hm = homography_from_corners(src, dst)
    mapped = torch.cat([src, torch.ones(2, 4, 1)], -1).double() @ Hm.transpose(1, 2)
    assert torch.allclose(mapped[..., :2] / mapped[..., 2:], dst.double(), atol=1e-9)

    H, W = 60, 80
    pairs = make_pairs(ramp_images(4, H, W), 32, 8.0, torch.Generator().manual_seed(0))
    a, b, offsets, pos = pairs["a"], pairs["b"], pairs["offsets"], pairs["position"]
    # A is the crop at p: its ramp values are the image positions of its pixel centres
    assert torch.allclose(a[:, 0, 0, 0] * W, pos[:, 0] + 0.5, atol=1e-5)
    # B's corner pixels show the image near the displaced corners (half a pixel in from them)
    Hm = homography_from_corners(square_corners(32).expand(4, 4, 2), square_corners(32) + pos[:, None] + offsets)
    centre = torch.tensor([[0.5, 0.5, 1.0]], dtype=torch.float64)
    expect = centre @ Hm.transpose(1, 2)
    expect = expect[:, 0, :2] / expect[:, 0, 2:]
    assert torch.allclose(b[:, 0, 0, 0].double() * W, expect[:, 0], atol=1e-3)
    assert torch.allclose(b[:, 1, 0, 0].double() * H, expect[:, 1], atol=1e-3)


def test_homography_recovers_a_translation_from_features_that_expose_position():
    sources = ramp_images(400, 60, 80)
    common = dict(size=32, n_train=300, n_test=100, rho=8.0, translation_only=True, device="cpu", epochs=60,
                  patience=10)
    found = evaluate_homography(PatchMean(8), sources, **common)
    assert found["mce_zero"] == pytest.approx(8.0 * 0.765, rel=0.15)  # E|U[-ρ, ρ]²| ≈ 0.765 ρ
    assert found["mce"] < 0.2 * found["mce_zero"]
    blind = evaluate_homography(Constant(8), sources, **common)
    assert blind["mce"] > 0.9 * blind["mce_zero"]


# --------------------------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------------------------


def test_miou_from_a_confusion_matrix_by_hand():
    pred = torch.tensor([0, 0, 1, 1, 1, 2])
    true = torch.tensor([0, 1, 1, 1, -1, 0])  # -1 ignored
    conf = confusion(pred, true, 4)
    scores = miou_from_confusion(conf)
    # class 0: TP 1, FP 1 (true 1 -> pred 0), FN 1 (true 0 -> pred 2) -> 1/3; class 1: TP 2, FP 0, FN 1 -> 2/3;
    # class 2: TP 0, FP 1 -> 0; class 3: absent everywhere -> NaN, left out of the mean
    assert scores["iou"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0]) and math.isnan(scores["iou"][3])
    assert scores["miou"] == pytest.approx((1 / 3 + 2 / 3) / 3)
    assert scores["pixel_acc"] == pytest.approx(3 / 5)


class ColourLabels(torch.utils.data.Dataset):
    """16x16 images: random rectangles of classes 1..3, each class its own colour, an ignored (0) white border."""

    num_classes = 3
    colours = {0: (1.0, 1.0, 1.0), 1: (1.0, 0.0, 0.0), 2: (0.0, 1.0, 0.0), 3: (0.0, 0.0, 1.0)}

    def __init__(self, n, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.labels = []
        for _ in range(n):
            lab = torch.ones(16, 16, dtype=torch.long)
            for c in (2, 3):
                y, x = torch.randint(1, 10, (2,), generator=gen).tolist()
                lab[y:y + 5, x:x + 5] = c
            lab[0], lab[:, 0] = 0, 0
            self.labels.append(lab)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        lab = self.labels[i]
        img = torch.zeros(3, 16, 16)
        for c, rgb in self.colours.items():
            img[:, lab == c] = torch.tensor(rgb)[:, None]
        return (img - MEAN) / STD, lab


def test_segmentation_probe_reads_colour_classes_and_constant_features_give_chance():
    ds = ColourLabels(60)
    good = evaluate_segmentation(PatchPixels(1), ds, n_train=40, n_test=20, epochs=30, lr=3e-2, device="cpu")
    assert good["miou"] > 0.98
    blind = evaluate_segmentation(Constant(1), ds, n_train=40, n_test=20, epochs=30, lr=3e-2, device="cpu")
    # a constant prediction: the majority class 1 everywhere -> IoU(1) = its pixel share, 0 for classes 2 and 3
    gen = torch.Generator().manual_seed(0)
    test_idx = torch.randperm(60, generator=gen).tolist()[40:]
    y = torch.stack([ds[i][1] for i in test_idx])
    share = float((y == 1).sum()) / float((y > 0).sum())
    assert blind["miou"] == pytest.approx(share / 3, abs=1e-6)
    assert blind["pixel_acc"] == pytest.approx(share, abs=1e-6)


# --------------------------------------------------------------------------------------------------------------
# readers: DAVIS and ADE20K layouts, and their errors
# --------------------------------------------------------------------------------------------------------------


def save_palette_png(path, mask):
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0, 0, 0, 200] + [0] * (768 - 12))
    im.save(path)


def make_davis(root, sequences=("seqa", "seqb"), frames=4, size=(40, 32)):
    """A DAVIS-2017 folder: painted frames with palette annotations of two moving objects."""
    for name in sequences:
        (root / "JPEGImages/480p" / name).mkdir(parents=True)
        (root / "Annotations/480p" / name).mkdir(parents=True)
        for t in range(frames):
            m = np.zeros((size[1], size[0]), np.uint8)
            m[4:14, 4 + t:16 + t] = 1
            m[18:28, 20 - t:34 - t] = 2
            painted(m).save(root / "JPEGImages/480p" / name / f"{t:05d}.jpg", quality=95)
            save_palette_png(root / "Annotations/480p" / name / f"{t:05d}.png", m)
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("\n".join(sequences) + "\n")
    return root


def test_davis_reader_reads_the_layout_and_names_what_is_wrong(tmp_path):
    root = make_davis(tmp_path / "davis")
    davis = DavisFolder(str(root))
    assert davis.names == ["seqa", "seqb"]
    name, frames, masks = davis.sequence(0)
    assert len(frames) == 4 and frames[0].size == (40, 32) and set(np.unique(masks[0]).tolist()) == {0, 1, 2}
    assert davis.objects == [1, 2]

    (root / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"sequence list .*empty.txt is empty"):
        DavisFolder(str(root), sequences=str(root / "empty.txt"))
    with pytest.raises(FileNotFoundError, match="sequence 'nope' has no folder"):
        DavisFolder(str(root), sequences="nope")

    (root / "Annotations/480p/seqb/00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"seqb/00002.jpg has no annotation; expected .*seqb/00002.png"):
        DavisFolder(str(root))

    m = np.asarray(Image.open(root / "Annotations/480p/seqa/00002.png")).copy()
    m[0, 0] = 3  # an object the first frame does not have
    save_palette_png(root / "Annotations/480p/seqa/00002.png", m)
    with pytest.raises(ValueError, match=r"seqa/00002.png has palette index\(es\) \[3\] that are not objects of the "
                                         r"first frame of 'seqa' \(objects \[1, 2\]\)"):
        DavisFolder(str(root), sequences="seqa").sequence(0)

    save_palette_png(root / "Annotations/480p/seqa/00001.png", np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError, match=r"seqa/00001.jpg is 40x32 but its annotation .*00001.png is 20x20"):
        DavisFolder(str(root), sequences="seqa").sequence(0)

    with pytest.raises(FileNotFoundError, match="expected the DAVIS-2017 layout"):
        DavisFolder(str(tmp_path / "missing"))


def make_ade(root, n=(6, 3), size=(40, 30)):
    for split, count in zip(("training", "validation"), n):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            lab = np.ones((size[1], size[0]), np.uint8)
            lab[5:20, 5 + i:25 + i] = 2
            lab[:2] = 0
            Image.fromarray(np.stack([lab * 90] * 3, -1).astype(np.uint8)).save(root / "images" / split / f"ADE_{i}.jpg")
            Image.fromarray(lab).save(root / "annotations" / split / f"ADE_{i}.png")
    return root


def test_ade20k_reader_and_its_errors(tmp_path):
    root = make_ade(tmp_path / "ade")
    ds = ADE20KFolder(str(root), "training", size=16, classes=150, transform=to_normalised_tensor)
    image, labels = ds[0]
    assert len(ds) == 6 and image.shape == (3, 16, 16) and labels.shape == (16, 16)
    assert set(labels.unique().tolist()) <= {0, 1, 2}
    Image.fromarray(np.ones((10, 10), np.uint8)).save(root / "annotations/training/ADE_1.png")
    with pytest.raises(ValueError, match=r"ADE_1.jpg is 40x30 but its annotation .*ADE_1.png is 10x10"):
        ds[1]
    (root / "annotations/training/ADE_2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_2.jpg has no annotation; expected .*ADE_2.png"):
        ADE20KFolder(str(root), "training", size=16)


# --------------------------------------------------------------------------------------------------------------
# the entry points on a real (random) DINOv2 backbone
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_vit(tmp_path_factory):
    from dinov2_eqcoh.models import vit_test

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vit_test_random.pth"
    torch.save(vit_test(patch_size=8, img_size=32, init_values=1e-5, block_chunks=0).state_dict(), path)
    return path


@pytest.mark.slow
def test_entry_points_on_builtin_davis_and_ade20k_data(random_vit, tmp_path):
    common = ["--weights", random_vit, "--image-size", "32", "--device", "cpu"]
    out = tmp_path / "homography"
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.homography", *common, "--output-dir", out, "--n-train", "40",
                "--n-test", "10", "--epochs", "2"], timeout=300)
    assert "homography features (50 pairs)" in proc.stdout  # progress
    h = json.loads((out / "homography.json").read_text())
    assert h["rho"] == 8.0 and h["source_shape"] == [60, 80] and 0 < h["mce"] < 30 and h["mce_zero"] > 0
    assert (out / "homography.png").stat().st_size > 1000

    davis = make_davis(tmp_path / "davis")
    out = tmp_path / "propagation"
    proc = run([PYTHON, "-m", "dinov2_eqcoh.eval.propagation", *common, "--output-dir", out, "--dataset",
                f"DAVIS:root={davis}", "--save-masks"], timeout=300)
    assert "propagation [2/2] seqb" in proc.stdout
    p = json.loads((out / "propagation.json").read_text())
    assert p["n_sequences"] == 2 and p["n_objects"] == 4 and 0.0 <= p["jf_mean"] <= 1.0
    assert set(p["per_object"]) == {"seqa_1", "seqa_2", "seqb_1", "seqb_2"}
    assert (p["n_last_frames"], p["size_mask_neighborhood"], p["topk"], p["temperature"]) == (7, 12, 5, 0.1)
    saved = Image.open(out / "masks/seqa/00003.png")
    assert saved.mode == "P" and saved.size == (40, 32)
    assert (out / "propagation.png").stat().st_size > 1000

    ade = make_ade(tmp_path / "ade")
    out = tmp_path / "segmentation"
    run([PYTHON, "-m", "dinov2_eqcoh.eval.segmentation", *common, "--output-dir", out, "--dataset",
         f"ADE20K:root={ade}", "--n-train", "6", "--n-test", "0", "--epochs", "2"], timeout=300)
    s = json.loads((out / "segmentation.json").read_text())
    assert s["num_classes"] == 150 and s["n_train"] == 6 and s["n_test"] == 3 and 0.0 <= s["miou"] <= 1.0
    assert (out / "segmentation.png").stat().st_size > 1000

    bad = run([PYTHON, "-m", "dinov2_eqcoh.eval.propagation", *common, "--output-dir", tmp_path / "bad",
               "--dataset", f"DAVIS:root={davis}:sequences=seqa,missing"], check=False)
    assert bad.returncode != 0 and "sequence 'missing' has no folder" in bad.stdout


def test_dense_probes_on_the_builtin_data_returns_the_headline_numbers():
    from dinov2_eqcoh.eval.dense import dense_probes, describe_settings, headline

    out = dense_probes(PatchMean(8), size=16, device="cpu", seed=0, scale=0.5)
    assert set(out) >= {"homography", "propagation", "segmentation", "seconds"}
    assert 0 < out["homography"]["mce"] < out["homography"]["mce_zero"]
    assert 0 <= out["propagation"]["jf_mean"] <= 1 and 0 <= out["segmentation"]["miou"] <= 1
    assert out["settings"] == {"homography": {"n_train": 600, "n_test": 200}, "propagation": {"videos": 4, "frames": 12},
                               "segmentation": {"n_train": 300, "n_test": 100}}
    h = headline(out)
    assert h["mce"] == out["homography"]["mce"] and h["jf_mean"] == out["propagation"]["jf_mean"]
    assert h["miou"] == out["segmentation"]["miou"] and h["size"] == 16
    assert describe_settings(out["settings"]).startswith("homography 600 train / 200 test pairs, propagation 4 videos")
    with pytest.raises(ValueError, match="scale 0 must be > 0"):
        dense_probes(PatchMean(8), size=16, device="cpu", scale=0)


@pytest.mark.slow
def test_without_matplotlib_the_numbers_are_written_and_the_picture_skipped(random_vit, tmp_path):
    """The CLIs write their JSON before their picture; a machine without matplotlib gets the numbers and a warning
    (matplotlib is hidden by a package of that name that raises ImportError, first on PYTHONPATH)."""
    blocker = tmp_path / "blocked" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    env = {"PYTHONPATH": str(blocker.parent)}
    common = ["--weights", random_vit, "--image-size", "32", "--device", "cpu"]
    for name, extra in (("homography", ["--n-train", "12", "--n-test", "4", "--epochs", "1"]),
                        ("segmentation", ["--n-train", "8", "--n-test", "4", "--epochs", "1"])):
        out = tmp_path / name
        proc = run([PYTHON, "-m", f"dinov2_eqcoh.eval.{name}", *common, "--output-dir", out, *extra], env=env,
                   timeout=300)
        assert json.loads((out / f"{name}.json").read_text())["n_test"] == 4
        assert not (out / f"{name}.png").exists()
        assert f"{name}.png not drawn (matplotlib hidden by the test)" in proc.stdout


def test_synthetic_shapes_colour_says_nothing_about_the_class():
    """SyntheticShapes (issue 21): deterministic, exact labels for the six shapes and the background, and a pixel's
    colour predicts its shape class no better than chance (mean colour per class is the same up to noise, and a
    nearest-mean classifier on colour is near 1/6 on shape pixels), unlike the colour-coded SyntheticSeg."""
    from dinov2_eqcoh.data.synthetic_dense import SHAPES, SyntheticShapes

    ds = SyntheticShapes(n=120, size=48, seed=3)
    a, b = ds.render(7), SyntheticShapes(n=120, size=48, seed=3).render(7)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and np.array_equal(a[1], b[1])
    assert ds.num_classes == 1 + len(SHAPES) == 7 and ds.class_names[1] == "background"
    pixels, labels = [], []
    for i in range(len(ds)):
        image, lab = ds.render(i)
        pixels.append(np.asarray(image).reshape(-1, 3).astype(np.float64))
        labels.append(lab.reshape(-1))
    pixels, labels = np.concatenate(pixels), np.concatenate(labels)
    assert set(np.unique(labels)) <= set(range(1, 8)) and (labels >= 2).mean() > 0.1
    shape = labels >= 2
    x, y = pixels[shape], labels[shape]
    half = len(x) // 2
    means = np.stack([x[:half][y[:half] == c].mean(0) for c in range(2, 8)])
    pred = 2 + np.argmin(((x[half:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert abs((pred == y[half:]).mean() - 1 / 6) < 0.08, (pred == y[half:]).mean()
    from dinov2_eqcoh.eval.segmentation import make_segmentation_datasets

    train, test, classes, names = make_segmentation_datasets("SyntheticShapes:n=10", 32, 8, 2)
    assert classes == 7 and test is None and train[0][0].shape == (3, 32, 32) and train[0][1].shape == (32, 32)


def test_synthetic_textures_label_every_pixel_by_its_region_texture():
    from dinov2_eqcoh.data.synthetic_dense import TEXTURES, SyntheticTextures

    ds = SyntheticTextures(n=40, size=48, seed=2)
    counts = np.zeros(len(TEXTURES) + 1)
    colour_by_class = {k: [] for k in range(1, len(TEXTURES) + 1)}
    for i in range(len(ds)):
        image, labels = ds.render(i)
        assert labels.min() >= 1 and labels.max() <= len(TEXTURES)  # every pixel has a texture class
        counts += np.bincount(labels.ravel(), minlength=len(TEXTURES) + 1)
        for k in np.unique(labels):
            colour_by_class[int(k)].append(np.asarray(image)[labels == k].mean(0))
    assert (counts[1:] > 0).all()  # every texture occurs
    means = np.stack([np.mean(v, 0) for v in colour_by_class.values()])
    assert np.ptp(means, axis=0).max() < 60  # no class has its own colour (means of random colours, ~127 each)
