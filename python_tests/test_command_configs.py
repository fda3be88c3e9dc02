"""Every `hald` command's typed config: grouped --help, choices from the library's enumerations, one
layering (defaults < --config YAML < flags), unknown keys refused by name, and the old spellings of
renamed options accepted with one deprecation line -- in flags, YAML files and sweep presets, where a
renamed key keeps the stage ids (hashes) of the old one."""
import argparse
import dataclasses
import importlib
import re

import pytest

from hald_ext.cli import COMMANDS, main
from hald_ext.data.stream import BACKENDS
from hald_ext.labels.format import DECODES
from hald_ext.labels.quantizer import KINDS as QUANTIZERS
from hald_ext.sweep import make_plan, validate
from hald_ext.train import options as C
from hald_ext.train.config import TrainConfig, parse_config

CONFIGS = {name: importlib.import_module(mod) for name, (mod, _) in COMMANDS.items()}


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [[c] for c in COMMANDS if c not in ("info", "labels")]
                         + [["labels", s] for s in ("info", "import-fkd", "import-sre2l", "transform")])
def test_every_command_help_is_grouped(argv, capsys):
    text = _help(argv, capsys)
    groups = re.findall(r"^([a-z][a-z ()]+):$", text, flags=re.M)
    assert len(set(groups) - {"options", "positional arguments", "config"}) >= 2, (argv, groups)
    assert "(default: None)" not in text


def test_top_level_help_has_whole_sentences(capsys):
    text = _help([], capsys)
    description = " ".join(text.split("\n\n")[1].split())
    assert description.endswith("soft-label distillation.")
    for name, mod in CONFIGS.items():
        if name != "labels":
            p = argparse.ArgumentParser()
            mod.add_arguments(p)
            assert p.description.endswith("."), name


ENUMS = {"loader": BACKENDS, "decode": DECODES, "quantizer": QUANTIZERS}


def test_enumerated_options_have_the_library_choices():
    seen = 0
    for name, mod in CONFIGS.items():
        classes = [mod.CONFIG] if hasattr(mod, "CONFIG") else [c for c, _, _ in getattr(mod, "SUBCOMMANDS", {}).values()]
        for cls in classes:
            for f in dataclasses.fields(cls):
                if f.name in ENUMS:
                    assert f.metadata["choices"] == ENUMS[f.name], (name, f.name)
                    seen += 1
                if f.name in ("mode", "format", "file_mode", "teacher_bn", "soft_loss", "batch_source", "flavor",
                              "bits"):
                    assert f.metadata["choices"], (name, f.name)
    assert seen >= 7


def test_yaml_then_flags_and_errors_name_the_key(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 1e-3\nepochs: 12\nloader: torch\n")
    cfg = parse_config(["-c", str(cfg_file), "--epochs", "3"])
    assert (cfg.lr, cfg.epochs, cfg.loader) == (0.001, 3, "torch")
    cfg_file.write_text("loader: pil\n")
    with pytest.raises(C.ConfigError, match="loader: 'pil' is not one of auto, dali, torch"):
        parse_config(["-c", str(cfg_file)])
    cfg_file.write_text("epoch: 3\n")
    with pytest.raises(C.ConfigError, match="unknown option 'epoch'"):
        parse_config(["-c", str(cfg_file)])
    assert main(["select", "-c", str(cfg_file), "--out", str(tmp_path / "x.npz")]) == 2
    assert "unknown option 'epoch'" in capsys.readouterr().err


@pytest.mark.parametrize("old,new,field,value", [
    (["--slots-per-epoch", "2"], "--crops-per-epoch", "crops_per_epoch", 2),
    (["--rrc-scale", "0.3", "1"], "--scale", "scale", (0.3, 1.0)),
])
def test_train_old_flags_work_with_one_deprecation_line(old, new, field, value, capsys):
    C._WARNED.clear()
    cfg = parse_config(old + old)
    assert getattr(cfg, field) == value
    err = capsys.readouterr().err
    assert err.count("deprecated") == 1 and f"use {new}" in err


def test_old_yaml_keys_and_constructor_names(tmp_path, capsys):
    C._WARNED.clear()
    f = tmp_path / "old.yaml"
    f.write_text("slots_per_epoch: 0\nrrc_scale: [0.2, 1.0]\n")
    cfg = parse_config(["-c", str(f)])
    assert cfg.crops_per_epoch == 0 and cfg.scale == (0.2, 1.0)
    err = capsys.readouterr().err
    assert "slots_per_epoch is deprecated" in err and "use crops_per_epoch" in err
    assert TrainConfig(slots_per_epoch=3).crops_per_epoch == 3 and TrainConfig(crops_per_epoch=3).slots_per_epoch == 3
    f.write_text("slots_per_epoch: 0\ncrops_per_epoch: 1\n")
    with pytest.raises(C.ConfigError, match="given twice"):
        parse_config(["-c", str(f)])


def _parse(command, argv):
    p = argparse.ArgumentParser(prog=f"hald {command}")
    mod = CONFIGS[command]
    mod.add_arguments(p)
    return C.resolve_config(mod.CONFIG, p.parse_args(argv), f"hald {command}")


def test_other_commands_old_spellings(capsys):
    C._WARNED.clear()
    r = _parse("relabel", ["imgs", "--model", "convnet3", "--out", "l.safetensors", "--size", "32",
                           "--crops-per-image", "4"])
    assert r.img_size == [32] and r.sli == 4 and r.model == ["convnet3"]
    assert _parse("lvsd", ["--data", "d", "--size", "24"]).img_size == 24
    assert _parse("teacher", ["--rrc-scale", "0.5", "1"]).scale == (0.5, 1.0)
    err = capsys.readouterr().err
    for old, new in (("--size", "--img-size"), ("--crops-per-image", "--sli"), ("--rrc-scale", "--scale")):
        assert f"{old} is deprecated" in err and f"use {new}" in err


def test_train_old_output_and_experiment_make_the_same_run_folder(capsys):
    from hald_ext.train.cli import run_dir_for

    assert run_dir_for(parse_config(["--out", "runs/x"])) == "runs/x"
    assert run_dir_for(parse_config(["--output", "runs", "--experiment", "x"])) == "runs/x"


def _sweep(train, teacher=None):
    return {"name": "t", "seeds": [0, 1], "device": "cpu", "teacher": teacher or {"data": "t.npz", "epochs": 1},
            "select": {"data": "t.npz", "ipc": 2}, "relabel": {"k": 3}, "lvsd": {"crops": 4}, "train": train,
            "axes": {"train.schedule": ["hald", "hard-only"], "relabel.sli": [1, 2]}}


def test_sweep_new_and_old_keys_plan_the_same_stages(tmp_path, capsys):
    C._WARNED.clear()
    old = make_plan(validate(_sweep({"epochs": 2, "slots_per_epoch": 1, "rrc_scale": [0.3, 1]},
                                    {"data": "t.npz", "epochs": 1, "rrc_scale": [0.5, 1]})), str(tmp_path))
    assert "train.slots_per_epoch is deprecated" in capsys.readouterr().err
    new = make_plan(validate(_sweep({"epochs": 2, "crops_per_epoch": 1, "scale": [0.3, 1]},
                                    {"data": "t.npz", "epochs": 1, "scale": [0.5, 1]})), str(tmp_path))
    assert list(old.stages) == list(new.stages)
    assert [s.argv for s in old.stages.values()] == [s.argv for s in new.stages.values()]
    train = next(s for s in new.stages.values() if s.kind == "train")
    assert "--crops-per-epoch" in train.argv and "--out" in train.argv and "slots_per_epoch" in train.options
    # a value of the wrong type, or outside an option's choices, names the key
    with pytest.raises(ValueError, match="train.crops_per_epoch: cannot read 'one'"):
        validate(_sweep({"crops_per_epoch": "one"}))
    with pytest.raises(ValueError, match="train.decode: 'top' is not one of marginal"):
        validate(_sweep({"decode": "top"}))


def test_label_transform_is_labels_transform(tmp_path, capsys):
    assert main(["label-transform", str(tmp_path / "missing.safetensors"), str(tmp_path / "y"), "--mode", "swap"]) == 2
    err = capsys.readouterr().err
    assert "use `hald labels transform`" in err and "hald labels transform: error:" in err


def test_required_options_come_from_flags_or_the_config_file(tmp_path, capsys):
    f = tmp_path / "relabel.yaml"
    f.write_text("model: [convnet3]\ncheckpoint: [t.pth]\nout: l.safetensors\nsli: 2\n")
    r = _parse("relabel", ["imgs", "-c", str(f), "--sli", "3"])
    assert (r.model, r.checkpoint, r.out, r.sli) == (["convnet3"], ["t.pth"], "l.safetensors", 3)
    with pytest.raises(C.ConfigError, match="--out is required"):
        _parse("relabel", ["imgs", "--model", "convnet3"])
    assert main(["select", "--data", "fashion-mnist"]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_a_saved_run_configuration_reads_back(tmp_path):
    cfg = parse_config(["--crops-per-epoch", "2", "--scale", "0.2", "1", "--out", "runs/x", "--decode", "renorm"])
    cfg.save(str(tmp_path / "args.yaml"))
    assert parse_config(["-c", str(tmp_path / "args.yaml")]) == cfg
