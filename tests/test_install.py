"""electricctl installs as a user installs it: a wheel built from this checkout, into a clean venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_a_wheel_installs_into_a_clean_venv_and_runs(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(tmp_path / "dist"), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("electricctl-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr
    version = subprocess.run([venv / "bin" / "electricctl", "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "electricctl, version" in version.stdout
    # the package carries what it reads at run time (the JSON Schema, the example, the recipes)
    checked = subprocess.run(
        [venv / "bin" / "electricctl", "validate", "-f", str(ROOT / "electric.yaml.example")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stderr
