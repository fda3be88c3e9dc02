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


@pytest.mark.parametrize("var", ["LOSS_CMD", "CROP_CMD", "STEP_CMD", "PROFILE_CMD"])
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
    ids = cmds["MEMCHECK_TESTS"].split() + cmds["RACECHECK_TESTS"].split() + cmds["PROBE_TESTS"].split()
    files = cmds["TESTS_1"].split() + cmds["TESTS_2"].split()
    for f in files + [i.split("::")[0] for i in ids]:
        assert os.path.isfile(os.path.join(ROOT, f)), f
    for i in ids:  # the test function exists (its parameter ids are checked by the rehearsal's collection)
        f, name = i.split("::")
        with open(os.path.join(ROOT, f)) as fh:
            assert f"def {name.split('[')[0]}(" in fh.read(), i


FAKES = {  # a stand-in GPU machine: every call is logged, nothing runs
    "nvidia-smi": 'echo "NVIDIA H200, 580.0, 143771 MiB"',
    "compute-sanitizer": 'echo "sanitizer $*" >>"$CALLS"; while [[ "$1" == --* && $# -gt 1 ]]; do shift 2; done; "$@"',
    "ncu": 'echo "ncu $*" >>"$CALLS"; while [[ "$1" == -* && $# -gt 1 ]]; do shift 2; done; "$@"',
    "python": """echo "python $* [arch=$TORCH_CUDA_ARCH_LIST jobs=$MAX_JOBS${CXX:+ cxx=$CXX cc=$CC}]" >>"$CALLS"
[[ "$*" == *build_ext* ]] && echo "${CXX:-default}" >"$CALLS.cxx"
case "$1" in
  -c) case "$2" in *get_device_name*) echo NVIDIA_H200;; *json.dumps*) echo '{"cuda_available": true}';; esac;;
  -) cat >/dev/null;;
  -m) [[ "$2" == pytest ]] && echo "3 passed in 0.1s"
      # CRASH_PROBE: the probe tests crash the process unless the build used the system compiler
      [[ -n "${CRASH_PROBE:-}" && "$*" == *overlapping_rows* && "$(cat "$CALLS.cxx")" != */sys/g++ ]] && exit 139;;
esac
exit 0""",
}


def test_gpu_paths_run_every_stage_in_order(tmp_path):
    """The script's GPU branches (build, the two test processes, the benchmarks, hald train, both
    sanitizers, Nsight Compute) on a stand-in machine whose python and tools only log their calls."""
    import json

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, body in FAKES.items():
        (bin_ / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_ / name).chmod(0o755)
    calls = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "PYTHON": str(bin_ / "python"), "CALLS": str(calls)}
    stages = {}
    for part in ("A", "B"):
        out = tmp_path / f"out{part}"
        r = subprocess.run(["bash", SCRIPT, part], env={**env, "OUT": str(out)}, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        stages[part] = [json.loads(line) for line in (out / f"{part}_stages.jsonl").read_text().splitlines()]
        assert len(os.listdir(out)) <= 8  # what the device tool brings back
    assert [(s["stage"], s["status"]) for s in stages["A"]] == [
        ("tools", "ok"), ("build", "ok"), ("toolchain_probe", "ok"), ("cuda_tests", "ok"), ("loss_benchmark", "ok")]
    assert [(s["stage"], s["status"]) for s in stages["B"]] == [
        ("crop_benchmark", "ok"), ("resnet18_step", "ok"), ("hald_train", "ok"), ("memcheck", "ok"), ("racecheck", "ok"),
        ("ncu", "ok")]
    log = calls.read_text()
    assert "python setup.py build_ext --inplace [arch=9.0 jobs=16]" in log
    cmds = commands(tmp_path)
    for var in ("LOSS_CMD", "STEP_CMD", "PROFILE_CMD"):  # up to the output path, which names this run's $OUT
        assert f"python {cmds[var].split(' --out ')[0]}" in log
    pytest_runs = [line for line in log.splitlines() if line.startswith("python -m pytest python_tests/")]
    assert len(pytest_runs) == 2 + 2  # the two test processes, memcheck, racecheck
    assert "sanitizer --tool memcheck" in log and "sanitizer --tool racecheck" in log
    assert "ncu --clock-control none" in log and "-k regex:soft_hard_kernel|crop_kernel" in log
    assert "--device cuda" in log and "hald_ext.cli train" in log and "--device cpu" in log


def test_a_crashing_probe_rebuilds_with_the_system_compiler(tmp_path):
    """Stage A: when the probe tests crash the process after the default build, the build is redone
    with SYSTEM_CXX (and its gcc), the probe runs again, and the later stages use that build."""
    import json

    bin_ = tmp_path / "bin"
    (tmp_path / "sys").mkdir()
    bin_.mkdir()
    for name, body in FAKES.items():
        (bin_ / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_ / name).chmod(0o755)
    (tmp_path / "sys" / "g++").write_text("#!/bin/bash\necho 'g++ (fake) 13.3.0'\n")
    (tmp_path / "sys" / "g++").chmod(0o755)
    calls = tmp_path / "calls.log"
    out = tmp_path / "outA"
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "PYTHON": str(bin_ / "python"), "CALLS": str(calls),
           "OUT": str(out), "CRASH_PROBE": "1", "SYSTEM_CXX": str(tmp_path / "sys" / "g++")}
    r = subprocess.run(["bash", SCRIPT, "A"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    stages = [json.loads(line) for line in (out / "A_stages.jsonl").read_text().splitlines()]
    assert [(s["stage"], s["status"]) for s in stages] == [
        ("tools", "ok"), ("build", "ok"), ("build", "ok"), ("toolchain_probe", "ok"), ("cuda_tests", "ok"),
        ("loss_benchmark", "ok")]
    probe = stages[3]["note"]
    assert "probe rc 139 (a crash); rebuilt with" in probe and probe.endswith("probe rc 0")
    builds = [line for line in calls.read_text().splitlines() if "build_ext" in line]
    assert len(builds) == 2 and "cxx=" not in builds[0]
    assert f"cxx={tmp_path}/sys/g++ cc={tmp_path}/sys/gcc" in builds[1]
