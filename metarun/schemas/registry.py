"""The schema registry: each group's schemas by option name, and what is built from them.

A schema is a dataclass registered with :func:`schema` under its config group and option name
(``@schema("algo", "maml")``); :func:`register_configs` puts every one in Hydra's ConfigStore
under ``schema/<group>/<name>``, where the YAML defaults lists look for them. The schema is the
one home of an option's default (``tests/test_defaults.py`` keeps the YAML files and the
classes' signatures from restating them differently).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

# Each group's schemas by option name (filled by @schema as the schema modules are imported).
SCHEMAS: dict[str, dict[str, type]] = {"algo": {}, "dataset": {}, "backbone": {}, "logger": {}}
ROOT: dict[str, type] = {}


def schema(group: str, name: str) -> Callable[[type], type]:
    """Register the decorated dataclass as the schema of ``<group>=<name>`` (``group="root"``:
    the root config)."""

    def register(cls: type) -> type:
        (ROOT if group == "root" else SCHEMAS[group])[name] = cls
        return cls

    return register


def register_configs() -> None:
    """Put the schemas where the YAML defaults lists look for them."""
    cs = ConfigStore.instance()
    for name, node in ROOT.items():
        cs.store(group="schema", name=name, node=node)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def target_of(schema_cls: type) -> str | None:
    """The ``_target_`` default of a schema (the class its objects have), or None."""
    fields = {f.name: f for f in dataclasses.fields(schema_cls)}
    return fields["_target_"].default if "_target_" in fields else None


def schema_for(group: str, target: str) -> type | None:
    """The schema of ``group`` whose objects have class ``target`` (its ``_target_`` default or
    one of its ``ALSO_FOR``), or None."""
    for cls in SCHEMAS[group].values():
        if target == target_of(cls) or target in getattr(cls, "ALSO_FOR", ()):
            return cls
    return None


def close_names(key: str, schema: type) -> str:
    """``; did you mean ...?`` with the options of ``schema`` (a dataclass) close to ``key``."""
    names = [f.name for f in dataclasses.fields(schema) if not f.name.startswith("_")]
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def added_keys(node: DictConfig, prefix: str = "") -> list[tuple[str, type]]:
    """Keys that no schema declares, dotted, with their parent's schema. Hydra's ``+key=value``
    adds a key even to a structured config; nothing in metarun would read it."""
    schema = OmegaConf.get_type(node)
    known = None
    if dataclasses.is_dataclass(schema):
        known = {f.name for f in dataclasses.fields(schema)}
    found = []
    for key in node:
        if known is not None and key not in known:
            found.append((f"{prefix}{key}", schema))
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            found += added_keys(child, f"{prefix}{key}.")
    return found
