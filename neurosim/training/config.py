"""The tables of a training model file, and building what they describe.

- ``[model]`` (a template expansion: ``template = "corinfomax"`` or "package.module:function"
  plus the template's parameters) or explicit ``[[population]]`` / ``[[projection]]`` tables;
- ``[protocol]``: ``type`` ("ep", "relax", a registered name or "package.module:Class") and
  the protocol's own settings (checked against its constructor);
- ``[training]``: run options (:class:`TrainingConfig`), the same for every protocol;
- ``[data]``: the dataset (see neurosim.data) and an optional ``validation`` split.

Model files written before protocols were plug-ins kept EP's settings (T_free, T_nudged,
beta, random_sign, solver, step) and the correlative-information switches in [training];
such files (and any file without a [protocol] table) are read as ``[protocol] type = "ep"``
with those settings and, unless [training] sets metrics, ``metrics = ["weight_angle",
"correlative_information"]``, which the old trainer always measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
import torch

from ..errors import ConfigError, did_you_mean
from ..graph import Network, check_finite, check_keys, network_from_dict
from ..schedules import EpochSchedule, make_epoch_schedule

DTYPES = {"float32": torch.float32, "float64": torch.float64}
LEGACY_EP_KEYS = ("protocol", "T_free", "T_nudged", "beta", "random_sign", "solver", "step")
LEGACY_METRIC_KEYS = ("correlative_information", "correlative_information_eps")


@dataclass(frozen=True)
class TrainingConfig:
    """Run options ([training] table), whatever the protocol."""

    epochs: int = 10
    batch_size: int = 20
    eval_batch_size: int = 1000
    seed: int = 0
    input: str = "x"
    output: str = "out"
    device: str = "cpu"
    dtype: str = "float32"
    train_accuracy: str = "running"
    threads: int | None = None
    keep_checkpoints: int = 3
    lr_schedule: EpochSchedule = field(default_factory=lambda: make_epoch_schedule(None, ""))
    metrics: tuple = ()

    @property
    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a torch dtype (torch.float32 or torch.float64)."""
        return DTYPES[self.dtype]

    def as_dict(self) -> dict:
        """Every option as plain values (the lr_schedule as its table, metrics as names,
        tables or reprs), as saved with checkpoints and shown by ``neurosim inspect``."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["lr_schedule"] = self.lr_schedule.config()
        data["metrics"] = [m if isinstance(m, (str, dict)) else repr(m) for m in self.metrics]
        return data


TRAINING_KEYS = {f.name for f in fields(TrainingConfig)}


def split_tables(data: dict, where: str, overrides: dict) -> tuple[dict, dict]:
    """([training] table, [protocol] table) with legacy EP keys moved and ``overrides`` (not
    None) routed: run options to [training], everything else to [protocol]."""
    if "stimulus" in data:
        raise ConfigError(f"{where} [[stimulus]]: stimuli drive simulations (neurosim simulate); "
                          "in training the protocol drives the network with the data. Remove "
                          "the [[stimulus]] tables from this model file, or simulate it.")
    training = dict(data.get("training", {}))
    if not isinstance(training, dict):
        raise ConfigError(f"{where} [training]: expected a table.")
    protocol = data.get("protocol")
    legacy = [k for k in (*LEGACY_EP_KEYS, *LEGACY_METRIC_KEYS) if k in training]
    if protocol is not None:
        if not isinstance(protocol, dict):
            raise ConfigError(f'{where} [protocol]: expected a table, e.g. [protocol] type = "ep".')
        protocol = dict(protocol)
        if legacy:
            raise ConfigError(f'{where} [training] {legacy[0]}: protocol settings belong in the '
                              "[protocol] table (and metrics in [training] metrics).")
    else:
        protocol = {"type": training.pop("protocol", "ep")}
        for key in LEGACY_EP_KEYS[1:]:
            if key in training:
                protocol[key] = training.pop(key)
        on = training.pop("correlative_information", True)
        eps = training.pop("correlative_information_eps", 1e-3)
        if "metrics" not in training:      # the old trainer always measured these
            if not isinstance(on, bool):
                raise ConfigError(f"{where} [training] correlative_information: true or false, "
                                  f"got {on!r}.")
            training["metrics"] = ["weight_angle"] + (
                [{"type": "correlative_information", "eps": eps}] if on else [])
    protocol.setdefault("type", "ep")
    for key, value in overrides.items():
        if value is not None:
            (training if key in TRAINING_KEYS else protocol)[key] = value
    check_finite(training, f"{where} [training]")
    check_finite(protocol, f"{where} [protocol]")
    return training, protocol


def training_config(data: dict, where: str, **overrides) -> TrainingConfig:
    """Parse and validate the [training] table; ``overrides`` (not None) win."""
    table, _ = split_tables(data, where, {k: v for k, v in overrides.items()
                                          if k in TRAINING_KEYS})
    return training_config_from_table(table, where)


def training_config_from_table(table: dict, where: str) -> TrainingConfig:
    check_keys(table, TRAINING_KEYS, f"{where} [training]")
    table = dict(table)
    table["lr_schedule"] = make_epoch_schedule(table.get("lr_schedule"),
                                               f"{where} [training] lr_schedule")
    metrics = table.get("metrics", ())
    if not isinstance(metrics, (list, tuple)):
        raise ConfigError(f'{where} [training] metrics: a list, e.g. metrics = ["weight_angle"]; '
                          f"got {metrics!r}.")
    table["metrics"] = tuple(metrics)
    return check_training_config(TrainingConfig(**table), where)


def check_training_config(config: TrainingConfig, where: str) -> TrainingConfig:
    """Raise a ConfigError naming the key for any invalid run option; return ``config``."""
    for key in ("epochs", "batch_size", "eval_batch_size", "seed", "keep_checkpoints"):
        value = getattr(config, key)
        low = 0 if key in ("epochs", "seed") else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            kind = "a non-negative" if low == 0 else "a positive"
            raise ConfigError(f"{where} [training] {key}: must be {kind} integer, got {value!r}.")
    for key in ("input", "output"):
        if not isinstance(getattr(config, key), str):
            raise ConfigError(f"{where} [training] {key}: a population name, got "
                              f"{getattr(config, key)!r}.")
    threads = config.threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ConfigError(f"{where} [training] threads: must be a positive integer (CPU threads "
                          f"for torch), got {threads!r}.")
    if config.dtype not in DTYPES:
        raise ConfigError(f'{where} [training] dtype: "{config.dtype}" is not one of '
                          f"{', '.join(DTYPES)}.")
    if config.train_accuracy not in ("running", "full"):
        raise ConfigError(f'{where} [training] train_accuracy: use "running" (predictions of '
                          'the training steps) or "full" (evaluate the whole training set).')
    try:
        device = torch.device(config.device)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f'{where} [training] device: "{config.device}" is not a device; use '
                          '"cpu", "cuda" or "cuda:N".')
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f'{where} [training] device (--device): "{config.device}" requested '
                          'but CUDA is not available on this machine; use device = "cpu" '
                          "(--device cpu).")
    if not isinstance(config.lr_schedule, EpochSchedule):
        raise ConfigError(f"{where} [training] lr_schedule: an epoch schedule "
                          f"(neurosim.schedules), got {config.lr_schedule!r}.")
    return config


def build_network(data: dict, where: str) -> Network:
    """The network of a model file: a template expansion ([model]) or explicit graph tables."""
    from ..models import TEMPLATES
    from ..registry import parameters
    if "model" not in data:
        return network_from_dict(data, where=where)
    spec = dict(data["model"])
    check_finite(spec, f"{where} [model]")
    template = spec.pop("template", None)
    if not isinstance(template, str) or (":" not in template and template not in TEMPLATES):
        raise ConfigError(f'{where} [model] template: unknown template "{template}".'
                          f"{did_you_mean(str(template), TEMPLATES)} "
                          f"Available: {', '.join(TEMPLATES)}, or 'module:function'.")
    if "population" in data or "projection" in data:
        raise ConfigError(f"{where}: give either a [model] template or explicit "
                          "[[population]]/[[projection]] tables, not both.")
    builder = TEMPLATES.lookup(template, f"{where} [model] template")
    params = parameters(builder)
    for key in spec:
        if key not in params:
            raise ConfigError(f'{where} [model]: unknown key "{key}" for template "{template}".'
                              f"{did_you_mean(key, params)} Valid keys: template, "
                              f"{', '.join(params)}.")
    try:
        tables = builder(**spec)
    except ConfigError as err:
        raise ConfigError(f"{where} [model]: {err}") from None
    except TypeError as err:
        raise ConfigError(f"{where} [model]: {err}") from None
    if isinstance(tables, Network):
        return tables
    return network_from_dict(tables, where=f"{where} [model]")


def data_config(data: dict, where: str) -> dict:
    """The [data] table (checked in detail by neurosim.data when it is loaded)."""
    table = data.get("data")
    if table is None:
        raise ConfigError(f'{where}: missing [data] table; add e.g. [data] dataset = "digits".')
    if not isinstance(table, dict):
        raise ConfigError(f"{where} [data]: expected a table.")
    check_finite(table, f"{where} [data]")
    return dict(table)

