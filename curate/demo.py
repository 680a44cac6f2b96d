"""The built-in demo corpus, made offline from real generators.

- text: Python's own documentation (pydoc topics) as instruction/answer pairs;
- image: Pillow-drawn bar charts and text pages at several aspect ratios, with questions
  whose answers come from what was drawn;
- multi-image: two or three charts compared;
- video: ffmpeg's test sources (testsrc, smptebars, mandelbrot, ...), some with audio;
- audio: espeak-ng speech of documentation sentences with their transcripts;
- Chinese: question/answer pairs written for the demo on everyday and technical topics (some
  mixing in English terms), and questions in Chinese about more bar charts;
plus deliberate defects so the later stages have work: exact and near duplicates,
repetitive answers, broken and hostile files (truncated, empty, not an image, a
decompression bomb, paths escaping the corpus, an unreachable URL, invalid JSON, bytes
that are not UTF-8, placeholder mismatches; a Chinese near copy with one inserted clause and
a Chinese answer that loops). A small BPE tokenizer is trained on the text.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

VIDEO_SOURCES = {
    "testsrc": "a test pattern with colour bars, a gradient and a running counter",
    "testsrc2": "a test pattern with moving coloured shapes and a counter",
    "smptebars": "SMPTE colour bars",
    "rgbtestsrc": "red, green and blue vertical bars",
    "mandelbrot": "a zoom into the Mandelbrot fractal",
    "life": "Conway's Game of Life",
}


# Chinese question/answer pairs written for this demo (id suffix, question, answer).
ZH_QA = [
    ("tea", "绿茶和红茶的主要区别是什么？",
     "区别主要在于加工过程。绿茶采摘后很快经过杀青，用高温破坏茶叶中的酶，因此保留了较多的茶多酚，茶汤清亮，"
     "味道鲜爽。红茶则要经过萎凋、揉捻和充分发酵，茶多酚大部分被氧化成茶黄素和茶红素，所以茶汤红艳，口感醇厚。"),
    ("bike-chain", "自行车链条多久需要保养一次？",
     "在城市里日常通勤，每骑行三百到五百公里清洁并润滑一次链条就够了。如果经常在雨天或泥泞的路上骑，最好每次骑完"
     "都把链条擦干，再补一点链条油。链条发出干涩的摩擦声，或者用手指一抹就是一层黑油泥，就说明该保养了。"),
    ("python-tuple", "Python 中列表和元组有什么不同？",
     "列表是可变的，创建之后可以追加、删除或修改元素；元组是不可变的，一旦创建就不能再改动。正因为不可变，元组可以"
     "作为字典的键，也可以放进集合里，而列表不行。表示一组固定的数据时，比如坐标 (x, y) 或函数返回的多个值，通常用"
     "元组；需要不断增删的数据则用 list。"),
    ("photosynthesis", "请简单解释一下光合作用。",
     "光合作用是绿色植物利用光能，把二氧化碳和水合成有机物并释放氧气的过程。它在叶绿体中进行，分为两个阶段：光反应"
     "在类囊体膜上把光能转化为化学能，产生 ATP 和 NADPH；暗反应在叶绿体基质中用这些能量固定二氧化碳，最终生成葡萄糖。"),
    ("great-wall", "长城是什么时候修建的？",
     "长城并不是一次建成的。早在春秋战国时期，各诸侯国就开始修筑防御用的城墙；秦始皇统一六国后，把北方几段城墙连接"
     "起来。今天游客在八达岭、慕田峪看到的砖石长城，大多是明朝为了防御北方游牧民族重新修建的，距今已有五六百年。"),
    ("sleep", "晚上总是睡不着，有什么建议吗？",
     "可以先从作息入手：每天尽量在同一时间起床，即使前一晚没睡好也不要赖床。睡前一小时放下手机，下午以后少喝咖啡和"
     "浓茶，晚饭也别吃得太饱。如果躺下二十分钟还睡不着，不妨起身到另一个房间看会儿书，有困意了再回到床上。长期失眠"
     "的话，还是应该去医院的睡眠门诊看看。"),
    ("inflation", "什么是通货膨胀？",
     "通货膨胀是指一段时间内物价总水平持续上涨、货币购买力下降的现象。比如去年一百元能买到的东西，今年要一百零五元"
     "才能买到，就相当于百分之五的通胀率。温和的通胀通常对经济增长有利，但物价上涨过快时，居民的储蓄会迅速缩水，"
     "企业也难以做长期规划。"),
    ("git-rebase", "git merge 和 git rebase 有什么区别？",
     "两者都能把一个分支的修改合并到另一个分支，但留下的历史不同。merge 会生成一个新的合并提交，完整保留两条分支各自"
     "的记录；rebase 则把当前分支的提交逐个搬到目标分支的最新提交之后，得到一条线性的历史。已经推送到远程的公共分支"
     "不要 rebase，否则会改写别人依赖的历史。"),
    ("dumplings", "包饺子时怎样才能不破皮？",
     "和面时水要分几次加，面团揉到表面光滑后盖上湿布醒半小时，擀出来的皮更有韧性。馅料不要调得太稀，蔬菜切好后先"
     "用盐杀出水分再挤干。包的时候馅别放太多，边缘捏紧。水开后再下锅，用勺背轻轻推动防止粘底，每次水再开就点一次"
     "凉水，点三次就熟了。"),
    ("chengdu", "第一次去成都旅游，有哪些地方值得去？",
     "市区里可以去宽窄巷子和锦里逛逛，顺便尝尝钟水饺、龙抄手这些小吃。想看大熊猫的话，最好早上去大熊猫繁育研究基地，"
     "上午熊猫最活跃。时间充裕的话，还可以坐高铁去都江堰，看看两千多年前修建的水利工程，或者去青城山爬山避暑。"),
    ("boiling", "为什么在高原上水不到一百度就开了？",
     "因为海拔越高，气压越低，水的沸点也随之降低。在海拔四千米左右的地方，水大约八十七度就会沸腾，所以在高原上"
     "煮米饭和面条常常煮不熟，需要用高压锅。"),
]
# a near copy of the "boiling" answer: one clause inserted (a Jaccard of about 0.75, under the
# English threshold 0.8, a duplicate at threshold_cjk)
ZH_NEAR = ("boiling", "因为海拔越高，气压越低，而沸点取决于液面上方的气压，水的沸点也随之降低。")
ZH_LOOP = ("手冲咖啡的水温应该是多少？",
           "手冲咖啡的水温一般控制在九十到九十六度之间。浅烘焙的豆子可以用高一点的水温，深烘焙的豆子用低一点的水温，"
           "这样可以避免苦味过重。" + "注意水温不要太高。" * 10)


def zh_chart_qa(rng: random.Random, values: dict[str, int], kind: int) -> tuple[str, str]:
    """A Chinese question about a drawn bar chart and its answer, read off the values."""
    ordered = sorted(values, key=values.get, reverse=True)
    hi, lo = ordered[0], ordered[-1]
    if kind == 0:
        return "图中哪根柱子最高？数值是多少？", f"柱子 {hi} 最高，数值是 {values[hi]}。"
    if kind == 1:
        return "图中最矮的是哪一根柱子？", f"最矮的是柱子 {lo}，只有 {values[lo]}。"
    if kind == 2:
        return "图里一共有几根柱子？", f"一共有 {len(values)} 根柱子，分别标为 {'、'.join(values)}。"
    if kind == 3:
        a, b = rng.sample(list(values), 2)
        return (f"柱子 {a} 和柱子 {b} 的数值相差多少？",
                f"柱子 {a} 是 {values[a]}，柱子 {b} 是 {values[b]}，两者相差 {abs(values[a] - values[b])}。")
    if kind == 4:
        return ("请按数值从高到低列出所有柱子。",
                "从高到低依次是：" + "、".join(f"{k}（{values[k]}）" for k in ordered) + "。")
    over = [k for k in values if values[k] > 50]
    return ("数值超过五十的柱子有哪些？",
            f"超过五十的有柱子 {'、'.join(over)}。" if over else "没有哪根柱子超过五十，最高的 "
            f"{hi} 也只有 {values[hi]}。")


def prose_topics(limit: int | None = None) -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    items = []
    for key in sorted(topics):
        text = re.sub(r"\n{3,}", "\n\n", topics[key]).strip()
        if len(text) < 400:
            continue
        cut = text[:1500]
        cut = cut[: cut.rfind("\n\n")] if "\n\n" in cut[400:] else cut
        items.append((key, cut.strip()))
    return items[:limit] if limit else items


def sentences(text: str) -> list[str]:
    flat = " ".join(text.split())
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", flat) if 30 <= len(s.strip()) <= 140 and s[0].isupper()
            and not any(c in s for c in "*`|=_[]{}<>")]


def turn(q: str, a: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def draw_chart(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, dict[str, int]]:
    labels = list("ABCDEF")[: rng.randint(3, 6)]
    values = {lab: rng.randint(5, 95) for lab in labels}
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    w, h = size
    bar_w = w // (len(labels) * 2 + 1)
    f = font(max(12, h // 20))
    for i, lab in enumerate(labels):
        x0 = bar_w * (2 * i + 1)
        top = h - 40 - int((h - 80) * values[lab] / 100)
        d.rectangle([x0, top, x0 + bar_w, h - 40], fill=(40 + 30 * i, 90, 200 - 25 * i))
        d.text((x0, h - 35), lab, fill="black", font=f)
        d.text((x0, top - 25), str(values[lab]), fill="black", font=f)
    return img, values


def draw_page(text: str, size: tuple[int, int]) -> Image.Image:
    img = Image.new("RGB", size, (250, 250, 245))
    d = ImageDraw.Draw(img)
    f = font(max(14, size[0] // 40))
    words, lines, line = text.split(), [], ""
    per_line = max(20, size[0] // (f.size // 2 + 1) if hasattr(f, "size") else 60)
    for word in words:
        if len(line) + len(word) + 1 > per_line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    y = 20
    for ln in lines:
        if y > size[1] - 30:
            break
        d.text((20, y), ln, fill="black", font=f)
        y += int(getattr(f, "size", 12) * 1.4)
    return img


def run_ffmpeg(args: list[str]) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-nostdin", *args], check=True)


class DemoBuilder:
    def __init__(self, out: Path, small: bool, seed: int = 0) -> None:
        self.out, self.small, self.rng = out, small, random.Random(seed)
        for sub in ("images", "videos", "audio", "bad"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        self.manifests: dict[str, list[Any]] = {}

    def add(self, manifest: str, record: dict[str, Any] | bytes | str) -> None:
        self.manifests.setdefault(manifest, []).append(record)

    # ------------------------------------------------------------------ text
    def text(self) -> None:
        topics = prose_topics(24 if self.small else None)
        for key, body in topics:
            self.add("text", {"id": f"doc-{key}", "conversations": turn(
                f"Explain the Python documentation topic '{key}'.", body)})
        if not self.small:  # multi-turn: a follow-up question about the same topic
            for key, body in topics[10:50]:
                parts = body.split("\n\n")
                self.add("text", {"id": f"multi-{key}", "conversations": turn(
                    f"What is '{key}' in Python? Answer briefly.", parts[0]) + turn(
                    "Give more detail.", "\n\n".join(parts[1:3]) or parts[0])})
        for key, body in topics[:3]:  # exact duplicates (whitespace and case differ)
            self.add("text", {"id": f"dup-{key}", "conversations": turn(
                f"explain the python documentation topic  '{key}'.", body)})
        for key, body in topics[3:6]:  # near duplicates: one word changed
            words = body.split(" ")
            words[len(words) // 2] = "notably"
            self.add("text", {"id": f"near-{key}", "conversations": turn(
                f"Explain the Python documentation topic '{key}'.", " ".join(words))})
        for key, body in topics[6:10]:  # repetitive answers, the defect InternVL 2.5 warns about
            first = sentences(body)[:1] or ["The value is returned unchanged."]
            self.add("text", {"id": f"loop-{key}", "conversations": turn(
                f"Summarise the topic '{key}'.", body[:300] + " " + " ".join(first * 12))})
        self.add("text", {"id": "loop-alternating", "conversations": turn(
            "Prove that the sequence converges.",
            "Assume the limit exists. " + "Then the terms are bounded. Hence the limit exists. " * 10)})
        # structurally broken lines
        self.add("text", '{"id": "bad-json", "conversations": [{"from": "human", "value": "hi"}')
        self.add("text", b'{"id": "bad-utf8", "conversations": [{"from": "human", "value": "caf\xe9"}]}')
        self.add("text", {"id": "no-conversations", "text": "a record without turns"})
        self.add("text", {"id": "bad-turn", "conversations": [{"speaker": "human", "text": "hello"}]})
        self.add("text", {"id": "only-human", "conversations": [{"from": "human", "value": "hello?"}]})

    # ------------------------------------------------------------------ images
    def images(self) -> None:
        sizes = [(800, 800), (1600, 400), (500, 1400), (1024, 768), (448, 448), (2000, 1000), (300, 200)]
        n = 16 if self.small else 90
        for i in range(n):
            size = sizes[i % len(sizes)]
            if i % 3 == 2:
                body = prose_topics()[i % 50][1]
                first = (sentences(body) or ["Untitled page."])[0]
                img = draw_page(body, size)
                q, a = "What is the first complete sentence on this page?", first
            else:
                img, values = draw_chart(self.rng, size)
                best = max(values, key=values.get)
                q = "Which bar in the chart is the tallest, and what is its value?"
                a = f"Bar {best} is the tallest, with a value of {values[best]}."
            name = f"images/img{i:03d}.{'png' if i % 4 == 0 else 'jpg'}"
            img.save(self.out / name, quality=90)
            self.add("image", {"id": f"img-{i}", "image": name, "conversations": turn(f"<image>\n{q}", a)})
            if i < 2:  # the same picture re-encoded: a near-duplicate image with the same question
                dup = f"images/img{i:03d}-recoded.jpg"
                img.convert("RGB").save(self.out / dup, quality=60)
                self.add("image", {"id": f"img-{i}-recoded", "image": dup, "conversations": turn(f"<image>\n{q}", a)})
        self.add("image", {"id": "img-no-placeholder", "image": "images/img001.jpg",
                           "conversations": turn("How many bars are there?", "There are several bars.")})
        self.bad_images()

    def bad_images(self) -> None:
        bad = self.out / "bad"
        good = (self.out / "images/img001.jpg").read_bytes()
        (bad / "truncated.jpg").write_bytes(good[: len(good) // 3])
        (bad / "not-an-image.jpg").write_bytes(b"this is plain text, not a JPEG\n" * 20)
        (bad / "empty.png").write_bytes(b"")
        Image.new("1", (20000, 20000)).save(bad / "bomb.png")  # 400 Mpx in a few KB
        cases = {"truncated": "bad/truncated.jpg", "not-image": "bad/not-an-image.jpg", "empty": "bad/empty.png",
                 "bomb": "bad/bomb.png", "missing": "images/does-not-exist.jpg",
                 "escape": "../../../../etc/passwd", "absolute": "/etc/hostname",
                 "scheme": "ftp://127.0.0.1/x.jpg", "unreachable": "http://127.0.0.1:9/unreachable.jpg"}
        for name, ref in cases.items():
            self.add("image", {"id": f"bad-{name}", "image": ref,
                               "conversations": turn("<image>\nDescribe the image.", "An image.")})
        self.add("image", {"id": "bad-placeholders", "image": "images/img001.jpg",
                           "conversations": turn("<image>\n<image>\nCompare them.", "They are the same.")})

    def multi_images(self) -> None:
        n = 5 if self.small else 30
        for i in range(n):
            k = 2 + i % 2
            names, maxima = [], []
            for j in range(k):
                img, values = draw_chart(self.rng, (640, 480))
                name = f"images/multi{i:03d}-{j}.jpg"
                img.save(self.out / name, quality=90)
                names.append(name)
                maxima.append(max(values.values()))
            best = maxima.index(max(maxima)) + 1
            q = "".join(f"Image-{j + 1}: <image>\n" for j in range(k)) + "Which chart has the largest maximum value?"
            self.add("multi_image", {"id": f"multi-{i}", "image": names, "conversations": turn(
                q, f"Image-{best} has the largest maximum, {max(maxima)}.")})

    # ------------------------------------------------------------------ video and audio
    def videos(self) -> None:
        items = list(VIDEO_SOURCES.items())[: 3 if self.small else 6]
        for i, (src, desc) in enumerate(items):
            for variant in range(1 if self.small else 2):
                name = f"videos/{src}-{variant}.mp4"
                # life draws its first grid at random unless seeded: a seed keeps the demo's bytes the same
                seed = f":seed={variant + 1}" if src == "life" else ""
                args = ["-f", "lavfi", "-i", f"{src}=size=320x240:rate=10{seed}", "-t", str(2 + variant)]
                if variant == 1:
                    args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "3", "-shortest"]
                run_ffmpeg([*args, "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
                            str(self.out / name)])
                self.add("video", {"id": f"vid-{src}-{variant}", "video": name, "conversations": turn(
                    "<video>\nWhat does this video show?", f"The video shows {desc}.")})
        (self.out / "bad/broken.mp4").write_bytes(bytes(self.rng.getrandbits(8) for _ in range(4096)))
        self.add("video", {"id": "bad-video", "video": "bad/broken.mp4",
                           "conversations": turn("<video>\nWhat happens?", "Nothing.")})

    def audio(self) -> None:
        lines = [s for _, body in prose_topics() for s in sentences(body)][: 6 if self.small else 36]
        voices = ["en-us", "en", "en+f3", "en+m3"]
        for i, text in enumerate(lines):
            name = f"audio/speech{i:03d}.wav"
            subprocess.run(["espeak-ng", "-v", voices[i % len(voices)], "-s", "160", "-w",
                            str(self.out / name), text], check=True, capture_output=True)
            self.add("audio", {"id": f"asr-{i}", "audio": name, "conversations": turn(
                "<audio>\nTranscribe the speech.", text)})
        (self.out / "bad/broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
        self.add("audio", {"id": "bad-audio", "audio": "bad/broken.wav",
                           "conversations": turn("<audio>\nTranscribe the speech.", "Nothing.")})

    # ------------------------------------------------------------------ Chinese
    def chinese(self) -> None:
        """Chinese text QA and chart QA; a near copy (one inserted clause) and a looping answer."""
        for key, q, a in ZH_QA[::2] if self.small else ZH_QA:  # the small set keeps "boiling" (the last)
            self.add("text", {"id": f"zh-{key}", "conversations": turn(q, a)})
        key, clause = ZH_NEAR
        q, a = next((q, a) for k, q, a in ZH_QA if k == key)
        first = a.split("。")[0] + "。"
        self.add("text", {"id": f"near-zh-{key}", "conversations": turn(q, a.replace(first, clause, 1))})
        self.add("text", {"id": "loop-zh-coffee", "conversations": turn(*ZH_LOOP)})
        rng = random.Random(1000)  # its own stream: the English demo stays as it was
        for i in range(6 if self.small else 12):
            size = [(800, 600), (640, 640), (1200, 500)][i % 3]
            img, values = draw_chart(rng, size)
            name = f"images/zh-chart{i:02d}.png"
            img.save(self.out / name)
            q, a = zh_chart_qa(rng, values, i % 6)
            self.add("image", {"id": f"zh-img-{i}", "image": name, "conversations": turn(f"<image>\n{q}", a)})

    # ------------------------------------------------------------------ output
    def write(self) -> dict[str, int]:
        counts = {}
        for name, records in self.manifests.items():
            with open(self.out / f"{name}.jsonl", "wb") as f:
                for r in records:
                    line = r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()
                    f.write(line + b"\n")
            counts[name] = len(records)
        return counts


def build_tokenizer(out_dir: Path, texts: list[str], vocab_size: int = 4000) -> Path:
    """A small byte-level BPE with the chat and media special tokens, saved as an HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from curate.stages.tokenize import SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", *SPECIAL_TOKENS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, additional_special_tokens=SPECIAL_TOKENS)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return out_dir


def build_demo(out_dir: str | Path, small: bool = False, seed: int = 0) -> dict[str, Any]:
    out = Path(out_dir)
    b = DemoBuilder(out, small, seed)
    b.text()
    b.images()
    b.multi_images()
    b.videos()
    b.audio()
    b.chinese()
    counts = b.write()
    texts = [body for _, body in prose_topics()] + [json.dumps(r, ensure_ascii=False) for rs in b.manifests.values()
                                                    for r in rs if isinstance(r, dict)]
    build_tokenizer(out / "tokenizer", texts, vocab_size=2000 if small else 4000)
    models = build_tiny_models(out / "models", out / "tokenizer", seed)
    return {"out": str(out), "manifests": counts, "samples": sum(counts.values()), "tokenizer": str(out / "tokenizer"),
            "models": models}


def build_tiny_models(out_dir: Path, tokenizer: Path, seed: int = 0) -> dict[str, str]:
    """Random-weight vision / audio / LLM folders (recipe train.llm/vision/audio) so `curate train` runs on CPU."""
    from train.model import write_tiny_models

    return write_tiny_models(out_dir, tokenizer, seed)
