"""An ImageFolder path error comes before the model is built (`EqCohMetaArch.build_cfg`, in DINOv2's config step).

Without the check, a missing or empty `ImageFolder:root=` surfaced in `do_train`, after the model, FSDP, the
optimizer and the checkpointer were built (minutes for ViT-L on a GPU node). Now DINOv2's own entry point stops
while it assembles the config, before `setup` creates the output folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dinov2_eqcoh.data.datasets import check_dataset_str

REPO = Path(__file__).resolve().parents[1]


def test_check_dataset_str(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageFolder: root=.*nowhere is not a directory"):
        check_dataset_str(f"ImageFolder:root={tmp_path / 'nowhere'}")
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "cats" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=r"no images under root="):
        check_dataset_str(f"ImageFolder:root={tmp_path / 'empty'}")
    with pytest.raises(ValueError, match=r"max_bad_fraction=3.0 is out of range"):
        check_dataset_str(f"ImageFolder:root={tmp_path}:max_bad_fraction=3")
    Image.new("RGB", (8, 8)).save(tmp_path / "empty" / "cats" / "a.png")
    check_dataset_str(f"ImageFolder:root={tmp_path / 'empty'}")  # one image in a class folder is enough
    check_dataset_str("Synthetic:n=4:size=16:classes=2:seed=0")


@pytest.mark.slow
def test_missing_image_folder_stops_dinov2_before_the_model_is_built(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dinov2.train.train", "--config-file", "configs/tiny/eqcoh_cpu.yaml",
           "--output-dir", str(out), f"train.dataset_path=ImageFolder:root={tmp_path / 'nowhere'}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert f"ImageFolder: root={tmp_path / 'nowhere'} is not a directory" in done.stderr, done.stderr[-3000:]
    assert "OPTIONS -- EQCOH" not in done.stdout + done.stderr  # EqCohMetaArch.__init__ never ran
    assert not out.exists()  # DINOv2's setup (output folder, logs, config.yaml) never ran either
