"""Structured-config schemas: a misspelt key or a wrong type fails at compose time.

The schemas are registered in Hydra's ConfigStore under ``schema/`` (:mod:`.registry`); the YAML
files under ``configs/`` extend them (``defaults: [/schema/<group>/<name>@_here_, _self_]``), so
the schemas hold types and defaults and the YAML only what differs. Dataset configs are
``@package _global_`` (they also set ``task`` and pick a backbone) and name their schema with
``@dataset``.

Values are checked from these classes too (:mod:`metarun.checks`): every number must be finite
and ``>= 0`` unless a class's ``BOUNDS`` says otherwise, and string fields in ``CHOICES`` take one
of the listed values.
"""

from metarun.schemas.algos import *  # noqa: F401,F403  (registers the algo schemas)
from metarun.schemas.backbones import *  # noqa: F401,F403
from metarun.schemas.baselines import *  # noqa: F401,F403
from metarun.schemas.data import *  # noqa: F401,F403
from metarun.schemas.registry import (  # noqa: F401
    SCHEMAS,
    added_keys,
    close_names,
    register_configs,
    schema,
    schema_for,
    target_of,
)
from metarun.schemas.rl import *  # noqa: F401,F403
from metarun.schemas.run import *  # noqa: F401,F403
