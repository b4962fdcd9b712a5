# SPDX-License-Identifier: Apache-2.0
"""The plugin's configuration: DINOv2's defaults + the `eqcoh` overlay, merged strictly, then checked.

Merge order (DINOv3's strict merge, detectron2's `add_<project>_config`): DINOv2's `ssl_default_config.yaml` ←
`configs/eqcoh_default_config.yaml` → struct mode → the experiment file → the command-line dotlist. A key that
is in neither default is an error naming its full path and the closest valid key, and the `eqcoh` values are
range-checked, all before DINOv2 starts a process group or builds a model (`EqCohMetaArch.build_cfg` runs inside
DINOv2's `get_cfg_from_args`).
"""

from __future__ import annotations

import difflib
import numbers
from pathlib import Path
from typing import Iterable, NoReturn, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

PLUGIN_DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "eqcoh_default_config.yaml"


class ConfigError(ValueError):
    """A config key or value that the plugin does not accept; the message names the key and what is allowed."""


def load_plugin_default_config() -> DictConfig:
    """The plugin's own defaults (`eqcoh.*`, the data seams, `compute_precision` of the new modules)."""
    return OmegaConf.load(PLUGIN_DEFAULT_CONFIG)


def load_default_config() -> DictConfig:
    """DINOv2's default config with the plugin's defaults merged over it (not in struct mode)."""
    from dinov2.configs import dinov2_default_config

    return OmegaConf.merge(OmegaConf.create(dinov2_default_config), load_plugin_default_config())


def build_cfg(
    default_cfg: DictConfig, file_cfg: DictConfig, cli_cfg: DictConfig, *, file_name: str = "the config file"
) -> DictConfig:
    """Assemble the training config: defaults ← plugin defaults, struct mode, ← file ← command line, then validate.

    Args:
        default_cfg: DINOv2's default config (what DINOv2's `get_cfg_from_args` passes).
        file_cfg: The experiment file (`--config-file`).
        cli_cfg: The command-line dotlist (`a.b=c ...`).
        file_name: How to name the file in error messages.

    Returns:
        The merged config, in struct mode (a later assignment to an unknown key fails too).

    Raises:
        ConfigError: For an unknown key (with its full path and the closest valid name) or an invalid `eqcoh`,
            crop or patch value (with the allowed range).
    """
    cfg = OmegaConf.merge(default_cfg, load_plugin_default_config())
    OmegaConf.set_struct(cfg, True)
    for source, other in ((file_name, file_cfg), ("the command line", cli_cfg)):
        upgrade_old_config(other, source)
        _drop_records(other)
        check_known_keys(cfg, other, source)
        cfg = OmegaConf.merge(cfg, other)
    validate(cfg)
    return cfg


# Keys a run writes into its config.yaml as a record of how it started (the run-folder check's decision): a copy of
# that config.yaml given as a config file must not carry an earlier start's record into the new one.
RECORD_KEYS = ("eqcoh.start",)


def _drop_records(cfg: DictConfig) -> None:
    for key in RECORD_KEYS:
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key)
        if isinstance(parent, DictConfig) and leaf in parent:
            with open_dict(parent):
                del parent[leaf]


def load_config(config_file: str | Path, opts: Sequence[str] = ()) -> DictConfig:
    """The config a training run with `--config-file config_file opts...` would use (for tools and tests).

    `optim.lr` is left as in the file: DINOv2's scaling rule needs the world size and is applied at start-up.
    """
    from dinov2.configs import dinov2_default_config

    return build_cfg(
        OmegaConf.create(dinov2_default_config),
        OmegaConf.load(config_file),
        OmegaConf.from_dotlist(list(opts)),
        file_name=str(config_file),
    )


# ---------------------------------------------------------------------------------------------- retired keys

# Keys that configs of earlier versions hold (run folders' config.yaml, copies of the shipped configs) and that no
# longer mean anything: accepted and dropped with a warning, so those configs still load and their runs resume.
RETIRED_CONFIG_KEYS = {
    "compute_precision.teacher.eqcoh_decoders": "the teacher has no decoders since 0.2 (it never read them)",
}


# Component strings (`train.meta_arch`, `train.data_transform`, ... as "package.module:name") that name a module
# by its 0.1 name: rewritten to where the code lives now, so that an older run folder's config.yaml (and a copy of
# an older shipped config) still builds, resumes and loads. Old module name -> new module name.
RENAMED_MODULES = {
    "dinov2_eqcoh.data.augmentation": "dinov2_eqcoh.method.augmentation",
    "dinov2_eqcoh.data.collate": "dinov2_eqcoh.method.collate",
    "dinov2_eqcoh.config": "dinov2_eqcoh.method.config",
    "dinov2_eqcoh.decoder": "dinov2_eqcoh.method.decoder",
    "dinov2_eqcoh.transforms": "dinov2_eqcoh.method.transforms",
    "dinov2_eqcoh.checkpoints": "dinov2_eqcoh.weights.checkpoints",
    "dinov2_eqcoh.export": "dinov2_eqcoh.weights.export",
    "dinov2_eqcoh.interop": "dinov2_eqcoh.weights.interop",
    "dinov2_eqcoh.run_folder": "dinov2_eqcoh.run.folder",
}
COMPONENT_KEYS = ("train.meta_arch", "train.data_transform", "train.collate_fn", "train.dataset_builder",
                  "student.arch")


def renamed_component(value: str) -> str | None:
    """The current spelling of a component string that names a module by its 0.1 name, else None.

    >>> renamed_component("dinov2_eqcoh.data.augmentation:build_data_transform")
    'dinov2_eqcoh.method.augmentation:build_data_transform'
    """
    if not isinstance(value, str) or not value:
        return None
    module, sep, attr = value.partition(":") if ":" in value else value.rpartition(".")
    new = RENAMED_MODULES.get(module)
    return f"{new}{sep}{attr}" if new else None


def upgrade_old_config(cfg: DictConfig, source: str) -> list[str]:
    """Make a config of an earlier version loadable, in place: retired keys dropped, renamed components rewritten.

    Each change warns once (FutureWarning naming `source`, the key and what replaces it). Returns the keys changed.
    """
    import warnings

    changed = drop_retired_config_keys(cfg, source)
    for key in COMPONENT_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        new = renamed_component(value)
        if new is not None:
            OmegaConf.update(cfg, key, new, force_add=True)
            warnings.warn(f"{source}: {key}: {value!r} is spelt {new!r} since 0.2 (rewritten)", FutureWarning,
                          stacklevel=2)
            changed.append(key)
    return changed


def drop_retired_config_keys(cfg: DictConfig, source: str) -> list[str]:
    """Remove RETIRED_CONFIG_KEYS from `cfg` in place (warning once per key); returns the keys removed."""
    import warnings

    removed = []
    for key, why in RETIRED_CONFIG_KEYS.items():
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if isinstance(parent, DictConfig) and leaf in parent:
            with open_dict(parent):
                del parent[leaf]
            warnings.warn(f"{source}: ignored config key '{key}': {why}", FutureWarning, stacklevel=3)
            removed.append(key)
    return removed


# ---------------------------------------------------------------------------------------------- unknown keys


def _leaf_paths(cfg: DictConfig, prefix: str = "") -> Iterable[str]:
    for key in cfg.keys():
        node = cfg.get(key)
        path = f"{prefix}{key}"
        yield path
        if isinstance(node, DictConfig):
            yield from _leaf_paths(node, path + ".")


def check_known_keys(
    reference: DictConfig, other: DictConfig, source: str, _prefix: str = "", _root: DictConfig | None = None
) -> None:
    """Raise ConfigError for the first key of `other` that `reference` does not have (recursively).

    Args:
        reference: The config that defines the valid keys.
        other: The config to merge into it.
        source: Where `other` comes from, for the message.
    """
    for key in other.keys():
        path = f"{_prefix}{key}"
        if key not in reference:
            siblings = [str(k) for k in reference.keys()]
            # the same name one level deeper (e.g. `eqcoh.dim` for `eqcoh.decoder.dim`), else a similar sibling,
            # else a similar key anywhere
            deeper = [_prefix + q for q in _leaf_paths(reference) if q.endswith(f".{key}")]
            close = deeper[:1] or [_prefix + c for c in difflib.get_close_matches(str(key), siblings, n=1)]
            if not close:
                close = difflib.get_close_matches(path, list(_leaf_paths(reference if _root is None else _root)), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "no similar key exists"
            where = f"'{_prefix[:-1]}'" if _prefix else "the top level"
            raise ConfigError(
                f"unknown config key '{path}' in {source}: {hint} "
                f"(valid keys at {where}: {', '.join(sorted(siblings))})"
            )
        ref_node, other_node = reference.get(key), other.get(key)
        if isinstance(ref_node, DictConfig) and isinstance(other_node, DictConfig):
            check_known_keys(ref_node, other_node, source, f"{path}.", reference if _root is None else _root)


# ---------------------------------------------------------------------------------------------- values


def _fail(key: str, value, allowed: str) -> NoReturn:
    raise ConfigError(f"{key} = {value!r} is not valid: {allowed}")


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_meta_arch_renders_views(cfg: DictConfig) -> None:
    """The plugin's workers deliver u and θ; only EqCohMetaArch renders v2 = g_θ(u) and u_k on the device.

    With the plugin's data pipeline on (λ > 0 or apply_to_view) and another meta-architecture, training would
    silently run on u without g: refuse that pairing.
    """
    from dinov2.train.ssl_meta_arch import SSLMetaArch
    from dinov2.utils.config import resolve_component

    from dinov2_eqcoh.method.augmentation import build_data_transform, eqcoh_pipeline_active
    from dinov2_eqcoh.method.ssl_meta_arch import EqCohSSLMetaArch

    train = cfg.get("train", {})
    try:
        transform = resolve_component(train.get("data_transform", ""), None)
        meta_arch = resolve_component(train.get("meta_arch", ""), SSLMetaArch)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if transform is build_data_transform and eqcoh_pipeline_active(cfg) and not (
        isinstance(meta_arch, type) and issubclass(meta_arch, EqCohSSLMetaArch)
    ):
        _fail(
            "train.meta_arch",
            train.get("meta_arch", ""),
            "must be dinov2_eqcoh.meta_arch:EqCohMetaArch (or a subclass) while the plugin's data pipeline is on "
            "(eqcoh.loss_weight > 0 or eqcoh.apply_to_view): its workers deliver u and θ, and EqCohMetaArch renders "
            "v2 = g_θ(u) on the training device; for vanilla DINOv2 set eqcoh.loss_weight=0 eqcoh.apply_to_view=false",
        )


def validate(cfg: DictConfig) -> None:
    """Check the `eqcoh` values and the crop/patch sizes; raise ConfigError naming the key and the allowed range."""
    from dinov2_eqcoh.method.transforms import TRANSFORMS, check_ranges

    e = cfg.eqcoh
    if not _is_number(e.loss_weight) or e.loss_weight < 0:
        _fail("eqcoh.loss_weight", e.loss_weight, "λ must be a number >= 0 (0 = vanilla DINOv2; the paper uses 1)")
    if not _is_int(e.n_intermediate) or e.n_intermediate < 1:
        _fail("eqcoh.n_intermediate", e.n_intermediate, "K must be an integer >= 1 (the paper's default is 2)")
    if not _is_int(e.d_patch) or e.d_patch < 2:
        _fail("eqcoh.d_patch", e.d_patch, "must be an integer >= 2 (z_inv and z_equi both need channels)")
    if not _is_int(e.d_equi) or not 0 < e.d_equi < e.d_patch:
        _fail("eqcoh.d_equi", e.d_equi, f"must be an integer with 0 < d_equi < eqcoh.d_patch = {e.d_patch}")
    if e.transform not in TRANSFORMS:
        _fail("eqcoh.transform", e.transform, f"must be one of {', '.join(TRANSFORMS)}")
    rgb = e.get("recipe_global_batch")
    if rgb is not None and (not _is_int(rgb) or rgb < 1):
        _fail("eqcoh.recipe_global_batch", rgb, "must be null or an integer >= 1 (images per step over all GPUs)")
    for key in ("apply_to_view", "extra_unmasked_pass", "keep_head_split", "strict_global_batch", "fill_free"):
        if not isinstance(e[key], bool):
            _fail(f"eqcoh.{key}", e[key], "must be true or false")
    try:  # one source for the θ ranges' rules: the module that samples from them
        check_ranges(e.ranges, e.transform)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not _is_int(e.diagnostics_every) or e.diagnostics_every < 0:
        _fail("eqcoh.diagnostics_every", e.diagnostics_every, "must be an integer >= 0 (iterations; 0 = off)")
    dim = e.decoder.dim
    if not _is_int(dim) or dim < 8 or dim % 8:
        _fail("eqcoh.decoder.dim", dim, "C must be an integer >= 8 and divisible by 8 (channels C, C/2, C/4, C/8)")
    for key in cfg.compute_precision.student:  # DINOv2's EMA zips the student's and teacher's flat parameters
        if key not in cfg.compute_precision.teacher:  # a student-only module (the decoders): no EMA pair
            continue
        student = cfg.compute_precision.student[key].sharding_strategy
        teacher = cfg.compute_precision.teacher[key].sharding_strategy
        if (student == "NO_SHARD") != (teacher == "NO_SHARD"):
            _fail(
                f"compute_precision.teacher.{key}.sharding_strategy",
                teacher,
                f"compute_precision.student.{key}.sharding_strategy is {student}: the teacher's module must be "
                "sharded too (SHARD_GRAD_OP or FULL_SHARD) or both NO_SHARD, since DINOv2's EMA update pairs the "
                "student's and the teacher's (sharded or whole) flat parameters",
            )
    _check_meta_arch_renders_views(cfg)
    p = cfg.student.patch_size
    for key in ("global_crops_size", "local_crops_size"):
        size = cfg.crops[key]
        if not _is_int(size) or size % p:
            _fail(f"crops.{key}", size, f"must be a multiple of student.patch_size = {p}")
