"""`vsr` command line: a thin dispatcher.

Each subcommand lives next to the code it drives and exposes two functions,
`add_cli(parser)` (declare its arguments) and `run_cli(args) -> int` (do it). This file
only wires them together and turns errors into one line plus an exit code
(see `vsr.errors`); `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

from vsr.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RESOURCES,
    EXIT_USAGE,
    ConfigError,
    UsageError,
    VsrError,
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as a `UsageError` (one line, exit 2) instead
    of printing the usage block; subparsers inherit this class."""

    def error(self, message: str) -> NoReturn:
        if "unrecognized arguments" in message and "--debug" in message.split(":", 1)[-1].split():
            message += "; --debug goes before the command (vsr --debug upscale ...)"
        raise UsageError(f"{message} (see '{self.prog} --help')")


# name -> (module, one-line help). Imported lazily so `vsr --help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "upscale": ("vsr.pipelines.upscale_cli", "upscale a video file (the main job)"),
    "stream": ("vsr.pipelines.stream_cli", "upscale a live stream (RTMP, SRT, UDP, a pipe) in real time"),
    "gst-plugin-path": ("vsr.pipelines.gst", "print the folder to add to GST_PLUGIN_PATH for the vsrupscale element"),
    "calibrate": ("vsr.calibrate", "measure a model's noise level per scale: its Perceptual Recoverable Field, "
                                   "or with --noise-predictor its noise predictor's start"),
    "models": ("vsr.models", "list the available models or show a model card"),
    "eval": ("vsr.evaluate", "quality and temporal metrics of an output video"),
    "corpus": ("vsr.pipelines.corpus", "build the training corpus from registry packages"),
    "train": ("vsr.pipelines.train_prior", "train the default diffusion prior"),
}
# Commands whose process ends with os._exit once the outputs are flushed: a stopped
# `vsr stream` returns without waiting for the frame its model thread is upscaling (a
# stop must not wait seconds for it; the thread ends after that call), and an interpreter
# shutdown while that thread is inside torch aborts (SIGABRT, "terminate called without
# an active exception") instead of returning the documented code.
EXIT_AT_ONCE = {"stream"}
# Commands whose interrupted work continues with --resume (the interrupt message says so).
RESUMABLE = {"upscale", "train"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (start-up stays fast: torch and
    diffusers load only for the commands that need them)."""
    parser = _Parser(
        prog="vsr",
        description="Video super-resolution with pre-trained diffusion models "
        "(noise injection at the Perceptual Recoverable Field).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=f"vsr {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != command:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # optional pieces (e.g. training deps) missing
            if exc.name not in (module_name, "skimage"):
                raise
            p.set_defaults(_missing=f"'vsr {name}' is unavailable: {exc}")
            continue
        module.add_cli(p)
        p.set_defaults(_run=module.run_cli)
    return parser


def _version() -> str:
    """`vsr.__version__`: the installed package's version."""
    import vsr

    return vsr.__version__


def _one_line(message: str) -> str:
    """Errors are one line on stderr even when they quote a multi-line parser message
    (a YAML syntax error, say)."""
    return " ".join(message.split())


@contextlib.contextmanager
def signals_handled(signals: Iterable[int], handler: Callable[[int, Any], Any]) -> Iterator[None]:
    """Run the block with `handler` for `signals`, restoring the previous handlers after.

    Only the main thread may set handlers (Python's rule): elsewhere nothing changes. A
    signal ignored at launch (SIG_IGN: SIGINT in a shell's background job, `nohup`'s
    SIGHUP) stays ignored, as Python itself leaves it; `vsr upscale`, `vsr stream` and the
    CLI's start-up all follow this rule.
    """
    import signal
    import threading

    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            if signal.getsignal(sig) != signal.SIG_IGN:
                old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, previous in old.items():
            if signal.getsignal(sig) is handler:  # changed meanwhile (ignored once the work is done): keep that
                signal.signal(sig, previous)


def _ignore_further_interrupts() -> None:
    """After the one-line message, exit with 130 even if another SIGINT/SIGTERM comes in
    (a second Ctrl-C, or one still pending in a worker thread at shutdown): Python would
    otherwise die of the signal (-2) instead of exiting with the documented code."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _exit_now(code: int) -> NoReturn:
    """The process ends here with `code`, skipping interpreter shutdown: the command's
    cleanup has run (an exception unwound through it, or it returned), and a shutdown
    can turn the documented code into a death by signal: a SIGINT landing in it (-2, seen
    in CI during start-up), or a daemon thread still inside torch (SIGABRT, `vsr stream`)."""
    import os

    _ignore_further_interrupts()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_interrupted() -> NoReturn:
    """Interrupted: exit 130 at once; the work folder is resumable."""
    _exit_now(EXIT_INTERRUPTED)


def _out_of_memory(exc: BaseException) -> bool:
    """vsr.device.is_out_of_memory without importing torch here (the CLI starts fast)."""
    if "vsr.device" not in sys.modules:
        return False
    return bool(sys.modules["vsr.device"].is_out_of_memory(exc))


_INTERRUPTS: list[int] = []  # SIGINT/SIGTERM received by the process (`_interrupt`), in order


def _interrupt(signum: int, frame: Any) -> None:
    """Record the signal, then interrupt as Ctrl-C does (KeyboardInterrupt). A library may
    catch that and raise something else: diffusers' lazy imports turn a KeyboardInterrupt
    in an extension module's start-up into "RuntimeError: Failed to import ...:
    initialization failed"; `_dispatch` still reports such a run as interrupted."""
    import signal

    _INTERRUPTS.append(signum)
    signal.default_int_handler(signum, frame)


def _interrupted_underneath(exc: BaseException) -> bool:
    """True when exc came out of an interrupt: one was received, or its chain holds one."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return bool(_INTERRUPTS)


def main(argv: list[str] | None = None) -> int:
    as_program = argv is None  # the process itself (not a call from Python): it may set signal handlers
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    import signal

    # imports take seconds: a SIGTERM meanwhile interrupts as Ctrl-C does, not kills (-15); both are
    # recorded, so an interrupt that a library turns into another error is still exit 130
    with signals_handled((signal.SIGTERM, signal.SIGINT), _interrupt) if as_program else contextlib.nullcontext():
        code = _dispatch(argv, command, as_program)
        if as_program and command in EXIT_AT_ONCE:
            _exit_now(code)
    return code


def _as_typed(exc: VsrError, args: argparse.Namespace | None) -> str:
    """The error's message, naming the command-line option where a ConfigError refused a
    value the user gave as one (`--tile 100 is invalid: ...`, not "config field 'tile'")."""
    given = getattr(args, "_cli_fields", None) or {}
    field = getattr(exc, "field", None)
    if isinstance(exc, ConfigError) and field in given and exc.allowed:
        value = given[field]
        typed = f"{value:g}" if isinstance(value, float) else value  # 0, as typed, not 0.0
        return f"--{field.replace('_', '-')} {typed} is invalid: expected {exc.allowed}"
    return str(exc)


class _PlainFormatter(logging.Formatter):
    """A log line as the CLI's own lines read: "vsr: warning: message" (the logger's
    name and the traceback only with --debug)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"vsr: {record.levelname.lower()}: {record.getMessage()}"


def _dispatch(argv: list[str], command: str | None, as_program: bool) -> int:
    """Run the command; a `VsrError` becomes its one line and exit code, a bug one line
    and exit 1 (the traceback with --debug)."""
    # --debug belongs before the command; after it, it is a usage error shown as one line
    debug = "--debug" in (argv[: argv.index(command)] if command else argv)
    handler = logging.StreamHandler()  # stderr; warnings as "vsr: warning: ...", the logger's name with --debug
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s") if debug else _PlainFormatter())
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])
    args = None
    try:
        parser = build_parser(command if command in COMMANDS else None)
        args = parser.parse_args(argv)
        if getattr(args, "_missing", None):
            raise VsrError(args._missing, EXIT_USAGE)
        if not getattr(args, "_run", None):
            parser.print_help()
            return EXIT_USAGE
        rc = int(args._run(args) or 0)
        if as_program:  # the work is done: a late Ctrl-C must not turn this exit into death by signal
            _ignore_further_interrupts()
        return rc
    except VsrError as exc:
        if debug:  # the traceback too, but the exit code stays the error's (scripts test it)
            traceback.print_exc()
        print(f"vsr: {_one_line(_as_typed(exc, args))}", file=sys.stderr)
        if as_program and exc.exit_code == EXIT_INTERRUPTED:
            _exit_interrupted()
        return exc.exit_code
    except KeyboardInterrupt:
        return _report_interrupt(command, args, as_program)
    except MemoryError:
        if debug:
            raise
        print("vsr: out of memory: lower --batch, --tile or the output size (--target, --scale)", file=sys.stderr)
        return EXIT_RESOURCES
    except Exception as exc:  # a bug: still one line unless --debug
        if as_program and _interrupted_underneath(exc):  # Ctrl-C that a library re-raised as its own error
            return _report_interrupt(command, args, as_program)
        if debug:
            raise
        if _out_of_memory(exc):  # torch's allocators raise RuntimeError subclasses
            print("vsr: out of memory: lower --batch, --tile or the output size (--target, --scale)", file=sys.stderr)
            return EXIT_RESOURCES
        print(f"vsr: internal error: {type(exc).__name__}: {_one_line(str(exc))} (rerun with --debug)", file=sys.stderr)
        return EXIT_INTERNAL


def _report_interrupt(command: str | None, args: argparse.Namespace | None, as_program: bool) -> int:
    """Interrupted (Ctrl-C, SIGTERM): one line, with the resume hint where the command has
    --resume, and exit 130 (0 for a stream stopped before it started)."""
    if as_program:
        _ignore_further_interrupts()
    if command == "stream":  # stopped while starting: nothing was written, a stop is exit 0
        print("vsr stream: stopped before the stream started", file=sys.stderr)
        return EXIT_OK
    resumable = command in RESUMABLE and (args is None or hasattr(args, "resume"))
    hint = " (rerun with --resume to continue)" if resumable else ""
    print(f"vsr: interrupted{hint}", file=sys.stderr)
    if as_program:
        _exit_interrupted()
    return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
