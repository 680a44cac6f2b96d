from pathlib import Path

import pytest

from curate.recipe import RecipeError, load_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft-stage3.yaml"


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


BASE = "name: t\nsources:\n  - name: a\n    manifests: [x.jsonl]\n"


def test_default_recipe_follows_the_papers():
    r = load_recipe(RECIPE)
    assert (r.stages.pack.max_tokens, r.stages.pack.max_tiles) == (16384, 48)  # InternVL 2.5 stage 2
    assert r.stages.tokenize.tokens_per_tile == 256 and r.stages.media.tile_size == 448
    assert r.stages.tokenize.audio_pooling == 3  # M2-omni 1x3 pooling
    assert r.source_map()["demo-video"].n_max == 1


def test_unknown_key_names_file_and_key(tmp_path):
    p = write(tmp_path, BASE + "stages:\n  pack:\n    max_token: 10\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert str(p) in str(e.value) and "stages.pack.max_token" in str(e.value) and "unknown key" in str(e.value)


@pytest.mark.parametrize("snippet,key", [
    ("sources:\n  - name: a\n    manifests: [x]\n    repeat: 5\n", "sources.0.repeat"),
    ("sources:\n  - name: a\n    manifests: [x]\n    repeat: 0\n", "sources.0.repeat"),
    ("sources:\n  - name: a\n    manifests: []\n", "sources.0.manifests"),
    ("sources:\n  - name: a\n    manifests: [x]\n    modality: smell\n", "sources.0.modality"),
    ("sources:\n  - name: a b\n    manifests: [x]\n", "sources.0.name"),
])
def test_bad_values_are_reported_with_their_key(tmp_path, snippet, key):
    p = write(tmp_path, "name: t\n" + snippet)
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load_recipe(p)


def test_set_overrides_parse_yaml_scalars_and_address_sources_by_name(tmp_path):
    r = load_recipe(RECIPE, ["stages.pack.max_tokens=8192", "sources.demo-video.repeat=0.5",
                             "stages.filter.enabled=false"])
    assert r.stages.pack.max_tokens == 8192 and isinstance(r.stages.pack.max_tokens, int)
    assert r.source_map()["demo-video"].repeat == 0.5
    assert r.stages.filter.enabled is False


def test_set_with_wrong_type_or_unknown_key_fails(tmp_path):
    with pytest.raises(RecipeError, match="stages.pack.max_tokens"):
        load_recipe(RECIPE, ["stages.pack.max_tokens=lots"])
    with pytest.raises(RecipeError, match="stages.pack.nonsense"):
        load_recipe(RECIPE, ["stages.pack.nonsense=1"])
    with pytest.raises(RecipeError, match="no list item"):
        load_recipe(RECIPE, ["sources.nope.repeat=2"])


def test_input_replaces_sources_with_defaults(tmp_path):
    r = load_recipe(RECIPE, inputs=["/data/my-set.v2.jsonl"])
    assert [s.name for s in r.sources] == ["my-set"]
    assert r.sources[0].manifests == ["/data/my-set.v2.jsonl"] and r.sources[0].n_max == 12


def test_duplicate_source_names_and_missing_file(tmp_path):
    p = write(tmp_path, BASE + "  - name: a\n    manifests: [y]\n")
    with pytest.raises(RecipeError, match="unique"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
