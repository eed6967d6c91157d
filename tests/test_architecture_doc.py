"""docs/architecture.md's worked example, built from the page's own code blocks: an algorithm
and a dataset added as one module + one YAML + one schema each, then trained end to end."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from metarun.schemas import SCHEMAS, register_configs

DOC = Path(__file__).parents[1] / "docs" / "architecture.md"


def code_blocks() -> list[tuple[str, str]]:
    """``(file named before the block, code)`` for each fenced block of the worked example."""
    text = DOC.read_text().split("## Worked example", 1)[1]
    blocks = []
    for match in re.finditer(r"```(?:python|yaml)\n(.*?)```", text, re.S):
        before = text[: match.start()].rstrip().split("\n\n")[-1]  # the paragraph above it
        blocks.append((re.findall(r"`([^`]+\.(?:py|yaml))`", before)[0], match.group(1)))
    return blocks


def test_the_worked_example_is_one_module_one_yaml_one_schema_each():
    blocks = code_blocks()
    assert [name for name, _ in blocks] == [
        "metarun/algorithms/cosine_proto.py",
        "metarun/schemas/algos.py",
        "configs/algo/cosine_proto.yaml",
        "metarun/data/clusters.py",
        "metarun/schemas/data.py",
        "configs/dataset/clusters.yaml",
    ]


def test_the_worked_example_trains_validates_and_tests(tmp_path, monkeypatch, run_inprocess):
    modules = {"algorithms/cosine_proto": "doc_cosine_proto", "data/clusters": "doc_clusters"}
    sources: dict[str, str] = {}
    for name, code in code_blocks():
        if name.endswith(".yaml"):
            path = tmp_path / "configs" / name.removeprefix("configs/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(code)
            continue
        module = "doc_cosine_proto" if "algos" in name or "algorithms" in name else "doc_clusters"
        sources[module] = sources.get(module, "") + code  # the class, then its schema
    for module, code in sources.items():
        for where, name in modules.items():  # the classes live in this test's modules
            code = code.replace(f"metarun.{where.replace('/', '.')}.", f"{name}.")
        code = "from __future__ import annotations\n" + code.replace(
            "from __future__ import annotations\n", ""
        )
        (tmp_path / f"{module}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    for group, name in (("algo", "cosine_proto"), ("dataset", "clusters")):
        monkeypatch.delitem(SCHEMAS[group], name, raising=False)  # removed again afterwards
        monkeypatch.setitem(SCHEMAS[group], name, None)
    for module in sources:
        sys.modules.pop(module, None)
        __import__(module)  # registers the schemas with @schema
    register_configs()

    run_dir, objective = run_inprocess(
        [
            f"hydra.searchpath=[file://{tmp_path / 'configs'}]",
            "algo=cosine_proto",
            "dataset=clusters",
            "logger=none",
            "task.way=5",
            "task.meta_batch=4",
            "train.steps=60",
            "train.log_every=20",
            "val.every=30",
            "val.episodes=20",
            "test.episodes=40",
        ]
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished", summary
    assert summary["test/acc"] > 0.5  # well above chance (0.2): it learned something
    assert summary["test/acc_ci95"] > 0 and objective == summary["best_val/acc"]
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "doc_cosine_proto.CosineProto" in config and "scale: 10.0" in config
    assert (run_dir / "checkpoints" / "best.pt").is_file()
