import pytest

from vsr.config import EngineConfig, preset_names
from vsr.errors import ConfigError


def test_defaults_are_valid_and_round_trip_through_dict():
    cfg = EngineConfig()
    assert cfg.model is None and cfg.steps == "auto" and cfg.noise == "shared" and cfg.noise_level == "auto"
    assert EngineConfig.from_dict(cfg.to_dict()) == cfg
    full = EngineConfig(size=(1920, 1080), timesteps=[200, 100, 50], noise_level=0.3)
    assert full.size == (1920, 1080) and full.timesteps == (200, 100, 50)
    assert EngineConfig.from_dict(full.to_dict()) == full


@pytest.mark.parametrize(
    "field,value",
    [
        ("steps", 0),
        ("steps", 51),
        ("noise_level", 1.0),
        ("noise_level", "high"),
        ("noise", "warped"),
        ("dtype", "float64"),
        ("device", "gpu"),
        ("scale", -2),
        ("size", (0, 10)),
        ("timesteps", [100, 200]),
        ("batch", 0),
        ("tile", 4),
        ("overlap", -1),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        EngineConfig(**{field: value})


def test_unknown_keys_and_exclusive_size_scale():
    with pytest.raises(ConfigError, match="unknown config key.*stepz"):
        EngineConfig.from_dict({"stepz": 3})
    with pytest.raises(ConfigError, match="exclusive"):
        EngineConfig(size=(64, 64), scale=2)


def test_replace_keeps_none_and_swaps_size_for_scale():
    cfg = EngineConfig(scale=2.0, steps=3)
    assert cfg.replace(steps=None, seed=None) == cfg
    sized = cfg.replace(size=(640, 360))
    assert sized.size == (640, 360) and sized.scale is None and sized.steps == 3
    assert sized.replace(scale=2.7).size is None
    with pytest.raises(ConfigError, match="steps"):
        cfg.replace(steps=-1)
    with pytest.raises(ConfigError, match="unknown"):
        cfg.replace(tiles=3)


def test_yaml_presets_and_files(tmp_path):
    assert {"default", "fast", "quality"} <= set(preset_names())
    assert EngineConfig.from_yaml("fast").steps == 1
    assert EngineConfig.from_yaml("invsr3").timesteps == (200, 100, 50)
    f = tmp_path / "mine.yaml"
    f.write_text("steps: 4\nscale: 2.7\nnoise: fresh\n")
    cfg = EngineConfig.from_yaml(str(f))
    assert (cfg.steps, cfg.scale, cfg.noise) == (4, 2.7, "fresh")
    f.write_text("steps: 4\nwibble: 1\n")
    with pytest.raises(ConfigError, match="wibble"):
        EngineConfig.from_yaml(f)
    with pytest.raises(ConfigError, match="preset"):
        EngineConfig.from_yaml("no-such-preset")


def test_steps_or_noise_level_given_over_a_preset_with_an_exact_timestep_set_replace_it():
    """invsr3 pins timesteps (200, 100, 50); --steps 2 on top of it ran those three steps unseen."""
    assert EngineConfig.from_yaml("invsr3").timesteps == (200, 100, 50)
    assert EngineConfig.from_yaml("invsr3", steps=2).timesteps is None
    assert EngineConfig.from_yaml("invsr3", noise_level=0.3).timesteps is None
    assert EngineConfig.from_yaml("invsr3", batch=2).timesteps == (200, 100, 50)
    pinned = EngineConfig.from_yaml("invsr3")
    assert pinned.replace(steps=1).timesteps is None and pinned.replace(seed=3).timesteps == (200, 100, 50)
