"""Shared fixtures: compose configs with Hydra's compose API, run jobs in-process or as the CLI."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from metarun.cli import config_dir

CONFIG_DIR = Path(config_dir())
SMALL_ARCHIVES = ("images_background_small1.zip", "images_background_small2.zip")
DATA_ENV = "METARUN_TEST_DATA"


def _omniglot_test_data() -> Path | None:
    """The folder holding the official small Omniglot archives, for tests on real data:
    ``$METARUN_TEST_DATA`` when set, else ``../shared/data/omniglot`` beside the project, else
    metarun's own download cache. None when none holds both (those tests are then skipped)."""
    from metarun.data.download import cache_dir

    if DATA_ENV in os.environ:
        candidates = [Path(os.environ[DATA_ENV]).expanduser()]
    else:
        shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
        candidates = [shared, cache_dir()]
    for folder in candidates:
        if all((folder / name).is_file() for name in SMALL_ARCHIVES):
            return folder
    return None


OMNIGLOT_DATA = _omniglot_test_data()
NO_DATA = (
    f"needs the official Omniglot archives {' and '.join(SMALL_ARCHIVES)}: set {DATA_ENV} to the "
    "folder holding them (see docs/development.md, Tests on real data)"
)
SHARED_OMNIGLOT = OMNIGLOT_DATA or Path("/nonexistent-omniglot-test-data")
# Small, offline versions of the image datasets for tests.
OMNIGLOT_SMALL = [
    f"dataset.root={SHARED_OMNIGLOT}",
    "dataset.background=small1+small2",
    "dataset.split=random",
    "dataset.download=false",
]
GLYPHS_SMALL = ["dataset.classes=[40,12,12]"]
# Settings that make a job take a second or two while exercising every phase of a run.
TINY = [
    "train.steps=20",
    "train.log_every=5",
    "val.every=10",
    "val.episodes=8",
    "val.batch_size=4",
    "test.episodes=10",
    "test.batch_size=4",
    "algo.eval_inner_steps=2",
]


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server for ``tmp_path/served``; yields (that folder, its base URL)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="session")
def fewshot_data(tmp_path_factory) -> dict[str, list[str]]:
    """Overrides that point each RGB dataset at tiny generated files in its real format."""
    from tests.fewshot_fixtures import write_cifar_archive, write_mini_pickles

    base = tmp_path_factory.mktemp("fewshot")
    mini = write_mini_pickles(base / "miniimagenet")
    md5 = write_cifar_archive(base / "cifar" / "cifar-100-python.tar.gz")
    cifar = [f"dataset.root={base / 'cifar'}", f"dataset.md5={md5}", "dataset.download=false"]
    cifar.append("task.query=2")
    return {
        "metarun.data.MiniImageNet": [f"dataset.root={mini}", "task.query=2"],
        "metarun.data.CIFARFS": cifar,
        "metarun.data.FC100": cifar,
    }


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def pytest_collection_modifyitems(config, items):
    """Tests on the real Omniglot archives (marked ``omniglot``, or using ``omniglot_root``) are
    skipped, saying how to enable them, when no folder holds the archives."""
    for item in items:
        if "omniglot_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.omniglot)
        if OMNIGLOT_DATA is None and item.get_closest_marker("omniglot"):
            item.add_marker(pytest.mark.skip(reason=NO_DATA))


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """metarun's cache (decoded arrays, glyph renders) in a per-session temporary folder."""
    os.environ["METARUN_CACHE_DIR"] = str(tmp_path_factory.mktemp("metarun-cache"))


@pytest.fixture
def compose_cfg():
    """``compose_cfg(overrides)`` returns the composed config, Hydra's own node included."""

    from metarun.compose import compose_config

    def _compose(overrides: list[str] = ()) -> DictConfig:
        return compose_config(overrides, hydra=True)

    yield _compose


@pytest.fixture
def run_inprocess(compose_cfg, tmp_path):
    """Run a job in this process, in ``tmp_path/<name>``; returns the run directory."""
    from metarun.run import run

    def _run(overrides: list[str], name: str = "run") -> tuple[Path, float]:
        cfg = compose_cfg(overrides)
        run_dir = tmp_path / name
        run_dir.mkdir()
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            cfg.hydra.overrides.task = list(overrides)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]  # as @hydra.main hands it to the task function
        objective = run(cfg)
        return run_dir, objective

    return _run


@pytest.fixture
def entry(tmp_path, monkeypatch, capsys):
    """``entry(tool, args)`` runs a console script's main in ``tmp_path``: (exit code, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)

    from metarun import cli, predict, report, trained

    mains = {"metarun": cli.main, "metarun-predict": predict.predict_main}
    mains.update({"metarun-report": report.main, "metarun-eval": trained.eval_main})

    def _run(tool: str, args: list[str]) -> tuple[int | None, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", [tool, *args])
        main = mains[tool]
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
        return code, capsys.readouterr().err

    return _run


def clean_env(home: Path) -> dict[str, str]:
    """Environment for a CLI subprocess: no W&B credentials, so ``mode=auto`` goes offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        HOME=str(home), NETRC=str(home / ".netrc"), PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0"
    )
    return env


@pytest.fixture
def metarun_cli(tmp_path):
    """``metarun_cli(*args)`` runs the installed console script in ``tmp_path``."""
    exe = Path(sys.executable).with_name("metarun")

    def _run(
        *args: str, cwd: Path | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess:
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        return subprocess.run(
            [str(exe), *args],
            cwd=cwd or tmp_path,
            env=clean_env(home),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return _run


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def pytest_addoption(parser):
    parser.addoption(
        "--error-catalogue",
        metavar="FILE",
        help="write tests/test_errors.py's cases and the exact message each produced (markdown)",
    )


def pytest_sessionfinish(session):
    path = session.config.getoption("--error-catalogue")
    modules = {  # pytest's import and the one another test module makes may be two objects
        id(m): m
        for name, m in list(sys.modules.items())
        if name.rsplit(".", 1)[-1] in ("test_errors", "test_safety")
    }
    recorded = list(
        dict.fromkeys(row for m in modules.values() for row in getattr(m, "RECORDED", []))
    )
    if not path or not recorded:
        return
    rows = ["| case | command | message (stderr, exit code 2) |", "|---|---|---|"]
    for case, command, message in recorded:
        cells = (c.replace("|", "\\|") for c in (case, command, message))
        rows.append("| {} | `{}` | `{}` |".format(*cells))
    Path(path).write_text("\n".join(rows) + "\n")
