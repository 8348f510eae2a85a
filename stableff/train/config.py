"""The training configuration, validated with pydantic; every error names its key."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stableff.errors import ConfigError
from stableff.models import DEFAULT_MODEL


class StrictConfig(BaseModel):
    """A configuration block that refuses keys it does not define (the base of every block)."""

    model_config = ConfigDict(extra="forbid")


class DataConfig(StrictConfig):
    train: str | list[str]  # files (or embedded "acac:train_300K")
    validation: str | list[str] | None = None  # if None, val_fraction of train is held out
    test: str | list[str] | None = None  # if None, test_fraction of train is held out
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    split_seed: int = 0
    max_train_frames: int | None = Field(None, ge=1)
    isolated_atoms: str | None = None  # file of single-atom frames giving E0 per species
    train_stress: bool = False


class ModelConfig(BaseModel):
    """``name`` picks the architecture; every other key is a hyper-parameter of that model."""

    model_config = ConfigDict(extra="allow")
    name: str = DEFAULT_MODEL

    @model_validator(mode="before")
    @classmethod
    def _zbl_settings(cls, raw):
        """``zbl: {switch: data, factor: 1.0, width: 0.25}`` as the flat hyper-parameters the models
        take (zbl, zbl_switch, zbl_factor, zbl_width); ``zbl: true`` alone places the switch by the
        training data (models/priors.py), unless zbl_inner / zbl_outer set it by hand."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        zbl = raw.get("zbl")
        if isinstance(zbl, dict):
            unknown = sorted(set(zbl) - {"switch", "factor", "width"})
            if unknown:
                raise ValueError(f"zbl: unknown key(s) {unknown} (allowed: switch, factor, width)")
            raw["zbl"] = True
            for key, value in zbl.items():
                raw[f"zbl_{key}"] = value
        if raw.get("zbl") is True and "zbl_switch" not in raw and not any(k in raw for k in ("zbl_pairs", "zbl_inner", "zbl_outer")):
            raw["zbl_switch"] = "data"
        return raw

    @model_validator(mode="after")
    def _known_hyperparameters(self):
        from stableff.models import MODELS

        if self.name not in MODELS:
            raise ValueError(f"unknown model '{self.name}' (choose from {', '.join(MODELS)})")
        allowed = set(MODELS[self.name].hyperparameter_names())
        unknown = sorted(set(self.model_extra or {}) - allowed)
        if unknown:
            raise ValueError(f"unknown hyper-parameter(s) {unknown} for {self.name} (allowed: {sorted(allowed)})")
        return self

    def hyperparameters(self) -> dict:
        return dict(self.model_extra or {})

    def cutoff_A(self) -> float:
        """The cutoff (A): the configured one, or the model's default."""
        from stableff.models import MODELS

        return float(self.hyperparameters().get("r_max", MODELS[self.name].default_hyperparameter("r_max")))

    def num_interaction_layers(self) -> int:
        """Layers of the configured model (its constructor default when the config leaves it out)."""
        from stableff.models import MODELS

        cls = MODELS[self.name]
        name = "num_blocks" if "num_blocks" in cls.hyperparameter_names() else "num_layers"
        value = self.hyperparameters().get(name, inspect.signature(cls.__init__).parameters[name].default)
        return int(value)


class LossConfig(StrictConfig):
    energy_weight: float = Field(1.0, ge=0)  # on per-atom energy MSE, eV^2/atom^2
    forces_weight: float = Field(1.0, ge=0)  # on force-component MSE, (eV/A)^2
    stress_weight: float = Field(0.0, ge=0)  # on stress-component MSE, (eV/A^3)^2


class OptimizerConfig(StrictConfig):
    name: Literal["adam", "adamw", "sam"] = "adam"
    lr: float = Field(5e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    base: Literal["adam", "adamw"] = "adam"  # SAM's base optimiser
    rho: float = Field(0.005, ge=0)  # SAM neighbourhood radius
    adaptive: bool = False  # ASAM


class DecorrelationConfig(StrictConfig):
    """L = w_E L_E + w_F L_F (+ w_S L_S) + lambda(t) L_corr (docs/method.md)."""

    enabled: bool = False
    lambda_max: float = Field(0.3, ge=0)
    lambda_min: float = Field(0.0, ge=0)
    schedule: Literal["constant", "linear", "cosine", "warmup_cosine"] = "cosine"
    warmup: float = Field(0.1, ge=0, le=1)  # fraction of training, warmup_cosine only
    layers: list[int] | None = None  # layer indices (negative from the end); None = all layers
    layer_weights: list[float] | None = None  # w_l, one per chosen layer; None = 1 each
    max_edges: int | None = Field(4096, ge=2)  # edges sampled per batch for L_corr; None = all
    channels: Literal["all", "scalars"] = "all"  # invariant view of every channel, or l = 0 only

    @model_validator(mode="after")
    def _consistent(self):
        if self.lambda_min > self.lambda_max:
            raise ValueError(f"lambda_min ({self.lambda_min}) is larger than lambda_max ({self.lambda_max})")
        if self.layer_weights is not None:
            if self.layers is None:
                raise ValueError("layer_weights needs layers (one weight per listed layer)")
            if len(self.layer_weights) != len(self.layers):
                raise ValueError(f"layer_weights has {len(self.layer_weights)} entries but layers has {len(self.layers)}")
            if any(w < 0 for w in self.layer_weights):
                raise ValueError("layer_weights must be >= 0")
        return self


class SchedulerConfig(StrictConfig):
    name: Literal["plateau", "cosine", "none"] = "plateau"
    factor: float = Field(0.5, gt=0, lt=1)  # plateau
    patience: int = Field(10, ge=0)  # plateau, epochs
    min_lr: float = Field(1e-6, ge=0)


class TrainingConfig(StrictConfig):
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(4, ge=1)  # global batch (structures), split across processes
    seed: int = 0
    ema_decay: float | None = Field(0.99, ge=0, lt=1)
    grad_clip: float | None = Field(10.0, gt=0)  # max gradient norm
    early_stopping_patience: int | None = Field(None, ge=1)  # epochs without validation improvement
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    num_threads: int | None = Field(None, ge=1)


class Config(StrictConfig):
    data: DataConfig
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    training: TrainingConfig = TrainingConfig()
    decorrelation: DecorrelationConfig = DecorrelationConfig()

    @model_validator(mode="after")
    def _layers_exist(self):
        layers = self.decorrelation.layers
        if layers is None:
            return self
        num_layers = self.model.num_interaction_layers()
        bad = [l for l in layers if not -num_layers <= l < num_layers]
        if bad:
            raise ValueError(f"decorrelation.layers {bad} out of range for a model with {num_layers} interaction layers")
        return self

    @field_validator("model", mode="before")
    @classmethod
    def _model_defaults(cls, value):
        return value if value is not None else {}


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming every bad key and what is wrong with it."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message}")
    return f"{source}: invalid configuration: " + "; ".join(lines)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. training.epochs=5)")
        dotted, _, text = item.partition("=")
        parts = dotted.split(".")
        if not all(part.strip() for part in parts):
            raise ConfigError(f"override '{item}': '{dotted}' is not a key such as training.epochs")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({str(exc).splitlines()[0]})") from None
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return raw


def parse_config(raw: dict, source: str = "<config>") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a configuration must be a mapping of sections (data, model, training, ...)")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def read_yaml(path: str | Path, overrides: list[str] | None = None, what: str = "configuration") -> dict:
    """A YAML mapping from ``path`` with ``key=value`` overrides applied; clear errors on bad files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what} file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of keys to values (this file holds a {type(raw).__name__})")
    return apply_overrides(raw, overrides or [])


def read_validated(path: str | Path, schema: type[BaseModel], overrides: list[str] | None = None, what: str = "configuration"):
    """A YAML file (with ``key=value`` overrides) validated as ``schema``; every error names its key."""
    raw = read_yaml(path, overrides, what=what)
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply overrides, validate."""
    return parse_config(read_yaml(path, overrides), str(path))


def config_to_dict(config: Config) -> dict[str, Any]:
    return config.model_dump(mode="json")
