"""Open registries: every kind of plug-in (rules, protocols, population kinds, activations,
initialisers, metrics, schedules, templates) is found the same way.

A registry maps names to classes or factories. A model file names an entry either by its
registered name (``type = "ep_contrastive"``) or by an import path
(``type = "package.module:Class"``) that needs no registration. :meth:`Registry.build` checks
a table's keys against the constructor's parameters, so a misspelt key is an error with a
"did you mean" hint, never silently ignored.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import ConfigError, did_you_mean

__all__ = ["Registry", "importable_from", "model_directory", "parameters", "check_arguments"]

_MODEL_DIRECTORY: ContextVar[Path | None] = ContextVar("model_directory", default=None)


def model_directory() -> Path | None:
    """The directory of the model file being built (inside :func:`importable_from`), where
    relative file paths in it point; None outside."""
    return _MODEL_DIRECTORY.get()


@contextmanager
def importable_from(directory):
    """Let "module:Class" paths in a model file name modules next to it: ``directory`` is
    searched first while the block runs, and is :func:`model_directory` (None: nothing
    changes)."""
    if directory is None:
        yield
        return
    entry = str(Path(directory).resolve())
    sys.path.insert(0, entry)
    token = _MODEL_DIRECTORY.set(Path(entry))
    try:
        yield
    finally:
        _MODEL_DIRECTORY.reset(token)
        if entry in sys.path:
            sys.path.remove(entry)


class Registry(dict):
    """Name -> class (or factory). ``kind`` names the entries in error messages."""

    def __init__(self, kind: str, base: type | None = None, unknown_as: str | None = None):
        super().__init__()
        self.kind = kind
        self.base = base
        self.unknown_as = unknown_as or kind     # "unknown <unknown_as> ..." in errors

    def register(self, obj=None, *, name: str | None = None):
        """Register ``obj`` under ``name`` (default ``obj.name``); usable as a decorator,
        with or without arguments."""
        def add(item):
            key = name or getattr(item, "name", None) or getattr(item, "__name__", None)
            if not isinstance(key, str) or not key:
                raise TypeError(f"register: a {self.kind} needs a name")
            if self.base is not None and not (isinstance(item, type) and issubclass(item, self.base)):
                raise TypeError(f"register: a {self.kind} must be a subclass of "
                                f"{self.base.__name__}, got {item!r}")
            self[key] = item
            return item
        return add if obj is None else add(obj)

    def lookup(self, key: Any, where: str) -> Any:
        """The entry registered as ``key``, or the object at import path ``"module:attr"``."""
        if not isinstance(key, str):
            raise ConfigError(f"{where}: a {self.kind} is named by a string, got {key!r}.")
        if ":" in key:
            module, _, attr = key.partition(":")
            try:
                obj = importlib.import_module(module)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except (ImportError, AttributeError, ValueError, TypeError) as err:
                raise ConfigError(f'{where}: cannot import {self.kind} "{key}": {err}. Is its '
                                  "directory on PYTHONPATH (or next to the model file)?") from None
            if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
                raise ConfigError(f'{where}: "{key}" is not a {self.kind} (a subclass of '
                                  f"{self.base.__name__}).")
            return obj
        if key in self:
            return self[key]
        raise ConfigError(f'{where}: unknown {self.unknown_as} "{key}".{did_you_mean(key, self)} '
                          f"Valid: {', '.join(sorted(self))}, or 'module:ClassName'.")

    def build(self, spec: Any, where: str, *, type_key: str = "type", **extra) -> Any:
        """Build an entry from a name or a table ``{type = "...", <constructor args>}``;
        ``extra`` are keyword arguments supplied by the caller (not by the user)."""
        if isinstance(spec, str):
            spec = {type_key: spec}
        if not isinstance(spec, Mapping) or type_key not in spec:
            raise ConfigError(f'{where}: a {self.kind} is a name or a table with a "{type_key}" '
                              f"key; got {spec!r}.")
        spec = dict(spec)
        kind = spec.pop(type_key)
        factory = self.lookup(kind, where)
        check_arguments(factory, spec, where, f'{self.kind} "{kind}"')
        try:
            return factory(**spec, **extra)
        except (TypeError, ValueError) as err:       # ConfigError included
            raise ConfigError(f'{where}: {self.kind} "{kind}": {err}') from None


def parameters(factory: Callable) -> list[str]:
    """Keyword parameter names of a class's constructor or a function."""
    target = factory.__init__ if isinstance(factory, type) else factory
    return [k for k, p in inspect.signature(target).parameters.items()
            if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def check_arguments(factory: Callable, given: Iterable[str], where: str, what: str) -> None:
    """Reject keys the constructor does not take, with a hint and the valid names."""
    target = factory.__init__ if isinstance(factory, type) else factory
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = parameters(factory)
    for key in given:
        if key not in valid:
            raise ConfigError(f'{where}: {what} has no parameter "{key}".'
                              f"{did_you_mean(key, valid)} Parameters: "
                              f"{', '.join(valid) or '(none)'}.")
