"""The [training] and [data] tables of a model file, and building the network it describes.

A training model file either expands a template (``[model] template = "corinfomax"`` plus the
template's parameters) or declares the graph directly with [[population]]/[[projection]].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, did_you_mean
from ..graph import Network, check_keys, network_from_dict

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class LRSchedule:
    """Per-epoch learning-rate factor: lr(e) = lr_0 * factor_s^e, where s is the last segment
    whose start epoch is <= e (epochs count from 0). ``[[0, 0.95], [15, 0.9]]`` is the
    CorInfoMax MNIST schedule; ``[[0, 1.0]]`` keeps lr constant."""

    segments: tuple[tuple[int, float], ...] = ((0, 1.0),)

    def __call__(self, epoch: int) -> float:
        factor = 1.0
        for start, value in self.segments:
            if epoch >= start:
                factor = value
        return factor ** epoch

    @staticmethod
    def from_spec(spec, where: str) -> "LRSchedule":
        if spec is None:
            return LRSchedule()
        check_keys(spec, {"type", "segments"}, where)
        kind = spec.get("type", "piecewise_exponential")
        if kind == "constant":
            return LRSchedule()
        if kind != "piecewise_exponential":
            raise ConfigError(f'{where}: unknown type "{kind}"; use "piecewise_exponential" or '
                              '"constant".')
        segments = spec.get("segments")
        try:
            parsed = tuple((int(a), float(b)) for a, b in segments)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: segments must be a list of [start_epoch, factor] pairs, "
                              f"e.g. [[0, 0.95], [15, 0.9]]; got {segments!r}.") from None
        if not parsed or parsed[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(parsed, parsed[1:])):
            raise ConfigError(f"{where}: segments must start at epoch 0 and increase, "
                              f"got {segments!r}.")
        return LRSchedule(parsed)


@dataclass(frozen=True)
class TrainingConfig:
    """Settings of a training run ([training] table)."""

    epochs: int = 10
    batch_size: int = 20
    eval_batch_size: int = 1000
    seed: int = 0
    protocol: str = "ep"
    T_free: int = 30
    T_nudged: int = 10
    beta: float = 1.0
    random_sign: bool = True
    solver: str = "gs-euler"
    step: Any = 0.05
    lr_schedule: LRSchedule = field(default_factory=LRSchedule)
    input: str = "x"
    output: str = "out"
    device: str = "cpu"
    dtype: str = "float32"
    train_accuracy: str = "running"
    threads: int | None = None
    correlative_information: bool = True
    correlative_information_eps: float = 1e-3

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def as_dict(self) -> dict:
        data = asdict(self)
        data["lr_schedule"] = {"type": "piecewise_exponential",
                               "segments": [list(s) for s in self.lr_schedule.segments]}
        return data


def training_config(data: dict, where: str, **overrides) -> TrainingConfig:
    """Parse and validate the [training] table; ``overrides`` (not None) win."""
    table = dict(data.get("training", {}))
    fields = TrainingConfig.__dataclass_fields__
    check_keys(table, fields, f"{where} [training]")
    table.update({k: v for k, v in overrides.items() if v is not None})
    table["lr_schedule"] = LRSchedule.from_spec(table.get("lr_schedule"),
                                                f"{where} [training] lr_schedule")
    config = TrainingConfig(**table)
    for key in ("epochs", "batch_size", "eval_batch_size", "T_free", "T_nudged"):
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "epochs" else 1):
            raise ConfigError(f"{where} [training] {key}: must be a positive integer, got {value!r}.")
    if config.protocol != "ep":
        raise ConfigError(f'{where} [training] protocol: unknown protocol "{config.protocol}".'
                          f'{did_you_mean(config.protocol, ["ep"])} Available: "ep".')
    if config.threads is not None and (not isinstance(config.threads, int) or config.threads < 1):
        raise ConfigError(f"{where} [training] threads: must be a positive integer (CPU threads "
                          f"for torch), got {config.threads!r}.")
    if config.dtype not in DTYPES:
        raise ConfigError(f'{where} [training] dtype: "{config.dtype}" is not one of '
                          f"{', '.join(DTYPES)}.")
    if config.train_accuracy not in ("running", "full"):
        raise ConfigError(f'{where} [training] train_accuracy: use "running" (free phases of '
                          'the training steps) or "full" (evaluate the whole training set).')
    if not isinstance(config.correlative_information, bool):
        raise ConfigError(f"{where} [training] correlative_information: true or false, got "
                          f"{config.correlative_information!r}.")
    eps = config.correlative_information_eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ConfigError(f"{where} [training] correlative_information_eps: must be a positive "
                          f"number (the eps of log det(R + eps I)), got {eps!r}.")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f'{where} [training] device: "{config.device}" requested but CUDA is '
                          'not available on this machine; use device = "cpu".')
    return config


def build_network(data: dict, where: str) -> Network:
    """The network of a model file: a template expansion ([model]) or explicit graph tables."""
    from ..models import TEMPLATES
    if "model" in data:
        spec = dict(data["model"])
        template = spec.pop("template", None)
        if template not in TEMPLATES:
            raise ConfigError(f'{where} [model] template: unknown template "{template}".'
                              f"{did_you_mean(str(template), TEMPLATES)} "
                              f"Available: {', '.join(TEMPLATES)}.")
        if "population" in data or "projection" in data:
            raise ConfigError(f"{where}: give either a [model] template or explicit "
                              "[[population]]/[[projection]] tables, not both.")
        import inspect
        builder = TEMPLATES[template]
        params = [p for p in inspect.signature(builder).parameters]
        for key in spec:
            if key not in params:
                raise ConfigError(f'{where} [model]: unknown key "{key}" for template '
                                  f'"{template}".{did_you_mean(key, params)} '
                                  f"Valid keys: template, {', '.join(params)}.")
        if "sizes" not in spec:
            raise ConfigError(f'{where} [model]: template "{template}" needs sizes = [...].')
        try:
            tables = builder(**spec)
        except TypeError as err:
            raise ConfigError(f"{where} [model]: {err}") from None
        return network_from_dict(tables, where=f"{where} [model]")
    return network_from_dict(data, where=where)


def data_config(data: dict, where: str) -> dict:
    """The [data] table: dataset name and optional root / normalisation."""
    table = data.get("data")
    if table is None:
        raise ConfigError(f'{where}: missing [data] table; add e.g. [data] dataset = "digits".')
    check_keys(table, {"dataset", "root", "normalization"}, f"{where} [data]",
               required=("dataset",))
    return dict(table)
