"""Dedupe: MinHash accuracy against exact Jaccard, Ray path == single-process API, keep rule,
images (pHash) and video instructions."""

from __future__ import annotations

import itertools
import random
import re

import numpy as np
import pyarrow as pa
import pytest

from curate.dedup.lsh import lsh_params
from curate.dedup.minhash import jaccard_estimate, signatures
from curate.dedup.shingles import normalise
from curate.dedup.verify import media_compatible
from curate.demo import prose_topics
from curate.recipe import DedupeConfig
from curate.stages.base import RunContext
from curate.stages.dedupe import DedupeStage, near_duplicate_clusters
from filters.text_units import units
from tests.builders import apply_on_ray

THRESHOLD = 0.8


def shingles(text, n=5):
    words = units(normalise(text))
    n = min(n, len(words))
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a, b):
    return len(a & b) / len(a | b) if a | b else 1.0


def labelled_corpus(seed=0):
    """Real prose with small edits (near duplicates) and hard negatives (big edits, shared halves)."""
    rng = random.Random(seed)
    docs = [" ".join(body.split()[:220]) for _, body in prose_topics(120) if len(body.split()) >= 120]
    texts = list(docs)
    vocab = sorted({w for d in docs for w in d.split()})
    for d in docs[:40]:
        words = d.split()
        for edit in ("substitute", "insert"):  # near duplicates: one word changed or added
            w = list(words)
            if edit == "substitute":
                w[rng.randrange(len(w))] = rng.choice(vocab)
            else:
                w.insert(rng.randrange(len(w)), rng.choice(vocab))
            texts.append(" ".join(w))
        w = list(words)  # hard negative (Jaccard ~0.6): one word in twenty replaced
        for i in range(rng.randrange(20), len(w), 20):
            w[i] = rng.choice(vocab)
        texts.append(" ".join(w))
    for a, b in zip(docs[40:60], docs[60:80]):  # hard negative: half of one, half of another
        wa, wb = a.split(), b.split()
        texts.append(" ".join(wa[: len(wa) // 2] + wb[len(wb) // 2:]))
    return texts


def pair_sets(labels):
    groups = {}
    for i, g in enumerate(labels):
        groups.setdefault(g, []).append(i)
    return {p for members in groups.values() for p in itertools.combinations(sorted(members), 2)}


def test_lsh_parameters_follow_the_threshold():
    def candidate(s, b, r):
        return 1 - (1 - s ** r) ** b

    bands, rows = lsh_params(0.8, 128)
    assert bands * rows <= 128
    assert candidate(0.8, bands, rows) >= 0.99  # recall first: verification removes false candidates
    assert candidate(0.4, bands, rows) < 0.1  # but unrelated text rarely shares a bucket
    b5, r5 = lsh_params(0.5, 128)
    assert r5 < rows  # a lower threshold needs shorter bands


def test_signatures_estimate_jaccard():
    texts = labelled_corpus()[:120]
    sig = signatures([normalise(t) for t in texts], 256, 5)
    errors = []
    for i, j in itertools.combinations(range(0, 120, 3), 2):
        errors.append(abs(jaccard_estimate(sig[i], sig[j]) - jaccard(shingles(texts[i]), shingles(texts[j]))))
    assert np.mean(errors) < 0.02 and max(errors) < 0.15


def test_near_duplicate_precision_and_recall_against_exact_jaccard():
    texts = labelled_corpus()
    sets = [shingles(t) for t in texts]
    truth = {(i, j) for i, j in itertools.combinations(range(len(texts)), 2) if jaccard(sets[i], sets[j]) >= THRESHOLD}
    predicted = pair_sets(near_duplicate_clusters(texts, THRESHOLD))
    tp = len(truth & predicted)
    precision, recall = tp / max(len(predicted), 1), tp / max(len(truth), 1)
    print(f"pairs: truth {len(truth)} predicted {len(predicted)} precision {precision:.3f} recall {recall:.3f}")
    assert len(truth) >= 80
    assert precision >= 0.98 and recall >= 0.98


def rows_from_texts(texts, source="s"):
    return [{"id": f"{i:012d}", "source": source, "origin": "manifest", "reject_reason": None,
             "reject_stage": None, "reject_detail": None, "media": [],
             "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": t}]}
            for i, t in enumerate(texts)]


def run_stage(ray_session, rows, sources=("s",), **cfg):
    stage = DedupeStage(DedupeConfig(**cfg), RunContext(out_dir="/tmp", sources={s: None for s in sources}))
    stage.validate()
    return {r["id"]: r for r in apply_on_ray(stage, rows)}


def test_ray_path_gives_the_single_process_clusters(ray_session):
    texts = labelled_corpus()[:150]
    out = run_stage(ray_session, rows_from_texts(texts))
    assert len(out) == len(texts), "every row comes back"
    labels = near_duplicate_clusters(texts, THRESHOLD)
    kept_of = {}
    for rid, r in out.items():
        if r["reject_reason"]:
            assert r["reject_stage"] == "dedupe" and r["reject_reason"] in ("near_duplicate", "exact_duplicate")
            kept_of[int(rid)] = int(r["reject_detail"].split()[2])
    ray_labels = [kept_of.get(i, i) for i in range(len(texts))]
    assert pair_sets(ray_labels) == pair_sets(labels)
    assert len(kept_of) > 10


def draw(seed, path, size=(640, 480), quality=90):
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (640, 480), "white")
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = rng.randrange(600), rng.randrange(440)
        d.rectangle([x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)],
                    fill=tuple(rng.randrange(256) for _ in range(3)))
    img.resize(size).save(path, quality=quality)


def image_row(rid, path, sha, question="Describe the image.", answer="A chart with bars."):
    return {"id": rid, "source": "s", "origin": "manifest",
            "media": [{"kind": "image", "ref": str(path), "path": str(path), "sha256": sha}],
            "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}


def video_row(rid, question, answer, sha="vid-1"):
    return {"id": rid, "source": "s", "origin": "manifest",
            "media": [{"kind": "video", "ref": "v.mp4", "path": None, "sha256": sha}],
            "conversations": [{"from": "human", "value": f"<video>\n{question}"}, {"from": "gpt", "value": answer}]}


@pytest.fixture(scope="module")
def mixed_run(ray_session, tmp_path_factory):
    """One Ray run over exact duplicates (two sources), images and video instructions."""
    tmp = tmp_path_factory.mktemp("dd")
    draw(1, tmp / "a.jpg")
    draw(1, tmp / "a-small.jpg", size=(320, 240), quality=50)
    draw(2, tmp / "b.jpg")
    body = "A sentence about packing sequences for training. " * 5
    rows = rows_from_texts([body], source="b") + rows_from_texts(["  " + body.upper() + " "], source="a")
    rows[1]["id"] = "x-in-a"
    rows += [image_row("a", tmp / "a.jpg", "sha-a"), image_row("a2", tmp / "a-small.jpg", "sha-a2"),
             image_row("b", tmp / "b.jpg", "sha-b")]
    rows += [video_row("v1", "What happens in this video?", "A man walks a dog along the beach at sunset."),
             video_row("v2", "What happens in this video ?", "Two children build a sandcastle near the waves."),
             video_row("v3", "How many people stand near the red car?", "Three people stand there."),
             video_row("v4", "What happens in this video?", "A cat sleeps on a sofa.", sha="vid-2")]
    return tmp, run_stage(ray_session, rows, sources=("a", "b"))


def test_exact_duplicates_keep_the_first_source(mixed_run):
    _, out = mixed_run
    assert out["x-in-a"]["reject_reason"] is None  # source a is listed first in the recipe
    assert out["000000000000"]["reject_reason"] == "exact_duplicate"
    assert "duplicate of x-in-a " in out["000000000000"]["reject_detail"]


def test_recoded_image_with_the_same_question_is_a_duplicate_other_image_is_not(mixed_run):
    _, out = mixed_run
    assert out["a"]["reject_reason"] is None and out["b"]["reject_reason"] is None
    assert out["a2"]["reject_reason"] == "near_duplicate" and "duplicate of a " in out["a2"]["reject_detail"]


def test_media_must_match_for_a_near_duplicate():
    a = [{"kind": "image", "sha": "1", "ph": 0b1111}]
    near = [{"kind": "image", "sha": "2", "ph": 0b0111}]
    far = [{"kind": "image", "sha": "3", "ph": (1 << 40) - 1}]
    assert media_compatible(a, near, 4, True) and not media_compatible(a, near, 4, False)
    assert not media_compatible(a, far, 4, True) and not media_compatible(a, [], 4, True)
    assert not media_compatible(a, [{"kind": "video", "sha": "1", "ph": None}], 4, True)


def test_captioning_mode_lets_the_image_alone_decide(ray_session, mixed_run):
    tmp, _ = mixed_run
    out = run_stage(ray_session, [image_row("a", tmp / "a.jpg", "sha-a", answer="Bars."),
                                  image_row("a2", tmp / "a-small.jpg", "sha-a2", answer="Colourful boxes."),
                                  image_row("b", tmp / "b.jpg", "sha-b", answer="Bars.")],
                    options={"image_only": True})
    assert out["a2"]["reject_reason"] == "near_duplicate_image" and out["b"]["reject_reason"] is None


def test_similar_instructions_about_one_video_are_deduplicated(mixed_run):
    _, out = mixed_run
    assert out["v2"]["reject_reason"] == "duplicate_video_instruction"
    assert out["v1"]["reject_reason"] is None and out["v3"]["reject_reason"] is None
    assert out["v4"]["reject_reason"] is None  # another video


def test_unknown_option_fails_before_work():
    stage = DedupeStage(DedupeConfig(options={"imge_only": True}), RunContext(out_dir="/tmp"))
    with pytest.raises(ValueError, match="imge_only"):
        stage.validate()


# ----------------------------------------------------------------------------- Chinese
ZH_PARAGRAPHS = [
    "多模态大语言模型把图像编码器的输出通过投影层映射到语言模型的词向量空间，再与文本一起送入解码器进行自回归训练。",
    "动态高分辨率方法先根据图像的宽高比选择最接近的切片网格，然后把图像缩放并切成若干个固定大小的图块，另外再加一张缩略图。",
    "数据打包把多个短样本拼接成一条长序列，并用注意力掩码保证每个样本只看到自己的词元，从而减少填充带来的浪费。",
    "重复检测是数据清洗中最重要的一步，因为少量反复出现同一句话的样本就足以让模型在长回答中陷入循环。",
    "语音问答数据由文本问题经语音合成得到，合成后的音频再用语音识别模型转写回来，只有转写结果与原文一致时才保留。",
    "损失加权采用平方平均的方式，每个词元的权重等于其所在样本回答长度的负二分之一次方，以平衡长短回答的贡献。",
    "在指令微调阶段，纯文本数据约占四分之一，这样在解冻语言模型参数时仍能保持原有的语言能力。",
    "近似去重使用最小哈希和局部敏感哈希，先找出候选对，再计算精确的杰卡德相似度来确认是否真的重复。",
    "视频样本按固定间隔抽取若干帧，每一帧缩放到统一大小并作为一个图块，帧的质量在训练时保持一致。",
    "分布式训练把数据分片分配给不同的进程和加载线程，保证在一个训练周期内每条序列只被读取一次。",
]


def test_chinese_near_copies_differ_by_one_word_are_found_and_distinct_paragraphs_are_not():
    """Shingles are character n-grams inside CJK runs: one inserted word changes few of them."""
    paragraphs = [a + b for a, b in zip(ZH_PARAGRAPHS[::2], ZH_PARAGRAPHS[1::2])]  # about 100 characters each
    inserted = [p[:len(p) // 2] + "确实" + p[len(p) // 2:] for p in paragraphs]
    clause = [p[:-1] + "，这一点在实践中得到了验证。" for p in paragraphs]
    texts = paragraphs + inserted + clause
    ids = near_duplicate_clusters(texts, threshold=0.8)
    n = len(paragraphs)
    for i in range(n):
        assert ids[i] == ids[n + i] == ids[2 * n + i], f"near copies of paragraph {i} were missed"
    assert len({ids[i] for i in range(n)}) == n  # different paragraphs never merge
    # word shingles (the old units) see one "word" per clause and miss them: the reason for this change
    old = [re.findall(r"\w+", t) for t in texts[:1] + texts[n:n + 1]]
    assert len(old[0]) < 10
    mixed = "InternVL 2.5 使用动态高分辨率，每个图块 448 像素，最多 12 个图块加一张缩略图。"
    assert len(set(near_duplicate_clusters([mixed, mixed.replace("最多", "至多")], threshold=0.6))) == 1


def jaccard_of(a, b):
    from curate.dedup.shingles import text_units
    from curate.dedup.verify import jaccard_exact

    _, (ha, hb) = text_units([a, b], 5)
    return jaccard_exact(ha, hb)


def test_mostly_chinese_pairs_use_threshold_cjk_and_english_pairs_do_not():
    """A clause inserted into a short Chinese paragraph leaves a Jaccard between 0.6 and 0.8: a
    duplicate at threshold_cjk. An English pair at the same Jaccard stays apart, whatever threshold_cjk."""
    zh = ZH_PARAGRAPHS[0]
    zh_copy = zh[:-1] + "，在多个公开基准上都得到了验证。"
    assert 0.6 <= jaccard_of(zh, zh_copy) < 0.8
    en = " ".join(labelled_corpus()[0].split()[:40])
    words = en.split()
    en_copy = " ".join(words[:20] + "and this clause was added to the middle of it".split() + words[20:])
    assert 0.6 <= jaccard_of(en, en_copy) < 0.8
    texts = [zh, zh_copy, en, en_copy]
    assert near_duplicate_clusters(texts, 0.8, threshold_cjk=0.6) == [0, 0, 2, 3]
    assert near_duplicate_clusters(texts, 0.8, threshold_cjk=0.8) == [0, 1, 2, 3]
    assert near_duplicate_clusters(texts, 0.6, threshold_cjk=0.8) == [0, 1, 2, 2]
    # a mixed Chinese-English text is mostly CJK units, so it is compared at threshold_cjk too
    mixed = "InternVL 2.5 使用动态高分辨率，每个图块 448 像素，最多 12 个图块，另外再加一张缩略图。"
    mixed_copy = mixed[:-1] + "，这样小字也能看清。"
    assert 0.6 <= jaccard_of(mixed, mixed_copy) < 0.8
    assert len(set(near_duplicate_clusters([mixed, mixed_copy], 0.8))) == 1


def test_english_clusters_do_not_depend_on_threshold_cjk():
    texts = labelled_corpus()
    assert near_duplicate_clusters(texts, THRESHOLD, threshold_cjk=0.3) == near_duplicate_clusters(texts, THRESHOLD)


def test_ray_path_applies_threshold_cjk(ray_session):
    zh = ZH_PARAGRAPHS  # about 50 characters each
    copies = [p[:len(p) // 3] + "在实际的大规模数据处理流程中，" + p[len(p) // 3:] for p in zh]
    texts = zh + copies + labelled_corpus()[:40]
    assert all(0.6 <= jaccard_of(a, b) < 0.8 for a, b in zip(zh, copies))
    out = run_stage(ray_session, rows_from_texts(texts))
    rejected = {int(rid) for rid, r in out.items() if r["reject_reason"] == "near_duplicate"}
    single = near_duplicate_clusters(texts, THRESHOLD, threshold_cjk=DedupeConfig().threshold_cjk)
    assert rejected == {i for i, label in enumerate(single) if label != i}
    assert set(range(len(zh), 2 * len(zh))) <= rejected


def test_route_passes_an_empty_block_without_schema():
    """Ray Data can hand the shuffle an empty block with no columns; it yields empty partitions."""

    from curate.dedup.steps import ROUTED
    from curate.dedup.steps import route as _route

    route = pa.table({"id": ["a"], "node": [0], "parts": [[1]]})
    out = _route(pa.table({}), route, 3)
    assert len(out) == 3 and all(t.schema == ROUTED and not len(t) for t in out)


def test_batch_shingles_and_densified_signatures_match_plain_per_document_code():
    """The vectorised kernels (one sort for every document's shingle set, array-wide
    densification) give exactly what a plain loop over one document at a time gives."""
    import zlib

    import numpy as np

    from curate.dedup.minhash import EMPTY, _densify
    from curate.dedup.shingles import MAX_HASH, shingle_hashes_batch
    from filters.text_units import units

    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choice(vocab, size=int(n))) for n in rng.integers(0, 60, size=300)]
    texts += ["", "a", "a b c d", "a b c d e", "a a a a a a a a", "中文 测试 的 句子"]
    for text, got in zip(texts, shingle_hashes_batch(texts, 5, chunk=64)):
        w = [zlib.crc32(u.encode()) for u in units(text)]
        n_eff = min(5, len(w))
        want = set()
        for i in range(len(w) - n_eff + 1 if n_eff else 0):
            h = 0
            for x in w[i:i + n_eff]:
                h = (h * 0x100000001B3 + x) % 2**64
            want.add((h ^ (h >> 29)) & 0xFFFFFFFF)
        assert got.tolist() == sorted(want), text

    k = 16
    sig = rng.integers(0, 1 << 32, size=(200, k), dtype=np.uint64)
    sig[rng.random(sig.shape) < 0.6] = EMPTY
    sig[0] = EMPTY  # a document without shingles stays empty
    want = sig.copy()
    for row in want[1:]:
        full = [j for j in range(k) if row[j] != EMPTY]
        if not full:
            continue
        src = row.copy()
        for j in range(k):
            if src[j] == EMPTY:
                m = next(m for m in range(j, j + 2 * k) if src[m % k] != EMPTY)
                row[j] = (int(src[m % k]) + (m - j) * 0x5BD1E995) & int(MAX_HASH)
    _densify(sig)
    assert np.array_equal(sig, want)


def test_pairwise_jaccard_equals_python_sets():
    """jaccard_pairs against set arithmetic: random shingle sets with shared parts, empty and
    one-shingle documents, a document paired with itself, and chunks that split the pairs."""
    from curate.dedup.verify import jaccard_pairs

    rng = np.random.default_rng(7)
    base = rng.choice(2**32, 400, replace=False).astype(np.uint32)
    docs = [np.unique(np.concatenate([base[rng.integers(0, 400, rng.integers(0, 60))],
                                      rng.integers(0, 2**32, rng.integers(0, 20), dtype=np.uint32)]))
            for _ in range(40)] + [np.zeros(0, np.uint32), np.array([5], np.uint32), np.array([5], np.uint32)]
    offsets = np.concatenate(([0], np.cumsum([len(d) for d in docs]))).astype(np.int64)
    flat = np.concatenate(docs)
    u = rng.integers(0, len(docs), 300)
    v = rng.integers(0, len(docs), 300)
    u[:3], v[:3] = [40, 41, 7], [40, 42, 7]
    got = jaccard_pairs(flat, offsets, u, v, chunk=64)
    for a, b, j in zip(u.tolist(), v.tolist(), got.tolist()):
        sa, sb = set(docs[a].tolist()), set(docs[b].tolist())
        want = len(sa & sb) / len(sa | sb) if sa | sb else 1.0
        assert j == pytest.approx(want), (a, b)
