"""`vsr gst-plugin-path`: where GStreamer finds the `vsrupscale` element.

GStreamer's Python plugin loader runs the distribution's Python (Debian 12: 3.11), not
necessarily the one vsr is installed in; `--env` prints the two variables to export,
GST_PLUGIN_PATH and a PYTHONPATH that lets that Python import vsr and torch, and says so
when the two Pythons differ in major.minor (then install vsr for the system Python) or
when another `python3` comes first on PATH (then start GStreamer with /usr/bin first).
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import site
import subprocess
import sys
from pathlib import Path

from vsr.errors import EXIT_OK


def plugin_dir() -> Path:
    """The folder to add to GST_PLUGIN_PATH (it holds `python/vsrupscale.py`)."""
    return Path(__file__).resolve().parent / "gst_plugin"


def python_path() -> list[str]:
    """Folders the loader's Python needs: this Python's site-packages (torch, numpy) and
    the folder vsr is imported from (a checkout, for an editable install)."""
    import vsr

    folders = [p for p in site.getsitepackages() if Path(p).is_dir()]
    root = str(Path(vsr.__file__).resolve().parent.parent)
    return folders + ([root] if root not in folders else [])


def loader_path_ok() -> bool:
    """Whether the first `python3` on PATH is the system's. The loader's embedded
    interpreter takes its prefix (stdlib, extension modules) from it: with pyenv's or a
    venv's first, it mixes another build's stdlib with the system's libpython and fails
    ("pygobject initialization failed", "undefined symbol")."""
    first = shutil.which("python3")
    return first is None or Path(first).resolve().parent in (Path("/usr/bin"), Path("/bin"))


def system_python_version() -> str | None:
    """major.minor of the system `python3` (the one the plugin loader embeds), if any."""
    exe = shutil.which("python3", path="/usr/bin:/bin")
    if exe is None:
        return None
    out = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


def add_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", action="store_true",
                        help="print shell export lines for GST_PLUGIN_PATH and the loader's PYTHONPATH")


def run_cli(args: argparse.Namespace) -> int:
    if not args.env:
        print(plugin_dir())
        return EXIT_OK
    print(f"export GST_PLUGIN_PATH={shlex.quote(str(plugin_dir()))}${{GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}}")
    print(f"export PYTHONPATH={shlex.quote(':'.join(python_path()))}${{PYTHONPATH:+:$PYTHONPATH}}")
    if not loader_path_ok():
        print("# note: run GStreamer with the system Python first on PATH, e.g. "
              "PATH=/usr/bin:$PATH gst-launch-1.0 ...", file=sys.stderr)
    mine = "%d.%d" % sys.version_info[:2]
    system = system_python_version()
    if system is not None and system != mine:
        print(f"# warning: GStreamer's loader runs Python {system}, vsr is installed for {mine}: "
              f"install vsr and torch for /usr/bin/python3 instead", file=sys.stderr)
    return EXIT_OK
