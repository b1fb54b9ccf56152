"""The package as pip installs it (not the checkout): it finds its shipped configs and
model card, and installs nothing but `vsr` (no top-level `pipelines` in site-packages)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_an_installed_wheel_finds_its_card_and_installs_only_vsr(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    top = {p.name for p in target.iterdir() if not p.name.endswith((".dist-info", ".egg-info")) and p.name != "bin"}
    assert top == {"vsr"}, top
    probe = (
        "import vsr.config, vsr.models, vsr.pipelines.corpus as c;"
        "print(vsr.config.configs_dir()); print(vsr.models.load_model(None).card.prf_t[0]); print(c.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         cwd=tmp_path, check=True, capture_output=True, text=True).stdout.split("\n")
    assert out[0] == str(target / "vsr" / "configs")
    shipped = __import__("yaml").safe_load((ROOT / "configs" / "models" / "vsr-prior-s.yaml").read_text())
    assert float(out[1]) == shipped["prf"]["t"][0]  # the card's PRF, not the paper's default 0.2
    assert out[2].startswith(str(target / "vsr" / "pipelines"))
