"""The trainer on a tiny model: it learns, checkpoints, resumes bit-for-bit, exports."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vsr.pipelines import train_prior as tp
from vsr.errors import ConfigError


@pytest.fixture()
def tiny_corpus(tmp_path, photos):
    cv2 = pytest.importorskip("cv2")
    for split, names in {"train": ["astronaut", "chelsea"], "val": ["coffee"]}.items():
        d = tmp_path / "corpus" / "images" / split
        d.mkdir(parents=True)
        for n in names:
            img = photos[n]
            cv2.imwrite(str(d / f"{n}.png"), np.ascontiguousarray(img[::2, ::2, ::-1]))
    return tmp_path / "corpus"


def tiny_cfg(corpus, run_dir, **kw) -> tp.TrainConfig:
    base = dict(
        corpus=str(corpus), run_dir=str(run_dir), block_out_channels=(8, 16), norm_num_groups=8,
        pixel_unshuffle=2, crop=32, val_crop=64, batch_size=2, steps=4, checkpoint_every=2,
        val_every=2, warmup_steps=1, num_threads=1, device="cpu",
    )
    base.update(kw)
    return tp.TrainConfig(**base)


def _params(trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.unet.parameters()])


def test_resume_is_bit_for_bit(tiny_corpus, tmp_path):
    straight = tp.train(tiny_cfg(tiny_corpus, tmp_path / "a"), progress=False)
    tp.train(tiny_cfg(tiny_corpus, tmp_path / "b"), progress=False, stop_at=2)  # same LR schedule
    resumed = tp.train(tiny_cfg(tiny_corpus, tmp_path / "b"), resume=True, progress=False)
    assert resumed.step == straight.step == 4
    assert torch.equal(_params(straight), _params(resumed))
    assert torch.equal(straight.gen.get_state(), resumed.gen.get_state())
    # validation ran on the held-out split at the four noise levels
    assert [h["step"] for h in resumed.history] == [2, 4]
    assert set(tp.VAL_T_FRACTIONS) == {float(k.split("@")[1]) for k in resumed.history[-1] if k.startswith("psnr")}


def test_resume_refuses_a_config_that_changes_what_a_step_computes(tiny_corpus, tmp_path, caplog):
    """--resume continues the run its checkpoint holds: a changed learning rate, EMA or
    architecture is a one-line ConfigError before anything is written; where and how it
    runs (threads, validation cadence) may change, and a new `steps` (with a warning)
    re-spans the LR schedule."""
    import logging

    import yaml

    run = tmp_path / "b"
    tp.train(tiny_cfg(tiny_corpus, run), progress=False, stop_at=2)
    written = (run / "config.yaml").read_bytes()
    stamp = (run / "last.pt").stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"--resume: .*last.pt was trained with lr=0.0004, the config now says "
                                          r"0.001 \(and 1 more: ema_decay\)"):
        tp.train(tiny_cfg(tiny_corpus, run, lr=1e-3, ema_decay=0.9), resume=True, progress=False)
    with pytest.raises(ConfigError, match="block_out_channels.*vsr train export, then init_from"):
        tp.train(tiny_cfg(tiny_corpus, run, block_out_channels=(8, 8)), resume=True, progress=False)
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError, match="lr="):  # refused: no word of a schedule
        tp.train(tiny_cfg(tiny_corpus, run, lr=1e-3, steps=8), resume=True, progress=False)
    assert "scheduled" not in caplog.text
    with pytest.raises(ConfigError, match="is at step 2, past the config's steps 1"):
        tp.train(tiny_cfg(tiny_corpus, run, steps=1), resume=True, progress=False)
    assert (run / "config.yaml").read_bytes() == written and (run / "last.pt").stat().st_mtime_ns == stamp
    # the same run on torch's own thread count, validated less often, scheduled for 6 steps
    with caplog.at_level(logging.WARNING):
        resumed = tp.train(tiny_cfg(tiny_corpus, run, num_threads=0, val_every=3, steps=6), resume=True,
                           progress=False)
    assert resumed.step == 6 and "scheduled for 4 steps, now 6" in caplog.text
    assert yaml.safe_load((run / "config.yaml").read_text())["steps"] == 6
    # a checkpoint without a config is not a prior checkpoint: one line, not a KeyError
    torch.save({"step": 1}, run / "last.pt")
    from vsr.errors import InputError

    with pytest.raises(InputError, match="not a vsr prior checkpoint"):
        tp.train(tiny_cfg(tiny_corpus, run), resume=True, progress=False)


def test_loss_decreases_on_a_fixed_batch(tiny_corpus, tmp_path):
    cfg = tiny_cfg(tiny_corpus, tmp_path / "c", lr=3e-3, bf16=False)
    trainer = tp.Trainer(cfg, tp.load_images(cfg.corpus, "train", 512), None)
    x0 = tp.random_crops(trainer.train_images, cfg, torch.Generator().manual_seed(0))

    def loss_at_fixed_noise():
        with torch.no_grad():
            return float(tp.training_loss(trainer.unet, trainer.scheduler, x0, cfg, torch.Generator().manual_seed(1)))

    before = loss_at_fixed_noise()
    for _ in range(30):
        loss = tp.training_loss(trainer.unet, trainer.scheduler, x0, cfg, torch.Generator().manual_seed(1))
        trainer.opt.zero_grad()
        loss.backward()
        trainer.opt.step()
    assert loss_at_fixed_noise() < 0.7 * before


def test_export_loads_with_diffusers(tiny_corpus, tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    import json

    from vsr.pipelines.corpus import manifest_hash

    (tiny_corpus / "manifest.json").write_text(json.dumps({"images": [{"file": "images/train/chelsea.png"}]}))
    cfg = tiny_cfg(tiny_corpus, tmp_path / "d", steps=2)
    tp.train(cfg, progress=False)
    out = tp.export(tmp_path / "d" / "last.pt", tmp_path / "model")
    # the weights name the corpus they learned from
    shipped = out / "training_corpus_manifest.json"
    assert shipped.read_bytes() == (tiny_corpus / "manifest.json").read_bytes()
    recorded = json.loads((out / "training.json").read_text())["corpus_manifest_sha256"]
    assert recorded == manifest_hash(json.loads(shipped.read_text()))
    unet = UNet2DModel.from_pretrained(out / "unet")
    sched = DDPMScheduler.from_pretrained(out / "scheduler")
    assert unet.config.in_channels == 3 * cfg.pixel_unshuffle**2
    assert sched.config.prediction_type == cfg.prediction_type
    assert sched.config.beta_schedule == cfg.beta_schedule


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="beta_schedule"):
        tp.TrainConfig(beta_schedule="cosine")
    with pytest.raises(ConfigError, match="unknown training config keys: colour"):
        tp.TrainConfig.from_dict({"colour": 1})
    with pytest.raises(ConfigError, match="multiples of 16"):
        tp.TrainConfig(crop=120)


def test_shipped_architecture_meets_the_compute_budget():
    cfg = tp.TrainConfig()
    macs = tp.count_macs(tp.build_unet(cfg), cfg, 256)
    assert macs <= 6e9


def test_init_from_an_export_starts_a_new_phase_with_those_weights(tiny_corpus, tmp_path):
    cfg = tiny_cfg(tiny_corpus, tmp_path / "e", steps=2)
    first = tp.train(cfg, progress=False)
    out = tp.export(tmp_path / "e" / "last.pt", tmp_path / "phase1", dtype=torch.float32)
    second = tp.Trainer(tiny_cfg(tiny_corpus, tmp_path / "f", init_from=str(out)), first.train_images, None)
    first.ema.copy_to(first.unet.parameters())
    assert torch.equal(_params(first), _params(second))
    assert second.step == 0
    with pytest.raises(Exception, match="no unet/ folder"):
        tp.Trainer(tiny_cfg(tiny_corpus, tmp_path / "g", init_from=str(tmp_path)), first.train_images, None)
