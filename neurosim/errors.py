"""Exception types. Every error a user can cause is a :class:`NeurosimError` whose message says
what is wrong, where, and how to fix it; the CLI prints the message without a traceback."""
from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["NeurosimError", "ConfigError", "SimulationError", "NeurosimWarning", "did_you_mean",
           "unknown"]


class NeurosimError(Exception):
    """Base class of all errors neurosim raises on purpose."""


class ConfigError(NeurosimError, ValueError):
    """A network, model or experiment description is invalid."""


class SimulationError(NeurosimError, RuntimeError):
    """The integration failed (non-finite state, solver failure)."""


class NeurosimWarning(UserWarning):
    """Base class of the warnings neurosim issues on purpose (a Python warning for library
    users; the command line prints each as one ``neurosim: warning: ...`` line)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f' Did you mean "{close[0]}"?' if close else ""


def unknown(kind: str, name: str, choices: Iterable[str], where: str) -> ConfigError:
    """Build the standard 'unknown X' error with a hint and the list of valid names."""
    choices = list(choices)
    listed = ", ".join(f'"{c}"' for c in choices) if choices else "(none)"
    return ConfigError(f'{where}: unknown {kind} "{name}".{did_you_mean(name, choices)} '
                       f"Valid {kind}s: {listed}.")
