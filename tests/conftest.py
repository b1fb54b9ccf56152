"""Shared fixtures: tiny real diffusers models saved in vsr's model-folder layout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml


@pytest.fixture(autouse=True, scope="session")
def _sigint_not_ignored():
    """The interrupt tests send real SIGINTs to this process and to `vsr` processes it
    starts. A background job of a non-interactive shell (`pytest &`, nohup) starts with
    SIGINT ignored, and an ignored signal stays ignored in every child (Python then
    installs no KeyboardInterrupt handler): those tests would see a job run to the end.
    Restore Python's handler for the session (children start from SIG_DFL)."""
    import signal

    old = signal.getsignal(signal.SIGINT)
    if old == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def build_tiny_model_dir(
    folder: Path,
    *,
    pixel_unshuffle: int = 1,
    prediction_type: str = "epsilon",
    crop: int = 32,
    card: bool = True,
    seed: int = 0,
) -> Path:
    """A random-init 2-level UNet2DModel (downsampling factor 2 * pixel_unshuffle) plus a
    linear-beta DDPMScheduler (T = 1000), saved with save_pretrained as unet/ + scheduler/,
    and a model_card.yaml (crop, pixel_unshuffle, the paper's PRF curve)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    ch = 3 * pixel_unshuffle**2
    unet = UNet2DModel(
        sample_size=crop // pixel_unshuffle,
        in_channels=ch,
        out_channels=ch,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type).save_pretrained(
        folder / "scheduler"
    )
    if card:
        (folder / "model_card.yaml").write_text(
            yaml.safe_dump(
                {
                    "name": folder.name,
                    "crop": crop,
                    "pixel_unshuffle": pixel_unshuffle,
                    "value_range": [-1, 1],
                    "clip_x0": True,
                    "prf": {"scales": [2, 4, 8], "t": [0.2, 0.4, 0.55]},
                }
            )
        )
    return folder


def with_noise_predictor(folder: Path, *, t=(0.05, 0.1), steps=None, **tiny) -> Path:
    """A tiny model folder (`build_tiny_model_dir(folder, **tiny)`) with a noise_predictor/
    (non-zero output) and its card entry (start t/T at 2x and 4x)."""
    import torch

    from vsr.models.noise_predictor import NoisePredictor

    build_tiny_model_dir(folder, **tiny)
    torch.manual_seed(1)
    net = NoisePredictor(channels=8, num_blocks=1, pixel_unshuffle=2, emb_dim=8, beta_schedule="linear")
    torch.nn.init.normal_(net.tail.weight, std=0.05)
    net.save_pretrained(folder / "noise_predictor")
    card = yaml.safe_load((folder / "model_card.yaml").read_text())
    card["noise_predictor"] = {"scales": [2, 4], "t": list(t), "mix": 0.0, **({"steps": steps} if steps else {})}
    (folder / "model_card.yaml").write_text(yaml.safe_dump(card))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny epsilon-prediction model folder (crop 32, no pixel-unshuffle); read-only please."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-eps")


# The device the engine tests run the engine on: the CPU (CI), or `VSR_TEST_DEVICE=cuda` on a
# GPU machine, to run the same tests once there.
TEST_DEVICE = os.environ.get("VSR_TEST_DEVICE", "cpu")


def child_env(**extra: str) -> dict:
    """The environment of a `python -m vsr.cli` child: this checkout first on PYTHONPATH,
    what was there kept after it (packages installed with --target, as on a GPU machine),
    one OpenMP thread, then `extra`."""
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in paths if p), **extra}
TINY_ENGINE = {"steps": 1, "tile": 32, "overlap": 8, "batch": 8, "device": TEST_DEVICE}


@pytest.fixture(scope="module")
def up(tiny_model_dir):
    """The tiny model's engine as the job tests run it: 1 DDIM step, 32-px tiles, CPU."""
    from vsr.pipelines.transcode import build_upscaler

    return build_upscaler(str(tiny_model_dir), TINY_ENGINE)


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@pytest.fixture(scope="session")
def photos() -> dict:
    """Real photographs from scikit-image, name -> HxWx3 uint8 RGB; read-only (copy to edit)."""
    from skimage import data

    out = {name: getattr(data, name)() for name in PHOTOS}
    for img in out.values():
        img.flags.writeable = False
    return out


@pytest.fixture(scope="session")
def photo(photos):
    """scikit-image's astronaut: 512x512x3 uint8 RGB, read-only."""
    return photos["astronaut"]


@pytest.fixture(scope="session")
def niqe_model(photos):
    """A NIQE model fitted on three photographs, none of them the astronaut scored in the tests."""
    from vsr import metrics

    return metrics.fit_niqe([photos["coffee"], photos["chelsea"], photos["rocket"]])
