"""Presets: params.yaml is what `dvc exp run` composes (DVC's Hydra composition, configs/compose.yaml), each preset
composes into params the schema accepts, and `dvc exp run -S presets=<name>` trains on a tiny stand-in of its model."""

from __future__ import annotations

import configparser
import json

import pytest
import yaml

from finetune import params
from tests.conftest import ROOT, tiny_falcon
from tests.tiny_pipeline import HYDRA, clone, dvc, ran_stages, redone_stages

PRESETS = sorted(path.stem for path in (ROOT / "presets").glob("*.yaml"))
MODEL_SECTIONS = ("base_model", "quantization", "lora")  # what a preset sets whole


def compose(tmp_path, overrides: list[str]) -> str:
    """params.yaml as `dvc exp run -S <overrides>` writes it in this checkout (DVC's own function)."""
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(ROOT), None, HYDRA["config_name"], "", overrides)
    return out.read_text(encoding="utf-8")


def test_dvc_composes_params_yaml_with_the_settings_the_tests_use():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert dict(config["hydra"]) == HYDRA


def test_params_yaml_is_byte_for_byte_what_an_experiment_writes_so_its_diff_is_the_change_alone(tmp_path):
    assert compose(tmp_path, []) == (ROOT / "params.yaml").read_text(encoding="utf-8")
    changed = compose(tmp_path, ["lora.r=32"]).splitlines()
    before = (ROOT / "params.yaml").read_text(encoding="utf-8").splitlines()
    assert [(a, b) for a, b in zip(before, changed) if a != b] == [("  r: 16", "  r: 32")]


def test_the_readme_names_the_presets_and_its_7b_command_is_a_presets():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert {"falcon-7b-qlora", "llama-2-7b-qlora", "smollm2-135m"} <= set(PRESETS)
    assert "dvc exp run -S presets=falcon-7b-qlora" in readme


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_composes_into_params_the_schema_accepts_and_leaves_the_tasks_alone(tmp_path, preset):
    composed = yaml.safe_load(compose(tmp_path, [f"presets={preset}"]))
    preset_values = yaml.safe_load((ROOT / "presets" / f"{preset}.yaml").read_text())
    current = yaml.safe_load((ROOT / "params.yaml").read_text())
    checked = params.validate(composed, f"presets/{preset}.yaml")
    for section, values in preset_values.items():
        assert composed[section] == {**current[section], **values}
    assert set(MODEL_SECTIONS) <= set(preset_values) and checked.train.method == preset_values["train"]["method"]
    assert composed["tasks"] == current["tasks"]


def test_the_default_preset_is_params_yaml(tmp_path):
    assert yaml.safe_load(compose(tmp_path, ["presets=smollm2-135m"])) == yaml.safe_load(
        (ROOT / "params.yaml").read_text())


@pytest.fixture(scope="module")
def repo(tiny_pipeline, tmp_path_factory):
    """A clone of the tiny pipeline, whose base model (a tiny Llama) stands in for the embedded one and Llama-2-7B."""
    return clone(tiny_pipeline, tmp_path_factory.mktemp("presets") / "repo")


def add_tiny_falcon(repo, tokenizer) -> None:
    """A tiny Falcon beside the tiny Llama: Falcon-7B's stand-in, added as a user adds a model of their own."""
    falcon = repo / "models/base/tiny-falcon"
    if falcon.is_dir():
        return
    tiny_falcon(len(tokenizer)).save_pretrained(falcon)
    tokenizer.save_pretrained(falcon)
    dvc(repo, "add", "-q", "models/base/tiny-falcon")
    dvc(repo, "git", "add", "-A")
    dvc(repo, "git", "commit", "-qm", "a tiny Falcon")


@pytest.mark.parametrize("preset", ["smollm2-135m", "llama-2-7b-qlora"])
def test_a_preset_whose_stand_in_is_the_default_base_changes_nothing(repo, preset):
    """The Llama preset sets what params.yaml has for the embedded default, so on the tiny Llama nothing reruns."""
    output = dvc(repo, "exp", "run", "-S", f"presets={preset}", "-S", "base_model.name=models/base/tiny")
    assert ran_stages(output) == set(), output
    assert params.load_yaml(repo / "params.yaml")["lora"] == yaml.safe_load(
        (ROOT / "presets" / f"{preset}.yaml").read_text())["lora"]


def test_dvc_exp_run_with_the_falcon_preset_trains_its_stand_in(repo, tokenizer):
    add_tiny_falcon(repo, tokenizer)
    output = dvc(repo, "exp", "run", "-S", "presets=falcon-7b-qlora", "-S", "base_model.name=models/base/tiny-falcon",
                 "train_qlora")
    assert "train_qlora" in redone_stages(output), output
    applied = params.validate(params.load_yaml(repo / "params.yaml"))
    preset_values = yaml.safe_load((ROOT / "presets" / "falcon-7b-qlora.yaml").read_text())
    assert applied.lora.model_dump() == preset_values["lora"] and applied.train.method == "qlora"
    run = json.loads((repo / "models/adapter/run.json").read_text())
    assert run["base_model"]["name"] == "models/base/tiny-falcon"
    assert json.loads((repo / "models/base/tiny-falcon/config.json").read_text())["architectures"] == [
        "FalconForCausalLM"]
