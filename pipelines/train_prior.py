"""Train vsr's default diffusion prior: an unconditional pixel-space `UNet2DModel`.

Why it looks like this:
- The upscaler only ever starts the reverse process at t/T <= ~0.7 (METHOD.md, PRF), so
  timesteps are drawn from [1, t_max] and capacity is not spent on pure-noise inputs.
- A pixel-unshuffle stem (the UNet sees `pixel_unshuffle(x, r)`: 3*r*r channels at H/r)
  buys a deep, wide network inside the 6 GMAC / 256x256 budget; it is a permutation of
  pixels, so the Gaussian noise is still added in pixel space and stays i.i.d.
- v-prediction with min-SNR-gamma weighting (Hang et al. 2023) keeps the low-noise end,
  where a 2x upscale works, from being drowned by the high-noise end and vice versa.
- Random downscaling of each crop (area filter) shows the model many scales of the same
  photographs, which is what a target-resolution upscaler meets.
- Everything random is drawn from one `torch.Generator` whose state is checkpointed, so a
  resumed run continues bit-for-bit (tested), on CPU and CUDA alike (the generator lives
  on the CPU; tensors move to the device afterwards).

CLI: `vsr train prior --config configs/prior/vsr-prior-s.yaml [--resume] [--steps N]`
and `vsr train export --checkpoint RUN/last.pt --out vsr/weights/vsr-prior-s`.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch
import yaml

from vsr.errors import InputError

# the pieces live in sibling modules; every name stays importable from here
from .prior_data import load_images, random_crops, val_crops
from .prior_model import TrainConfig, add_training_args, build_scheduler, build_unet, count_macs, model_output, run_training
from .prior_trainer import (
    VAL_T_FRACTIONS,
    Trainer,
    resolve_device,
    save_checkpoint,
    training_loss,
    validate,
)

__all__ = [
    "CORPUS_RECORD", "VAL_T_FRACTIONS", "TrainConfig", "Trainer", "add_cli", "build_scheduler", "build_unet",
    "count_macs", "export", "load_images", "model_output", "random_crops", "resolve_device", "run_cli",
    "save_checkpoint", "train", "training_loss", "val_crops", "validate",
]

log = logging.getLogger(__name__)

CORPUS_RECORD = "corpus_manifest.json"  # in a run folder: the manifest of the corpus it trains on


def train(
    cfg: TrainConfig, *, resume: bool = False, progress: bool = True, max_seconds: float | None = None,
    stop_at: int | None = None,
) -> Trainer:
    """Run (or continue) training until `cfg.steps` (or `stop_at`, which leaves the LR
    schedule as `cfg.steps` defines it); checkpoints to `run_dir/last.pt`."""
    from tqdm import tqdm

    run = Path(cfg.run_dir)
    train_images = load_images(cfg.corpus, "train", cfg.max_image_side)
    val_dir = Path(cfg.corpus) / "images" / "val"
    val_images = load_images(cfg.corpus, "val", cfg.max_image_side) if val_dir.is_dir() else None
    trainer = Trainer(cfg, train_images, val_images)
    ckpt = run / "last.pt"
    if resume and ckpt.exists():
        try:  # weights_only: a crafted checkpoint cannot run code here
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle/zip errors vary by torch version
            raise InputError(f"cannot resume from {ckpt}: not a plain vsr checkpoint ({type(exc).__name__}); "
                             "move it away to start over") from None
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or not isinstance(state.get("step"), int):
            raise InputError(f"cannot resume from {ckpt}: not a vsr prior checkpoint (no config or step); "
                             "move it away to start over")
        cfg.check_resume(state["config"], ckpt, state["step"],
                         "start a new run from its weights (vsr train export, then init_from that folder)")
        trainer.load_state_dict(state)
        log.info("resumed from %s at step %d", ckpt, trainer.step)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    _record_corpus(Path(cfg.corpus), run)
    bar = tqdm(total=cfg.steps, initial=trainer.step, disable=not progress, desc="train prior", unit="step")
    started = time.time()
    t_last = time.time()
    try:
        end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
        while trainer.step < end:
            loss = trainer.train_step()
            now = time.time()
            trainer.wall_s += now - t_last
            t_last = now
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            record = None
            if trainer.val is not None and cfg.val_every and trainer.step % cfg.val_every == 0:
                record = {"step": trainer.step, "loss": loss, "wall_s": round(trainer.wall_s, 1), **trainer.validate_ema()}
                trainer.history.append(record)
                with open(run / "history.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.write(json.dumps(record))
            if trainer.step % cfg.checkpoint_every == 0 or trainer.step == end:
                save_checkpoint(trainer, ckpt)
            if max_seconds and now - started > max_seconds:
                save_checkpoint(trainer, ckpt)
                break
            t_last = time.time()
    finally:
        bar.close()
    return trainer


def _record_corpus(corpus: Path, run: Path) -> None:
    """Keep the manifest of the corpus a run trains on beside its checkpoint, so the
    exported weights can name the exact photographs (and their hash) they learned from."""
    from vsr.pipelines.corpus import corpus_manifest_hash, manifest_hash

    manifest, record = corpus / "manifest.json", run / CORPUS_RECORD
    if not manifest.is_file():
        return
    if not record.exists():
        shutil.copyfile(manifest, record)
    elif manifest_hash(json.loads(record.read_text())) != corpus_manifest_hash(corpus):
        log.warning("%s changed since this run started; the run keeps the manifest it started with", manifest)


def export(checkpoint: str | Path, out_dir: str | Path, *, dtype: torch.dtype = torch.float16) -> Path:
    """Write the EMA weights as a diffusers folder (`unet/`, `scheduler/`, `training.json`).

    Saved in fp16 to meet the 25 MB size budget; the engine casts to its compute dtype.
    The run's corpus manifest goes along as `training_corpus_manifest.json` (benchmarks
    use it to leave out every photo the model trained on) and its hash, the one `vsr corpus
    build` prints, into training.json.
    """
    from vsr.pipelines.corpus import manifest_hash

    from diffusers.training_utils import EMAModel

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors vary by torch version; all mean "not a checkpoint"
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(f"cannot read checkpoint {checkpoint} (a plain vsr checkpoint is loaded with weights_only=True, "
                         f"never unpickled): {type(exc).__name__}: {first}") from None
    if not isinstance(state, dict) or not {"config", "unet", "ema"} <= set(state):
        raise InputError(f"{checkpoint} is not a vsr training checkpoint (expected config, unet and ema)")
    cfg = TrainConfig.from_dict(state["config"])
    unet = build_unet(cfg)
    unet.load_state_dict(state["unet"])
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    ema.load_state_dict(state["ema"])
    ema.copy_to(unet.parameters())
    out = Path(out_dir)
    unet.to(dtype).save_pretrained(out / "unet", safe_serialization=True)
    build_scheduler(cfg).save_pretrained(out / "scheduler")
    record = Path(checkpoint).parent / CORPUS_RECORD
    corpus_hash = None
    if record.is_file():
        shutil.copyfile(record, out / "training_corpus_manifest.json")
        corpus_hash = manifest_hash(json.loads(record.read_text()))
    (out / "training.json").write_text(
        json.dumps(
            {"step": state["step"], "wall_s": round(state.get("wall_s", 0.0), 1), "config": state["config"],
             "corpus_manifest_sha256": corpus_hash,
             "last_validation": state["history"][-1] if state.get("history") else None},
            indent=2,
        )
    )
    return out


# ----------------------------------------------------------------------------- CLI


def add_cli(parser) -> None:
    sub = parser.add_subparsers(dest="train_command", metavar="WHAT", required=True)
    p = sub.add_parser("prior", help="train (or resume) the default prior")
    add_training_args(p, "a YAML file of TrainConfig fields (configs/prior/*.yaml)")
    e = sub.add_parser("export", help="write a checkpoint's EMA weights as a diffusers folder")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True)
    from . import train_noise_predictor  # predictor, predictor-export, -pack and -average (InvSR's noise predictor)

    train_noise_predictor.add_cli(sub)


def run_cli(args) -> int:
    if args.train_command in ("predictor", "predictor-export", "predictor-pack", "predictor-average",
                              "predictor-set-anchor"):
        from . import train_noise_predictor

        return train_noise_predictor.run_cli(args)
    if args.train_command == "export":
        if not Path(args.checkpoint).exists():
            raise InputError(f"checkpoint not found: {args.checkpoint}")
        print(export(args.checkpoint, args.out))
        return 0
    return run_training(args, TrainConfig, train)

