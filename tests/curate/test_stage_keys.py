"""Every recipe key a stage reads is declared, so its resume hash (Stage.fingerprint) covers it.

Two checks, each able to fail on its own:
- a static one: the stage's methods are parsed, and every `self.config.X` (or `c.X` after
  `c = self.config`, or getattr(self.config, "X")) is a read; a config handed to a function
  is followed into that function. A read through a name not known until run time is an
  "opaque" read, which must be listed in OPAQUE with the dynamic check that covers it;
- a dynamic one: the stage gets a config that records every attribute read, and its
  validate / skip_reason / fingerprint / describe / model_label / resources run.
Run-wide values (seed, modality_targets, budgets) and sources[] fields are checked the same
way against ctx_keys and source_keys. The last tests plant undeclared reads and see them caught.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from curate.recipe import Recipe, load_recipe
from curate.runner import STAGES, build_stages, load_class
from curate.stages.base import CONTEXT_KEYS, GlobalStage, Stage
from curate.stages.pack_select import PackSelectStage
from tests.builders import make_ctx

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft-stage3.yaml"
#: (stage class, the call a config is handed to that reads keys by computed names): covered by `dynamic_reads`
OPAQUE = {("FilterStage", "HeuristicThresholds.from_config")}
#: recipe keys that never change a stage's output rows: resources blocks and the switch that built it
NOT_OUTPUT = ("enabled",)


def _is_self_attr(node: ast.AST, *names: str) -> bool:
    """node is self.<names[0]>.<names[1]>... (e.g. self.config, self.ctx.sources)."""
    for name in reversed(names):
        if not (isinstance(node, ast.Attribute) and node.attr == name):
            return False
        node = node.value
    return isinstance(node, ast.Name) and node.id == "self"


class Reads:
    """What one stage's code reads: config keys, context keys, source fields, opaque calls."""

    def __init__(self) -> None:
        self.config: set[str] = set()
        self.ctx: set[str] = set()
        self.source: set[str] = set()
        self.opaque: set[str] = set()
        self._seen: set[tuple[Any, str]] = set()

    # ---- one function body, with the names that hold the config (and sources) in it
    def scan(self, fn: ast.AST, module: dict[str, Any], owner: type | None, config_names: set[str],
             self_config: bool) -> None:
        configs = set(config_names)
        sources: set[str] = set()

        def is_config(node: ast.AST) -> bool:
            if self_config and _is_self_attr(node, "config"):
                return True
            return isinstance(node, ast.Name) and node.id in configs

        def is_source(node: ast.AST) -> bool:
            call_source = isinstance(node, ast.Call) and _is_self_attr(node.func, "ctx", "source")
            return call_source or (isinstance(node, ast.Name) and node.id in sources)

        def sources_iter(node: ast.AST) -> bool:  # self.ctx.sources.values() / .items()
            return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("values", "items") and _is_self_attr(node.func.value, "ctx", "sources")

        for node in ast.walk(fn):  # aliases first: c = self.config, src = self.ctx.source(...)
            one_name = isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name)
            if one_name:
                if is_config(node.value):
                    configs.add(node.targets[0].id)
                elif is_source(node.value):
                    sources.add(node.targets[0].id)
            if isinstance(node, (ast.For, ast.comprehension)) and sources_iter(node.iter):
                target = node.target.elts[-1] if isinstance(node.target, ast.Tuple) else node.target
                if isinstance(target, ast.Name):
                    sources.add(target.id)
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute):
                if is_config(node.value):
                    self.config.add(node.attr)
                elif is_source(node.value):
                    self.source.add(node.attr)
                elif _is_self_attr(node.value, "ctx") and node.attr in CONTEXT_KEYS:
                    self.ctx.add(node.attr)
            if not isinstance(node, ast.Call):
                continue
            if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") and node.args:
                literal = len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                target = self.config if is_config(node.args[0]) else \
                    self.source if is_source(node.args[0]) else None
                if target is not None:
                    if literal:
                        target.add(node.args[1].value)
                    else:
                        self.opaque.add(f"{node.func.id}(..., <computed name>)")
                continue
            handed = [(i, a) for i, a in enumerate(node.args) if is_config(a)]
            handed += [(kw.arg, kw.value) for kw in node.keywords if is_config(kw.value)]
            for where, _ in handed:
                self.follow(node.func, where, module, owner)

    def follow(self, func: ast.AST, where: int | str, module: dict[str, Any], owner: type | None) -> None:
        """The config is handed to `func` (positional index or keyword): scan that function."""
        dotted = ast.unparse(func)
        target: Any = None
        if dotted.startswith("self.") and owner is not None:
            target = getattr(owner, dotted.split(".", 1)[1], None)
        else:
            parts = dotted.split(".")
            target = module.get(parts[0])
            for part in parts[1:]:
                target = getattr(target, part, None)
        fn = getattr(target, "__func__", target)
        try:
            source = textwrap.dedent(inspect.getsource(fn))
            params = list(inspect.signature(fn).parameters)
        except (TypeError, OSError, ValueError):
            self.opaque.add(dotted)
            return
        if inspect.ismethod(target) or dotted.startswith("self."):
            params = params[1:]  # cls / self
        name = where if isinstance(where, str) else params[where] if where < len(params) else None
        if name is None or (fn, name) in self._seen:
            return
        self._seen.add((fn, name))
        before = set(self.opaque)
        self.scan(ast.parse(source), fn.__globals__, owner, {name}, self_config=False)
        if self.opaque - before:
            self.opaque = before | {dotted}


def static_reads(cls: type[Stage]) -> Reads:
    """What the methods of `cls` and of its stage bases (not Stage / GlobalStage) read."""
    reads = Reads()
    for klass in cls.__mro__:
        if klass in (Stage, GlobalStage, object) or not issubclass(klass, Stage):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        module = vars(inspect.getmodule(klass))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                reads.scan(fn, module, cls, set(), self_config=True)
    return reads


class Recording:
    """A config that remembers which of its attributes were read."""

    def __init__(self, config: Any) -> None:
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name: str) -> Any:
        self.read.add(name)
        return getattr(self._config, name)


def dynamic_reads(stage: Stage) -> set[str]:
    """The config keys read while the stage is asked everything it answers before work."""
    config = stage.config
    recording = stage.config = Recording(config)
    calls: list[Callable[[], Any]] = [stage.validate, stage.skip_reason, stage.fingerprint, stage.describe,
                                      stage.model_label, stage.requested_resources, stage.inputs,
                                      stage.outputs]
    try:
        for call in calls:
            try:
                call()
            except Exception:  # noqa: BLE001, S110 - a missing model folder: the reads before it count
                pass
    finally:
        stage.config = config
    return recording.read


def recipe_stages(recipe: Recipe | None = None) -> list[Stage]:
    recipe = recipe or load_recipe(RECIPE, ["stages.audio_qa.enabled=true", "stages.audio_qa.fraction=0.5",
                                            "stages.transcribe.enabled=true"])
    ctx = make_ctx("/tmp/x", seed=recipe.seed, sources=recipe.source_map(),
                   modality_targets=dict(recipe.modality_targets))
    return build_stages(recipe, ctx)


def undeclared(stage: Stage) -> dict[str, set[str]]:
    """What `stage` reads without declaring it (empty dict: nothing)."""
    fields = set(type(stage.config).model_fields)
    owned = {k for k in fields if not k.endswith("resources") and k not in NOT_OUTPUT}
    static = static_reads(type(stage))
    config_reads = (static.config | dynamic_reads(stage)) & owned
    declared = set(stage.config_keys) if stage.config_keys is not None else owned
    sources = list(stage.ctx.sources.values())
    source_fields = set(type(sources[0]).model_fields) if sources else set()
    out = {"config": config_reads - declared, "ctx": static.ctx - set(stage.ctx_keys),
           "sources": (static.source & source_fields) - set(stage.source_keys),
           "opaque": {c for c in static.opaque if (type(stage).__name__, c) not in OPAQUE}}
    return {k: v for k, v in out.items() if v}


def test_every_stage_declares_what_it_reads():
    stages = recipe_stages()
    assert {s.name for s in stages} == {spec.name for spec in STAGES}
    for stage in stages:
        assert undeclared(stage) == {}, f"stage {stage.name} reads recipe keys it does not declare"


def test_declared_keys_exist_and_stages_sharing_a_section_name_theirs():
    sections: dict[str, list[str]] = {}
    for spec in STAGES:
        sections.setdefault(spec.section, []).append(spec.name)
    recipe = load_recipe(RECIPE)
    for spec in STAGES:
        cls = load_class(spec)
        fields = set(type(getattr(recipe.stages, spec.section)).model_fields)
        if len(sections[spec.section]) > 1:
            assert cls.config_keys is not None, f"{spec.name} shares stages.{spec.section}: name its keys"
        assert set(cls.config_keys or ()) <= fields, f"{spec.name} declares keys stages.{spec.section} lacks"
        assert set(cls.ctx_keys) <= set(CONTEXT_KEYS)


def test_a_key_of_a_shared_section_re_runs_only_the_stages_that_read_it():
    from tests.curate.test_runner import changed

    order = [s.name for s in STAGES]
    assert changed("stages.score.loss_k=2.0") == order[order.index("score_loss"):]  # not the LLM scoring
    assert changed("stages.filter.clip_min_score=0.3") == order[order.index("filter_clip"):]
    assert changed("stages.pack.window=1000") == ["pack_plan", "shard"]
    assert changed("stages.pack.truncate=true") == ["pack_select", "pack_plan", "shard"]


# ---------------------------------------------------------------------- the checks catch a planted read
def _window(pack: Any) -> int:
    return pack.window


class PlantedAlias(PackSelectStage):
    def skip_reason(self) -> str | None:
        c = self.config
        return "stream" if c.mode == "stream" else None  # pack_plan's key, not pack_select's


class PlantedHelper(PackSelectStage):
    def describe(self) -> str:
        return f"{self.name} window {_window(self.config)}"  # read inside a function it is handed to


class PlantedGetattr(PackSelectStage):
    def model_label(self) -> str | None:
        return str(getattr(self.config, "partitions"))  # noqa: B009 - the form under test


class PlantedContext(PackSelectStage):
    def describe(self) -> str:
        return f"{self.name} seed {self.ctx.seed}"


class PlantedSource(PackSelectStage):
    def describe(self) -> str:
        return ",".join(str(s.repeat) for s in self.ctx.sources.values())


class PlantedOpaque(PackSelectStage):
    key: ClassVar[str] = "max_tiles"

    def describe(self) -> str:
        return str(getattr(self.config, self.key))


@pytest.mark.parametrize("cls, kind, what", [
    (PlantedAlias, "config", {"mode"}), (PlantedHelper, "config", {"window"}),
    (PlantedGetattr, "config", {"partitions"}), (PlantedContext, "ctx", {"seed"}),
    (PlantedSource, "sources", {"repeat"}), (PlantedOpaque, "opaque", {"getattr(..., <computed name>)"})])
def test_an_undeclared_read_is_caught(cls, kind, what):
    real = next(s for s in recipe_stages() if s.name == "pack_select")
    assert undeclared(real) == {}
    planted = cls(real.config, real.ctx)
    assert undeclared(planted)[kind] == what


def test_each_check_catches_a_plain_read_alone():
    real = next(s for s in recipe_stages() if s.name == "pack_select")
    assert static_reads(PlantedAlias).config >= {"mode"}
    assert "mode" in dynamic_reads(PlantedAlias(real.config, real.ctx))
    plain = PackSelectStage(real.config, real.ctx)
    assert "mode" not in static_reads(PackSelectStage).config | dynamic_reads(plain)
