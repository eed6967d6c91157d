"""Value checks derived from the schemas, run on the composed config before any work.

Types are Hydra's and OmegaConf's job (a misspelt key or ``task.way=five`` fails at compose time).
This module checks what types cannot say, for every field of every schema, without a list of
keys to keep up to date:

- every number (int, float, an element of a list of numbers, or a number anywhere in an untyped
  node such as ``algo.scheduler``) is finite, and every integer fits in 64 bits;
- every number is ``>= 0`` unless the schema's ``BOUNDS`` says otherwise (``POSITIVE``,
  ``SIGNED``, or a ``Range``): a field added later is covered by that default;
- a string field listed in the schema's ``CHOICES`` takes one of its values, one in its
  ``PATTERNS`` matches that regular expression, one in its ``OBJECTS`` is null or an object
  config (a node with a ``_target_``);
- every ``_target_`` names an importable object.

An error names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

from metarun.errors import MetarunError

INT64 = 2**63
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class Range:
    """Allowed numbers: ``low <= x`` (``low < x`` when ``open_low``), ``x <= high``."""

    low: float | None = 0
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    auto: bool = False  # the string "auto" is allowed too (and then numbers must be whole)
    why: str = ""  # said after the range in an error

    def allows(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.open_low else x < self.low):
            return False
        return self.high is None or (x < self.high if self.open_high else x <= self.high)

    def describe(self) -> str:
        if self.low == 0 and self.open_low and self.high is None:
            text = "positive"
        elif self.low is None and self.high is None:
            text = "a finite number"
        else:
            low = "" if self.low is None else f"{'>' if self.open_low else '>='} {self.low:g}"
            high = "" if self.high is None else f"{'<' if self.open_high else '<='} {self.high:g}"
            text = " and ".join(p for p in (low, high) if p)
        if self.auto:
            text = f"a {text} integer or auto"
        return f"{text} ({self.why})" if self.why else text


OBJECT = object()  # marks an OBJECTS field among the choices
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, open_low=True)
SIGNED = Range(None)
AUTO_OR_POSITIVE = Range(0, open_low=True, auto=True)


def check_values(cfg: DictConfig) -> None:
    """Raise a :class:`MetarunError` for the first value no schema allows."""
    for key, value, rule, choices in _leaves(cfg, ""):
        if choices is OBJECT:
            if value is not None and not (isinstance(value, DictConfig) and "_target_" in value):
                raise MetarunError(
                    f"{key}={_shown(value)} must be null or an object config with a _target_, "
                    f"e.g. {key}={{_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,"
                    "step_size:1000}"
                )
        elif isinstance(choices, str):  # a pattern
            if not isinstance(value, str) or not re.fullmatch(choices, value):
                raise MetarunError(f"{key}={_shown(value)} must match {choices}")
        elif rule is not None and rule.auto:
            if value != "auto" and (type(value) is not int or not rule.allows(value)):
                raise MetarunError(f"{key}={_shown(value)} must be {rule.describe()}")
        elif key.endswith("_target_"):
            _check_target(key, value)
        elif choices is not None:
            if value is not None and value not in choices:
                close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                allowed = ", ".join("null" if c is None else str(c) for c in choices)
                raise MetarunError(f"{key}={value!r} is unknown{hint}; use one of {allowed}")
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, (int, float)):
            _check_number(key, value, rule)


def _shown(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        return str(OmegaConf.to_container(value))
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def _check_number(key: str, value: float, rule: Range | None) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise MetarunError(f"{key}={value} must be a finite number")
    if isinstance(value, float) and abs(value) > FLOAT32_MAX:
        raise MetarunError(f"{key}={value:g} is beyond the float32 range (about 3.4e38)")
    if isinstance(value, int) and not -INT64 <= value < INT64:
        raise MetarunError(f"{key}={value} does not fit in 64 bits; use a smaller number")
    rule = rule or NON_NEGATIVE
    if not rule.allows(value):
        raise MetarunError(f"{key}={value} must be {rule.describe()}")


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any, Range | None, Any]]:
    """(dotted key, value, bound, choices) of every leaf under ``node``, elements of lists too;
    choices are a tuple (``CHOICES``), a regular expression (``PATTERNS``), ``OBJECT`` or None."""
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    typed = dataclasses.is_dataclass(schema)
    bounds = getattr(schema, "BOUNDS", {}) if typed else {}
    choices = getattr(schema, "CHOICES", {}) if typed else {}
    choices = {**choices, **(getattr(schema, "PATTERNS", {}) if typed else {})}
    choices.update({k: OBJECT for k in (getattr(schema, "OBJECTS", ()) if typed else ())})
    hints = typing.get_type_hints(schema) if typed else {}
    items = node.items_ex(resolve=True) if isinstance(node, DictConfig) else enumerate(node)
    default = None if typed else SIGNED  # untyped nodes (a scheduler's options): finite only
    for key, value in items:
        dotted = f"{prefix}{key}" if isinstance(node, DictConfig) else f"{prefix[:-1]}[{key}]"
        if key in bounds and bounds[key].auto:  # a number or "auto", never a list or a node
            yield dotted, value, bounds[key], None
        elif choices.get(key) is OBJECT:
            yield dotted, value, None, OBJECT
            if isinstance(value, DictConfig):
                yield from _leaves(value, dotted + ".")
        elif isinstance(value, DictConfig):
            yield from _leaves(value, dotted + ".")
        elif isinstance(value, ListConfig):
            for i, item in enumerate(value):
                if isinstance(item, (DictConfig, ListConfig)):
                    yield from _leaves(item, f"{dotted}[{i}].")
                else:
                    yield f"{dotted}[{i}]", item, bounds.get(key, default), None
        elif _is_number_type(hints.get(key)) or not typed or key in bounds or key in choices:
            yield dotted, value, bounds.get(key, default), choices.get(key)
        elif key == "_target_":
            yield dotted, value, None, None


def _is_number_type(hint: Any) -> bool:
    args = typing.get_args(hint)
    return hint in (int, float) or any(a in (int, float) for a in args)


def _check_target(key: str, target: Any) -> None:
    """``target`` must import: ``package.module.Name``."""
    if not isinstance(target, str) or "." not in target:
        raise MetarunError(f"{key}={target!r} must be a dotted path such as torch.optim.Adam")
    module_name, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        parent, _, attr = module_name.rpartition(".")
        try:  # a class attribute path (module.Class.method) is rare; report the module
            module = getattr(importlib.import_module(parent), attr) if parent else None
        except (ImportError, AttributeError):
            module = None
        if module is None:
            raise MetarunError(
                f"{key}={target}: there is no module {module_name}; check the spelling"
            ) from None
    if not hasattr(module, name):
        names = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(name, names, n=3)
        hint = (
            f"; did you mean {' or '.join(f'{module_name}.{c}' for c in close)}?" if close else ""
        )
        raise MetarunError(f"{key}={target}: {module_name} has no {name}{hint}")
