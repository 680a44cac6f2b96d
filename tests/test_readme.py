"""Every user-facing recipe key and command is documented in README.md."""

from pathlib import Path

from click.testing import CliRunner

from curate.cli import main
from curate.recipe import iter_keys, keys_markdown

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_recipe_key_table_is_current():
    block = README.split("RECIPE_KEYS_BEGIN\n", 1)[1].split("\nRECIPE_KEYS_END", 1)[0]
    assert block == keys_markdown(), "run: .venv/bin/python -m curate.recipe --update-readme"


def test_every_key_has_a_description_and_an_example():
    missing = [k for k, t, d, desc, ex in iter_keys() if not desc or (ex is None and t != "list")]
    assert not missing, f"give these keys a docstring and a default or Field(examples=[...]): {missing}"


def test_every_cli_command_is_in_the_readme():
    commands = main.list_commands(None)
    assert {"run", "stats", "inspect", "verify", "demo-data"} <= set(commands)
    for name in commands:
        assert f"curate {name}" in README, name
    assert "make test" in README and "make recipe=sft-stage3" in README
    assert CliRunner().invoke(main, ["--help"]).exit_code == 0
