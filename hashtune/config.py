"""One frozen, typed configuration: defaults -> YAML file -> dotted `key=value` overrides.

The dotted names (`model.bits`, `loss.gamma`, ...) are a public contract: search spaces, MLflow params
and reports all use them. Unknown keys, wrong types and invalid choices are rejected with one line
naming the key and what would be valid. The defaults are the tuned preset for the embedded digits
data: a 4-block, width-64 ViT on 8x8 images that trains on 2 CPU cores in a few minutes. The loss and
optimiser values (and K = 3) are the best trial of the `tune` study, made the defaults after it beat
the previous ones on 5 fresh seeds (`results/defaults_vs_tuned/`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hashtune.errors import InputError
from hashtune.paths import atomic_write_text
from hashtune.strict_yaml import YamlError, read_yaml

__all__ = [
    "ConfigError",
    "check_schedule",
    "config_from_params",
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "TrainConfig",
    "EvalConfig",
    "Config",
    "load_config",
    "read_config_file",
    "apply_overrides",
    "parse_overrides",
    "config_from_dict",
    "to_flat_dict",
    "save_config",
    "require_val_metric",
    "SEED_KEYS",
]

SEED_KEYS = ("train.seed", "data.seed")
"""The keys a seed replicate sets (a study's `seeds`)."""


class ConfigError(InputError):
    """A configuration value that hashtune cannot use; the message names the key and the valid values."""


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    """Dataset and protocol: `digits` (embedded), `cifar10`, `cifar10-1`, `cifar10-2` (DeepHash-pytorch's),
    `listfile`."""
    root: str = ""
    """Folder of the CIFAR-10 batches or of the list files (unused for digits)."""
    seed: int = 0
    """Seed of the train / val / test / database split."""
    val_per_class: int | None = None
    """Val queries per class (null: the protocol's; 0: none, the paper's exact database, last-epoch selection)."""
    protocol: str = ""
    """List files only: `nuswide21`, `imagenet100` or `coco` sets the literature's mAP cut-off."""
    num_workers: int = 0
    """DataLoader worker processes (0 loads in the training process)."""


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "vit_tiny_patch16_224"
    """Any timm ViT name; the size fields below override its registered values when not null."""
    pretrained: str = ""
    """Local weight file (`.pth` / `.safetensors`), or empty to train from scratch."""
    img_size: int | None = 8
    patch_size: int | None = 2
    depth: int | None = 4
    embed_dim: int | None = 64
    num_heads: int | None = 4
    bits: int = 32
    k_groups: int = 3
    """Number of local groups K."""
    dual_stream: bool = True
    """False is the w/o P ablation (global branch only)."""
    drop_path_rate: float = 0.0


@dataclass(frozen=True)
class LossConfig:
    prob: str = "cauchy"
    """Pair probability: `cauchy` (TransHash) or `sigmoid` (the w/o C ablation)."""
    gamma: float = 3.82676335759981
    """Scale of the Cauchy distribution."""
    quant_weight: float = 0.07024069737944034
    """lambda: weight of the Cauchy quantization loss (0 is the w/o Q ablation)."""
    cls_weight: float = 0.09054962169221147
    """Weight of the classification loss (He & Wei); 0 drops it."""
    gamma_a: float = 200.0
    """Asymmetric strategy: weight tying a sampled image's learned code to its network code (ADSH's gamma)."""


@dataclass(frozen=True)
class TrainConfig:
    strategy: str = "symmetric"
    """`symmetric` (TransHash, in-batch pairs) or `asymmetric` (He & Wei / ADSH, learned database codes)."""
    optimizer: str = "adamw"
    lr: float = 0.0035618334412282947
    weight_decay: float = 0.05537917070404719
    batch_size: int = 64
    """Global batch size (split over Ray Train workers)."""
    epochs: int = 300
    """Epochs; for the asymmetric strategy, outer iterations of `asym_inner_epochs` passes over a sample."""
    warmup_epochs: int = 10
    """Epochs of linear learning-rate warmup before the cosine decay; below `epochs` (0 for none)."""
    eval_every: int = 25
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    grad_clip: float = 1.0
    """Max gradient norm (0 disables clipping)."""
    asym_sample_size: int = 250
    """Asymmetric strategy: training images sampled per outer iteration."""
    asym_inner_epochs: int = 2
    """Asymmetric strategy: passes over the sample per outer iteration, with the learned codes fixed."""


@dataclass(frozen=True)
class EvalConfig:
    topk: int | None = None
    """mAP@topk; null takes the protocol's cut-off (CIFAR-10 and digits: the whole database)."""
    precision_at: int = 100
    """N of `test/precision_at_N`."""
    ties: str = "index"
    """Equal Hamming distances: `index` (database order, DeepHash-pytorch's stable sort) or `average` (exact
    expected AP over random orders within ties); both are logged as `*/mAP_ties_index` and `*/mAP_ties_average`."""
    database_codes: str = "encoder"
    """Database codes at evaluation: `encoder`, or `learned` (asymmetric strategy: the learned B of database
    items that are training images, as ADSH evaluates; the encoder for the rest)."""


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def replace(self, overrides: dict[str, Any]) -> Config:
        """A new config with dotted overrides applied (and validated); this one is unchanged."""
        return apply_overrides(self, overrides)


CHOICES: dict[str, tuple] = {
    "data.name": ("digits", "cifar10", "cifar10-1", "cifar10-2", "listfile"),
    "data.protocol": ("", "nuswide21", "imagenet100", "coco"),
    "loss.prob": ("cauchy", "sigmoid"),
    "train.strategy": ("symmetric", "asymmetric"),
    "train.optimizer": ("sgd", "adamw"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("fp32", "bf16"),
    "eval.database_codes": ("encoder", "learned"),
    "eval.ties": ("index", "average"),
}
POSITIVE = set(
    "model.bits model.k_groups model.img_size model.patch_size model.depth model.embed_dim model.num_heads loss.gamma "
    "train.lr train.batch_size train.epochs train.eval_every train.asym_sample_size train.asym_inner_epochs eval.topk "
    "eval.precision_at".split()
)
NON_NEGATIVE = set(
    "loss.quant_weight loss.cls_weight loss.gamma_a train.weight_decay train.warmup_epochs train.grad_clip "
    "data.num_workers model.drop_path_rate data.val_per_class".split()
)


@functools.cache
def _field_types(section_class: type) -> dict[str, Any]:
    return typing.get_type_hints(section_class)  # evaluates the annotations: once per class, not per config


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " or ".join("null" if arg is type(None) else arg.__name__ for arg in typing.get_args(annotation))
    return annotation.__name__


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against the field's type; ints are accepted for floats, nothing else is converted."""
    allowed = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool) and type(value) is kind:
            return value
    raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {type(value).__name__} {value!r}")


MAX_BITS = 255
"""The longest code the exact mAP kernels rank (`hashtune.ranking` packs a distance into 8 bits)."""
MINIMUM = {"train.batch_size": (2, "the pair losses compare the images of a batch with each other")}
MAXIMUM = {"model.bits": (MAX_BITS, "the exact mAP kernels rank Hamming distances of at most 255")}


def _check_value(key: str, value: Any) -> None:
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key}: expected one of {', '.join(CHOICES[key])}, got {value!r}")
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    if key in POSITIVE and not value > 0:
        raise ConfigError(f"{key}: expected a positive number, got {value!r}")
    if key in NON_NEGATIVE and not value >= 0:
        raise ConfigError(f"{key}: expected a number >= 0, got {value!r}")
    if key in MINIMUM and value < MINIMUM[key][0]:
        raise ConfigError(f"{key}: expected at least {MINIMUM[key][0]} ({MINIMUM[key][1]}), got {value!r}")
    if key in MAXIMUM and value > MAXIMUM[key][0]:
        raise ConfigError(f"{key}: expected at most {MAXIMUM[key][0]} ({MAXIMUM[key][1]}), got {value!r}")


def check_schedule(config: Config) -> None:
    """Refuse a warmup the run never finishes: its learning rate would never reach `train.lr`."""
    if (warmup := config.train.warmup_epochs) and warmup >= (epochs := config.train.epochs):
        raise ConfigError(
            f"train.warmup_epochs={warmup} is not below train.epochs={epochs}: the learning rate would never reach "
            f"train.lr; give train.warmup_epochs in [0, {epochs - 1}]"
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Apply dotted (or nested) overrides to `config`, validating every key, type and value."""
    values = to_flat_dict(config)
    valid = set(values)
    for key, value in _flatten(overrides).items():
        if key not in valid:
            section = key.split(".")[0]
            near = [k for k in sorted(valid) if k.startswith(f"{section}.")] or sorted(valid)
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(near)}")
        values[key] = value
    sections = {}
    for section, cls in _field_types(Config).items():
        kwargs = {}
        for name, annotation in _field_types(cls).items():
            key = f"{section}.{name}"
            kwargs[name] = _coerce(key, values[key], annotation)
            _check_value(key, kwargs[name])
        sections[section] = cls(**kwargs)
    config = Config(**sections)
    _check_model_shape(config.model)
    if config.eval.database_codes == "learned" and config.train.strategy != "asymmetric":
        raise ConfigError(
            "eval.database_codes='learned' needs train.strategy=asymmetric (only it learns database codes); use encoder"
        )
    return config


def _check_model_shape(model: ModelConfig) -> None:
    """Cross-field rules of the ViT: heads divide the width, patches tile the image, K groups fit the patches."""
    if model.embed_dim is not None and model.num_heads is not None and model.embed_dim % model.num_heads:
        heads = [h for h in range(1, model.embed_dim + 1) if model.embed_dim % h == 0 and h <= 16]
        raise ConfigError(
            f"model.embed_dim={model.embed_dim} is not divisible by model.num_heads={model.num_heads}; "
            f"use num_heads in {heads} or an embed_dim that is a multiple of {model.num_heads}"
        )
    if model.img_size is None or model.patch_size is None:
        return
    if model.img_size % model.patch_size:
        sizes = [p for p in range(1, model.img_size + 1) if model.img_size % p == 0]
        raise ConfigError(
            f"model.patch_size={model.patch_size} does not tile model.img_size={model.img_size}; "
            f"use a patch_size in {sizes}"
        )
    patches = (model.img_size // model.patch_size) ** 2
    if model.dual_stream and model.k_groups > patches:
        raise ConfigError(
            f"model.k_groups={model.k_groups} exceeds the {patches} patch tokens of a {model.img_size}px image "
            f"in {model.patch_size}px patches; use k_groups <= {patches} or a smaller patch_size"
        )


def config_from_dict(tree: dict[str, Any]) -> Config:
    """A config from a nested or dotted dict (a YAML file, a checkpoint, MLflow params)."""
    return apply_overrides(Config(), tree)


def config_from_params(params: dict[str, str]) -> Config:
    """A config from MLflow params (every value logged as `str(value)`); keys that are not config keys are ignored."""
    valid = set(to_flat_dict(Config()))
    return apply_overrides(Config(), {key: _param_value(key, text) for key, text in params.items() if key in valid})


@functools.lru_cache(maxsize=65_536)
def _param_value(key: str, text: str) -> Any:
    """One MLflow param read back (a report reads thousands of runs that share most of their values)."""
    return None if text == "None" else parse_overrides([f"{key}={text}"])[key]


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["model.bits=64", "train.lr=1e-3"]` -> typed values (YAML 1.2 scalars: `null`, `true`, `1e-3`)."""
    overrides: dict[str, Any] = {}
    given: dict[str, str] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not key=value, e.g. model.bits=64")
        try:
            value = read_yaml(text) if text.strip() else ""
        except YamlError as error:
            raise ConfigError(f"override {pair!r}: {error}") from None
        if isinstance(value, str) and _looks_numeric(text):
            value = float(text)  # inf, nan: refused as non-finite with the key named
        if key.strip() in given:  # the last would win silently
            raise ConfigError(
                f"override key {key.strip()!r} is given twice, as {given[key.strip()]!r} and {pair!r}; give it once"
            )
        overrides[key.strip()], given[key.strip()] = value, pair
    return overrides


def _looks_numeric(text: str) -> bool:
    with contextlib.suppress(ValueError):
        return float(text) is not None
    return False


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file (nested sections or dotted keys), or one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        tree = read_yaml(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except YamlError as error:
        raise ConfigError(f"config file {path}: {error}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config keys, got {type(tree).__name__}")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file at `path` (nested sections or dotted keys), then `overrides`, validated once
    as a whole (so a file and an override may change two fields that must agree)."""
    values = _flatten(read_config_file(path)) if path is not None else {}
    if overrides:
        values |= _flatten(parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    return apply_overrides(Config(), values)


def to_flat_dict(config: Config) -> dict[str, Any]:
    """`{"data.name": "digits", ...}`: the MLflow params, the search-space keys."""
    return {
        f"{section}.{name}": getattr(values, name)  # every field is a scalar: nothing to copy (`asdict` took 0.3 ms)
        for section in _field_types(Config)
        for values in (getattr(config, section),)
        for name in _field_types(type(values))
    }


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as nested YAML (readable back with `load_config`)."""
    atomic_write_text(path, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def require_val_metric(metric: str) -> str:
    """`metric` if it is a validation metric (`val/...`); selection and early stopping never see test data."""
    if not isinstance(metric, str) or metric.split("/")[0] != "val":
        raise ConfigError(
            f"metric {metric!r} would select on non-validation data; use a val/* metric such as val/best_mAP"
        )
    return metric
