"""The filter stage on hand-built batches (no Ray), then its Ray plan with the CLIP actor pool."""

import json

import pyarrow as pa
import pytest
from PIL import Image

from curate.recipe import FilterConfig, SourceConfig
from curate.records import CORE_SCHEMA, empty_media
from curate.stages.base import RunContext
from curate.stages.filter import FilterStage
from curate.stages.filter_clip import CLIP_SKIPPED, ClipFilterStage
from tests.builders import apply_on_ray
from tests.filters.test_clipscore import save_tiny_clip
from tests.filters.test_repetition import prose_chunks, sentences_of

PROSE = prose_chunks()[10]
LOOP = PROSE[:500] + " " + " ".join([sentences_of(PROSE)[0]] * 8)


def row(rid, q, a, source="text", media=None, modality="text"):
    return {"id": rid, "source": source, "origin": "manifest", "manifest": "m.jsonl", "line": 1,
            "modality": modality, "domain": "general",
            "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}],
            "media": media or [], "meta": "{}", "reject_stage": None, "reject_reason": None, "reject_detail": None}


def make_stage(tmp_path, stage_class=FilterStage, **cfg):
    sources = {"text": SourceConfig(name="text", manifests=["m"]),
               "academic": SourceConfig(name="academic", manifests=["m"], exempt_repetition=True),
               "english": SourceConfig(name="english", manifests=["m"], languages=["en"])}
    ctx = RunContext(out_dir=str(tmp_path / "out"), sources=sources)
    stage = stage_class(FilterConfig(**cfg), ctx)
    stage.validate()
    return stage


def run_rows(stage, rows):
    out = stage(pa.Table.from_pylist(rows, schema=CORE_SCHEMA))
    assert out.schema == stage.output_schema(CORE_SCHEMA)
    return {r["id"]: r for r in out.to_pylist()}


def review_lines(tmp_path):
    return [json.loads(line) for p in sorted((tmp_path / "out" / "review").glob("filter*/*.jsonl"))
            for line in p.read_text().splitlines()]


def test_scores_decisions_and_review(tmp_path):
    stage = make_stage(tmp_path)
    rows = [row("clean", "Explain.", PROSE), row("loop", "Explain.", LOOP),
            row("empty", "Explain.", " "), row("academic-loop", "Explain.", LOOP, source="academic"),
            row("already", "Explain.", LOOP) | {"reject_stage": "media", "reject_reason": "broken_image"}]
    out = run_rows(stage, rows)
    assert out["clean"]["reject_reason"] is None and out["clean"]["filter_flags"] == ""
    assert 0 <= out["clean"]["repetition_score"] < 0.5
    loop = out["loop"]
    assert loop["reject_reason"] == "repetitive" and loop["reject_stage"] == "filter"
    assert loop["repetition_score"] >= 0.5
    assert f"repetition_score={loop['repetition_score']:.3f}" in loop["reject_detail"]
    assert "tail_units=" in loop["reject_detail"] and loop["filter_flags"] == "repetitive"
    assert out["empty"]["reject_reason"] == "empty_answer" and "heuristics" in out["empty"]["reject_detail"]
    exempt = out["academic-loop"]
    assert exempt["reject_reason"] is None and exempt["repetition_score"] >= 0.5
    assert exempt["filter_flags"] == "repetitive_exempt"
    assert out["already"]["reject_reason"] == "broken_image" and out["already"]["repetition_score"] is None
    # the CLIP stage, not this one, declares the clip_score it fills (null where it is skipped)
    clip = make_stage(tmp_path, ClipFilterStage)
    assert "clip_score" not in out["clean"] and clip.skip_reason() == CLIP_SKIPPED
    assert "clip_score" in clip.output_schema(stage.output_schema(CORE_SCHEMA)).names
    review = {e["id"]: e for e in review_lines(tmp_path)}
    assert set(review) == {"loop", "empty", "academic-loop"}
    assert review["academic-loop"]["decision"] == "kept" and review["loop"]["decision"] == "rejected"
    assert review["loop"]["conversations"][1]["value"] == LOOP


def test_switches_and_thresholds(tmp_path):
    stage = make_stage(tmp_path, repetition=False, heuristics=False, write_review=False)
    out = run_rows(stage, [row("loop", "Q", LOOP), row("empty", "Q", "")])
    assert all(r["reject_reason"] is None for r in out.values())
    assert out["loop"]["repetition_score"] >= 0.5  # still scored, not decided
    assert not (tmp_path / "out" / "review").exists()
    mild = PROSE[:1200] + " " + " ".join([sentences_of(PROSE)[0]] * 4)  # score about 0.74
    assert run_rows(make_stage(tmp_path), [row("m", "Q", mild)])["m"]["reject_reason"] == "repetitive"
    assert run_rows(make_stage(tmp_path, repetition_threshold=0.9), [row("m", "Q", mild)])["m"]["reject_reason"] is None
    lax = make_stage(tmp_path, options={"repetition.tail_units": 20, "repetition.tail_coverage": 0.9})
    assert run_rows(lax, [row("m", "Q", mild)])["m"]["reject_reason"] is None
    with pytest.raises(ValueError, match="repetition.nope"):
        make_stage(tmp_path, options={"repetition.nope": 1})


def test_a_batch_scores_every_row_as_it_would_alone(tmp_path):
    """process_rows computes the repetition signals and languages of the whole batch at once;
    each row still gets what a batch of its own gives it, the most repetitive answer deciding."""
    from filters.repetition import repetition_signals
    from tests.filters.test_repetition import ZH_CLEAN, zh_loops

    def turns(*answers):
        return [t for i, a in enumerate(answers)
                for t in ({"from": "human", "value": f"Q{i}"}, {"from": "gpt", "value": a})]

    fr = "La fonction renvoie une nouvelle liste contenant tous les éléments de l'itérable dans l'ordre croissant."
    rows = [row("clean", "Explain.", PROSE), row("loop", "Explain.", LOOP),
            row("second", "Q", "") | {"conversations": turns(PROSE, "", LOOP)},  # turn 6 loops
            row("first", "Q", "") | {"conversations": turns(LOOP, PROSE, None)},
            row("tie", "Q", "") | {"conversations": turns(LOOP, LOOP)},  # the first of equals wins
            row("zh", "Q", zh_loops()["tail_sentence"]), row("zh-clean", "Q", ZH_CLEAN[2]),
            row("empty", "Q", " "), row("fr-en", "Q", fr, source="english"),
            row("already", "Explain.", LOOP) | {"reject_stage": "media", "reject_reason": "broken_image"},
            row("academic-loop", "Explain.", LOOP, source="academic"), row("long", "Q", (PROSE + "\n") * 30)]
    for heuristics in (True, False):  # without them, empty answers do not reject before repetition
        stage = make_stage(tmp_path, write_review=False, heuristics=heuristics)  # "english": language id on
        batch = run_rows(stage, rows)
        alone = {}
        for r in rows:
            alone.update(run_rows(stage, [r]))
        assert batch == alone
    loop = repetition_signals(LOOP)["score"]
    assert batch["second"]["repetition_score"] == loop and "turn=6" in batch["second"]["reject_detail"]
    assert batch["first"]["repetition_score"] == loop and "turn=2" in batch["first"]["reject_detail"]
    assert "turn=2" in batch["tie"]["reject_detail"] and batch["zh"]["reject_reason"] == "repetitive"
    assert batch["clean"]["repetition_score"] == repetition_signals(PROSE)["score"]
    assert batch["fr-en"]["reject_reason"] == "wrong_language" and batch["already"]["repetition_score"] is None


def test_language_per_source_and_recipe_list(tmp_path):
    fr = "La fonction renvoie une nouvelle liste contenant tous les éléments de l'itérable dans l'ordre croissant."
    stage = make_stage(tmp_path)  # language off, but source "english" keeps only en
    out = run_rows(stage, [row("fr-any", "Q", fr), row("fr-en", "Q", fr, source="english"),
                           row("en-en", "Q", PROSE, source="english")])
    assert out["fr-any"]["reject_reason"] is None and out["fr-any"]["language"] == "fr"
    assert out["fr-en"]["reject_reason"] == "wrong_language" and "language=fr" in out["fr-en"]["reject_detail"]
    assert out["en-en"]["reject_reason"] is None and out["en-en"]["language"] == "en"
    on = make_stage(tmp_path, language=True, languages=["de"])
    out = run_rows(on, [row("fr", "Q", fr), row("en-en", "Q", PROSE, source="english")])
    assert out["fr"]["reject_reason"] == "wrong_language" and out["en-en"]["reject_reason"] is None


@pytest.mark.slow
def test_clip_actor_path_on_ray(ray_session, tmp_path):
    folder, _ = save_tiny_clip(tmp_path / "clip")
    img = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (200, 20, 20)).save(img)
    media = [empty_media("image", "red.png") | {"path": str(img)}]
    rows = [row(f"img{i}", "<image>\nDescribe.", "A red square.", media=media, modality="image") for i in range(3)]
    rows.append(row("text", "Explain.", PROSE))
    scores = {}
    for min_score, rejected in ((-1.0, 0), (1.0, 3)):
        stage = make_stage(tmp_path, ClipFilterStage, clip_model=str(folder), clip_min_score=min_score)
        assert stage.skip_reason() is None and stage.needs_actor()
        out = {r["id"]: r for r in apply_on_ray(stage, rows)}
        assert out["text"]["clip_score"] is None and out["text"]["reject_reason"] is None
        got = [out[f"img{i}"] for i in range(3)]
        assert all(-1 <= r["clip_score"] <= 1 for r in got)
        assert sum(r["reject_reason"] == "low_clip_score" for r in got) == rejected
        scores[min_score] = [r["clip_score"] for r in got]
    assert scores[-1.0] == pytest.approx(scores[1.0])  # same model, same images: same scores
    review = [e for e in review_lines(tmp_path) if e["reason"] == "low_clip_score"]
    assert len(review) == 3 and "clip_score=" in review[0]["detail"]


def test_missing_clip_folder_fails_validation(tmp_path):
    with pytest.raises(FileNotFoundError, match="clip_model"):
        make_stage(tmp_path, ClipFilterStage, clip_model=str(tmp_path / "none"))


def test_rule_shortcuts_give_the_plain_scans_results():
    """zero_run, char_run and duplicate_lines skip their scan when a cheap test shows it cannot
    fire; on texts built to sit at and around every threshold they say what the plain scans say."""
    import random
    import re
    from collections import Counter

    from filters.heuristics import HeuristicThresholds, char_run, duplicate_lines, zero_run

    def plain(text, t):
        out = []
        m = re.search("0{%d,}" % t.max_zero_run, text)
        out.append(f"turn 2 has {len(m.group())} zeros in a row (max_zero_run={t.max_zero_run})" if m else None)
        m = re.search(r"(\S)\1{%d,}" % (t.max_char_run - 1), text)
        out.append(f"turn 2 repeats {m.group(1)!r} {len(m.group())} times (max_char_run={t.max_char_run})"
                   if m else None)
        lines = [x for x in (" ".join(x.split()).lower() for x in text.splitlines()) if any(c.isalnum() for c in x)]
        ratio = 1 - len(Counter(lines)) / len(lines) if len(lines) >= t.min_lines_for_duplicates else 0
        out.append(f"turn 2: {ratio:.2f} of {len(lines)} lines are duplicates "
                   f"(max_duplicate_line_ratio={t.max_duplicate_line_ratio})"
                   if ratio > t.max_duplicate_line_ratio else None)
        return out

    rng = random.Random(5)
    texts = [PROSE, LOOP, "", "0" * 32, "0" * 31, " " * 200, "\u3000" * 100, "x" * 80, "x" * 79]
    for n in (2, 3, 31, 32, 33, 79, 80, 81, 160):
        for c in ("0", "=", "a", " ", "\t", "中"):
            for at in (0, 1, 39, 40, 41, 300):
                texts.append(PROSE[:at] + c * n + PROSE[at:at + 200])
    texts += ["\n".join(rng.choice(["a b", "a  b", "A b", "c d", "", "...", "1 2"]) for _ in range(rng.randint(0, 9)))
              for _ in range(300)]
    conv = lambda a: [{"from": "human", "value": "Q"}, {"from": "gpt", "value": a}]  # noqa: E731
    for t in (HeuristicThresholds(), HeuristicThresholds(max_zero_run=1, max_char_run=2, min_lines_for_duplicates=2),
              HeuristicThresholds(max_char_run=3, max_duplicate_line_ratio=0.2), HeuristicThresholds(max_char_run=1)):
        for text in texts:
            got = [rule(conv(text), [], t) for rule in (zero_run, char_run, duplicate_lines)]
            assert got == plain(text, t), (text[:60], t)
