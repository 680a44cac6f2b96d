"""End to end on Ray: the small demo corpus through the default recipe, then resume."""

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import main
from curate.recipe import load_recipe
from curate.runner import Runner
from tests.conftest import demo_overrides

pytestmark = pytest.mark.pipeline

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sft-stage3.yaml"
EXTRA = ("stages.shard.max_sequences=2",)


def shard_hashes(out):
    return {e["shard"]: e["sha256"] for e in json.loads((out / "shards" / "index.json").read_text())["shards"]}


@pytest.fixture(scope="module")
def first_run(ray_session, demo_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    recipe = load_recipe(RECIPE, demo_overrides(demo_small, *EXTRA))
    stats = Runner(recipe, out).run()
    return recipe, out, stats, shard_hashes(out)


def test_counts_add_up_and_every_bad_input_is_a_reject(first_run):
    _, out, stats, _ = first_run
    assert stats["invariant_ok"]
    assert stats["samples_in"] + stats["synthesized"] == stats["samples_out"] + sum(stats["rejected"].values())
    for reason in ("invalid_json", "bad_encoding", "missing_conversations", "malformed_conversations",
                   "placeholder_mismatch", "broken_image", "empty_file", "image_too_large", "missing_file",
                   "path_outside_roots", "bad_scheme", "broken_video", "broken_audio",
                   "exact_duplicate", "near_duplicate"):
        assert stats["rejected"].get(reason, 0) >= 1, reason
    assert {"text", "image", "multi_image", "video", "audio"} <= set(stats["modalities"])
    assert stats["repeats"] >= stats["modalities"]["video"] - 1  # demo-video has repeat 2.0
    assert 0 < stats["token_fill"] <= 1 and 0 < stats["tile_fill"] <= 1


def test_filter_rejects_exactly_the_demo_loops(first_run):
    import pyarrow.parquet as pq

    _, out, stats, _ = first_run
    rejects = pq.read_table(out / "rejects" / "filter.parquet").to_pylist()
    looped = {r["id"] for r in rejects if r["reject_reason"] == "repetitive"}
    ingested = pq.read_table(next((out / "work").glob("*-ingest"))).to_pylist()
    names = {r["id"]: str(json.loads(r["meta"] or "{}").get("orig_id")) for r in ingested}
    assert {names[i] for i in looped} == {n for n in names.values() if n.startswith("loop-")} != set()
    assert all("repetition_score=" in r["reject_detail"] for r in rejects if r["reject_reason"] == "repetitive")
    assert list((out / "review" / "filter").glob("*.jsonl"))


def test_chinese_demo_rows_near_copy_loop_and_audio_qa_eligibility(first_run, demo_small):
    """The demo's Chinese rows: the near copy (one inserted clause) is a near duplicate, the looping
    answer is repetitive, the others are kept; Chinese chart questions are not eligible for
    audio-QA (no Chinese voice by default) and counted in stats.json and the report."""
    import pyarrow.parquet as pq

    _, out, stats, _ = first_run
    ingested = pq.read_table(next((out / "work").glob("*-ingest"))).to_pylist()
    names = {r["id"]: str(json.loads(r["meta"] or "{}").get("orig_id")) for r in ingested}
    rejects = {names[r["id"]]: r for r in pq.read_table(out / "rejects" / "dedupe.parquet").to_pylist()}
    pair = {"zh-boiling", "near-zh-boiling"}
    dropped = [n for n in pair if n in rejects]
    assert len(dropped) == 1 and rejects[dropped[0]]["reject_reason"] == "near_duplicate"
    assert "similarity 0.7" in rejects[dropped[0]]["reject_detail"]  # under 0.8: found at threshold_cjk
    filter_rejects = pq.read_table(out / "rejects" / "filter.parquet").to_pylist()
    filtered = {names[r["id"]]: r["reject_reason"] for r in filter_rejects}
    assert filtered.get("loop-zh-coffee") == "repetitive"
    zh = {n for n in names.values() if n.startswith("zh-")}
    reasons = {names[r["id"]]: r["reject_reason"] for p in (out / "rejects").glob("*.parquet")
               for r in pq.read_table(p).to_pylist() if r["id"] in names}
    # the other Chinese rows pass every filter (the mixture may still leave a text row out)
    assert len(zh) >= 10 and all(reasons.get(n) in (None, "not_drawn") for n in zh - pair), reasons
    n_zh_images = sum(n.startswith("zh-img-") for n in zh)
    assert stats["not_eligible"] == {"audio_qa": {"no Chinese voice": n_zh_images}}
    assert json.loads((out / "stats.json").read_text())["not_eligible"] == stats["not_eligible"]
    assert "no Chinese voice" in (out / "report.html").read_text()
    audio_qa = [r for r in pq.read_table(next((out / "work").glob("*-audio_qa"))).to_pylist()
                if r["origin"] == "synthesized:audio_qa"]
    assert all(not names.get(r["audio_qa_parent"], "").startswith("zh-") for r in audio_qa)


def test_shards_load_with_plain_webdataset_within_budgets(first_run):
    import pyarrow.parquet as pq
    import webdataset as wds

    recipe, out, stats, _ = first_run
    seen = {}
    n_seq = 0
    for sample in wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False).decode():
        meta = sample["json"]
        n_seq += 1
        assert meta["n_tokens"] == len(sample["input_ids.npy"]) <= recipe.stages.pack.max_tokens
        assert meta["n_tiles"] <= recipe.stages.pack.max_tiles
        media = sample["media.mp"]  # layout v2: every file of the sequence inside one msgpack member
        if isinstance(media, bytes):
            import msgpack

            media = msgpack.unpackb(media)
        stored = {f["path"] for kind in ("images", "audio") for f in media[kind]}
        for s in meta["samples"]:
            seen[s["id"]] = seen.get(s["id"], 0) + 1
            for m in s["media"]:
                members = m.get("frames") or [m["member"]]
                assert all(name in stored for name in members)
    contents = pq.read_table(out / "shards" / "contents.parquet").to_pylist()
    assert seen == {r["id"]: r["copies"] for r in contents}
    assert n_seq == stats["sequences"] and len(seen) == stats["samples_out"]


def test_rerun_skips_every_finished_stage(first_run):
    recipe, out, _, hashes = first_run
    runner = Runner(recipe, out)
    stats = runner.run()
    assert all(s.get("resumed") for s in runner.summary["stages"])
    # the stats of a resumed run say what was done before, and count no earlier seconds as its own
    assert set(stats["resumed_stages"]) == set(stats["stage_seconds"]) and not any(stats["stage_seconds"].values())
    assert json.loads((out / "stats.json").read_text())["resumed_stages"] == stats["resumed_stages"]
    assert shard_hashes(out) == hashes


def test_interrupted_stage_is_recomputed_and_gives_the_same_shards(first_run):
    recipe, out, _, hashes = first_run
    tok_dir = next((out / "work").glob("*-tokenize"))
    (tok_dir / "_DONE.json").unlink()  # as if the run died while writing this stage
    next(tok_dir.glob("*.parquet")).unlink()
    runner = Runner(recipe, out)
    runner.run()
    resumed = {s["stage"]: bool(s.get("resumed")) for s in runner.summary["stages"]}
    assert resumed["ingest"] and resumed["media"] and not resumed["tokenize"] and not resumed["pack_plan"]
    assert shard_hashes(out) == hashes


def test_changed_budget_reruns_only_packing(first_run, demo_small, tmp_path):
    _, out, stats, _ = first_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    recipe = load_recipe(RECIPE, demo_overrides(demo_small, *EXTRA, "stages.pack.max_tokens=8192"))
    runner = Runner(recipe, copy)
    new = runner.run()
    assert [s["stage"] for s in runner.summary["stages"] if not s.get("resumed")] == ["pack_select", "pack_plan",
                                                                                      "shard"]
    import pyarrow.parquet as pq

    assert new["invariant_ok"] and new["budgets"]["max_tokens"] == 8192
    assert max(pq.read_table(copy / "shards" / "sequences.parquet").column("n_tokens").to_pylist()) <= 8192
    assert new["rejected"].get("too_long", 0) >= 1  # the 24-tile multi-image samples no longer fit 8192 tokens


def test_changed_repeat_or_seed_reruns_only_the_plan(first_run, demo_small, tmp_path):
    """sources[].repeat and the seed are read by the mixture (and audio-QA's draw), not by
    transcription, filtering or scoring: a resumed run re-runs only what reads them."""
    _, out, _, _ = first_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    recipe = load_recipe(RECIPE, demo_overrides(demo_small, *EXTRA, "sources.demo-video.repeat=1.0"))
    runner = Runner(recipe, copy)
    new = runner.run()
    assert [s["stage"] for s in runner.summary["stages"] if not s.get("resumed")] == ["pack_plan", "shard"]
    assert new["invariant_ok"] and new["repeats"] == 0


def test_cli_stats_json_and_verify(first_run):
    _, out, stats, _ = first_run
    result = CliRunner().invoke(main, ["stats", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in ("samples_in", "synthesized", "samples_out", "repeats", "rejected", "shards", "sequences",
                "token_fill", "tile_fill", "modalities"):
        assert key in data
    assert data["samples_out"] == stats["samples_out"]
    assert CliRunner().invoke(main, ["verify", str(out)]).exit_code == 0
    result = CliRunner().invoke(main, ["report", str(out)])
    assert result.exit_code == 0 and (out / "report.html").stat().st_size > 10_000
    page = (out / "report.html").read_text()
    assert "Funnel" in page and "Packing" in page and page.count("data:image/png;base64") >= 3
    shard = sorted((out / "shards").glob("*.tar"))[0]
    result = CliRunner().invoke(main, ["inspect", str(shard), "--limit", "1"])
    assert result.exit_code == 0 and "tokens" in result.output and "assistant:" in result.output


def test_bad_recipe_fails_before_any_work(demo_small, tmp_path):
    out = tmp_path / "never"
    result = CliRunner().invoke(main, ["run", str(RECIPE), "--out", str(out), "--set", "stages.pack.max_token=1",
                                       *sum((["--set", s] for s in demo_overrides(demo_small)), [])])
    assert result.exit_code != 0 and "stages.pack.max_token" in result.output and not out.exists()
    result = CliRunner().invoke(main, ["run", str(RECIPE), "--out", str(out), "--input", str(tmp_path / "no.jsonl")])
    assert result.exit_code != 0 and "manifest not found" in result.output and not out.exists()


def test_a_manifest_of_only_bad_lines_stops_after_ingest(ray_session, demo_small, tmp_path):
    """No row kept by ingest: the run stops there (a UserError, exit 2 in the CLI) naming the reasons,
    with every line in rejects/ingest.parquet, instead of running the later stages on nothing."""
    import pyarrow.parquet as pq

    from curate.errors import UserError

    manifest = tmp_path / "bad.jsonl"
    manifest.write_bytes(b'{"broken": \n\xff\xfe\n{"id": 1}\n')
    recipe = load_recipe(RECIPE, [f"stages.tokenize.tokenizer={demo_small}/tokenizer"], inputs=[str(manifest)])
    with pytest.raises(UserError, match="ingest kept none of the 3 manifest rows") as e:
        Runner(recipe, tmp_path / "run").run()
    assert all(r in str(e.value) for r in ("invalid_json x1", "bad_encoding x1", "missing_conversations x1"))
    rejects = pq.read_table(tmp_path / "run" / "rejects" / "ingest.parquet")
    assert sorted(rejects.column("line").to_pylist()) == [1, 2, 3]
    assert [d.name for d in (tmp_path / "run" / "work").iterdir()] == ["00-ingest"]


# ---------------------------------------------------------------------------- what a user sees
def manifest_ids(demo_dir):
    """Per manifest line, the ids a user may search for: its own id, else `<file>:<line>`."""
    from curate.stages.ingest import LOOSE_ID_RE

    for path in sorted(Path(demo_dir).glob("*.jsonl")):
        for n, raw in enumerate(path.read_bytes().splitlines(), 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                yield [str(obj["id"])] if isinstance(obj, dict) and obj.get("id") is not None else [f"{path.name}:{n}"]
            except (ValueError, UnicodeDecodeError):
                loose = LOOSE_ID_RE.search(raw.decode("utf-8", "replace"))
                yield ([loose.group(1)] if loose else []) + [f"{path.name}:{n}"]


def test_every_manifest_id_is_found_in_a_shard_or_the_rejects(first_run, demo_small):
    from curate.lookup import find_sample

    _, out, stats, _ = first_run
    checked = 0
    for candidates in manifest_ids(demo_small):
        found = [find_sample(out, c) for c in candidates]
        assert any(f["placed"] or f["rejected"] for f in found), candidates
        checked += 1
    assert checked == stats["samples_in"]


def test_orig_id_is_in_the_shard_json_contents_and_rejects(first_run):
    import pyarrow.parquet as pq

    from curate.lookup import iter_shard_samples

    _, out, _, _ = first_run
    entries = [s for _, _, _, s in iter_shard_samples(out / "shards")]
    assert entries and all(s["orig_id"] for s in entries)
    contents = pq.read_table(out / "shards" / "contents.parquet").to_pylist()
    assert {c["orig_id"] for c in contents} == {s["orig_id"] for s in entries}
    for c in contents:  # a synthesized row names its parent: "<parent>#audio_qa" or "<parent>#k"
        assert ("#" in c["orig_id"]) == (c["origin"] != "manifest"), c
    rejects = pq.read_table(out / "rejects").to_pylist() if (out / "rejects").exists() else []
    assert rejects and all(r["orig_id"] for r in rejects)


def test_report_has_tables_not_json_and_its_funnel_matches_stats(first_run, tmp_path):
    from curate.report.html import funnel_numbers
    from tests.curate.test_report import render_checks

    _, out, _, _ = first_run
    page = (out / "report.html").read_text()
    assert "<pre" not in page and "{&quot;" not in page.split("Examples")[0]
    data = json.loads(CliRunner().invoke(main, ["stats", str(out), "--json"]).output)
    expected = {"samples_in": data["samples_in"], "synthesized": data["synthesized"],
                "rejected": sum(data["rejected"].values()), "samples_out": data["samples_out"],
                "repeats": data["repeats"]}
    assert funnel_numbers(page) == expected
    for reason in data["rejected"]:
        assert f": {reason}</td>" in page  # every reason has its examples
    checks = render_checks(out / "report.html", tmp_path)
    assert checks["images"] >= 3 and checks["broken"] == 0
    assert checks["too_wide"] == [] and checks["scroll_width"] <= checks["width"]
    assert checks["funnel"] == expected


def test_cli_run_output_is_short_and_ray_stays_off_the_terminal(first_run, demo_small):
    recipe, out, _, hashes = first_run
    (next((out / "work").glob("*-shard")) / "_DONE.json").unlink()  # the shard stage runs again on Ray
    sets = sum((["--set", s] for s in demo_overrides(demo_small, *EXTRA)), [])
    result = CliRunner().invoke(main, ["run", str(RECIPE), "--out", str(out), *sets])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) < 40, result.output
    summaries = [line for line in lines if re.match(r"stage \w+( \[[^]]*\])?: ", line)]  # not "stage seconds"
    assert len(summaries) == len(runner_stages(recipe))
    assert any(line.startswith("stage shard: ") and " kept" in line for line in lines)
    assert result.output.count("samples in") == 1  # the statistics table, once
    for noise in ("Execution plan", "Running Dataset", "Token authentication", "Warning"):
        assert noise not in result.output
    assert (out / "logs").is_dir()
    assert shard_hashes(out) == hashes


def runner_stages(recipe):
    from curate.runner import STAGES

    return [s for s in STAGES if getattr(recipe.stages, s.section).enabled]
