# SPDX-License-Identifier: Apache-2.0
"""A resumable experiment's folder belongs to one configuration: `{name}_config.json` records it, and a rerun with
another configuration is refused with the fields that differ (the study, the curves)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def config_fingerprint(config_file: str | Path) -> dict:
    """The config file's identity: `config_sha256` of its bytes and `config_content_sha256` of its content as
    OmegaConf reads it (comments and layout do not count), so that a comment edited in a shipped config does not
    orphan the studies trained from it."""
    from omegaconf import OmegaConf

    text = Path(config_file).read_bytes()
    content = OmegaConf.to_yaml(OmegaConf.load(config_file)).encode()
    return {"config_sha256": hashlib.sha256(text).hexdigest(),
            "config_content_sha256": hashlib.sha256(content).hexdigest()}


def check_identity(output_dir: Path, identity: dict, name: str = "study") -> None:
    """Refuse a folder that holds another configuration of this experiment (`{name}_config.json`); record the
    identity in a new one."""
    path = output_dir / f"{name}_config.json"
    if path.exists():
        old = json.loads(path.read_text())
        # the config's text may change where its content does not (a comment): same content, same experiment. A
        # folder recorded before the content fingerprint existed is matched on the bytes and gets it added.
        same_text = old.get("config_sha256") == identity.get("config_sha256")
        same_content = old.get("config_content_sha256", identity.get("config_content_sha256") if same_text else None) \
            == identity.get("config_content_sha256")
        ignore = {"config_file"} | ({"config_sha256", "config_content_sha256"} if same_content else set())
        diff = {k: (old.get(k), identity.get(k)) for k in sorted(set(old) | set(identity))
                if old.get(k) != identity.get(k) and k not in ignore}
        if not diff and (not same_text or "config_content_sha256" not in old):
            if not same_text:
                print(f"[{name}] {identity['config_file']}: its text changed, not its content (comments or layout): "
                      "resuming", flush=True)
            path.write_text(json.dumps({**old, **{k: identity[k] for k in ("config_sha256", "config_content_sha256")
                                                  if k in identity}}, indent=1) + "\n")
        if diff:
            lines = "\n".join(f"  {k}: {a!r} in the folder, {b!r} now" for k, (a, b) in diff.items())
            raise SystemExit(
                f"[{name}] {output_dir} holds a {name} of another configuration ({path}):\n{lines}\n"
                "Use another --output-dir for this configuration, or rerun with the folder's settings to resume it. "
                "Nothing was changed."
            )
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=1) + "\n")
