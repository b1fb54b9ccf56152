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
