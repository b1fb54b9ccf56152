"""Train a prior's noise predictor end to end through its sampler (InvSR, METHOD.md 2).

For a batch of high-resolution crops x (random crops of a packed uint8 array):
1. degrade each as real low-resolution video is (`degrade`): optional mild Gaussian blur,
   antialiased-bicubic or area downscaling by one scale in [1.5, 8] for the batch,
   optional mild sensor noise, then 8-bit quantisation, JPEG or single-frame H.264;
2. upsample it back with the engine's kernel (`vsr.core.resample`): x_up;
3. start at x_t = sqrt(abar_t) x_up + sqrt(1 - abar_t) f(x_up, t) (Yue et al. 2024,
   arXiv 2412.09013, eq. 7) for t ~ U[t_min, t_max] and run the FROZEN prior's 1-3 DDIM
   steps with back-projection (`vsr.methods.diffsr.upscale`, exactly what the engine
   runs); gradients flow through the prior into f only;
4. loss against x: Charbonnier (Lai et al. 2017) + L1 of image gradients (edges where
   the truth has them) + L1 of FFT amplitudes (Jiang et al. 2021's frequency loss, L1
   form: rewards high-frequency energy the truth has, wherever the phase lands).
   InvSR used L2 + LPIPS + GAN; LPIPS weights cannot be had here. Optionally
   (`shift_weight`) + the difference of the outputs of each window and of itself moved by
   a pixel or two where they overlap (`shifted_batch`, `shift_difference`): detail that
   moves with the picture, which the flicker metric rewards.

As in `pipelines/train_prior.py`: one frozen `PredictorTrainConfig` from YAML, every
random draw from one CPU `torch.Generator` checkpointed with the run (resume is
bit-for-bit; tested), EMA of the weights via diffusers, `--device cuda` for a GPU. The
training crops are packed once into `RUN/crops.npz` (uint8); `predictor-pack` writes them as
JPEG q98 (a third of the size) for a machine that takes little, given to a run as its
`crops_file`, and `data_workers` makes the batches in worker processes (each batch from
its own generator seeded by (seed, step)) so a GPU is not left waiting for the CPU.

CLI (wired into `vsr train`): `vsr train predictor --config configs/predictor/X.yaml
[--resume]`, `vsr train predictor-export --checkpoint RUN/last.pt --out FOLDER
[--calibrate]`, `vsr train predictor-pack --config C --out F.npz`, `vsr train
predictor-average A.pt B.pt --out C.pt` (mean weights, to export), `vsr train
predictor-set-anchor A.pt --anchor 8 --from B.pt --out C.pt` (one anchor's weights from another run). Imports PyAV (for the H.264 degradation) besides vsr.io: a training
pipeline, not the engine.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from vsr.core.resample import resample  # noqa: F401 - re-exported: its old home
from vsr.errors import ConfigError, InputError, OutputError, UsageError
from vsr.jobs.files import write_new_file

from .predictor_config import PredictorTrainConfig, build_predictor
from .prior_model import add_training_args, run_training
from .predictor_data import (  # noqa: F401 - re-exported: their old home
    StepBatches,
    _uniform,
    crops_from_pack,
    degrade,
    gaussian_blur,
    h264_roundtrip,
    jpeg_pack,
    jpeg_roundtrip,
    load_or_pack_crops,
    lr_size,
    make_batch,
    pack_crops,
    shifted_batch,
    step_batches,
)
from .predictor_trainer import (  # noqa: F401 - re-exported: their old home
    PredictorTrainer,
    _lr_at,
    _prior_dtype,
    _schedule_of,
    _scores,
    _u8,
    band_energy,
    detail_loss,
    ema_by_name,
    evaluate,
    load_val_crops,
    prior_fingerprint,
    save_checkpoint,
    sharpness,
    shift_difference,
)

log = logging.getLogger(__name__)

# the start levels and the rule of `predictor-export --calibrate` and `vsr calibrate --noise-predictor`: a
# predictor's start lies far below the PRF (its prediction is most of the answer)
CALIBRATION_GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)
CALIBRATION_RULE = "lowest GMSD within 0.1 dB of the best Y-PSNR (held-out crops, 8-bit antialiased-bicubic input)"
CALIBRATION_SCALES = (2.0, 3.0, 4.0, 6.0, 8.0)


def _log_record(run: Path, record: dict) -> None:
    with open(run / "history.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def train(
    cfg: PredictorTrainConfig, *, resume: bool = False, progress: bool = True, max_seconds: float | None = None,
    stop_at: int | None = None, prior=None, crops: np.ndarray | None = None, val: torch.Tensor | None = None,
) -> PredictorTrainer:
    """Run (or continue) training to cfg.steps (or stop_at); checkpoints to RUN/last.pt.

    prior/crops/val default to the config's (the shipped prior, RUN/crops.npz, the
    corpus's val split); tests pass tiny ones.
    """
    from tqdm import tqdm

    from vsr.models import load_model

    run = Path(cfg.run_dir)
    ckpt = run / "last.pt"
    warm = _read_checkpoint(cfg.init_checkpoint) if cfg.init_checkpoint and not (resume and ckpt.exists()) else None
    prior = prior if prior is not None else load_model(cfg.prior)
    crops = crops if crops is not None else load_or_pack_crops(cfg)
    if val is None and (Path(cfg.corpus) / "images" / "val").is_dir():
        val = load_val_crops(cfg.corpus, cfg.val_crop, cfg.val_max_images)
    trainer = PredictorTrainer(cfg, prior, crops, val)
    state = _read_checkpoint(ckpt) if resume and ckpt.exists() else None
    if state is not None and not ({"opt", "gen", "step"} <= set(state) and isinstance(state["step"], int)):
        raise InputError(f"cannot resume from {ckpt}: not a run's own checkpoint (no optimiser, random stream or "
                         "step: an averaged or set-anchor file?); start a new run from it with init_checkpoint")
    if state is not None:
        cfg.check_resume(state["config"], ckpt, state["step"],
                         f"start a new run from its weights (init_checkpoint: {ckpt})")
        if state.get("prior_sha256") not in (None, trainer.prior_sha256):  # e.g. `prior: null` after a new release
            raise ConfigError(f"--resume: {ckpt} trained against a prior with other weights than "
                              f"{cfg.prior or 'the shipped one'} has now: point `prior` at the one it trained "
                              f"against, or start a new run from its weights (init_checkpoint: {ckpt})")
    run.mkdir(parents=True, exist_ok=True)  # after the checks: a refused run leaves no folder
    if state is not None:
        trainer.load_state_dict(state)
        log.info("resumed from %s at step %d", ckpt, trainer.step)
    elif warm is not None:
        trainer.init_from(warm)
        log.info("started from the EMA weights of %s", cfg.init_checkpoint)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if trainer.val is not None and trainer.step == 0 and cfg.val_every:
        record = {"step": 0, "wall_s": 0.0, **trainer.validate(baselines=True)}
        trainer.history.append(record)
        _log_record(run, record)
        log.info("%s", json.dumps(record))
    bar = tqdm(total=cfg.steps, initial=trainer.step, disable=not progress, desc="train predictor", unit="step")
    started = last_ckpt = t_last = time.time()
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    batches = step_batches(trainer.crops, cfg, trainer.step, end) if cfg.data_workers else None
    try:
        while trainer.step < end:
            info = trainer.train_step(next(batches) if batches is not None else None)
            now = time.time()
            trainer.wall_s += now - t_last
            bar.update(1)
            bar.set_postfix(loss=f"{info['loss']:.4f}")
            if trainer.step % 25 == 0:
                _log_record(run, {"step": trainer.step, "wall_s": round(trainer.wall_s, 1), **info})
            if trainer.val is not None and cfg.val_every and trainer.step % cfg.val_every == 0:
                record = {"step": trainer.step, "wall_s": round(trainer.wall_s, 1), **trainer.validate()}
                trainer.history.append(record)
                _log_record(run, record)
                bar.write(json.dumps(record))
            stop = bool(max_seconds and now - started > max_seconds)
            if (trainer.step % cfg.checkpoint_every == 0 or trainer.step == end or stop
                    or now - last_ckpt > 60 * cfg.checkpoint_minutes):
                save_checkpoint(trainer, ckpt)
                last_ckpt = time.time()
            if stop:
                break
            t_last = time.time()
    finally:
        bar.close()
    return trainer


# ----------------------------------------------------------------------------- export


def _read_checkpoint(checkpoint: str | Path) -> dict:
    """A noise predictor checkpoint's state (on the CPU); a missing file or another kind of
    file is a one-line InputError."""
    if Path(checkpoint).is_dir():
        raise InputError(f"{checkpoint} is a folder: give a run's checkpoint file (RUN/last.pt)")
    if not Path(checkpoint).is_file():
        raise InputError(f"checkpoint not found: {checkpoint}")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise InputError(f"cannot read checkpoint {checkpoint}: {exc.strerror or exc}") from None
    except Exception:  # pickle/zip errors vary by torch version (and say little): all mean "not a checkpoint"
        raise InputError(f"{checkpoint} is not a noise predictor checkpoint (not a file torch.save wrote, "
                         "or not a weights-only one)") from None
    if not isinstance(state, dict) or not {"config", "net", "ema"} <= set(state):
        raise InputError(f"{checkpoint} is not a noise predictor checkpoint (expected config, net and ema)")
    return state


def _checkpoint_net(checkpoint: str | Path):
    """The EMA predictor of a checkpoint, float32 CPU, and the checkpoint's state."""
    from diffusers.training_utils import EMAModel

    state = _read_checkpoint(checkpoint)
    cfg = PredictorTrainConfig.from_dict(state["config"])
    net = build_predictor(cfg, *state.get("schedule", (1000, "squaredcos_cap_v2")))
    net.load_state_dict(state["net"])
    ema = EMAModel(net.parameters(), decay=cfg.ema_decay)
    ema.load_state_dict(state["ema"])
    ema.copy_to(net.parameters())
    return net.eval(), state, cfg


def average_checkpoints(checkpoints: list[str | Path], out: str | Path, *, overwrite: bool = False) -> str:
    """Write a checkpoint whose weights (net and EMA) are the mean of `checkpoints`'
    (a weight-space ensemble, "model soup": Wortsman et al. 2022, arXiv 2203.05482; for
    fine-tunes of one run, WiSE-FT, arXiv 2109.01903). They must share the architecture
    and noise schedule (InputError otherwise); the rest (config, step, EMA settings) is
    the last one's, with `averaged_from` naming them all, and no optimiser state: it is
    for `predictor-export`, not `--resume`. Written atomically; returns a one-line summary."""
    if len(checkpoints) < 2:
        raise UsageError(f"need at least 2 checkpoints to average, got {len(checkpoints)}")
    seen: dict[Path, str] = {}
    for c in checkpoints:
        if Path(c).resolve() in seen:
            raise UsageError(f"{c} is given twice ({seen[Path(c).resolve()]}): each checkpoint counts once in the mean")
        seen[Path(c).resolve()] = str(c)
    out = Path(out)
    if not out.name or out.is_dir():
        raise OutputError(f"--out {str(out)!r}: need a file name, not a folder")
    if not out.resolve().parent.is_dir():
        raise OutputError(f"--out {out}: the folder {out.resolve().parent} does not exist")
    if out.resolve() in seen:
        raise UsageError(f"--out {out} is one of the checkpoints being averaged: write a new file")
    states = [_read_checkpoint(c) for c in checkpoints]
    first = states[0]
    def architecture(st: dict) -> str:  # the NoisePredictor config the checkpoint builds (schedule included)
        net_cfg = build_predictor(PredictorTrainConfig.from_dict(st["config"]), *st.get("schedule", ())).config
        return ", ".join(f"{k} {v}" for k, v in sorted(net_cfg.items()) if not k.startswith("_"))

    for c, st in zip(checkpoints[1:], states[1:]):
        if architecture(st) != architecture(first):
            raise InputError(f"{c} is another architecture than {checkpoints[0]}: {architecture(st)} against "
                             f"{architecture(first)}")

    def mean(tensors):
        return (sum(t.double() for t in tensors) / len(tensors)).to(tensors[0].dtype)

    last = states[-1]
    state = {k: last[k] for k in ("config", "step", "schedule") if k in last}
    state["net"] = {k: mean([s["net"][k] for s in states]) for k in first["net"]}
    state["ema"] = dict(last["ema"])
    shadows = [s["ema"]["shadow_params"] for s in states]
    state["ema"]["shadow_params"] = [mean(list(ps)) for ps in zip(*shadows)]
    state["wall_s"] = float(sum(s.get("wall_s", 0.0) for s in states))
    state["averaged_from"] = [str(c) for c in checkpoints]
    write_new_file(out, _serialised(lambda f: torch.save(state, f)), replace=overwrite)
    return f"wrote {out}: the mean of {len(states)} checkpoints' weights"


def set_anchor(checkpoint: str | Path, anchor: float, donor: str | Path, out: str | Path, *,
               overwrite: bool = False) -> str:
    """Write `checkpoint` with the weights at one of its scale anchors set to `donor`'s
    (a checkpoint of the plain network, same architecture otherwise): the anchor's offsets
    become donor - base for every weight of the path, in the net and its EMA, so at that
    factor the predictor runs the donor's convolutions (its timestep embedding stays the
    checkpoint's) and between it and the next anchor a weight-space blend of the two. For an
    anchor whose specialist did worse than the shared network (issue 10: the 8x anchor,
    trained on 16-pixel inputs). No optimiser state: for `predictor-export`. InputError for
    a checkpoint without that anchor or a donor of another shape."""
    out = Path(out)
    if not out.name or out.is_dir() or not out.resolve().parent.is_dir():
        raise OutputError(f"--out {str(out)!r}: need a file name in an existing folder")
    if out.resolve() in (Path(checkpoint).resolve(), Path(donor).resolve()):
        raise UsageError(f"--out {out} is one of the inputs: write a new file")
    state, given = _read_checkpoint(checkpoint), _read_checkpoint(donor)
    anchors = [float(a) for a in state["config"].get("scale_anchors") or ()]
    if float(anchor) not in anchors:
        raise InputError(f"{checkpoint} has no scale anchor {anchor:g} (its anchors: "
                         f"{', '.join(f'{a:g}' for a in anchors) or 'none'})")
    if given["config"].get("scale_anchors"):
        raise InputError(f"{donor} has scale anchors of its own: the donor must be a plain network (its weights are "
                         f"the same at every factor)")
    k = anchors.index(float(anchor))
    prefix = f"anchor_offsets.{k}."

    names = list(state["net"])
    shadow, donor_net, donor_shadow = ema_by_name(state), given["net"], ema_by_name(given)
    for store, source in ((state["net"], donor_net), (shadow, donor_shadow)):
        for key in [n for n in names if n.startswith(prefix)]:
            body = key[len(prefix):].replace("-", ".")
            if body not in source or source[body].shape != store[body].shape:
                raise InputError(f"{donor} does not fit {checkpoint}: no weight {body} of shape "
                                 f"{tuple(store[body].shape)}")
            store[key] = (source[body].to(store[body].dtype) - store[body]).clone()
    state["ema"] = dict(state["ema"], shadow_params=[shadow[n] for n in names])
    state.pop("opt", None)
    state["anchor_from"] = {f"{float(anchor):g}": str(donor)}
    write_new_file(out, _serialised(lambda f: torch.save(state, f)), replace=overwrite)
    return f"wrote {out}: {checkpoint} with the weights at {float(anchor):g}x set to {donor}'s"


def _serialised(write) -> bytes:
    """What write(f) writes into a binary file object, as bytes (for `write_new_file`)."""
    import io

    buf = io.BytesIO()
    write(buf)
    return buf.getvalue()


def calibrate(
    net, prior, hr: torch.Tensor, *, scales=CALIBRATION_SCALES, grid=CALIBRATION_GRID, steps: int = 2,
    consistency: int = 1, device: str = "auto", dtype: str = "auto", tolerance_db: float = 0.1,
) -> tuple[dict, dict]:
    """The start t/T per scale: on hr (the held-out crops), among the grid points whose
    Y-PSNR is within `tolerance_db` of the best, the one with the lowest GMSD (fidelity
    first, then the least distorted structure). Returns ({scales, t}, all scores)."""
    from .train_prior import resolve_device

    dev = resolve_device(device)
    den = prior.make_denoiser(dev, _prior_dtype(dtype, dev))
    scores = evaluate(net.to(dev), den, prior.alphas_cumprod, hr, scales, grid, steps, consistency)
    chosen = []
    for s in scales:
        row = {k: v for k, v in scores[f"{s:g}x"].items() if k.startswith("t=")}
        best = max(v["psnr"] for v in row.values())
        ok = {k: v for k, v in row.items() if v["psnr"] >= best - tolerance_db}
        chosen.append(float(min(ok, key=lambda k: ok[k]["gmsd"])[2:]))
    return {"scales": [float(s) for s in scales], "t": chosen}, scores


def calibrated_entry(net, prior, hr: torch.Tensor, *, scales, grid, steps: int, consistency: int, device: str = "auto",
                     dtype: str = "auto", scores_file: str | None = None) -> tuple[dict, dict]:
    """`calibrate`, as the card's `noise_predictor:` keys it sets: scales, t, steps,
    consistency and a `calibration` record (date, settings, rule, and the scores, or
    `scores_file` when the caller writes them there). Returns (keys, all scores)."""
    import datetime

    chosen, scores = calibrate(net, prior, hr, scales=scales, grid=grid, steps=steps, consistency=consistency,
                               device=device, dtype=dtype)
    keys = {**chosen, "steps": steps, "consistency": consistency, "calibration": {
        "date": datetime.date.today().isoformat(), "steps": steps, "consistency": consistency, "images": int(len(hr)),
        "crop": int(hr.shape[-1]), "grid": [float(g) for g in grid], "rule": CALIBRATION_RULE,
        "scores": scores_file if scores_file else scores}}
    return keys, scores


# what an export writes: a folder holding nothing else is an earlier export, replaced whole
EXPORT_FILES = {"unet", "scheduler", "noise_predictor", "model_card.yaml", "training.json", "training_corpus_manifest.json"}


def _write_export(out: Path, net, state: dict, cfg, checkpoint, location, card_path, *, do_calibrate: bool,
                  corpus, mix: float, val_max_images: int, scales, grid, steps, consistency, device: str) -> None:
    """`export`'s files, written into the (new, empty) folder `out`."""
    from vsr.models import load_model
    from vsr.models.card import ModelCard
    from vsr.models.noise_predictor import SUBFOLDER, count_macs

    for sub in ("unet", "scheduler"):
        if Path(location, sub).is_dir():
            shutil.copytree(Path(location, sub), out / sub, dirs_exist_ok=True)
    for extra in ("training.json", "training_corpus_manifest.json"):
        if Path(location, extra).is_file():
            shutil.copyfile(Path(location, extra), out / extra)
    net.save_pretrained(out / SUBFOLDER, safe_serialization=True)
    card = ModelCard.from_yaml(card_path, Path(location).name) if card_path else ModelCard(name=Path(location).name)
    entry: dict = {"mix": float(mix)}
    if do_calibrate:
        hr = load_val_crops(corpus or cfg.corpus, cfg.val_crop, val_max_images)
        steps = int(steps or cfg.val_steps)
        consistency = int(cfg.consistency if consistency is None else consistency)
        keys, _ = calibrated_entry(net, load_model(str(out)), hr, scales=scales, grid=grid, steps=steps,
                                   consistency=consistency, device=device)
        entry.update(keys)
    entry["architecture"] = {
        "class": "vsr.models.noise_predictor.NoisePredictor", "channels": cfg.channels, "num_blocks": cfg.num_blocks,
        "pixel_unshuffle": cfg.pixel_unshuffle, "deep_blocks": cfg.deep_blocks, "deep_channels": cfg.deep_channels,
        "scale_features": cfg.scale_features,
        "scale_anchors": list(cfg.scale_anchors), "parameters": sum(p.numel() for p in net.parameters()),
        "gmacs_per_256x256_forward": round(count_macs(net) / 1e9, 3),
    }
    entry["training"] = {
        "steps": state["step"], "wall_s": round(state.get("wall_s", 0.0), 1), "config": state["config"],
        "last_validation": state["history"][-1] if state.get("history") else None,
    }
    for key in ("averaged_from", "anchor_from"):
        if state.get(key):
            entry["training"][key] = state[key]
    extra = dict(card.extra)
    extra["noise_predictor"] = entry
    card = dataclasses.replace(card, extra=extra)
    card.save(out / "model_card.yaml", header=f"{card.name} with a noise predictor ({checkpoint}, step {state['step']})")


def export(
    checkpoint: str | Path, out_dir: str | Path, *, prior: str | None = None, do_calibrate: bool = False,
    corpus: str | None = None, mix: float = 0.0, val_max_images: int = 16,
    scales: tuple[float, ...] = CALIBRATION_SCALES, grid: tuple[float, ...] = CALIBRATION_GRID,
    steps: int | None = None, consistency: int | None = None, device: str = "auto",
) -> Path:
    """Write a model folder: the prior (unet/, scheduler/, copied from `prior`, default
    the run's) plus `noise_predictor/` (EMA weights, fp32 safetensors) and a
    model_card.yaml with the `noise_predictor:` key (scales, t, mix, provenance). With
    do_calibrate the start t per scale is measured on the corpus's held-out crops
    (`calibrate`) for `steps` DDIM steps (default: the run's val_steps), and the key's
    `steps` records that count (what the engine runs under `steps: auto`), `consistency`
    the back-projection passes per step it was measured with (default: the run's; what
    the engine runs under `consistency: auto`); otherwise the
    key has no scales/t and the PRF decides."""
    from vsr.models import resolve_model

    net, state, cfg = _checkpoint_net(checkpoint)
    prior_name = prior if prior is not None else cfg.prior
    _, location, card_path = resolve_model(prior_name)
    out = Path(out_dir).resolve()
    if do_calibrate and not (Path(corpus or cfg.corpus) / "images" / "val").is_dir():
        raise InputError(f"corpus {corpus or cfg.corpus}: no images/val folder (the held-out photographs to calibrate on)")
    tmp = out.with_name(out.name + ".partial")  # the folder appears complete or not at all
    if tmp.is_symlink() or tmp.is_file() or (tmp.is_dir() and not {p.name for p in tmp.iterdir()} <= EXPORT_FILES):
        raise OutputError(f"{tmp} is in the way (not a partial export of vsr's): move it, then export again")
    shutil.rmtree(tmp, ignore_errors=True)  # an interrupted export's
    try:
        tmp.mkdir(parents=True)
        _write_export(tmp, net, state, cfg, checkpoint, location, card_path, do_calibrate=do_calibrate, corpus=corpus,
                      mix=mix, val_max_images=val_max_images, scales=scales, grid=grid, steps=steps,
                      consistency=consistency, device=device)
        _readable_as_new_files(tmp)
        if out.exists():  # an earlier export (the CLI refuses any other folder)
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as exc:  # permissions, a full disk: one line, nothing left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _readable_as_new_files(folder: Path) -> None:
    """Give every file under folder 0644, as vsr creates its files (`vsr.jobs.files.
    create_exclusive`): safetensors writes its weights 0600, which another user or a
    service could not read."""
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink():
            f.chmod(0o644)


# ----------------------------------------------------------------------------- CLI


def add_cli(sub) -> None:
    """Add `predictor`, `predictor-export`, `predictor-pack`, `predictor-average` and `predictor-set-anchor` to
    `vsr train`'s subparsers."""
    p = sub.add_parser("predictor", help="train (or resume) a prior's noise predictor (InvSR)")
    add_training_args(p, "a YAML file of PredictorTrainConfig fields (configs/predictor/*.yaml)")
    k = sub.add_parser("predictor-pack", help="write a run's training crops as JPEGs, to travel to a GPU machine")
    k.add_argument("--config", required=True, help="the run's YAML (its crops are packed first if need be)")
    k.add_argument("--out", required=True, help="the .npz to write; give it to the run as crops_file")
    k.add_argument("--quality", type=int, default=98, metavar="Q", help="JPEG quality, 50..100 (default 98)")
    a = sub.add_parser("predictor-average", help="write a checkpoint with the mean weights of several (a model soup)")
    a.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="runs' last.pt, of one architecture")
    a.add_argument("--out", required=True, help="the checkpoint to write, for predictor-export")
    a.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    g = sub.add_parser("predictor-set-anchor", help="write a checkpoint whose weights at one scale anchor are another "
                                                    "checkpoint's (a plain network's)")
    g.add_argument("checkpoint", metavar="CHECKPOINT", help="a run's last.pt with scale_anchors")
    g.add_argument("--anchor", type=float, required=True, help="the anchor factor to set (one of its scale_anchors)")
    g.add_argument("--from", dest="donor", required=True, metavar="DONOR",
                   help="a checkpoint of a plain network (no scale anchors) whose weights, net and EMA, it gets")
    g.add_argument("--out", required=True, help="the checkpoint to write, for predictor-export")
    g.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e = sub.add_parser("predictor-export", help="write a model folder: the prior plus the predictor's EMA weights")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--prior", help="the prior to copy (default: the run's)")
    e.add_argument("--calibrate", action="store_true", help="measure the start t per scale on the held-out crops")
    e.add_argument("--corpus", help="corpus for --calibrate (default: the run's)")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where --calibrate runs (not the run's training device; default auto)")
    e.add_argument("--mix", type=float, default=0.0, help="std of the Gaussian field added to the prediction")
    e.add_argument("--scales", type=float, nargs="+", default=list(CALIBRATION_SCALES), help="scales to calibrate")
    e.add_argument("--grid", type=float, nargs="+", default=list(CALIBRATION_GRID), help="start t/T to try")
    e.add_argument("--max-images", type=int, default=16, help="held-out images to calibrate on")
    e.add_argument("--steps", type=int, choices=range(1, 51), metavar="N",
                   help="DDIM steps to calibrate for, recorded as the card's default count (default: the run's val_steps)")
    e.add_argument("--consistency", type=int, choices=range(0, 11), metavar="N",
                   help="back-projection passes per step to calibrate with, recorded as the card's default "
                        "(default: the run's consistency)")


def pack_for_travel(config: str | Path, out: str | Path, quality: int = 98) -> str:
    """Write the crops of the run `config` describes as a `jpeg_pack` .npz at `out`
    (atomically); returns a one-line summary."""
    given = str(out)
    out = Path(out)
    if not given or not out.name or out.is_dir():
        raise UsageError(f"--out {given!r}: need a file name (e.g. crops.npz), not a folder")
    if not out.parent.is_dir():
        raise UsageError(f"--out {given}: {out.parent} is not a folder")
    if not 50 <= quality <= 100:
        raise UsageError(f"--quality {quality}: need 50..100")
    cfg = PredictorTrainConfig.from_yaml(config)
    if out.exists() and out.resolve() == cfg.crops_path.resolve():
        raise UsageError(f"--out {given} is the run's own crops file: write the pack beside it")
    crops = load_or_pack_crops(cfg)
    write_new_file(out, _serialised(lambda f: np.savez(f, **jpeg_pack(crops, quality))), replace=True)
    return f"wrote {out}: {len(crops)} crops, {out.stat().st_size / 2**20:.1f} MiB (JPEG q{quality}, 4:4:4)"


def _check_export_args(args) -> None:
    """predictor-export's refusals, before any work (UsageError, one line)."""
    out = Path(args.out)
    if not args.out or out.is_file() or out.is_symlink():
        raise UsageError(f"--out {args.out!r}: need a folder to write the model into (not a file or a link)")
    if not out.resolve().parent.is_dir():
        raise UsageError(f"--out {args.out}: {out.resolve().parent} is not a folder")
    if out.is_dir() and not set(p.name for p in out.iterdir()) <= EXPORT_FILES:
        raise UsageError(f"--out {args.out} is a folder with other files in it: give a new folder (or an earlier export)")
    if not all(1 < s <= 16 for s in args.scales):
        raise UsageError(f"--scales: need scales in (1, 16], got {' '.join(f'{s:g}' for s in args.scales)}")
    if not all(0 < g < 1 for g in args.grid):
        raise UsageError(f"--grid: need t/T values in (0, 1), got {' '.join(f'{g:g}' for g in args.grid)}")
    if not args.max_images >= 1:
        raise UsageError(f"--max-images: got {args.max_images}, need >= 1")
    if not 0 <= args.mix <= 1:
        raise UsageError(f"--mix: got {args.mix:g}, need a standard deviation in [0, 1]")


def run_cli(args) -> int:
    if args.train_command == "predictor-pack":
        print(pack_for_travel(args.config, args.out, args.quality))
        return 0
    if args.train_command == "predictor-average":
        print(average_checkpoints(args.checkpoints, args.out, overwrite=args.overwrite))
        return 0
    if args.train_command == "predictor-set-anchor":
        print(set_anchor(args.checkpoint, args.anchor, args.donor, args.out, overwrite=args.overwrite))
        return 0
    if args.train_command == "predictor-export":
        if not Path(args.checkpoint).exists():
            raise InputError(f"checkpoint not found: {args.checkpoint}")
        _check_export_args(args)
        given = [f"--{n}" for n in ("steps", "consistency") if getattr(args, n) is not None]
        if given and not args.calibrate:  # they are what the calibration measures with, recorded only with it
            raise UsageError(f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} --calibrate "
                             "(the card records them with the start t it measures)")
        print(export(args.checkpoint, args.out, prior=args.prior, do_calibrate=args.calibrate, corpus=args.corpus,
                     mix=args.mix, val_max_images=args.max_images, scales=tuple(args.scales), grid=tuple(args.grid),
                     steps=args.steps, consistency=args.consistency, device=args.device))
        if not args.calibrate:
            print("vsr: not calibrated: the engine will start this predictor at the prior's PRF curve with 2 steps "
                  "and 1 back-projection pass; export with --calibrate for its own start, steps and passes",
                  file=sys.stderr)
        return 0
    return run_training(args, PredictorTrainConfig, train)
