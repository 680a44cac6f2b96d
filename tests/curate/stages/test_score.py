"""LLM scoring: reply parsing, the three back-ends, the stage on Ray, cache and loss cleaning.

The transformers back-end runs a tiny random Qwen2 saved to disk and loaded through the
real from_pretrained path; guided decoding makes its random replies valid answers. The
HTTP back-end talks to a small OpenAI-compatible server started on 127.0.0.1 that gives
fixed replies chosen from the prompt. vLLM tests need vllm and a CUDA GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.recipe import ScoreConfig, load_recipe
from curate.records import CORE_SCHEMA
from curate.runner import Runner
from curate.scoring.backends import HTTPBackend, Request
from curate.scoring.parse import parse_domain, parse_score, parse_yes_no
from curate.scoring.prompts import load_prompts
from curate.stages.base import RunContext
from curate.stages.score import ScoreStage
from filters.text_units import is_cjk
from tests.conftest import demo_overrides

ROOT = Path(__file__).resolve().parents[3]
RECIPE = ROOT / "recipes" / "sft-stage3.yaml"
DOMAINS = ("disciplinary", "programming", "mathematics", "general")


# ---------------------------------------------------------------------------- parser
@pytest.mark.parametrize("reply,expected", [
    ("7", 7.0), ("Score: 8/10", 8.0), ("**9**", 9.0), ('{"score": 6, "reason": "ok"}', 6.0),
    ("I would rate this sample 4 out of 10 because step 2 is wrong.", 4.0),
    ("Rating: 7.5", 7.5), ("<think>maybe 3 or 4</think>\nScore: 5", 5.0),
    ("The answer has 2 errors and 3 typos. Score: 6", 6.0),
    ("10/10", 10.0), ("0", 0.0),
    ("Score: 11", None), ("-1", None), ('{"score": "high"}', None), ("", None), (None, None),
    ("It is fine, between 6 and 8.", None), ("I cannot judge this sample.", None), ("Score: 7/10 or 8/10", None),
])
def test_parse_score(reply, expected):
    assert parse_score(reply) == expected


@pytest.mark.parametrize("reply,expected", [
    ("8", 8.0), ("评分：8", 8.0), ("8分", 8.0), ("满分10分，我给7分。", 7.0), ("得分为 9 分", 9.0),
    ("10分制下给5分", 5.0), ("这个样本还可以，6", 6.0), ("给6分或7分", None), ("无法评分", None),
])
def test_parse_chinese_score(reply, expected):
    assert parse_score(reply) == expected


@pytest.mark.parametrize("reply,expected,kind", [
    ("数学", "mathematics", "domain"), ("这是一道编程题。", "programming", "domain"), ("通用", "general", "domain"),
    ("烹饪", None, "domain"), ("是", True, "yes_no"), ("否。", False, "yes_no"),
    ("是的，最后一句重复了。", True, "yes_no"),
    ("不是，内容没有重复", False, "yes_no"), ("没有重复。", False, "yes_no"),
    ("这是正常的回答", None, "yes_no"),  # 是 inside a sentence is not an answer
])
def test_parse_chinese_domain_and_yes_no(reply, expected, kind):
    got = parse_domain(reply, DOMAINS) if kind == "domain" else parse_yes_no(reply)
    assert got == expected


@pytest.mark.parametrize("reply,expected", [
    ("programming", "programming"), ("Domain: Mathematics.", "mathematics"), ('{"domain": "general"}', "general"),
    ("This is a **math** word problem.", "mathematics"), ("code", "programming"),
    ("It is about cooking.", None), ("", None), (None, None),
    ("disciplinary (history), not general", "disciplinary"),
])
def test_parse_domain(reply, expected):
    assert parse_domain(reply, DOMAINS) == expected


@pytest.mark.parametrize("reply,expected", [
    ("yes", True), ("No.", False), ("Yes, the last sentence repeats twelve times.", True),
    ('{"repetitive": false}', False), ('{"answer": "YES"}', True),
    ("The sample is not repetitive.", False), ("This answer is highly repetitive.", True),
    ("I am not sure.", None), ("", None), (None, None),
])
def test_parse_yes_no(reply, expected):
    assert parse_yes_no(reply) == expected


def test_prompt_file_is_versioned_and_checked(tmp_path):
    prompts = load_prompts()
    assert prompts.prompt_id.startswith("score-v1@") and prompts.domains == DOMAINS
    assert "def f" in prompts.score_prompt("def f(): pass", "programming")[-1]["content"]
    bad = tmp_path / "p.yaml"
    bad.write_text("version: x\ndomains: [general]\nclassify: '{text}'\nscore: 'no placeholder'\n"
                   "repetition: '{text}'\n")
    with pytest.raises(ValueError, match="score.default has no"):
        load_prompts(str(bad))
    edited = tmp_path / "q.yaml"
    edited.write_text((ROOT / "recipes/prompts/score-v1.yaml").read_text().replace("strict", "careful"))
    assert load_prompts(str(edited)).prompt_id != prompts.prompt_id  # same version, other text: other id


# ---------------------------------------------------------------------------- fake OpenAI server
class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        srv: FakeLLM = self.server  # type: ignore[assignment]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests += 1
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            fail = srv.fail_next > 0
            srv.fail_next -= fail
        # in flight until the reply is about to be sent: once the client has it, it may send its
        # next request before this thread runs on, so counting down after the write would see
        # one request too many in flight on a busy machine
        counted = True
        try:
            time.sleep(srv.delay)
            with srv.lock:
                srv.in_flight -= 1
                counted = False
            if self.path != "/v1/chat/completions" or fail:
                self.send_error(500 if fail else 404)
                return
            reply = srv.reply_for(body["messages"])
            data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"], "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left
        finally:
            if counted:
                with srv.lock:
                    srv.in_flight -= 1

    def log_message(self, *args):
        pass


class FakeLLM(ThreadingHTTPServer):
    """Fixed replies in the shapes real models use, chosen from the sample in the prompt."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.requests = self.in_flight = self.max_in_flight = self.fail_next = 0
        self.delay = 0.0
        self.garbage = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def reply_for(self, messages: list[dict[str, str]]) -> str:
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        sample = prompt.split("<<<", 1)[1].split(">>>", 1)[0]
        loop, proof = "Summarise the topic" in sample, "Prove that" in sample
        if self.garbage:
            return "I cannot judge this sample."
        if prompt.startswith("请将"):  # the Chinese prompt file: Chinese replies
            return "数学"
        if prompt.startswith("请从0"):
            return "评分：8分"
        if prompt.startswith("下面的样本"):
            return "是的，同一句话重复了很多次。" if "重复重复" in sample else "否"
        if prompt.startswith("Classify"):
            return "Domain: mathematics" if proof else "**programming**"
        if prompt.startswith("Rate"):
            return '{"score": 5}' if proof else ("Score: 3/10" if loop else "I would rate this 8 out of 10.")
        return "Yes, the same sentence repeats." if loop else "No, it is not repetitive."


@pytest.fixture()
def fake_llm():
    server = FakeLLM()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def ask(n: int) -> list[Request]:
    prompts = load_prompts()
    return [Request(prompts.repetition_prompt(f"sample {i}"), ("yes", "no")) for i in range(n)]


def test_http_backend_keeps_the_concurrency_bound(fake_llm):
    fake_llm.delay = 0.1
    backend = HTTPBackend(fake_llm.url, "m", {"concurrency": 3})
    replies = backend.generate(ask(12))
    assert replies == ["No, it is not repetitive."] * 12
    assert fake_llm.requests == 12 and 2 <= fake_llm.max_in_flight <= 3


def test_http_backend_retries_a_500(fake_llm):
    fake_llm.fail_next = 1
    backend = HTTPBackend(fake_llm.url, "m", {"concurrency": 1, "retries": 2, "backoff_s": 0.01})
    assert backend.generate(ask(1)) == ["No, it is not repetitive."]
    assert fake_llm.requests == 2  # the 500, then the 200


def test_http_timeout_and_unparsable_replies_become_unscored(fake_llm, tmp_path):
    rows = text_rows(["Explain lists.", "Explain dicts."])
    fake_llm.delay = 1.0
    stage = http_stage(fake_llm, tmp_path, options={"timeout_s": 0.2, "retries": 1, "backoff_s": 0.01},
                       unscored="reject", repetition_check=False)
    out = stage(rows).to_pylist()
    assert [r["score_status"] for r in out] == ["unscored"] * 2
    assert [r["reject_reason"] for r in out] == ["unscored"] * 2 and all(r["quality_score"] is None for r in out)
    assert fake_llm.requests == 4  # 2 samples x (1 try + 1 retry) for the domain question
    fake_llm.delay, fake_llm.garbage = 0.0, True
    stage = http_stage(fake_llm, tmp_path, unscored="keep", repetition_check=False, classify_domain=False)
    out = stage(rows).to_pylist()
    assert [(r["score_status"], r["reject_reason"]) for r in out] == [("unscored", None)] * 2
    assert fake_llm.requests == 4 + 4  # each unparsable reply asked once more, then given up


def test_exemptions_thresholds_and_modalities(fake_llm, tmp_path):
    rows = text_rows(["Explain lists.", "Summarise the topic 'x'. x. x. x.", "Prove that 1 < 2.", "What is shown?"],
                     sources=["a", "b", "b", "c"], modalities=["text", "text", "text", "image"])
    stage = http_stage(fake_llm, tmp_path, exempt_sources=["a"], thresholds={"mathematics": 4.0},
                       sources={"a": {}, "b": {}, "c": {"exempt_repetition": True}})
    out = stage(rows).to_pylist()
    assert [r["score_status"] for r in out] == ["exempt", "scored", "scored", "repetition_only"]
    assert out[0]["quality_score"] is None and out[0]["reject_reason"] is None
    assert (out[1]["quality_score"], out[1]["repetition_llm"], out[1]["reject_reason"]) == (3.0, True, "repetitive_llm")
    assert (out[2]["score_domain"], out[2]["quality_score"], out[2]["reject_reason"]) == ("mathematics", 5.0, None)
    assert out[3]["repetition_llm"] is None and out[3]["quality_score"] is None  # exempt from repetition, not rated
    review = [json.loads(line) for f in (tmp_path / "review" / "score").glob("*.jsonl") for line in f.open()]
    assert [r["reject_reason"] for r in review] == ["repetitive_llm"]


def test_chinese_samples_get_the_chinese_prompts(fake_llm, tmp_path):
    rows = text_rows(["求证：1 小于 2。", "Explain lists.", "重复重复重复重复重复重复重复重复。"],
                     answers=["因为 2 减 1 等于 1，大于零。", "An answer about it.", "好的。"])
    out = http_stage(fake_llm, tmp_path)(rows).to_pylist()
    zh, en, loop = out
    assert zh["score_prompt"].startswith("score-v1-zh@") and en["score_prompt"].startswith("score-v1@")
    assert (zh["score_domain"], zh["quality_score"], zh["repetition_llm"]) == ("mathematics", 8.0, False)
    assert (en["score_domain"], en["quality_score"]) == ("programming", 8.0)
    assert loop["repetition_llm"] is True and loop["reject_reason"] == "repetitive_llm"
    rows_zh_off = http_stage(fake_llm, tmp_path, prompts_zh=None)(
        text_rows(["求证：1 小于 2。"], answers=["因为 2 减 1 等于 1。"])).to_pylist()
    assert rows_zh_off[0]["score_prompt"].startswith("score-v1@")  # null: one prompt file for every language


# ---------------------------------------------------------------------------- stage helpers
def text_rows(questions, sources=None, modalities=None, answers=None) -> pa.Table:
    rows = []
    for i, q in enumerate(questions):
        rows.append({name: None for name in CORE_SCHEMA.names} | {
            "id": f"id{i}", "source": (sources or ["s"] * len(questions))[i], "origin": "manifest",
            "modality": (modalities or ["text"] * len(questions))[i], "domain": "general", "media": [],
            "conversations": [{"from": "human", "value": q},
                              {"from": "gpt", "value": (answers or ["An answer about it."] * len(questions))[i]}]})
    return pa.Table.from_pylist(rows, schema=CORE_SCHEMA)


def http_stage(server, out_dir, sources=None, **cfg) -> ScoreStage:
    from curate.recipe import SourceConfig

    srcs = {n: SourceConfig(name=n, manifests=["x"], **v) for n, v in (sources or {}).items()}
    config = ScoreConfig(backend="http", endpoint=server.url, model="served-tiny", cache=False, **cfg)
    stage = ScoreStage(config, RunContext(out_dir=str(out_dir), sources=srcs))
    stage.validate()
    return stage


# ---------------------------------------------------------------------------- through the Runner
def text_recipe(demo, *sets):
    """sft-stage3 on the demo text source only, other model stages off (fast; the demo loops reach score)."""
    off = [f"stages.{k}.enabled=false" for k in ("download", "filter", "dedupe", "transcribe", "audio_qa")]
    recipe = load_recipe(RECIPE, demo_overrides(demo, "stages.shard.max_sequences=4", *off, *sets))
    recipe.sources = [s for s in recipe.sources if s.name == "demo-text"]
    recipe.modality_targets = {}
    return recipe


def score_rows(out: Path) -> list[dict]:
    """Rows after scoring, with the loss-cleaning step's rejects (its own stage) applied."""
    rows = pq.read_table(next((out / "work").glob("*-score"))).to_pylist()
    cleaned = {r["id"]: r for r in pq.read_table(next((out / "work").glob("*-score_loss"))).to_pylist()}
    return [cleaned.get(r["id"], r) for r in rows]


def first_question(row) -> str:
    return row["conversations"][0]["value"]


@pytest.mark.pipeline
def test_http_backend_through_the_runner_and_cache_on_rerun(ray_session, demo_small, fake_llm, tmp_path):
    sets = ("stages.score.backend=http", f"stages.score.endpoint={fake_llm.url}", "stages.score.model=served-tiny",
            "stages.score.thresholds={mathematics: 4}", "stages.score.options={concurrency: 4}")
    stats = Runner(text_recipe(demo_small, *sets), tmp_path).run()
    assert stats["invariant_ok"] and "score" not in stats["skipped_stages"]
    rows = score_rows(tmp_path)
    assert rows and all(r["score_status"] == "scored" and r["score_model"] == "served-tiny" for r in rows)
    # the demo's Chinese rows are scored with the Chinese prompt file, the others with the English one
    chinese = [is_cjk("\n".join(t["value"] for t in r["conversations"])) for r in rows]
    assert any(chinese) and not all(chinese)
    assert all(r["score_prompt"].startswith("score-v1-zh@" if zh else "score-v1@") for r, zh in zip(rows, chinese))
    loops = [r for r in rows if first_question(r).startswith("Summarise")]
    proof = [r for r in rows if first_question(r).startswith("Prove")]
    assert loops and all(r["reject_reason"] == "repetitive_llm" for r in loops)
    assert proof and all((r["score_domain"], r["quality_score"], r["reject_reason"]) == ("mathematics", 5, None)
                         for r in proof)
    plain = [r for r in rows if r not in loops and r not in proof]
    # the fake server answers the English prompts "programming" and the Chinese ones 数学 (mathematics)
    assert all((r["score_domain"], r["quality_score"], r["reject_reason"])
               == ("mathematics" if zh else "programming", 8, None) for r, zh in zip(rows, chinese) if r in plain)
    assert stats["rejected"]["repetitive_llm"] == len(loops)
    flagged = [json.loads(x) for f in (tmp_path / "review" / "score").glob("*.jsonl") for x in f.open()]
    assert sorted(r["id"] for r in flagged) == sorted(r["id"] for r in loops)
    asked = fake_llm.requests
    assert asked > 0

    # A stricter threshold re-runs the stage, but every reply comes from the cache.
    stats = Runner(text_recipe(demo_small, *sets, "stages.score.threshold=9"), tmp_path).run()
    assert fake_llm.requests == asked
    # mathematics keeps its own threshold (4): the Chinese rows, classed 数学, stay
    assert stats["rejected"]["low_quality"] == sum(1 for r, zh in zip(rows, chinese) if r in plain and not zh)
    proof_ids = {r["id"] for r in proof}
    assert all(r["reject_reason"] is None for r in score_rows(tmp_path) if r["id"] in proof_ids)


@pytest.fixture(scope="module")
def tiny_qwen(demo_small, tmp_path_factory):
    """A random 2-layer Qwen2 with the demo tokenizer, saved like a real checkpoint."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("tiny-qwen2")
    tok = AutoTokenizer.from_pretrained(str(demo_small / "tokenizer"))
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.mark.pipeline
def test_tiny_transformers_model_scores_every_row_and_loss_cleaning(ray_session, demo_small, tiny_qwen, tmp_path):
    recipe = text_recipe(demo_small, f"stages.score.model={tiny_qwen}", "stages.score.threshold=0",
                         "stages.score.repetition_reject=false", "stages.score.loss_clean=true",
                         "stages.score.options={max_length: 256}")
    stats = Runner(recipe, tmp_path).run()
    assert stats["invariant_ok"]
    rows = score_rows(tmp_path)
    assert len(rows) >= 20
    for r in rows:  # guided decoding: every random reply is a valid answer
        assert r["score_status"] == "scored" and r["score_domain"] in DOMAINS
        assert r["quality_score"] in range(11) and r["repetition_llm"] in (True, False)
        assert r["score_model"] == str(tiny_qwen) and r["sample_loss"] > 0
    losses = np.array([r["sample_loss"] for r in rows])
    low, high = losses.mean() - losses.std(), losses.mean() + losses.std()
    outside = {r["id"] for r in rows if not low <= r["sample_loss"] <= high}
    assert outside and {r["id"] for r in rows if r["reject_reason"] == "loss_outlier"} == outside
    assert stats["rejected"]["loss_outlier"] == len(outside) < len(rows)


def test_loss_outliers_follow_the_row_rule_on_whole_columns():
    """reject_outliers (vectorised) rejects exactly the rows outlier_detail names, with its
    detail: alive rows with a loss, of a source with enough losses; bounds are inclusive."""
    from curate.scoring.loss import outlier_detail, reject_outliers

    stats = {"a": {"n": 10, "mean": 2.0, "std": 0.5}, "b": {"n": 3, "mean": 1.0, "std": 0.1},
             "c": {"n": 50, "mean": 0.3, "std": 0.0}}
    cases = [("a", 1.0), ("a", 2.0), ("a", 3.0), ("a", 3.0000001), ("a", 0.99), ("a", None), ("a", float("nan")),
             ("b", 9.0), ("c", 0.3), ("c", 0.31), ("d", 9.0), ("a", 9.0)]
    rows = [{name: None for name in CORE_SCHEMA.names} | {"id": str(i), "source": src, "sample_loss": loss}
            for i, (src, loss) in enumerate(cases)]
    rows[-1] |= {"reject_stage": "filter", "reject_reason": "repetitive", "reject_detail": "x"}
    schema = CORE_SCHEMA.append(pa.field("sample_loss", pa.float64()))
    out = reject_outliers(pa.Table.from_pylist(rows, schema=schema), stats, 2, 5, "score_loss").to_pylist()
    for row, (src, loss) in zip(out[:-1], cases):
        s = stats.get(src)
        detail = outlier_detail(loss, s, 2) if loss is not None and s and s["n"] >= 5 else None
        want = ("score_loss", "loss_outlier", detail) if detail else (None, None, None)
        assert (row["reject_stage"], row["reject_reason"], row["reject_detail"]) == want, (src, loss)
    assert [r["id"] for r in out if r["reject_reason"] == "loss_outlier"] == ["3", "4", "6", "9"]
    assert out[-1]["reject_reason"] == "repetitive"  # a row already rejected keeps its reason


@pytest.mark.pipeline
def test_no_model_skips_with_the_key_to_set(ray_session, demo_small, tmp_path):
    stats = Runner(text_recipe(demo_small), tmp_path).run()
    assert "stages.score.model" in stats["skipped_stages"]["score"]
    rows = score_rows(tmp_path)
    assert rows and all(r["score_status"] is None and r["quality_score"] is None and r["reject_reason"] is None
                        for r in rows)
    assert "score" in (tmp_path / "report.html").read_text()


def test_missing_model_path_fails_before_work(demo_small, tmp_path):
    recipe = text_recipe(demo_small, f"stages.score.model={tmp_path}/no-such-model")
    with pytest.raises(FileNotFoundError, match="stages.score.model"):
        Runner(recipe, tmp_path / "run").run()
    assert not (tmp_path / "run").exists()


def test_importing_the_project_never_imports_vllm(tmp_path):
    trap = tmp_path / "vllm"
    trap.mkdir()
    (trap / "__init__.py").write_text("raise RuntimeError('vllm was imported')\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    code = ("import sys; import curate.cli, curate.runner, curate.stages.score, curate.scoring.backends; "
            "from curate.recipe import ScoreConfig; from curate.stages.score import ScoreStage; "
            "from curate.stages.base import RunContext; "
            f"ScoreStage(ScoreConfig(backend='vllm', model='{tmp_path}/model'), RunContext('o')).validate(); "
            "assert 'vllm' not in sys.modules; print('ok')")
    env = os.environ | {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


# ---------------------------------------------------------------------------- vLLM (GPU only)
def _has_vllm_gpu() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_vllm_gpu(), reason="needs vllm and a CUDA GPU")
def test_vllm_backend_guided_answers_and_losses(tiny_qwen):
    from curate.scoring.backends import VLLMBackend

    backend = VLLMBackend(str(tiny_qwen), {"gpu_memory_utilization": 0.3, "max_model_len": 2048, "enforce_eager": True})
    prompts = load_prompts()
    replies = backend.generate([Request(prompts.score_prompt(f"x = {i}", "programming"),
                                        tuple(str(i) for i in range(11))) for i in range(8)])
    assert all(parse_score(r) is not None for r in replies)
    losses = backend.losses(["def f(x):\n    return x + 1\n", "the the the the the"])
    assert all(v is not None and v > 0 for v in losses)
