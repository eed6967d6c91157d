"""Checkpoints written before the refactor of issue 18 still load and score as they did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metarun.trained import evaluate_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_old_checkpoint_loads_and_reproduces_its_test_scores(name):
    scores = evaluate_checkpoint(
        [f"checkpoint={FIXTURES / f'{name}_v0.pt'}", "test.episodes=6", "test.batch_size=3"]
    )
    assert scores.keys() == EXPECTED[name].keys()
    for key, value in EXPECTED[name].items():
        assert scores[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
