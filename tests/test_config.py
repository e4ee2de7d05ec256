"""The typed config: precedence, round-trip, and one-line rejections."""

import pytest

from hashtune.config import Config, ConfigError, load_config, parse_overrides, save_config, to_flat_dict

PUBLIC_KEYS = """data.name data.root data.seed model.backbone model.pretrained model.img_size model.patch_size
model.depth
model.embed_dim model.bits model.k_groups model.dual_stream loss.prob loss.gamma loss.quant_weight loss.cls_weight
train.strategy train.optimizer train.lr train.weight_decay train.batch_size train.epochs train.warmup_epochs
train.eval_every train.seed train.device train.precision eval.topk""".split()


def test_public_names_exist():
    assert set(PUBLIC_KEYS) <= set(to_flat_dict(Config()))


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  bits: 64\n  k_groups: 4\nloss.gamma: 2.5\n")
    config = load_config(path, ["model.k_groups=3", "train.lr=1e-3", "eval.topk=null"])
    assert (config.model.bits, config.model.k_groups, config.loss.gamma, config.train.lr) == (64, 3, 2.5, 1e-3)
    assert config.eval.topk is None and config.data.name == "digits"


def test_round_trip_through_yaml_and_flat_dict(tmp_path):
    config = load_config(overrides=["loss.prob=sigmoid", "model.dual_stream=false", "loss.gamma=7"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert Config().replace(to_flat_dict(config)) == config


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().model.bits = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.bitz=3", r"unknown config key 'model.bitz'; valid keys: model.backbone"),
        ("optim.lr=3", r"unknown config key 'optim.lr'"),
        ("model.bits=abc", r"model.bits: expected int, got str 'abc'"),
        ("model.bits=32.5", r"model.bits: expected int, got float 32.5"),
        ("model.dual_stream=1", r"model.dual_stream: expected bool, got int 1"),
        ("loss.prob=gauss", r"loss.prob: expected one of cauchy, sigmoid, got 'gauss'"),
        ("train.strategy=both", r"train.strategy: expected one of symmetric, asymmetric"),
        ("train.lr=-1", r"train.lr: expected a positive number, got -1.0"),
        ("loss.quant_weight=-0.1", r"loss.quant_weight: expected a number >= 0"),
        ("eval.topk=0", r"eval.topk: expected a positive number"),
    ],
)
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(overrides=[override])
    assert "\n" not in str(error.value)


def test_bad_files_and_pairs(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["model.bits"])


def test_ints_are_accepted_for_floats():
    assert load_config(overrides=["loss.gamma=3"]).loss.gamma == 3.0
    assert isinstance(load_config(overrides=["loss.gamma=3"]).loss.gamma, float)


def test_every_error_hashtune_defines_derives_from_its_one_root():
    """The CLIs catch `HashtuneError` alone: an error class outside it would surface as a traceback."""
    import importlib
    import inspect
    import pkgutil

    import hashtune
    from hashtune.errors import HashtuneError

    outside = []
    for module_info in pkgutil.walk_packages(hashtune.__path__, "hashtune."):
        if module_info.name.endswith("__main__") or module_info.name.startswith("hashtune.search_spaces"):
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == module.__name__:
                if not issubclass(value, HashtuneError):
                    outside.append(f"{module.__name__}.{name}")
    assert outside == []
