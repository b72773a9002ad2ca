"""Config parsing: overrides, presets, method defaults and the errors users see."""

import subprocess
import sys
from pathlib import Path

import pytest

from crckd.config import Config, parse_override
from crckd.errors import ConfigError
from crckd.methods import load_config

REPO = Path(__file__).resolve().parents[1]


def test_override_parses_yaml_values_into_nested_keys():
    assert parse_override("train.epochs=2") == {"train": {"epochs": 2}}
    assert parse_override("model.pretrained=false") == {"model": {"pretrained": False}}
    assert parse_override("data.classes=[a, b]") == {"data": {"classes": ["a", "b"]}}


def test_override_without_equals_is_refused():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.epochs")


def test_unknown_key_is_named_with_a_suggestion():
    match = r"(?s)^the overrides: .*unknown key 'train\.epoch'.*did you mean 'train\.epochs'"
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=["train.epoch=3"])
    config = Path(__file__).parents[1] / "configs" / "ham10000" / "crckd.yaml"
    with pytest.raises(ConfigError, match=r"crckd\.yaml with the overrides: "):
        load_config(config, overrides=["train.epoch=3"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(overrides=["train.batch_size=many"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_with_python_tags_is_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_unknown_method_lists_known_ones():
    with pytest.raises(ConfigError, match=r"Known: .*crckd"):
        load_config(overrides=["method.name=crkd"])


def test_ablation_defaults_apply_and_user_overrides_win():
    assert load_config(overrides=["method.name=mt+crp"]).method.ccd.weight == 0.0
    config = load_config(overrides=["method.name=mt+crp", "method.ccd.weight=0.5"])
    assert config.method.ccd.weight == 0.5


def test_paper_faithful_preset_sets_reference_behaviour_under_user_values():
    config = load_config(overrides=["method.name=crckd", "method.preset=paper_faithful"])
    assert config.method.ccd.late_weight == 0.01
    assert config.method.ema.include_buffers is False
    assert config.method.ema.teacher_mode == "train"
    assert config.train.report_last_k == 11
    assert Config().method.ccd.late_weight is None
    overridden = load_config(overrides=["method.preset=paper_faithful", "train.report_last_k=5"])
    assert overridden.train.report_last_k == 5


PAPER_CONFIGS = sorted(
    [*(REPO / "configs" / "ham10000").glob("*.yaml"), *(REPO / "configs" / "aptos").glob("*.yaml")]
)


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=str)
def test_every_shipped_config_is_valid(path):
    load_config(path)


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=str)
def test_paper_configs_are_paper_sized(path):
    config = load_config(path)
    assert config.model.backbone == "densenet121"
    assert (config.data.image_size, config.train.epochs, config.train.batch_size) == (224, 80, 64)


def _keys(model, prefix=""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _keys(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_docs_list_every_config_key():
    documented = (REPO / "docs" / "config.md").read_text()
    missing = [key for key in _keys(Config) if f"`{key}`" not in documented]
    assert not missing


def test_reading_a_config_imports_neither_torch_nor_timm(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: {name: crckd, preset: paper_faithful}\ntrain: {epochs: 2}\n")
    script = (
        "import sys\n"
        "from crckd.config import read_yaml, validate_config\n"
        f"config = validate_config(read_yaml({str(path)!r}), method_defaults=lambda name: {{}})\n"
        "assert config.train.report_last_k == 11, config\n"
        "assert not {'torch', 'timm'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
