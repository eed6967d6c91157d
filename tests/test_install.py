"""A non-editable install from a built wheel runs ``metarun`` from any directory."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import TINY, clean_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_configs_and_runs_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("metarun-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "metarun/configs/train.yaml" in names
    assert "metarun/configs/experiment/maml_sinusoid.yaml" in names

    # Install the wheel alone into its own folder; dependencies come from this environment.
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-compile",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = clean_env(tmp_path / "home")
    env["PYTHONPATH"] = str(site)
    where = subprocess.run(
        [sys.executable, "-c", "import metarun.cli as c; print(c.config_dir())"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()) == site / "metarun" / "configs"

    proc = subprocess.run(
        [str(site / "bin" / "metarun"), *TINY, "logger=none"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    (summary,) = work.glob("outputs/*/*/summary.json")
    assert json.loads(summary.read_text())["status"] == "finished"
