"""docs/cli.md is generated from the commands' configs (scripts/gen_cli_docs.py): it fails here when a
command's options changed and the page was not regenerated."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_docs_cli_md_is_current(monkeypatch):
    spec = importlib.util.spec_from_file_location("gen_cli_docs", os.path.join(ROOT, "scripts", "gen_cli_docs.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    monkeypatch.setenv("COLUMNS", gen.WIDTH)
    with open(os.path.join(ROOT, "docs", "cli.md")) as f:
        current = f.read()
    assert current == gen.render(), "docs/cli.md is stale: run python scripts/gen_cli_docs.py"
