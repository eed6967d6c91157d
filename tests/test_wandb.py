"""W&B mode choice and failure handling: W&B trouble never costs the local results."""

from __future__ import annotations

import json

import pytest
import wandb

from metarun.errors import MetarunError
from metarun.logging.wandb_sink import resolve_mode, wandb_credentials_present
from tests.conftest import TINY, read_jsonl


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def test_auto_mode_is_offline_without_credentials_and_online_with_them(no_credentials, monkeypatch):
    assert not wandb_credentials_present() and resolve_mode("auto") == "offline"
    no_credentials.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    no_credentials.chmod(0o600)
    assert wandb_credentials_present() and resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # an explicit environment choice wins
    assert resolve_mode("auto") == "disabled"
    assert resolve_mode("offline") == "offline"  # and an explicit config choice wins over it


def test_api_key_counts_as_credentials(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"


def test_wandb_init_failure_warns_and_keeps_local_logging(run_inprocess, monkeypatch, capsys):
    calls = []

    def broken_init(**kwargs):
        calls.append(kwargs["mode"])
        raise wandb.errors.CommError("could not reach api.wandb.ai")

    monkeypatch.setattr(wandb, "init", broken_init)
    run_dir, _ = run_inprocess([*TINY, "logger.mode=online"])
    assert calls == ["online", "offline"]  # online failed, offline was tried, then local only
    out = capsys.readouterr().out
    assert "W&B online init failed" in out and "continuing offline" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and "test/mse" in summary
    assert any("test/mse" in row for row in read_jsonl(run_dir / "metrics.jsonl"))


def test_wandb_failure_mid_run_warns_once_and_finishes_locally(run_inprocess, monkeypatch, capsys):
    real_init = wandb.init

    def init_then_break(**kwargs):
        run = real_init(**kwargs)
        calls = {"n": 0}
        real_log = run.log

        def flaky_log(*args, **kw):
            calls["n"] += 1
            if calls["n"] == 2:
                raise ConnectionError("network dropped")
            return real_log(*args, **kw)

        monkeypatch.setattr(run, "log", flaky_log)
        return run

    monkeypatch.setattr(wandb, "init", init_then_break)
    run_dir, _ = run_inprocess([*TINY, "logger.mode=offline"])
    out = capsys.readouterr().out
    assert out.count("W&B log failed (ConnectionError: network dropped)") == 1
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows if "train/loss" in r] == [5, 10, 15, 20]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_failed_run_is_marked_failed_locally_and_in_wandb(run_inprocess, monkeypatch, tmp_path):
    finished = []
    real_init = wandb.init

    def spy_init(**kwargs):
        run = real_init(**kwargs)
        real_finish = run.finish
        monkeypatch.setattr(
            run,
            "finish",
            lambda exit_code=None: (finished.append(exit_code), real_finish(exit_code=exit_code)),
        )
        return run

    monkeypatch.setattr(wandb, "init", spy_init)
    with pytest.raises(MetarunError, match="the training loss became NaN or inf in steps 1-5"):
        run_inprocess([*TINY, "logger.mode=offline", "algo.inner_lr=1e30"], name="run")
    assert finished == [1]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"
