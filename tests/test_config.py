"""The plugin config: merge order, struct mode, typo and value errors, every shipped YAML loads."""

import pytest
from helpers import PYTHON, REPO, run
from omegaconf import OmegaConf

TINY = REPO / "configs/tiny/eqcoh_cpu.yaml"
ALL_CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))


def load(config_file=TINY, *opts):
    from dinov2_eqcoh.method.config import load_config

    return load_config(config_file, opts)


def test_configs_folder_is_not_empty():
    assert "configs/tiny/eqcoh_cpu.yaml" in ALL_CONFIGS
    assert len([c for c in ALL_CONFIGS if c.startswith("configs/train/")]) >= 4


@pytest.mark.parametrize("config_file", ALL_CONFIGS)
def test_every_config_loads_in_struct_mode(config_file):
    from dinov2_eqcoh.method.config import ConfigError

    cfg = load(REPO / config_file)
    assert OmegaConf.is_struct(cfg)
    with pytest.raises(Exception, match="not_a_key"):
        cfg.eqcoh.not_a_key = 1
    raw = OmegaConf.load(REPO / config_file)
    if OmegaConf.select(raw, "train.meta_arch"):  # the plugin's configs: DINOv2 itself goes through build_cfg
        assert cfg.train.meta_arch == "dinov2_eqcoh.meta_arch:EqCohMetaArch"
        assert cfg.train.collate_fn == "dinov2_eqcoh.method.collate:build_collate_fn"
    # and a typo in that file would not load
    bad = OmegaConf.merge(raw, {"eqcoh": {"loss_wieght": 1.0}})
    with pytest.raises(ConfigError, match=r"eqcoh\.loss_wieght.*eqcoh\.loss_weight"):
        from dinov2.configs import dinov2_default_config

        from dinov2_eqcoh.method.config import build_cfg

        build_cfg(OmegaConf.create(dinov2_default_config), bad, OmegaConf.create())


def test_merge_order_dinov2_default_then_plugin_default_then_file_then_cli():
    from dinov2.configs import dinov2_default_config

    plugin = OmegaConf.load(REPO / "dinov2_eqcoh/configs/eqcoh_default_config.yaml")
    cfg = load(TINY, "eqcoh.d_patch=128", "optim.clip_grad=1.5")
    assert cfg.optim.clip_grad == 1.5  # command line over DINOv2's default
    assert cfg.eqcoh.d_patch == 128  # command line over the file (64)
    assert cfg.eqcoh.d_equi == OmegaConf.load(TINY).eqcoh.d_equi  # file over the plugin default (512)
    assert cfg.eqcoh.ranges.rotation == plugin.eqcoh.ranges.rotation  # plugin default, not in the file
    assert cfg.optim.weight_decay == dinov2_default_config.optim.weight_decay  # DINOv2 default, in neither
    assert cfg.train.data_transform == plugin.train.data_transform  # plugin default over DINOv2's ''


def test_plugin_default_only_adds_keys_and_both_precision_blocks():
    from dinov2.configs import dinov2_default_config

    from dinov2_eqcoh.method.config import load_default_config, load_plugin_default_config

    plugin = load_plugin_default_config()
    assert set(plugin) == {"train", "eqcoh", "compute_precision"}
    assert "eqcoh" not in dinov2_default_config
    assert set(plugin.train) == {"data_transform", "collate_fn", "dataset_builder"}  # DINOv2's seams, nothing else
    assert set(plugin.compute_precision.student) == {"eqcoh_head", "eqcoh_decoders"}
    assert set(plugin.compute_precision.teacher) == {"eqcoh_head"}  # the teacher has no decoders
    for side in ("student", "teacher"):
        assert not set(plugin.compute_precision[side]) & set(dinov2_default_config.compute_precision[side])
    merged = load_default_config()
    assert merged.student.arch == dinov2_default_config.student.arch and merged.eqcoh.n_intermediate == 2
    assert plugin.compute_precision.student.eqcoh_head.mixed_precision.reduce_dtype == "fp32"


@pytest.mark.parametrize(
    "opt,full_key,suggestion",
    [
        ("eqcoh.n_intermedate=3", "eqcoh.n_intermedate", "eqcoh.n_intermediate"),
        ("eqcoh.decoder.dimm=16", "eqcoh.decoder.dimm", "eqcoh.decoder.dim"),
        ("eqcoh.dim=16", "eqcoh.dim", "eqcoh.decoder.dim"),  # right name, wrong level
        ("eqcoh.ranges.rotaton=[0,1]", "eqcoh.ranges.rotaton", "eqcoh.ranges.rotation"),
        ("eqcohh.loss_weight=1", "eqcohh", "eqcoh"),
        ("dino.los_weight=1", "dino.los_weight", "dino.loss_weight"),  # DINOv2's own keys are strict too
    ],
)
def test_misspelt_key_names_full_path_and_closest_valid_key(opt, full_key, suggestion):
    from dinov2_eqcoh.method.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load(TINY, opt)
    message = str(err.value)
    assert f"'{full_key}'" in message and f"'{suggestion}'" in message and "command line" in message, message


def test_misspelt_key_in_a_file_names_the_file(tmp_path):
    from dinov2_eqcoh.method.config import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  meta_arch: dinov2_eqcoh.meta_arch:EqCohMetaArch\ncrops:\n  global_crop_size: 32\n")
    with pytest.raises(ConfigError, match=r"'crops\.global_crop_size'.*bad\.yaml.*'crops\.global_crops_size'"):
        load(bad)


@pytest.mark.parametrize(
    "opt,key,allowed",
    [
        ("eqcoh.loss_weight=-1", "eqcoh.loss_weight", ">= 0"),
        ("eqcoh.n_intermediate=0", "eqcoh.n_intermediate", ">= 1"),
        ("eqcoh.n_intermediate=1.5", "eqcoh.n_intermediate", "integer"),
        ("eqcoh.d_equi=0", "eqcoh.d_equi", "0 < d_equi < eqcoh.d_patch"),
        ("eqcoh.d_equi=64", "eqcoh.d_equi", "0 < d_equi < eqcoh.d_patch = 64"),
        ("eqcoh.transform=scale", "eqcoh.transform", "rotation, translation, se2, color, blur"),
        ("eqcoh.apply_to_view=maybe", "eqcoh.apply_to_view", "true or false"),
        ("eqcoh.fill_free=1", "eqcoh.fill_free", "true or false"),
        ("eqcoh.ranges.rotation=[45,-45]", "eqcoh.ranges.rotation", "lo <= hi"),
        ("eqcoh.ranges.hue=[0.1]", "eqcoh.ranges.hue", "two numbers"),
        ("eqcoh.ranges.blur_sigma=[-1,2]", "eqcoh.ranges.blur_sigma", ">= 0"),
        ("eqcoh.decoder.dim=12", "eqcoh.decoder.dim", "divisible by 8"),
        ("eqcoh.decoder.dim=0", "eqcoh.decoder.dim", ">= 8"),
        ("crops.global_crops_size=30", "crops.global_crops_size", "multiple of student.patch_size = 8"),
        ("crops.local_crops_size=12", "crops.local_crops_size", "multiple of student.patch_size = 8"),
        ("compute_precision.teacher.eqcoh_head.sharding_strategy=NO_SHARD",
         "compute_precision.teacher.eqcoh_head.sharding_strategy", "student.eqcoh_head.sharding_strategy is"),
        ("compute_precision.student.backbone.sharding_strategy=NO_SHARD",
         "compute_precision.teacher.backbone.sharding_strategy", "must be sharded too"),
        ("train.meta_arch=dinov2.train.ssl_meta_arch:SSLMetaArch", "train.meta_arch", "EqCohMetaArch renders"),
        ("train.meta_arch=", "train.meta_arch", "set eqcoh.loss_weight=0 eqcoh.apply_to_view=false"),
    ],
)
def test_invalid_value_names_key_and_allowed_range(opt, key, allowed):
    from dinov2_eqcoh.method.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load(TINY, opt)
    message = str(err.value)
    assert message.startswith(key + " = ") and allowed in message, message


def test_vanilla_meta_arch_is_fine_when_the_pipeline_is_off():
    cfg = load(TINY, "train.meta_arch=", "eqcoh.loss_weight=0", "eqcoh.apply_to_view=false")
    assert not cfg.train.meta_arch  # DINOv2's SSLMetaArch


def test_valid_edge_values_pass():
    cfg = load(TINY, "eqcoh.loss_weight=0", "eqcoh.n_intermediate=1", "eqcoh.d_equi=63", "eqcoh.decoder.dim=8",
               "eqcoh.ranges.rotation=[0.0,0.0]", "eqcoh.transform=blur")
    assert cfg.eqcoh.d_equi == 63 and cfg.eqcoh.transform == "blur"


@pytest.mark.slow
def test_dinov2_entry_rejects_a_typo_before_building_anything(tmp_path):
    """Through DINOv2's own entry: the error comes from build_cfg, before the output dir, process group or model."""
    out = tmp_path / "run"
    proc = run([PYTHON, "-m", "dinov2.train.train", "--config-file", TINY, "--output-dir", out,
                "eqcoh.n_intermedate=3"], check=False, timeout=120)
    assert proc.returncode != 0
    assert "ConfigError: unknown config key 'eqcoh.n_intermedate'" in proc.stdout, proc.stdout[-3000:]
    assert "did you mean 'eqcoh.n_intermediate'?" in proc.stdout
    assert not out.exists(), "the run started (output dir created) before the config was checked"
