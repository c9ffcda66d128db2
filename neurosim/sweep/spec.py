"""The sweep file: what to vary, how to sample it, over which seeds, and what to optimise.

    [sweep]
    model = "../corinfomax_digits.toml"   # the model file, relative to the sweep file
    name = "corinfomax_digits_lr"         # study name (default: the sweep file's stem)
    sampler = "grid"                      # grid | random | tpe | cmaes
    trials = 20                           # planned trials (not with grid: the grid's size)
    seeds = [0, 1, 2]                     # each configuration runs once per seed
    objective = "peak_test_accuracy"      # final_test_accuracy, COLUMN, max:COLUMN, min:COLUMN
    direction = "maximize"                # or "minimize"
    pruner = "none"                       # or "median" (per-epoch mean over the seeds)
    seed = 0                              # the sampler's seed (random, tpe, cmaes)
    ensemble = false                      # true: a trial's seeds train as one batched
                                          # ensemble (docs/ensembles.md: ep, copi, pepita, backprop)

    [space]
    "training.epochs" = [2]                        # a list: the choices (a grid axis)
    "protocol.beta" = { low = 0.5, high = 1.0 }    # a range: float (log = true, step = 0.1)
    "training.batch_size" = { low = 10, high = 40, step = 10 }   # integers: an integer range
    "model.mu_ff" = [[4.0, 2.8], [2.0, 1.4]]       # choices may be arrays
    "projection.w1.init" = ["he_uniform", "xavier_uniform"]   # [[projection]] by name
    "population.1.size" = [64, 128]                # ... or by position (0 = the first)

A key is a dotted path into the model file's tables; in an array of tables
(``[[population]]``, ``[[projection]]``, ``rules``) the next part is the element's ``name``
or its index. Every part but the last must exist in the model file; the last may be new (a
setting left at its default), and is then checked when the first configuration is built.
Everything is checked before anything runs (:func:`load_sweep`), each error one line.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError, NeurosimError, did_you_mean
from .toml_write import dumps, value_text

try:
    import tomllib
except ModuleNotFoundError:          # Python 3.10
    import tomli as tomllib

SWEEP_KEYS = ("model", "name", "sampler", "trials", "seeds", "objective", "direction",
              "pruner", "seed", "pruner_warmup_epochs", "pruner_startup_trials", "ensemble")
SAMPLERS = ("grid", "random", "tpe", "cmaes")
PRUNERS = ("none", "median")
DIRECTIONS = ("maximize", "minimize")
RANGE_KEYS = ("low", "high", "log", "step")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Param:
    """One axis of the search space: ``choices`` (kind "choice") or a range ("float",
    "int": low, high, log, step). ``encoded``: the choices go to Optuna as JSON text (Optuna's
    categorical values are scalars; arrays and tables are not)."""

    key: str
    kind: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    encoded: bool = False

    def suggest(self, trial):
        """The value of this axis for an Optuna trial (asked, or fixed when enqueued)."""
        if self.kind == "choice":
            raw = trial.suggest_categorical(self.key, self.optuna_choices())
            return json.loads(raw) if self.encoded else raw
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1,
                                     log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def optuna_choices(self) -> list:
        """The choices as Optuna stores them."""
        return [json.dumps(c) for c in self.choices] if self.encoded else list(self.choices)

    def to_optuna(self, value):
        """A value of this axis as Optuna stores it (for enqueued grid points)."""
        return json.dumps(value) if self.encoded else value


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file (see neurosim.sweep.spec for the format)."""

    path: Path
    text: str
    name: str
    model_path: Path
    model_text: str
    sampler: str
    trials: int
    seeds: tuple
    objective: str
    direction: str
    pruner: str
    seed: int
    space: tuple
    pruner_warmup_epochs: int = 1
    pruner_startup_trials: int = 2
    ensemble: bool = False
    model_data: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def planned(self) -> int:
        """How many trials (configurations) the sweep runs: the grid's size, or ``trials``."""
        return self.trials

    @property
    def digest(self) -> str:
        """A fingerprint of everything that decides what the sweep computes (the sweep's
        settings, its space and the model file's text)."""
        payload = {k: getattr(self, k) for k in ("name", "sampler", "trials", "seeds",
                                                 "objective", "direction", "pruner", "seed",
                                                 "pruner_warmup_epochs",
                                                 "pruner_startup_trials", "ensemble")}
        payload["space"] = [asdict(p) for p in self.space]
        payload["model_text"] = self.model_text
        text = json.dumps(payload, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def grid(self) -> list[dict]:
        """Every configuration of a grid sweep, in order (the last key varies fastest)."""
        keys = [p.key for p in self.space]
        return [dict(zip(keys, values))
                for values in itertools.product(*(p.choices for p in self.space))]

    def model_text_for(self, values: dict, seed: int, header: str = "") -> str:
        """The model file with ``values`` substituted and ``[training] seed`` set."""
        data = copy.deepcopy(self.model_data)
        for key, value in values.items():
            container, last = locate(data, key, f"{self.path} [space]")
            container[last] = copy.deepcopy(value)
        data.setdefault("training", {})["seed"] = seed
        head = f"# {header}\n" if header else ""
        return head + dumps(data)

    def describe(self, values: dict) -> str:
        """``key = value, ...`` for progress lines and tables."""
        return ", ".join(f"{k} = {_short(v)}" for k, v in values.items())


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value_text(value)


# ---------------------------------------------------------------------------- key paths
def locate(data: dict, key: str, where: str):
    """(container, index or key) of a dotted ``key`` in a parsed model file; ConfigError
    naming the first part that is not there."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f'{where} "{key}": empty part in the key; write dotted paths such as '
                          '"protocol.beta" or "projection.w1.init".')
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[:i]) or "the model file"
        if isinstance(node, dict):
            if part not in node:
                if last and i > 0:
                    return node, part                   # a new setting, checked when built
                what = "table" if i == 0 else "key"
                raise ConfigError(f'{where} "{key}": {here} has no {what} "{part}".'
                                  f"{did_you_mean(part, node)} There: "
                                  f"{', '.join(map(str, node)) or '(nothing)'}.")
            if last:
                return node, part
            node = node[part]
        elif isinstance(node, list):
            index = _element(node, part)
            if index is None:
                names = [str(e.get("name")) for e in node if isinstance(e, dict) and "name" in e]
                raise ConfigError(f'{where} "{key}": {here} has no element "{part}"; give a '
                                  f"name ({', '.join(names) or 'none named'}) or an index "
                                  f"0-{len(node) - 1}.{did_you_mean(part, names)}")
            if last:
                return node, index
            node = node[index]
        else:
            raise ConfigError(f'{where} "{key}": {here} is a value ({value_text(node)}), not a '
                              "table; the key ends there.")
    raise AssertionError("unreachable")


def _element(items: list, part: str) -> int | None:
    if part.isdigit():
        return int(part) if int(part) < len(items) else None
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    return None


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


# ---------------------------------------------------------------------------- parsing
def load_sweep(path) -> SweepSpec:
    """Read and check a sweep file and its model file; the space's keys are resolved in the
    model file (but the first configuration is built by :func:`check_first`)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"sweep file {path} is a directory; give a sweep file (TOML), e.g. "
                          "models/sweeps/corinfomax_digits_lr.toml.")
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist; examples live in "
                          "models/sweeps/.")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigError(f"sweep file {path} is not a text (TOML) file.") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"sweep file {path}: not valid TOML: {err}. Check the line it "
                          "names.") from None
    return parse_sweep(data, path, text)


def parse_sweep(data: dict, path: Path, text: str = "") -> SweepSpec:
    """A :class:`SweepSpec` from a parsed sweep file at ``path``."""
    from ..graph import load_model_file
    where = str(path)
    for key in data:
        if key not in ("sweep", "space"):
            raise ConfigError(f'{where}: unknown table "{key}".'
                              f'{did_you_mean(key, ("sweep", "space"))} A sweep file has '
                              "[sweep] and [space].")
    table = data.get("sweep")
    if not isinstance(table, dict):
        raise ConfigError(f'{where}: missing [sweep] table; add [sweep] model = '
                          '"path/to/model.toml".')
    for key in table:
        if key not in SWEEP_KEYS:
            raise ConfigError(f'{where} [sweep]: unknown key "{key}".'
                              f"{did_you_mean(key, SWEEP_KEYS)} Valid keys: "
                              f"{', '.join(SWEEP_KEYS)}.")
    w = f"{where} [sweep]"
    model = table.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError(f'{w}: model is the model file to sweep, e.g. model = '
                          '"../corinfomax_digits.toml" (relative to the sweep file).')
    model_path = Path(model).expanduser()
    if not model_path.is_absolute():
        model_path = path.parent / model_path
    try:
        model_file = load_model_file(model_path)
    except ConfigError as err:
        raise ConfigError(f"{w} model: {err}") from None
    name = table.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{w} name: letters, digits, '_', '-' and '.' only, got {name!r}.")
    sampler = _choice(table, "sampler", SAMPLERS, "grid", w)
    pruner = _choice(table, "pruner", PRUNERS, "none", w)
    direction = _choice(table, "direction", DIRECTIONS, "maximize", w)
    objective = table.get("objective", "peak_test_accuracy")
    if not isinstance(objective, str) or not re.match(r"^((max|min):)?[A-Za-z0-9_]+$",
                                                      objective):
        raise ConfigError(f'{w} objective: a metrics.csv column (its last epoch), "max:COLUMN" '
                          'or "min:COLUMN" (its best epoch), "peak_test_accuracy" or '
                          f'"final_test_accuracy"; got {objective!r}.')
    seed = _int(table, "seed", 0, 0, w)
    warmup = _int(table, "pruner_warmup_epochs", 1, 0, w)
    startup = _int(table, "pruner_startup_trials", 2, 0, w)
    ensemble = table.get("ensemble", False)
    if not isinstance(ensemble, bool):
        raise ConfigError(f"{w} ensemble: true (a trial's seeds train as one batched ensemble) "
                          f"or false, got {ensemble!r}.")
    training = model_file.data.get("training", {})
    default_seed = training.get("seed", 0) if isinstance(training, dict) else 0
    seeds = table.get("seeds", [default_seed])
    if not isinstance(seeds, list) or not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"{w} seeds: a non-empty list of whole numbers >= 0, e.g. seeds = "
                          f"[0, 1, 2]; got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{w} seeds: {seeds} names a seed twice; list each once.")
    space = _space(data.get("space"), model_file.data, f"{where} [space]", sampler)
    if sampler == "grid":
        size = math.prod(len(p.choices) for p in space)
        if "trials" in table and table["trials"] != size:
            raise ConfigError(f"{w} trials: a grid sweep runs every point of its grid "
                              f"({size}); remove trials = {table['trials']!r} or use "
                              'sampler = "random" (or "tpe", "cmaes") to run a number of '
                              "trials.")
        trials = size
    else:
        if "trials" not in table:
            raise ConfigError(f'{w}: sampler "{sampler}" needs trials = N, the number of '
                              "configurations to try.")
        trials = _int(table, "trials", 1, 1, w)
    if sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise NeurosimError('sampler "cmaes" needs the cmaes package: '
                                "pip install 'neurosim[sweep]'.") from None
    return SweepSpec(path=path.resolve(), text=text, name=name,
                     model_path=model_file.path.resolve(), model_text=model_file.text,
                     sampler=sampler, trials=trials, seeds=tuple(seeds), objective=objective,
                     direction=direction, pruner=pruner, seed=seed, space=tuple(space),
                     pruner_warmup_epochs=warmup, pruner_startup_trials=startup,
                     ensemble=ensemble, model_data=model_file.data)


def _choice(table, key, options, default, where):
    value = table.get(key, default)
    if value not in options:
        raise ConfigError(f'{where} {key}: "{value}" is not one of '
                          f"{', '.join(options)}.{did_you_mean(str(value), options)}")
    return value


def _int(table, key, default, low, where):
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where} {key}: a whole number >= {low}, got {value!r}.")
    return value


def _space(table, model: dict, where: str, sampler: str) -> list[Param]:
    if table is None:
        raise ConfigError(f'{where.rsplit(" ", 1)[0]}: missing [space] table; add e.g. '
                          '[space] "protocol.beta" = [0.5, 1.0].')
    if not isinstance(table, dict) or not table:
        raise ConfigError(f'{where}: give at least one key to vary, e.g. "protocol.beta" = '
                          "[0.5, 1.0].")
    params = []
    for key, spec in table.items():
        if key in ("training.seed",):
            raise ConfigError(f'{where} "{key}": seeds are not searched; list them in [sweep] '
                              "seeds = [0, 1, 2].")
        container, last = locate(model, key, where)
        present = (last in container) if isinstance(container, dict) else True
        current = container[last] if present else None
        if isinstance(spec, list):
            params.append(_choices(key, spec, current, present, where))
        elif isinstance(spec, dict):
            if sampler == "grid":
                raise ConfigError(f'{where} "{key}": a range cannot be a grid axis; list the '
                                  f'values ("{key}" = [a, b, c]) or use sampler = "random", '
                                  '"tpe" or "cmaes".')
            params.append(_range(key, spec, current, present, where))
        else:
            raise ConfigError(f'{where} "{key}": give a list of values ([a, b]) or a range '
                              f"({{ low = a, high = b }}), got {value_text(spec)}.")
    return params


def _choices(key, values, current, present, where) -> Param:
    w = f'{where} "{key}"'
    if not values:
        raise ConfigError(f"{w}: the list of values is empty; give at least one.")
    texts = []
    for value in values:
        try:
            texts.append(value_text(value))
        except ConfigError as err:
            raise ConfigError(f"{w}: {err}") from None
        if present and current is not None and _kind(value) != _kind(current):
            raise ConfigError(f"{w}: the value {value_text(value)} is {_kind(value)} but the "
                              f"model file has {_kind(current)} there ({value_text(current)}).")
    if len(set(texts)) != len(texts):
        raise ConfigError(f"{w}: a value is listed twice ({', '.join(texts)}); list each once.")
    for i, value in enumerate(values):
        for other in values[i + 1:]:
            if value == other:           # 0 == 0.0, 1 == true: Optuna takes them for one
                raise ConfigError(f"{w}: the values {value_text(value)} and "
                                  f"{value_text(other)} compare equal, so the sweep cannot "
                                  "tell them apart; list only one of them.")
    encoded = any(isinstance(v, (list, dict)) for v in values)
    return Param(key, "choice", tuple(values), encoded=encoded)


def _range(key, spec, current, present, where) -> Param:
    w = f'{where} "{key}"'
    for k in spec:
        if k not in RANGE_KEYS:
            raise ConfigError(f'{w}: unknown range key "{k}".{did_you_mean(k, RANGE_KEYS)} A '
                              "range is { low = a, high = b } with optional log = true or "
                              "step = s.")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{w}: a range needs low and high, e.g. {{ low = 0.5, high = 1.0 }}.")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is None and name == "step":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise ConfigError(f"{w}: {name} must be a finite number, got {value!r}.")
    if not isinstance(log, bool):
        raise ConfigError(f"{w}: log is true or false, got {log!r}.")
    if not low < high:
        raise ConfigError(f"{w}: low ({low}) must be below high ({high}).")
    if log and low <= 0:
        raise ConfigError(f"{w}: a log range needs low > 0, got {low}.")
    if log and step is not None:
        raise ConfigError(f"{w}: give either log = true or step, not both.")
    if step is not None and step <= 0:
        raise ConfigError(f"{w}: step must be > 0, got {step}.")
    if present and current is not None and _kind(current) != "a number":
        raise ConfigError(f"{w}: a range gives numbers but the model file has {_kind(current)} "
                          f"there ({value_text(current)}); list the values instead.")
    integer = all(isinstance(v, int) for v in (low, high)) and \
        (step is None or isinstance(step, int))
    if present and isinstance(current, float) and integer:
        low, high = float(low), float(high)      # the model file has a float there
        integer = False
    return Param(key, "int" if integer else "float", (), low, high, log,
                 step if step is None or integer else float(step))


__all__ = ["SweepSpec", "Param", "load_sweep", "parse_sweep", "locate"]
