"""`hald` command-line behaviour a new user meets first: the top-level help, option defaults stated
once, output piped into `head`, and errors that name the option that was given."""
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from hald_ext.cli import COMMANDS, main as hald


def help_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        hald(argv + ["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_is_whole_sentences(capsys):
    out = help_of([], capsys)
    description = out.split("\n\n")[1]
    assert description.startswith("The `hald` command:") and description.rstrip().endswith("distillation.")
    assert "exposing" not in description  # the implementation note is not the command's description


def option_entries(text: str) -> list:
    """The help text of each option: from a line starting with '  -' to the next such line."""
    entries, cur = [], None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            if cur is not None:
                entries.append(cur)
            cur = line
        elif cur is not None and line.startswith("    "):
            cur += " " + line.strip()
        elif cur is not None:
            entries.append(cur)
            cur = None
    if cur is not None:
        entries.append(cur)
    return entries


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_states_its_default_once(command, capsys):
    entries = option_entries(help_of([command], capsys))
    assert entries
    twice = [e for e in entries if len(re.findall(r"\(default", e)) > 1]
    assert not twice, twice
    if command == "train":
        img = next(e for e in entries if e.lstrip().startswith("--img-size"))
        assert "(default: the image size" in img and "(default: None)" not in img


def big_store(path):
    from hald_ext.labels.format import Header
    from hald_ext.labels.quantizer import Quantizer
    from hald_ext.labels.store import LabelStore

    h = Header(num_images=2, sli=1, num_classes=30000, k=1, temperature=1.0, quantizer=Quantizer("fp16", None))
    LabelStore.create(path, h, torch.full((2, 1, 4), 1000, dtype=torch.uint16), torch.zeros(2, 1, dtype=torch.bool),
                      torch.zeros(2, 1, 1, dtype=torch.uint16), torch.ones(2, 1, 1, dtype=torch.float16))


def test_output_piped_into_head_ends_quietly(tmp_path):
    """`hald labels info FILE --json | head -1`, as a user runs it (it used to end in a BrokenPipeError
    traceback): a 30,000-class histogram is far more than a pipe holds."""
    store = str(tmp_path / "big.safetensors")
    big_store(store)
    cmd = f"{sys.executable} -m hald_ext.cli labels info {store} --json | head -1; exit ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=300)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 141 and proc.stdout.strip() == "{"


class _ClosedPipe(io.StringIO):
    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise io.UnsupportedOperation("no descriptor")


@pytest.mark.parametrize("argv", [["info"], ["labels", "info", "STORE"]])
def test_every_command_handles_a_closed_pipe(argv, monkeypatch, tmp_path):
    """main() catches the BrokenPipeError of any command's output (help text: argparse drops it itself)."""
    store = str(tmp_path / "big.safetensors")
    big_store(store)
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert hald([store if a == "STORE" else a for a in argv]) == 141


def test_an_order_error_names_the_option_given(tmp_path, capsys):
    from test_label_importers import write_sre2l

    write_sre2l(str(tmp_path / "s"), [i % 4 for i in range(10)], 4, epochs=1, batch_size=4, crop_size=16)
    np.savez(tmp_path / "set.npz", images=np.zeros((16, 16, 16, 3), np.uint8), labels=np.arange(16) % 4,
             classes=np.array(["a", "b", "c", "d"]))
    rc = hald(["labels", "import-sre2l", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "-C", "4", "-T", "20",
               "--crop-size", "16", "--images", str(tmp_path / "set.npz"), "--sampler-seed", "42"])
    err = capsys.readouterr().err
    assert rc == 2 and "(--sampler-seed 42) lists 16 images" in err and "--order" not in err
