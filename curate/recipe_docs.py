"""The recipe-key table of docs/recipes.md, generated from the pydantic models of curate.recipe.

Every key's type, default, example and description come from its field (the attribute
docstring and `Field(examples=[...])`), so the table cannot drift from the schema; a test
(tests/test_readme.py) fails when the file is stale. Regenerate it with

    .venv/bin/python -m curate.recipe_docs           # rewrite docs/recipes.md
    .venv/bin/python -m curate.recipe_docs --check   # exit 1 when it is out of date
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from curate.recipe import Recipe

RECIPES_DOC = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
BEGIN, END = "RECIPE_KEYS_BEGIN", "RECIPE_KEYS_END"


def iter_keys(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, str, Any, str, Any]]:
    """(dotted key, type, default, description, example) for every recipe key."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if sub is None and getattr(ann, "__origin__", None) is list:
            (inner,) = ann.__args__
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                rows.append((key, "list", None, " ".join((field.description or "").split()), None))
                rows += iter_keys(inner, f"{key}[].")
                continue
        if sub is not None:
            rows += iter_keys(sub, f"{key}.")
            continue
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        example = field.examples[0] if field.examples else default
        if getattr(ann, "__origin__", None) is Literal:
            type_name = "one of " + ", ".join(map(str, ann.__args__))
        else:
            type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        rows.append((key, type_name, default, " ".join((field.description or "").split()), example))
    return rows


def keys_markdown() -> str:
    """The Markdown table of every key, as it stands between the markers."""
    lines = ["| key | type | default | example | what |", "| --- | --- | --- | --- | --- |"]
    for key, type_name, default, desc, example in iter_keys():
        if type_name == "list" and example is None and default is None:
            lines.append(f"| `{key}` | list | | see below | {desc} |")
            continue
        ex = "" if example is None else f"`{key.replace('[]', '.NAME')}={json.dumps(example)}`"
        type_text = type_name.replace("|", "or").replace("NoneType", "null")
        lines.append(f"| `{key}` | {type_text} | `{json.dumps(default)}` | {ex} | {desc} |")
    return "\n".join(lines)


def table_in(text: str) -> str:
    """The table between the RECIPE_KEYS markers of a document."""
    return text.split(f"{BEGIN}\n", 1)[1].split(f"\n{END}", 1)[0]


def update(path: str | Path = RECIPES_DOC) -> bool:
    """Rewrite the table between the RECIPE_KEYS markers of `path`; True if it changed."""
    path = Path(path)
    text = path.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{keys_markdown()}\n{END}{tail}"
    path.write_text(new)
    return new != text


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = table_in(RECIPES_DOC.read_text()) != keys_markdown()
        print(f"{RECIPES_DOC}: {'out of date; run python -m curate.recipe_docs' if stale else 'up to date'}")
        return 1 if stale else 0
    print(f"{RECIPES_DOC} {'updated' if update() else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
