"""The code blocks of docs/loss.md and docs/importers.md run as written."""
import os
import re

import pytest

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def blocks(name):
    with open(os.path.join(DOCS, name)) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


CASES = [(name, i) for name in ("loss.md", "importers.md") for i in range(len(blocks(name)))]


def test_the_docs_have_examples():
    assert len(blocks("loss.md")) >= 3 and len(blocks("importers.md")) >= 1


@pytest.mark.parametrize("name,i", CASES)
def test_doc_example_runs(name, i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks(name)[i], f"docs/{name} block {i}", "exec"), {"__name__": "__doc_example__"})
