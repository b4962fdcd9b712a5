"""The patch series: pinned, minimal, applies cleanly to the pin only, and is what is installed."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import DINOV2_CACHE, PIN, REPO, run

PATCHES = REPO / "patches"
SERIES = [line.strip() for line in (PATCHES / "series").read_text().splitlines() if line.strip()]
ALLOWED_PATHS = re.compile(r"^dinov2/(train|data|fsdp|distributed|layers|logging|models|utils|configs|run)/")
# raised from 200 for patch 0011 (a full disk leaves no partial file): reliability fixes of DINOv2's own writes,
# which the plugin cannot make from outside; the method itself stays in the plugin
ADDED_LINES_BUDGET = 240


def _touched(patch: Path):
    return re.findall(r"^diff --git a/(\S+) b/", patch.read_text(), flags=re.M)


def test_series_lists_exactly_the_patch_files():
    assert SERIES == sorted(p.name for p in PATCHES.glob("0*.patch"))
    assert len(SERIES) >= 2


def test_series_is_made_against_the_pin():
    # git format-patch --base writes the trailer once, into the first patch of the series
    first = (PATCHES / SERIES[0]).read_text()
    assert f"base-commit: {PIN}" in first, f"{SERIES[0]} is not made against the pin {PIN} (patches/UPSTREAM)"


@pytest.mark.parametrize("name", SERIES)
def test_patch_is_byte_stable_and_touches_only_dinov2_sources(name):
    text = (PATCHES / name).read_text()
    assert re.match(r"^From 0{40} ", text), f"{name} was not written with --zero-commit (use patches/refresh.sh)"
    for path in _touched(PATCHES / name):
        assert ALLOWED_PATHS.match(path), f"{name} touches {path}, outside DINOv2's library code"


def test_patches_stay_small():
    added = sum(
        len(re.findall(r"^\+(?!\+\+)", (PATCHES / n).read_text(), flags=re.M)) for n in SERIES
    )
    assert added <= ADDED_LINES_BUDGET, f"the series adds {added} lines (budget {ADDED_LINES_BUDGET}): keep the method in the plugin"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A fresh checkout of the pinned commit from the installer's cached clone."""
    if not (DINOV2_CACHE / "HEAD").exists() and not (DINOV2_CACHE / ".git").exists():
        pytest.fail(f"no cached DINOv2 clone at {DINOV2_CACHE}: run `make dinov2 DINOV2_SRC=<clone>` once on this machine")
    tree = tmp_path_factory.mktemp("dinov2") / "tree"
    run(["git", "clone", "-q", "--no-checkout", DINOV2_CACHE, tree])
    run(["git", "-C", tree, "-c", "advice.detachedHead=false", "checkout", "-q", PIN])
    return tree


def _fresh_copy(pristine, tmp_path, name="t"):
    tree = tmp_path / name
    shutil.copytree(pristine, tree, symlinks=True)
    return tree


def test_series_applies_cleanly_to_the_pin(pristine, tmp_path):
    tree = _fresh_copy(pristine, tmp_path)
    proc = run([PATCHES / "apply.sh", tree])
    assert proc.stdout.count("applied ") == len(SERIES)
    assert subprocess.run(["git", "-C", tree, "status", "--porcelain"], capture_output=True, text=True).stdout == ""


def test_applying_twice_fails_with_a_clear_message(pristine, tmp_path):
    tree = _fresh_copy(pristine, tmp_path)
    run([PATCHES / "apply.sh", tree])
    proc = run([PATCHES / "apply.sh", tree], check=False)
    assert proc.returncode != 0
    assert "already applied" in proc.stdout


def test_applying_to_another_commit_fails_with_a_clear_message(pristine, tmp_path):
    tree = _fresh_copy(pristine, tmp_path)
    run(["git", "-C", tree, "checkout", "-q", f"{PIN}~1"])
    proc = run([PATCHES / "apply.sh", tree], check=False)
    assert proc.returncode != 0
    assert "made for the pinned commit" in proc.stdout and PIN in proc.stdout


def test_installed_dinov2_is_the_patched_pin(pristine, tmp_path):
    import dinov2

    tree = _fresh_copy(pristine, tmp_path)
    run([PATCHES / "apply.sh", tree])
    installed = Path(dinov2.__file__).parent
    touched = sorted({p for n in SERIES for p in _touched(PATCHES / n)})
    for rel in touched:
        assert (installed / rel[len("dinov2/"):]).read_text() == (tree / rel).read_text(), (
            f"installed {rel} differs from the pin + patches/: run `make dinov2`"
        )


def test_installer_names_what_to_set_for_a_wrong_source(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "BUILD_DIR": str(tmp_path / "build")}
    proc = run([PATCHES / "install_dinov2.sh"], env={**env, "DINOV2_SRC": str(tmp_path / "nowhere")}, check=False)
    assert proc.returncode != 0 and "DINOV2_SRC" in proc.stdout and "does not exist" in proc.stdout
    not_git = tmp_path / "plain"
    not_git.mkdir()
    proc = run([PATCHES / "install_dinov2.sh"], env={**env, "DINOV2_SRC": str(not_git)}, check=False)
    assert proc.returncode != 0 and "not a git repository" in proc.stdout
    # a repository that lacks the pinned commit
    other = tmp_path / "other"
    run(["git", "init", "-q", other])
    run(["git", "-C", other, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"])
    proc = run([PATCHES / "install_dinov2.sh"], env={**env, "DINOV2_SRC": str(other)}, check=False)
    assert proc.returncode != 0 and PIN in proc.stdout and "DINOV2_SRC" in proc.stdout
