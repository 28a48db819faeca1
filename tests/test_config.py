"""Configs: typed, frozen, unknown keys and wrong types named; every YAML preset loads."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from elasticity.cli import COMMANDS, main
from elasticity.config import config_hash, from_dict, load_config, read_yaml
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


@pytest.mark.parametrize("preset", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads(preset):
    """A preset's file name starts with its command: `world-small.yaml` is a config of `elasticity world`."""
    command = preset.stem.split("-")[0]
    assert command in COMMANDS, f"{preset.name} must be named after its command ({', '.join(COMMANDS)})"
    module = importlib.import_module(COMMANDS[command][0])
    load_config(module.Config, preset)
    assert read_yaml(preset) is not None


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
