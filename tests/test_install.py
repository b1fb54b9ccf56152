"""The package as pip installs it (not the checkout): it finds its shipped configs and
model card, and installs nothing but `vsr` (no top-level `pipelines` in site-packages)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _source_packages() -> set[str]:
    """Every package of the checkout as it is named once installed."""
    names = set()
    for init in ROOT.glob("vsr/**/__init__.py"):
        names.add(".".join(init.parent.relative_to(ROOT).parts))
    for top, installed in (("pipelines", "vsr.pipelines"), ("configs", "vsr.configs")):
        for init in (ROOT / top).glob("**/__init__.py"):
            names.add(".".join((installed, *init.parent.relative_to(ROOT / top).parts)))
    return names


def test_an_installed_wheel_finds_its_card_and_installs_only_vsr(tmp_path):
    # from a copy of the tracked tree: a stale build/ of the checkout must not fill in what
    # the package list forgets
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    src = tmp_path / "src"
    for rel in filter(None, tracked.decode().split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(src)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    top = {p.name for p in target.iterdir() if not p.name.endswith((".dist-info", ".egg-info")) and p.name != "bin"}
    assert top == {"vsr"}, top
    # the checkout's editable install puts a finder on sys.meta_path that resolves any
    # vsr.* by name: drop it, so only what the wheel installed can be imported
    packages = sorted(_source_packages())
    probe = (
        "import sys, importlib;"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()];"
        f"[importlib.import_module(p) for p in {packages!r}];"
        "import vsr.config, vsr.models, vsr.pipelines.corpus as c;"
        "print(vsr.config.configs_dir()); print(vsr.models.load_model(None).card.prf_t[0]); print(c.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    out = out.stdout.split("\n")
    assert out[0] == str(target / "vsr" / "configs")
    shipped = __import__("yaml").safe_load((ROOT / "configs" / "models" / "vsr-prior-s.yaml").read_text())
    assert float(out[1]) == shipped["prf"]["t"][0]  # the card's PRF, not the paper's default 0.2
    assert out[2].startswith(str(target / "vsr" / "pipelines"))
