"""Declarative networks in TOML (stdlib ``tomllib``).

A model file declares ``[network]`` (name), ``[[population]]`` tables and ``[[projection]]``
tables; other top-level tables (``[simulation]``, ``[[monitor]]``, ``[training]``, ...) belong
to the tools that read them. Example::

    [network]
    name = "demo"

    [[population]]
    name = "x"
    type = "input"
    size = 8

    [[population]]
    name = "h"
    type = "pyramidal"       # input | pyramidal | interneuron | <registered> | "module:Class"
    size = 16
    leak = 0.5
    basal = 2.0              # conductance basal dendrite -> soma
    apical = 1.0
    activation = "clip"

    [[projection]]
    name = "x_h"             # type = "dense" (default) | "conv2d" | "maxpool2d" | "module:Class"
    source = "x"
    target = "h"
    compartment = "basal"
    init = "xavier_uniform"
    rules = [{ type = "ep_contrastive", lr = 0.1 }]
"""
from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:          # Python 3.10
    import tomli as tomllib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError, did_you_mean
from .network import Network
from .populations import POPULATION_KINDS, Population
from .projections import PROJECTION_KINDS


def _projection_keys(cls) -> set[str]:
    from dataclasses import fields
    return {"type", *(f.name for f in fields(cls))}


def check_keys(table: Any, allowed: Iterable[str], where: str, required: Iterable[str] = ()):
    """Reject non-tables, unknown keys (with a did-you-mean hint) and missing required keys."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__} {table!r}.")
    allowed = sorted(set(allowed))
    for key in table:
        if key not in allowed:
            raise ConfigError(f'{where}: unknown key "{key}".{did_you_mean(key, allowed)} '
                              f"Valid keys: {', '.join(allowed)}.")
    for key in required:
        if key not in table:
            raise ConfigError(f'{where}: missing required key "{key}".')


def check_finite(value: Any, where: str, key: str = "") -> None:
    """Reject NaN and infinite numbers anywhere in a (nested) table, naming the key path,
    e.g. "inputs.x.values[3]" (arrays and tensors are checked element-wise)."""
    at = f"{where} {key}" if key else where
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{at}: {value!r} is not a finite number; give a finite value.")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, where, f"{key}[{i}]")
    elif hasattr(value, "shape") and hasattr(value, "dtype"):      # numpy array, tensor
        import numpy as np
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
            raise ConfigError(f"{at}{list(index)}: {array[index]!r} is not a finite number; "
                              "give finite values.")


def population_kind(kind: Any, where: str) -> type[Population]:
    """The Population class a model file names: a registered kind (``POPULATION_KINDS``)
    or an import path "package.module:Class"."""
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: type must be a string naming a population kind, got "
                          f"{kind!r}.")
    if ":" in kind:
        return POPULATION_KINDS.lookup(kind, where)
    if kind not in POPULATION_KINDS:
        raise ConfigError(f'{where}: unknown type "{kind}".{did_you_mean(kind, POPULATION_KINDS)}'
                          f" Valid types: {', '.join(POPULATION_KINDS)}. A kind of your own is "
                          'named by its import path, type = "package.module:Class".')
    return POPULATION_KINDS[kind]


def _population(table: Any, label: str) -> Population:
    """One [[population]] table: its keys are the kind's dataclass fields (plus "type");
    ``rules`` are built like projection rules."""
    from ..plasticity import build_rule

    known = set.union({"type"}, *(cls.keys() for cls in POPULATION_KINDS.values()))
    if not isinstance(table, dict) or "type" not in table:
        check_keys(table, known, label, required=("name", "type", "size"))
    cls = population_kind(table["type"], label)
    allowed = {"type", *cls.keys()}
    # a key no kind knows: list this kind's keys; a key of another kind: name the type
    check_keys(table, allowed | (known & set(table)), label, required=("name", "type", "size"))
    check_keys(table, allowed, f'{label} (type {table["type"]})')
    kwargs = {k: v for k, v in table.items() if k != "type"}
    if "rules" in kwargs:
        if not isinstance(kwargs["rules"], list):
            raise ConfigError(f"{label}: rules must be a list of tables, e.g. "
                              'rules = [{ type = "package.module:Rule" }].')
        kwargs["rules"] = [build_rule(spec, f"{label} rules[{j}]")
                           for j, spec in enumerate(kwargs["rules"])]
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{label}: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f'{label}: type "{table["type"]}": {err}') from None


def network_from_dict(data: dict, where: str = "model") -> Network:
    """Build a Network from the parsed TOML document (``network``/``population``/``projection``)."""
    from ..plasticity import build_rule

    check_keys(data.get("network", {}), {"name"}, f"{where} [network]")
    name = data.get("network", {}).get("name", "network")
    pops_data = data.get("population", [])
    if not isinstance(pops_data, list) or not pops_data:
        raise ConfigError(f"{where}: no [[population]] tables; declare the populations with "
                          "[[population]] (note the double brackets).")
    populations = []
    for i, table in enumerate(pops_data):
        label = f'{where} [[population]] #{i + 1}'
        if isinstance(table, dict) and "name" in table:
            label += f' "{table["name"]}"'
        check_finite(table, label)
        populations.append(_population(table, label))
    projections = []
    for i, table in enumerate(data.get("projection", [])):
        label = f'{where} [[projection]] #{i + 1}'
        if isinstance(table, dict) and "name" in table:
            label += f' "{table["name"]}"'
        if not isinstance(table, dict):
            check_keys(table, (), label)             # raises: not a table
        kind = table.get("type", "dense")
        cls = PROJECTION_KINDS.lookup(kind, f"{label} type")
        keys = _projection_keys(cls)
        if isinstance(table, dict) and "type" not in table:
            keys = set.union(*(_projection_keys(c) for c in PROJECTION_KINDS.values()))
            check_keys(table, keys, label, required=("name", "source", "target"))
            keys = _projection_keys(cls)
            extra = sorted(set(table) - keys)
            if extra:
                raise ConfigError(f'{label}: key "{extra[0]}" belongs to a spatial projection; '
                                  'give type = "conv2d" or "maxpool2d" (the default type is '
                                  '"dense").')
        check_keys(table, keys, label if "type" not in table else f'{label} (type "{kind}")',
                   required=("name", "source", "target"))
        check_finite(table, label)
        kwargs = {k: v for k, v in table.items() if k != "type"}
        rules = kwargs.pop("rules", [])
        if not isinstance(rules, list):
            raise ConfigError(f"{label}: rules must be a list of tables, e.g. "
                              'rules = [{ type = "ep_contrastive", lr = 0.1 }].')
        kwargs["rules"] = [build_rule(spec, f"{label} rules[{j}]") for j, spec in enumerate(rules)]
        try:
            projections.append(cls(**kwargs))
        except ConfigError as err:
            raise ConfigError(f"{label}: {err}") from None
        except (TypeError, ValueError) as err:
            raise ConfigError(f'{label}: type "{kind}": {err}') from None
    try:
        return Network(populations, projections, name=name)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


@dataclass(frozen=True)
class ModelFile:
    """A parsed model file: its path, its exact text and the parsed tables."""

    path: Path
    text: str
    data: dict

    def network(self) -> Network:
        """Build and validate the Network from the file's [network], [[population]] and
        [[projection]] tables."""
        return network_from_dict(self.data, where=str(self.path))


# the top-level tables of a model file and who reads them
MODEL_TABLES = {
    "network": "the graph", "population": "the graph", "projection": "the graph",
    "model": "templates (neurosim.models)", "simulation": "neurosim simulate",
    "monitor": "neurosim simulate", "stimulus": "neurosim simulate",
    "training": "neurosim train", "protocol": "neurosim train", "data": "neurosim train",
    "reference": "neurosim table (the published result to compare with)",
}


def parse_model_text(text: str, where: str = "<string>") -> dict:
    """Parse a model file's TOML; an unknown top-level table is an error (a misspelt
    ``[[stimuli]]`` would otherwise be ignored silently)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: not valid TOML: {err}. Check the line it names.") from None
    for key in data:
        if key not in MODEL_TABLES:
            raise ConfigError(f'{where}: unknown top-level table or key "{key}".'
                              f"{did_you_mean(key, MODEL_TABLES)} Valid: "
                              f"{', '.join(sorted(MODEL_TABLES))}.")
    if "reference" in data:
        from ..table import check_reference       # the table module imports the graph
        check_reference(data["reference"], where)
    return data


def load_model_file(path) -> ModelFile:
    """Read and parse a TOML model file with clear errors for missing or malformed files."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"model file {path} is a directory; give the path of a model file "
                          "(TOML), e.g. models/three_compartment.toml.")
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist. Example model files live in "
                          "the repository's models/ directory.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"model file {path} is not a text (TOML) file: byte {err.start} is "
                          "not UTF-8; give a model file such as models/three_compartment.toml."
                          ) from None
    except OSError as err:
        raise ConfigError(f"model file {path} cannot be read ({err.strerror}); check its "
                          "permissions.") from None
    if "\x00" in text:
        raise ConfigError(f"model file {path} is a binary file, not TOML text; give a model "
                          "file such as models/three_compartment.toml.")
    return ModelFile(path, text, parse_model_text(text, str(path)))
