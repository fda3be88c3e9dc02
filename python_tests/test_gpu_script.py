"""scripts/gpu_check.sh (the GPU checks, docs/gpu.md): the script parses, and every stage's command
line is accepted by the command it runs (the benchmarks' and `hald train`'s own argument parsers), so a
device call never fails for a typo. The full CPU rehearsal (both parts, a few minutes here) is in
docs/gpu.md."""
import argparse
import os
import runpy
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


def commands(tmp_path) -> dict:
    out = subprocess.run(["bash", SCRIPT, "commands"], env={**os.environ, "OUT": str(tmp_path)}, capture_output=True,
                         text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_script_parses_and_refuses_an_unknown_part(tmp_path):
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0
    r = subprocess.run(["bash", SCRIPT, "C"], capture_output=True, text=True, env={**os.environ, "OUT": str(tmp_path)})
    assert r.returncode == 2 and "usage" in r.stdout and not os.listdir(tmp_path)


class _Parsed(Exception):
    pass


def parse_only(monkeypatch, run):
    """Call `run()` until an argparse parser has read its arguments (an error there is SystemExit 2)."""
    parse = argparse.ArgumentParser.parse_args

    def stop(self, a=None, ns=None):
        parse(self, a, ns)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(_Parsed):
        run()


@pytest.mark.parametrize("var", ["LOSS_CMD", "CROP_CMD", "STEP_CMD"])
def test_benchmark_command_lines_are_accepted(var, tmp_path, monkeypatch):
    script, *args = commands(tmp_path)[var].split()
    script = os.path.join(ROOT, script)
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.syspath_prepend(os.path.dirname(script))
    parse_only(monkeypatch, lambda: runpy.run_path(script, run_name="__main__"))


def test_hald_train_command_line_is_accepted(tmp_path, monkeypatch):
    from hald_ext.cli import main

    args = ["train", "--data", "x.npz", "--labels", "y.safetensors", *commands(tmp_path)["TRAIN_ARGS"].split(),
            "--epochs", "3", "--device", "cuda"]
    parse_only(monkeypatch, lambda: main(args))


def test_test_selections_name_existing_files_and_tests(tmp_path):
    cmds = commands(tmp_path)
    ids = cmds["MEMCHECK_TESTS"].split() + cmds["RACECHECK_TESTS"].split()
    files = cmds["TESTS_1"].split() + cmds["TESTS_2"].split()
    for f in files + [i.split("::")[0] for i in ids]:
        assert os.path.isfile(os.path.join(ROOT, f)), f
    for i in ids:  # the test function exists (its parameter ids are checked by the rehearsal's collection)
        f, name = i.split("::")
        with open(os.path.join(ROOT, f)) as fh:
            assert f"def {name.split('[')[0]}(" in fh.read(), i
