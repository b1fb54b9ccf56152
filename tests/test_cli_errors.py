"""Bad input to every `vsr` command: exactly one `vsr: ...` line on stderr and the
documented exit code (vsr.errors), never a traceback or argparse's usage block."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.media import make_clip
from vsr.cli import main
from vsr.errors import EXIT_CODEC, EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def assert_one_line(code: int, err: list[str], expected: int, *words: str) -> None:
    assert code == expected, err
    assert len(err) == 1 and err[0].startswith("vsr: "), err
    for w in words:
        assert w in err[0], err


def refused_config(clip, tmp_path, capsys, text: str, *words: str, extra: tuple = ()) -> None:
    """A --config file holding `text` is refused in one line (exit 2) naming `words`, and
    nothing is left beside it."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    code, err = run(["upscale", str(clip), str(tmp_path / "o.mp4"), "--config", str(cfg), *extra], capsys)
    assert_one_line(code, err, EXIT_USAGE, *words)
    assert list(tmp_path.iterdir()) == [cfg]


@pytest.fixture(autouse=True)
def _ffmpeg_default_logging():
    """`vsr upscale` routes FFmpeg's log through PyAV's Python callback; give FFmpeg its
    own logger back afterwards so later tests run without the callback installed."""
    yield
    import av

    av.logging.set_level(None)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "in.mp4", frames=3)


def test_argparse_errors_are_one_line(tmp_path, capsys):
    code, err = run(["upscale", "a.mp4", "b.mp4", "--steps", "abc"], capsys)
    assert_one_line(code, err, EXIT_USAGE, "--steps", "vsr upscale --help")
    code, err = run(["models", "info"], capsys)
    assert_one_line(code, err, EXIT_USAGE, "name")
    code, err = run(["bogus"], capsys)
    assert_one_line(code, err, EXIT_USAGE, "bogus")


def test_upscale_infinite_scale_and_binary_config(clip, tmp_path, capsys):
    code, err = run(["upscale", str(clip), str(tmp_path / "o.mp4"), "--scale", "inf"], capsys)
    assert_one_line(code, err, EXIT_USAGE, "--scale")
    code, err = run(["upscale", str(clip), str(tmp_path / "o.mp4"), "--config", str(clip)], capsys)
    assert_one_line(code, err, EXIT_USAGE, "cannot read config")


def test_a_bad_option_value_names_the_option_and_a_bad_file_value_the_field(clip, tmp_path, capsys):
    code, err = run(["upscale", str(clip), str(tmp_path / "o.mp4"), "--steps", "0"], capsys)
    assert_one_line(code, err, EXIT_USAGE, "--steps 0 is invalid", "1..50")
    code, err = run(["upscale", str(clip), str(tmp_path / "o.mp4"), "--noise-level", "0"], capsys)
    assert_one_line(code, err, EXIT_USAGE, "--noise-level 0 is invalid")
    refused_config(clip, tmp_path, capsys, "batch: 0\n", "config field 'batch' = 0")
    # an option overrides the file before anything is checked: the file's batch: 0 is not refused under --batch 4
    refused_config(clip, tmp_path, capsys, "batch: 0\n", "--steps 0 is invalid", extra=("--batch", "4", "--steps", "0"))


def test_a_value_refused_once_the_model_is_loaded_names_the_option(clip, tmp_path, tiny_model_dir, capsys):
    code, err = run(["upscale", str(clip), str(tmp_path / "o.mp4"), "--model", str(tiny_model_dir), "--tile", "35"],
                    capsys)
    assert_one_line(code, err, EXIT_USAGE, "--tile 35 is invalid", "a multiple of")
    refused_config(clip, tmp_path, capsys, "tile: 35\n", "config field 'tile' = 35", extra=("--model", str(tiny_model_dir)))


def test_debug_shows_the_traceback_and_keeps_the_exit_code(clip, tmp_path, capsys):
    code = main(["--debug", "upscale", str(clip), str(tmp_path / "o.mp4"), "--steps", "0"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "Traceback" in err and err.strip().splitlines()[-1].startswith("vsr: --steps 0")


def test_a_config_files_scale_sets_the_output_size_unless_an_option_does(clip, tmp_path, tiny_model_dir, capsys):
    import av

    cfg = tmp_path / "c.yaml"
    cfg.write_text("scale: 3\n")
    for extra, factor in (([], 3), (["--scale", "1.5"], 1.5)):
        out = tmp_path / f"o{factor}.mp4"
        assert main(["upscale", str(clip), str(out), "--model", str(tiny_model_dir), "--config", str(cfg), "--quiet",
                     *extra]) == 0
        with av.open(str(clip)) as a, av.open(str(out)) as b:
            assert b.streams.video[0].width == round(a.streams.video[0].width * factor)


def test_debug_after_the_command_and_a_mixed_engine_section_say_what_to_do(clip, tmp_path, capsys):
    code, err = run(["upscale", str(clip), str(tmp_path / "o.mp4"), "--debug"], capsys)
    assert_one_line(code, err, EXIT_USAGE, "--debug goes before the command")
    refused_config(clip, tmp_path, capsys, "engine:\n  steps: 1\nbatch: 2\n",
                   "'engine:' section beside top-level keys (batch)")


def test_multiline_yaml_error_is_one_line(clip, tmp_path, capsys):
    refused_config(clip, tmp_path, capsys, "{steps: 2\n", "cannot read config")


def test_eval_bad_options(clip, tmp_path, capsys):
    code, err = run(["eval", str(clip), "--reference", str(clip), "--no-niqe", "--crop-border", "999"], capsys)
    assert_one_line(code, err, EXIT_USAGE, "--crop-border")
    code, err = run(["eval", str(clip), "--no-niqe", "--max-frames", "0"], capsys)
    assert_one_line(code, err, EXIT_USAGE, "--max-frames")
    not_npz = tmp_path / "model.npz"
    not_npz.write_text("not numpy")
    code, err = run(["eval", str(clip), "--niqe-model", str(not_npz)], capsys)
    assert_one_line(code, err, EXIT_MODEL, "NIQE model")
    np.savez(tmp_path / "empty.npz", a=1)
    code, err = run(["eval", str(clip), "--niqe-model", str(tmp_path / "empty.npz")], capsys)
    assert_one_line(code, err, EXIT_MODEL, "NIQE model")


def test_calibrate_bad_options(tmp_path, capsys):
    code, err = run(["calibrate", "--images", str(tmp_path), "--max-images", "0"], capsys)
    assert_one_line(code, err, EXIT_USAGE, "--max-images")
    out = tmp_path / "missing" / "curves.png"
    code, err = run(["calibrate", "--images", str(tmp_path), "--out", str(out)], capsys)
    assert_one_line(code, err, EXIT_OUTPUT, "--out")
    # refused before the model loads or anything is measured: values a card could not hold
    # afterwards (it would no longer load), and an --out that is not the file it writes
    for bad, says in ((["--steps", "100"], "--steps must be an integer in 1..50"),
                      (["--consistency", "11"], "--consistency must be an integer in 0..10"),
                      (["--scales", "nan"], "--scales must be upscaling factors > 1"),
                      (["--scales", "inf"], "--scales must be upscaling factors > 1"),
                      (["--crop", "-5"], "--crop must be a positive size"),
                      (["--out", str(tmp_path)], "give a .json file"),
                      (["--out", str(tmp_path / "scores.png")], "give a .json file")):
        code, err = run(["calibrate", "--noise-predictor", "--images", str(tmp_path), *bad], capsys)
        assert_one_line(code, err, EXIT_USAGE, says)
    for out in (tmp_path / "curves", tmp_path / "curves.json"):  # matplotlib would write curves.png
        code, err = run(["calibrate", "--images", str(tmp_path), "--out", str(out)], capsys)
        assert_one_line(code, err, EXIT_USAGE, "give a .png or .pdf or .svg file")


def test_models_info_of_a_folder_without_a_model(tmp_path, capsys):
    code, err = run(["models", "info", str(tmp_path)], capsys)
    assert_one_line(code, err, EXIT_MODEL, "not a diffusers model folder")


def test_corpus_build_never_replaces_a_file_or_a_foreign_folder(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    code, err = run(["corpus", "build", str(a_file)], capsys)
    assert_one_line(code, err, EXIT_OUTPUT, "not a folder")
    assert a_file.read_text() == "mine"
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.png").write_bytes(b"x")
    code, err = run(["corpus", "build", str(folder)], capsys)
    assert_one_line(code, err, EXIT_OUTPUT, "no corpus manifest")
    assert (folder / "holiday.png").read_bytes() == b"x"
    binary = tmp_path / "sources.yaml"
    binary.write_bytes(b"\x9f\x00\xff")
    code, err = run(["corpus", "build", str(tmp_path / "new"), "--sources", str(binary)], capsys)
    assert_one_line(code, err, EXIT_USAGE, "cannot read corpus config")


def test_train_bad_config_and_checkpoint(tmp_path, capsys):
    pytest.importorskip("diffusers")
    text = tmp_path / "cfg.yaml"
    text.write_text("just a string\n")
    code, err = run(["train", "prior", "--config", str(text)], capsys)
    assert_one_line(code, err, EXIT_USAGE, "mapping")
    binary = tmp_path / "cfg.bin"
    binary.write_bytes(b"\x9f\x00\xff")
    code, err = run(["train", "prior", "--config", str(binary)], capsys)
    assert_one_line(code, err, EXIT_USAGE, "cannot read training config")
    ckpt = tmp_path / "last.pt"
    ckpt.write_text("not a checkpoint")
    code, err = run(["train", "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x")], capsys)
    assert_one_line(code, err, EXIT_INPUT, "checkpoint")


def test_upscale_help_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["upscale", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for code in ("2 bad arguments", "3 unusable input", "5 model", "6 encoder", "130 interrupted"):
        assert code in text


def test_unreachable_hub_id_is_one_line_at_once(clip, tmp_path, capsys, monkeypatch):
    """Offline (here: a hub host that cannot resolve), a hub id fails with the hint to
    pass a local folder, without huggingface_hub's retries and warnings."""
    pytest.importorskip("diffusers")
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.vsr-test.invalid")
    code, err = run(["upscale", str(clip), str(tmp_path / "o.mp4"), "--model", "nobody-here/no-model"], capsys)
    assert_one_line(code, err, EXIT_MODEL, "local folder")


def test_codec_the_container_cannot_hold_is_exit_6(clip, tmp_path, tiny_model_dir, capsys):
    code, err = run(["upscale", str(clip), str(tmp_path / "o.webm"), "--model", str(tiny_model_dir), "--codec", "libx264"], capsys)
    assert_one_line(code, err, EXIT_CODEC, "libx264")


def test_unavailable_device_fails_before_any_work_folder(clip, tmp_path, tiny_model_dir, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    out = tmp_path / "o.mp4"
    code, err = run(["upscale", str(clip), str(out), "--model", str(tiny_model_dir), "--device", "cuda"], capsys)
    assert_one_line(code, err, EXIT_USAGE, "cuda")
    assert list(tmp_path.iterdir()) == []  # no .o.mp4.vsr-tmp left to block the next run


def test_unknown_x264_preset_is_one_line(clip, tmp_path, capfd):
    """capfd: x264 would print its own line straight to the stderr file descriptor."""
    code, err = run(["upscale", str(clip), str(tmp_path / "o.mp4"), "--preset", "bogus"], capfd)
    assert_one_line(code, err, EXIT_CODEC, "preset")


def test_encoder_option_nothing_reads_is_an_error_not_ignored(clip, tmp_path, tiny_model_dir, capfd):
    out = tmp_path / "o.mp4"
    argv = ["upscale", str(clip), str(out), "--model", str(tiny_model_dir), "--encoder-opt", "tnue=grain"]
    code, err = run(argv, capfd)
    assert_one_line(code, err, EXIT_CODEC, "tnue")
    assert list(tmp_path.iterdir()) == []
    ok = ["upscale", str(clip), str(out), "--model", str(tiny_model_dir), "--encoder-opt", "tune=grain", "--quiet"]
    assert main(ok) == 0 and out.stat().st_size > 0  # an option x264 has is taken


@pytest.mark.parametrize("opt, named", [
    ("x264-params=bogus=1", "bogus"),  # libx264 only logs "Error parsing option" and goes on
    ("x264-params=asm=NOPE", "asm"),  # ... and would have turned off all of x264's assembly
    ("threads=abc", "threads"),  # FFmpeg refuses it: the one line says which option, not only "Invalid argument"
    ("tune=nonsense", "tune"),  # x264 prints its own refusal of a tune or profile before FFmpeg's log is read
    ("profile=nonsense", "profile"),
])
def test_encoder_option_with_a_value_the_encoder_cannot_parse_is_an_error(opt, named, clip, tmp_path, tiny_model_dir,
                                                                           capfd):
    out = tmp_path / "o.mp4"
    code, err = run(["upscale", str(clip), str(out), "--model", str(tiny_model_dir), "--encoder-opt", opt], capfd)
    assert_one_line(code, err, EXIT_CODEC, named)
    assert list(tmp_path.iterdir()) == []


def test_repeated_encoder_options_append_params_and_refuse_a_key_given_two_values():
    from vsr.io import merge_encoder_options
    from vsr.errors import UsageError

    pairs = [("x264-params", "aq-mode=3"), ("tune", "film"), ("x264-params", "psy-rd=1.0,0.15"), ("tune", "film")]
    assert merge_encoder_options(pairs) == {"x264-params": "aq-mode=3:psy-rd=1.0,0.15", "tune": "film"}
    assert merge_encoder_options([("x265-params", ""), ("x265-params", "aq-mode=3")]) == {"x265-params": "aq-mode=3"}
    with pytest.raises(UsageError, match="tune given twice"):
        merge_encoder_options([("tune", "film"), ("tune", "grain")])


def test_a_bad_value_in_a_second_params_option_is_still_caught(clip, tmp_path, tiny_model_dir, capfd):
    out = tmp_path / "o.mp4"
    argv = ["upscale", str(clip), str(out), "--model", str(tiny_model_dir), "--encoder-opt", "x264-params=aq-mode=3",
            "--encoder-opt", "x264-params=asm=NOPE"]
    code, err = run(argv, capfd)
    assert_one_line(code, err, EXIT_CODEC, "asm")


def test_a_value_x265_refuses_is_one_line_naming_the_option(clip, tmp_path, tiny_model_dir, capfd):
    """x265 prints "Aq-Mode is out of range" to stderr itself; the one line names what the
    user gave, not the options vsr adds."""
    out = tmp_path / "o.mkv"
    code, err = run(["upscale", str(clip), str(out), "--model", str(tiny_model_dir), "--codec", "libx265",
                     "--encoder-opt", "x265-params=aq-mode=9"], capfd)
    assert_one_line(code, err, EXIT_CODEC, "x265-params=aq-mode=9")
    assert "frame-threads" not in err[0] and list(tmp_path.iterdir()) == []


def test_encoder_option_without_a_key_is_a_usage_error(clip, tmp_path, capfd):
    code, err = run(["upscale", str(clip), str(tmp_path / "o.mp4"), "--encoder-opt", "=1"], capfd)
    assert_one_line(code, err, EXIT_USAGE, "key=value")


_REWRAPPED_INTERRUPT = """
import argparse, os, signal, sys, time
from vsr import cli


def run(args):
    interrupted = False
    try:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands during a library's import ...
        time.sleep(30)
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:  # ... which raises its own error instead ({chained}: diffusers' lazy import does)
        if {chained}:
            raise RuntimeError("Failed to import diffusers.models.unets.unet_2d: initialization failed")
        raise RuntimeError("initialization failed") from None


class Parser(argparse.ArgumentParser):
    def parse_args(self, argv=None):
        return argparse.Namespace(_run=run)


cli.build_parser = lambda command: Parser()
sys.argv = ["vsr", "upscale"]
sys.exit(cli.main())
"""


@pytest.mark.parametrize("chained", [True, False])
def test_an_interrupt_a_library_rewraps_is_still_exit_130(chained):
    # seen in CI: SIGINT while diffusers imported an extension module came out as
    # "internal error: RuntimeError: Failed to import ...: initialization failed", exit 1
    import subprocess
    import sys

    from tests.conftest import child_env
    from vsr.errors import EXIT_INTERRUPTED

    proc = subprocess.run([sys.executable, "-c", _REWRAPPED_INTERRUPT.format(chained=chained)], env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr
    assert proc.stderr.strip().splitlines() == ["vsr: interrupted"]
