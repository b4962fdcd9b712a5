"""The instrument experiments of issue 21 end to end at a toy size: the fill-leak comparison and the dense-headroom
table (real backbones: raw pixels and an untrained DINOv2 ViT of the tiny config)."""

import json

import pytest
from helpers import PYTHON, run

TINY = "configs/tiny/eqcoh_cpu.yaml"


def test_fill_leak_compares_filled_and_fill_free_on_the_same_content(tmp_path):
    out = tmp_path / "fill"
    proc = run([PYTHON, "-m", "dinov2_eqcoh.experiments.fill_leak", "--output-dir", out, "--config-file", TINY,
                "--images", "30", "--epochs", "2"], timeout=600)
    result = json.loads((out / "fill_leak.json").read_text())
    assert set(result["scores"]) == {"raw_pixels", "untrained"}
    assert result["canvas"] > result["size"] == 32
    for by in result["scores"].values():
        assert by["filled"]["rendering"].startswith("corners uncovered") and by["fill_free"]["rendering"].startswith("fill-free")
        assert set(by["filled"]["r2"]["cls"]) == {"rot", "trans", "se2", "color", "blur", "mean"}
    assert "--images 30" in (out / "fill_leak.md").read_text() and "wrote" in proc.stdout


def test_dense_headroom_probes_every_backbone_on_every_dataset(tmp_path):
    out = tmp_path / "dense"
    run([PYTHON, "-m", "dinov2_eqcoh.experiments.dense_headroom", "--output-dir", out, "--config-file", TINY,
         "--n-train", "12", "--n-test", "4", "--photometric", "0,1", "--tasks", "seg,prop,hom"], timeout=600)
    result = json.loads((out / "dense_headroom.json").read_text())
    assert set(result["jf"]) == {"raw_pixels", "untrained"} and set(result["jf"]["raw_pixels"]) == {"0", "1"}
    assert "photometric 1" in (out / "dense_headroom.md").read_text()
    assert set(result["miou"]) == {"raw_pixels", "untrained"}
    for by in result["miou"].values():
        assert set(by) == {"SyntheticSeg", "SyntheticShapes", "SyntheticTextures"}
        assert all(0 <= v["miou"] <= 1 for v in by.values())
    assert "| raw_pixels |" in (out / "dense_headroom.md").read_text()
    assert set(result["mce"]) == {"raw_pixels", "untrained"}
    for by in result["mce"].values():
        assert set(by) == {"Synthetic", "Photos"} and all(v["mce"] > 0 and v["mce_zero"] > 0 for v in by.values())
    assert "Photos: crops of a photograph" in (out / "dense_headroom.md").read_text()


def test_photo_crops_are_seeded_4_to_3_crops_of_the_bundled_photograph():
    import numpy as np

    from dinov2_eqcoh.data.datasets import make_dataset

    ds = make_dataset(dataset_str="Photos:n=6:size=160:seed=1")
    again = make_dataset(dataset_str="Photos:n=6:size=160:seed=1")
    other = make_dataset(dataset_str="Photos:n=6:size=160:seed=2")
    images = [np.asarray(ds[i][0]) for i in range(6)]
    assert all(im.shape == (120, 160, 3) for im in images)
    assert all(np.array_equal(im, np.asarray(again[i][0])) for i, im in enumerate(images))
    assert not np.array_equal(images[0], np.asarray(other[0][0])) and not np.array_equal(images[0], images[1])
    assert min(float(im.std()) for im in images) > 10  # photographic texture, not a flat fill
    with pytest.raises(ValueError, match="unknown key 'classes' for Photos"):
        make_dataset(dataset_str="Photos:n=6:classes=3")


def test_photometric_videos_drift_in_colour_and_keep_their_masks():
    import numpy as np

    from dinov2_eqcoh.data.synthetic_dense import SyntheticVideos

    plain = SyntheticVideos(n=2, frames=5, size=32, seed=1).sequence(1)
    drift = SyntheticVideos(n=2, frames=5, size=32, seed=1, photometric=1.0).sequence(1)
    assert all(np.array_equal(a, b) for a, b in zip(plain[2], drift[2]))  # the same masks
    assert np.array_equal(np.asarray(plain[1][0]), np.asarray(drift[1][0]))  # frame 0 untouched
    first, last = (np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() for a, b in
                   ((plain[1][1], drift[1][1]), (plain[1][-1], drift[1][-1])))
    assert 0 < first < last  # the drift grows over the video
