"""Configuration helpers: every option is a traitlets trait that may also come from an env var.

Precedence, lowest first: the trait's default < its env var < the config file < the command line.
Env vars are read when an object is created, never at import.
"""
from __future__ import annotations

import ast
import json
import os
from typing import Any, TypeVar

from traitlets import Container, Dict, TraitType
from traitlets.config import LoggingConfigurable

T = TypeVar("T", bound=TraitType)

ENV_PREFIX = "KGE_"


def env(trait: T, name: str) -> T:
    """Tag `trait` as configurable from the env var `name` and say so in its help."""
    trait.metadata["env"] = name
    trait.help = f"{trait.help.rstrip()} [env: {name}]" if trait.help else f"[env: {name}]"
    return trait.tag(config=True)


def _configured_names(obj: LoggingConfigurable) -> set[str]:
    """Names of the traits set for `obj` by config (file or CLI), for any class in its MRO."""
    names: set[str] = set()
    sections = {cls.__name__ for cls in type(obj).mro()} | set(obj.section_names())  # a former name too
    for name in sections:
        section = obj.config.get(name) if hasattr(obj, "config") else None
        if section:
            names.update(section.keys())
    return names


def apply_env(obj: LoggingConfigurable, explicit: set[str] | None = None) -> None:
    """Set each env-tagged trait of `obj` from its env var unless config or a kwarg set it."""
    skip = _configured_names(obj) | (explicit or set())
    for name, trait in obj.traits(env=lambda v: v is not None).items():
        if name in skip:
            continue
        raw = os.environ.get(trait.metadata["env"])
        if raw is None or raw == "":
            continue
        try:
            value: Any = _parse(trait, raw)
            setattr(obj, name, value)
        except Exception as e:  # noqa: BLE001 - a bad env value must say which variable
            raise ValueError(f"invalid value for {trait.metadata['env']}: {e}") from e


def _parse(trait: TraitType[Any, Any], raw: str) -> Any:
    """An env var's value. Lists and dicts are JSON ('["A", "B"]', '{"python3": 2}'), or a Python
    literal; traitlets' own from_string for them is deprecated."""
    if isinstance(trait, (Container, Dict)) and raw.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(raw)
        except ValueError:
            return ast.literal_eval(raw)
    return trait.from_string(raw)


class EnvConfigurable(LoggingConfigurable):
    """A configurable whose env-tagged traits default to their env vars."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        apply_env(self, set(kwargs))
