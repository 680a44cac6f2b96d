"""Every user-facing recipe key, command and make target is documented in README.md or docs/,
the README stays short, and every relative link in them points at a file that exists."""

import re
from pathlib import Path

from click.testing import CliRunner

from curate.cli import main
from curate.recipe_docs import iter_keys, keys_markdown, table_in

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = {p: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
ALL_DOCS = "\n".join(PAGES.values())
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_recipe_key_table_is_current():
    block = table_in((ROOT / "docs" / "recipes.md").read_text())
    assert block == keys_markdown(), "run: .venv/bin/python -m curate.recipe_docs"


def test_every_key_has_a_description_and_an_example():
    missing = [k for k, t, d, desc, ex in iter_keys() if not desc or (ex is None and t != "list")]
    assert not missing, f"give these keys a docstring and a default or Field(examples=[...]): {missing}"


def test_every_cli_command_is_documented():
    commands = main.list_commands(None)
    assert {"run", "stats", "inspect", "verify", "demo-data"} <= set(commands)
    for name in commands:
        assert f"curate {name}" in ALL_DOCS, name
        assert f"curate {name} " in README, f"the README's command list lacks curate {name}"
    assert "make test" in README and "make recipe=sft-stage3" in README
    assert CliRunner().invoke(main, ["--help"]).exit_code == 0


def test_every_make_target_is_documented():
    makefile = (ROOT / "Makefile").read_text()
    phony = makefile.split(".PHONY:", 1)[1].split("\n", 1)[0].split()
    assert {"setup", "test", "bench", "bench-load", "stats"} <= set(phony)
    # `default` is plain `make`; `run` is what `make recipe=NAME` calls
    undocumented = [t for t in phony if t not in ("default", "run") and f"make {t}" not in ALL_DOCS]
    assert not undocumented, f"document these make targets in README.md or docs/: {undocumented}"


def test_readme_is_short():
    n = len(README.splitlines())
    assert n <= 200, f"README.md has {n} lines; move detail into docs/ and link it"


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"(?m)^#+ (.+)$", re.sub(r"(?ms)^```.*?^```", "", text))
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_relative_links_resolve():
    broken = []
    for page, text in PAGES.items():
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            path, _, anchor = target.partition("#")
            file = page.parent / path if path else page
            if not file.exists() or (anchor and file.suffix == ".md"
                                     and anchor not in anchors(file.read_text())):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"broken links (no such file or heading): {broken}"
    assert any("docs/" in t for t in LINK.findall(README)), "the README links into docs/"
