"""Benchmark decontamination: what it finds (exact and lightly edited benchmark items, English
and Chinese), what it must not (text that only shares common phrases), the three file formats,
and the stage on Ray as the runner runs it."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.decont import build_index, find_overlaps, normal_units
from curate.errors import UserError
from curate.recipe import DecontaminateConfig
from curate.stages.decontaminate import DecontaminateStage, check_block
from tests.builders import apply_on_ray, make_ctx, make_row

MMLU = [
    {"id": "bio-17", "question": "Which of the following best describes the primary function of the "
     "mitochondria in eukaryotic cells during aerobic respiration?",
     "choices": ["Producing ATP", "Synthesising proteins", "Storing lipids", "Dividing the nucleus"],
     "answer": 0},
    {"id": "hist-3", "question": "In which year did the treaty that ended the Thirty Years' War get signed "
     "in the cities of Osnabrück and Münster?", "choices": ["1648", "1618", "1714", "1815"], "answer": 0},
]
GSM = [{"question": "小明有五个苹果，他给了小红两个苹果，又从商店里买了三个苹果，然后吃掉了一个，"
        "请问小明现在一共还剩下多少个苹果？", "answer": "小明还剩下五个苹果。"}]


def index_of():
    fields = {"question": "question", "choices": "choices", "answer": "answer", "id": "id"}
    from curate.decont import item_text

    return build_index([("mmlu", [(b["id"], item_text(b, fields)) for b in MMLU]),
                        ("gsm8k-zh", [(f"row {i + 1}", item_text(b, fields)) for i, b in enumerate(GSM)])])[0]


@pytest.fixture(scope="module")
def index():
    return index_of()


def hits(texts, index):
    found = find_overlaps(texts, index)
    return [found.get(i) for i in range(len(texts))]


def test_exact_and_lightly_edited_english_questions_are_found(index):
    q = MMLU[0]["question"]
    edited = ("Quick quiz!! WHICH of the following best-describes the primary function of the mitochondria, "
              "in eukaryotic cells during anaerobic respiration?")  # case, punctuation, last words changed
    texts = [f"Please help me with my homework. {q} Thanks!", edited,
             "A. Producing ATP B. Synthesising proteins C. Storing lipids D. Dividing the nucleus, "
             "and which of the following best describes"]  # the choices with the question's opening
    found = hits(texts, index)
    assert [f.benchmark if f else None for f in found] == ["mmlu", "mmlu", None]
    assert found[0].key == "bio-17" and "primary function of the mitochondria" in found[0].shared
    assert "anaerobic" not in found[1].shared and found[1].shared.startswith("which of the following")


def test_unrelated_english_text_sharing_common_phrases_is_kept(index):
    texts = [
        "Which of the following best describes your experience with our service during the last year?",
        "The primary function of the mitochondria is a question every biology student meets early on.",
        "The treaty was signed in 1648, and the war that ended had lasted thirty years in the cities.",
        "In which year did the war end? It ended in 1648 with treaties signed in two cities of Westphalia.",
    ]
    assert hits(texts, index) == [None] * len(texts)


def test_chinese_questions_are_found_by_characters_and_common_phrases_are_not(index):
    q = GSM[0]["question"]
    edited = q.replace("，", ",").replace("请问", "请问一下")  # ASCII commas, two characters added near the end
    found = hits([f"老师布置的题目：{q}", edited, "小明有五个苹果，他很高兴。请问小明现在一共还剩下多少个梨？",
                  "He asked: " + q], index)
    assert [f.benchmark if f else None for f in found] == ["gsm8k-zh", "gsm8k-zh", None, "gsm8k-zh"]
    assert found[0].key == "row 1" and "小明有五个苹果" in found[0].shared


def test_a_hash_match_is_checked_on_the_text(index):
    """Items whose text no longer holds the n-grams their hashes came from: nothing is found."""
    unrelated = " " + " ".join(normal_units("an unrelated text")) + " "
    other = pa.array([unrelated] * len(index.items), pa.large_string())
    clashing = dataclasses.replace(index, items=index.items.set_column(2, "text", other))
    assert find_overlaps([MMLU[0]["question"], GSM[0]["question"]], clashing) == {}


def test_short_items_are_counted_not_indexed():
    _, stats = build_index([("tiny", [("a", "What is two plus two?"), ("b", " ".join(["word"] * 13))])])
    assert stats == {"tiny": {"items": 2, "short": 1}}


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_benchmark_files_in_each_manifest_format(tmp_path, fmt):
    rows = [{"qid": b["id"], "prompt": b["question"], "options": b["choices"]} for b in MMLU]
    path = tmp_path / f"bench.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    fields = {"question": "prompt", "choices": "options", "id": "qid"}
    cfg = DecontaminateConfig(benchmarks=[{"name": "mmlu", "path": str(path), "fields": fields}])
    stage = DecontaminateStage(cfg, make_ctx(tmp_path))
    stage.validate()
    index, info = stage.build()
    assert info["benchmarks"] == {"mmlu": {"items": 2, "short": 0}}
    found = find_overlaps(["1648 1618 1714 1815 are the options; " + MMLU[1]["question"]], index)
    assert found[0].key == "hist-3"


def test_skipped_without_benchmarks_and_missing_files_fail_early(tmp_path):
    assert "empty" in DecontaminateStage(DecontaminateConfig(), make_ctx(tmp_path)).skip_reason()
    cfg = DecontaminateConfig(benchmarks=[{"name": "x", "path": str(tmp_path / "missing.jsonl")}])
    with pytest.raises(UserError, match="no file"):
        DecontaminateStage(cfg, make_ctx(tmp_path)).validate()


class _Shared:
    def __init__(self, v):
        self.v = v

    def value(self):
        return self.v


def test_check_block_rejects_with_benchmark_item_and_shared_text(index):
    from curate.records import CORE_SCHEMA

    rows = [make_row("a", "hello", "world"), make_row("b", "hi", MMLU[0]["question"]),
            make_row("c", MMLU[0]["question"], reject_stage="filter", reject_reason="empty_answer",
                     reject_detail="x")]
    table = pa.Table.from_pylist([{k: r.get(k) for k in CORE_SCHEMA.names} for r in rows], schema=CORE_SCHEMA)
    out = check_block(table, _Shared(index)).to_pylist()
    assert [r["reject_reason"] for r in out] == [None, "benchmark_overlap", "empty_answer"]
    assert out[1]["reject_stage"] == "decontaminate"
    assert out[1]["reject_detail"].startswith('benchmark=mmlu item=bio-17 turn=2 shared="which of the')


def test_stage_on_ray(ray_session, tmp_path):
    path = tmp_path / "mmlu.jsonl"
    path.write_text("".join(json.dumps(b, ensure_ascii=False) + "\n" for b in MMLU))
    cfg = DecontaminateConfig(benchmarks=[{"name": "mmlu", "path": str(path), "fields": {"id": "id"}}])
    rows = [make_row(f"r{i}", "Explain photosynthesis.", "Plants turn light into sugar.") for i in range(20)]
    rows.append(make_row("leak", MMLU[1]["question"].upper(), "1648"))
    out = {r["id"]: r for r in apply_on_ray(DecontaminateStage(cfg, make_ctx(tmp_path)), rows, tmp_path)}
    assert out["leak"]["reject_reason"] == "benchmark_overlap"
    assert "item=hist-3" in out["leak"]["reject_detail"]
    assert sum(r["reject_reason"] is not None for r in out.values()) == 1


def test_report_counts_overlaps_per_benchmark_with_examples():
    from curate.report.html import section_benchmarks

    details = ['benchmark=mmlu item=bio-17 turn=2 shared="which of the following best describes"',
               'benchmark=gsm8k item=row 4 turn=1 shared="小明有五个苹果"',
               'benchmark=mmlu item=hist-3 turn=1 shared="in which year did the treaty"', "duplicate of x"]
    rejects = pa.table({"id": ["a", "b", "c", "d"], "reject_detail": details,
                        "reject_reason": ["benchmark_overlap"] * 3 + ["near_duplicate"]})
    page = section_benchmarks(rejects)
    assert page.index("mmlu") < page.index("gsm8k")  # most samples first
    assert "<td class=n>2</td>" in page and "<td class=n>1</td>" in page
    assert "bio-17 (which of the following best describes)" in page and "row 4 (小明有五个苹果)" in page
    assert section_benchmarks(rejects.slice(3)) == ""
