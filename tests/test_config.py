"""Configs: typed, frozen, unknown keys and wrong types named; every YAML preset loads."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from elasticity.cli import COMMANDS, main
from elasticity.config import config_hash, from_dict, load_config, read_yaml, to_dict
from elasticity.errors import UserError
from elasticity.train.command import Config as TrainCommandConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_unknown_keys_and_wrong_types_are_named():
    with pytest.raises(UserError, match="unknown config key 'train.lrr'"):
        from_dict(TrainCommandConfig, {"train": {"lrr": 1}})
    with pytest.raises(UserError, match="'train.lr' must be a number"):
        from_dict(TrainCommandConfig, {"train": {"lr": "fast"}})
    with pytest.raises(UserError, match=r"'train.betas' must have 2 items"):
        from_dict(TrainCommandConfig, {"train": {"betas": [0.9]}})
    with pytest.raises(UserError, match="'train.batch_size' must be an integer"):
        from_dict(TrainCommandConfig, {"train": {"batch_size": 1.5}})


def test_flags_override_file_and_configs_are_frozen(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: a.jsonl\ntrain:\n  lr: 0.001\n  betas: [0.8, 0.9]\n")
    cfg = load_config(TrainCommandConfig, f, {"train.lr": 0.5})
    assert cfg.train.lr == 0.5 and cfg.train.betas == (0.8, 0.9) and cfg.data == "a.jsonl"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data = "b"  # type: ignore[misc]
    assert config_hash(cfg) == config_hash(load_config(TrainCommandConfig, f, {"train.lr": 0.5}))
    assert config_hash(cfg) != config_hash(load_config(TrainCommandConfig, f))


def test_config_file_errors_exit_2(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("trainn: {}\n")
    assert main(["train", "--config", str(f)]) == 2
    assert "unknown config key 'trainn'" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert f"config file not found: {tmp_path / 'none.yaml'}" in capsys.readouterr().err


@pytest.mark.parametrize("preset", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads(preset):
    """A preset's file name starts with its command: `world-small.yaml` is a config of `elasticity world`."""
    command = preset.stem.split("-")[0]
    assert command in COMMANDS, f"{preset.name} must be named after its command ({', '.join(COMMANDS)})"
    module = importlib.import_module(COMMANDS[command][0])
    loaded = to_dict(load_config(module.Config, preset))

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield prefix + key, value

    values = dict(leaves(read_yaml(preset)))
    assert values, f"{preset.name} sets nothing"
    for key, value in values.items():  # every value of the file is the loaded config's value, none dropped
        node = loaded
        for part in key.split("."):
            node = node[part]
        assert node == value, key


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert "--config" in capsys.readouterr().out


def test_a_section_given_in_part_keeps_its_parents_defaults(tmp_path):
    """`--train.lr` on `pretrain` changes the lr only: the pre-training recipe's batch etc. stay."""
    from elasticity.experiments.pretrain import PRETRAIN
    from elasticity.experiments.pretrain import Config as PretrainConfig

    cfg = load_config(PretrainConfig, None, {"train.lr": 0.01})
    assert cfg.train.lr == 0.01
    assert (cfg.train.batch_size, cfg.train.max_length, cfg.train.log_every) == (
        PRETRAIN.batch_size, PRETRAIN.max_length, PRETRAIN.log_every)
    assert cfg.train.batch_size != TrainCommandConfig().train.batch_size  # the section class's own default
    preset = load_config(PretrainConfig, CONFIGS / "pretrain.yaml")
    assert config_hash(preset) == config_hash(PretrainConfig())  # the preset spells out the defaults


@dataclasses.dataclass(frozen=True)
class _Documented:
    """A config class documented both ways.

    Attributes:
        label: what is written on it
            (and it goes on)
    """

    size: int = 1  # how big,
    # in units
    label: str = ""
    colour: tuple[int, int] = (0,
                               1)  # red and green


@dataclasses.dataclass(frozen=True)
class _Inherited(_Documented):
    extra: bool = False  # one more


def test_field_docs_read_comments_and_docstrings():
    from elasticity.config import field_docs

    assert field_docs(_Inherited) == {"size": "how big, in units", "label": "what is written on it (and it goes on)",
                                      "colour": "red and green", "extra": "one more"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_has_its_field_documentation_as_help(command, capsys):
    """Each config field's comment (or docstring entry) is its --help text: none is left undocumented."""
    from elasticity.config import leaf_fields

    module = importlib.import_module(COMMANDS[command][0])
    fields = leaf_fields(module.Config)
    assert [key for key, _, _, doc in fields if not doc] == []
    assert main([command, "--help"]) == 0
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps the help text (also at hyphens)
    for key, _, _, doc in fields:
        assert (f"--{key}V" in shown or f"--{key}[V]" in shown) and "".join(doc.split()) in shown, key
