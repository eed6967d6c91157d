"""Each default is stated once: in its schema (metarun/schemas/). The YAML files state only what
differs from what they build on, and a class's own signature defaults agree with its schema."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from metarun.schemas import SCHEMAS, MetarunConfig, schema_for, target_of
from tests.conftest import CONFIG_DIR, options


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=False, enum_to_str=True)


def _default_of(schema: type) -> dict:
    return _plain(OmegaConf.structured(schema))


def restated(body: dict, base: dict, prefix: str = "") -> list[str]:
    """Dotted keys of ``body`` whose value equals ``base``'s (nested dicts compared leaf by
    leaf; a dict that replaces an object counts as a whole)."""
    found = []
    for key, value in body.items():
        if key == "defaults" or key not in base:
            continue
        if isinstance(value, dict) and isinstance(base[key], dict):
            found += restated(value, base[key], f"{prefix}{key}.")
        elif value == base[key]:
            found.append(f"{prefix}{key}")
    return found


def _sections(group: str, path: Path) -> dict[str, dict]:
    """The YAML body of a group file by section: ``{"algo": {...}, "task": {...}}``."""
    raw = _plain(OmegaConf.load(path))
    if path.read_text().startswith("# @package _global_"):
        return {k: v for k, v in raw.items() if isinstance(v, dict) and k != "defaults"}
    return {group: {k: v for k, v in raw.items() if k != "defaults"}}


ROOT = _default_of(MetarunConfig)


@pytest.mark.parametrize(
    "group,name", [(g, n) for g in ("algo", "dataset", "backbone") for n in options(g)]
)
def test_a_group_file_states_only_what_differs_from_its_schema(compose_cfg, group, name):
    cfg = compose_cfg([f"{group}={name}"])
    found = []
    for section, body in _sections(group, CONFIG_DIR / group / f"{name}.yaml").items():
        if section in SCHEMAS:
            schema = schema_for(section, cfg[section]._target_)
            found += restated(body, _default_of(schema), f"{section}.")
        elif section in ROOT:
            found += restated(body, ROOT[section], f"{section}.")
    assert not found, f"{group}/{name}.yaml restates its schema's defaults: {found}"


def test_the_root_config_states_only_what_differs_from_the_root_schema():
    raw = _plain(OmegaConf.load(CONFIG_DIR / "train.yaml"))
    raw.pop("hydra")
    assert not restated(raw, ROOT), f"train.yaml restates: {restated(raw, ROOT)}"


def _preset_parent(name: str) -> str | None:
    """The preset a preset builds on (a plain entry of its defaults list), if any."""
    raw = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "experiment" / f"{name}.yaml"))
    parents = [d for d in raw.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    return parents[0] if parents else None


@pytest.mark.parametrize("name", options("experiment"))
def test_a_preset_states_only_what_differs_from_its_base(compose_cfg, name):
    """A preset's base is its parent preset, or the algorithm, dataset and backbone it picks
    with their algo_dataset file: every value it sets must change something."""
    full = compose_cfg([f"experiment={name}"])
    choices = full.hydra.runtime.choices
    parent = _preset_parent(name)
    picked = [f"{g}={choices[g]}" for g in ("algo", "dataset", "backbone")]
    base = compose_cfg(picked + ([f"experiment={parent}"] if parent else []))
    body = _plain(OmegaConf.load(CONFIG_DIR / "experiment" / f"{name}.yaml"))
    base_plain = {k: v for k, v in _plain(base).items() if k != "hydra"}
    assert not restated(body, base_plain), f"{name} restates: {restated(body, base_plain)}"


def _schemas_with_classes():
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            if target_of(schema) and group != "logger":
                yield pytest.param(schema, id=f"{group}/{name}")


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return getattr(a, "value", a) == getattr(b, "value", b)


@pytest.mark.parametrize("schema", list(_schemas_with_classes()))
def test_a_class_signature_agrees_with_its_schema(schema):
    cls = get_class(target_of(schema))
    parameters = inspect.signature(cls.__init__).parameters
    fields = {f.name: f for f in dataclasses.fields(schema)}
    default = _default_of(schema)
    checked = 0
    for name, p in parameters.items():
        built = name in getattr(schema, "OBJECTS", ()) or name == "optimizer"  # objects, not values
        if name in fields and p.default is not inspect.Parameter.empty and not built:
            value = default[name]
            if isinstance(value, str) and value.startswith("${"):
                continue  # an interpolation (the algorithm's batch norm): not a constant
            assert _same(p.default, value), f"{cls.__name__}({name}={p.default!r}) vs {value!r}"
            checked += 1
    assert checked or not any(n in fields for n in parameters), cls
