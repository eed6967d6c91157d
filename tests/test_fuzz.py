"""The config fuzz (scripts/fuzz.py) in the suite: a short seeded run; CI runs 300 draws more."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz.py"


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("metarun_fuzz", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_random_values_for_every_field_are_one_line_errors_or_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.chdir(tmp_path)
    result = _fuzz_module().fuzz(draws=60, seed=11, budget=120)
    assert not result["failures"], "\n".join(result["failures"])
    tally = result["tally"]
    assert tally["draws"] >= 30 and tally.get("error", 0) > 0 and tally.get("ok", 0) > 0, tally


def test_the_fuzz_draws_a_value_for_every_field_of_the_composed_config(compose_cfg):
    fuzz = _fuzz_module()
    keys = {key for key, _ in fuzz.fields(compose_cfg(["algo=maml", "dataset=glyphs"]))}
    assert {"task.way", "algo.inner_lr", "algo.optimizer.lr", "dataset.classes"} <= keys
    assert {"backbone.hidden", "val.batch_size", "seed", "checkpoint.every"} <= keys
