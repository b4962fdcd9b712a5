"""Which DINOv2 this plugin runs on: the pin (patches/UPSTREAM) and a check that the installed dinov2 is patched."""

from __future__ import annotations

from pathlib import Path

_UPSTREAM = Path(__file__).resolve().parents[1] / "patches" / "UPSTREAM"


def pin() -> dict[str, str]:
    """{"url", "commit"} from patches/UPSTREAM (a source checkout / editable install), else {}."""
    if not _UPSTREAM.is_file():
        return {}
    return dict(line.split("=", 1) for line in _UPSTREAM.read_text().split() if "=" in line and not line.startswith("#"))


def check_patched_dinov2() -> None:
    """Fail with what to run when the importable dinov2 lacks the seams of patches/0001."""
    try:
        import dinov2.utils.config as config
    except ImportError as e:
        raise ImportError("dinov2 is not installed: run `make dinov2` (see README, 'Installing DINOv2')") from e
    if not hasattr(config, "resolve_component"):
        raise ImportError(
            f"the installed dinov2 ({Path(config.__file__).parents[1]}) is not patched with patches/: run `make dinov2`"
        )
