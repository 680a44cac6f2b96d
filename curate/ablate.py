"""`curate ablate`: what one recipe key does to a fine-tuned model.

    curate ablate sft-smollm2 --input convs.jsonl --vary stages.filter.repetition=true,false \\
        --out runs/abl --eval-prompts heldout.jsonl --steps 20 --seeds 2 --max-new-tokens 128

One arm per value of KEY (any recipe key, as `--set` takes it):
1. the pipeline runs into OUT/arm-<value>/. Before it starts, every leading stage whose resume
   hash (curate.runner.stage_hash: the stage's recipe keys and everything upstream) equals that
   of an earlier arm's finished stage is hard-linked from that arm (work folder, rejects, review),
   so the runner resumes it instead of running it: an arm re-runs only the stages the key
   touches and those after them. Each arm records the stages it ran and the ones it resumed.
2. for each seed, the recipe's starting model (train.llm) is fine-tuned on the arm's shards
   with that seed and the same step count (train.seed drives the data order), in memory.
3. the tuned model answers the held-out prompts (curate.generate, greedy by default) and scores
   their reference answers (held-out loss).
The untuned starting model answers the same prompts once: the reference row.

Measures, per arm and seed (ablation.json names; other code reads them):
- samples, tokens: packed samples and tokens of the arm's shards (what was trained on);
- heldout_loss: mean over prompts of the reference answer's token cross-entropy;
- looping_share: share of answers that loop (`loops` below);
- distinct_2: mean over answers of distinct token bigrams / bigrams (Li et al., 2016, per answer);
- mean_length: mean answer length in tokens.
`differences`: each value against the first, per measure: the per-prompt values are averaged
over seeds, the difference of the means is reported with a bootstrap 95% interval over prompts
(2,000 resamples of the prompts, percentile interval).

Looping is measured on the answer's token ids, independently of the repetition filter (which
reads words and characters, filters.repetition): an answer of at least LOOP_MIN_TOKENS tokens
loops when, in its second half, the positions covered by token n-grams (n = LOOP_N) that occur
LOOP_MIN_COUNT or more times there make up at least LOOP_SHARE of it. A sentence or paragraph
said over and over, or a degenerate tail ("the the the"), covers nearly all of its tail; a
varied answer covers little, even when it reuses a phrase. An answer that is cut short by the
token limit is judged on what it has.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

LOOP_N = 5
LOOP_MIN_COUNT = 3
LOOP_SHARE = 0.5
LOOP_MIN_TOKENS = 32
MEASURES = ("heldout_loss", "looping_share", "distinct_2", "mean_length")


# ---------------------------------------------------------------------------- the measures
def tail_repeat_share(ids: Sequence[int], n: int = LOOP_N, min_count: int = LOOP_MIN_COUNT) -> float:
    """Share of the second half's positions covered by n-grams seen min_count+ times in that half."""
    tail = list(ids[len(ids) // 2:])
    if len(tail) < n:
        return 0.0
    grams = [tuple(tail[i:i + n]) for i in range(len(tail) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(tail)
    for i, g in enumerate(grams):
        if counts[g] >= min_count:
            covered[i:i + n] = [True] * n
    return sum(covered) / len(tail)


def loops(ids: Sequence[int], share: float = LOOP_SHARE, min_tokens: int = LOOP_MIN_TOKENS) -> bool:
    """True when the answer's tail is mostly n-grams it keeps repeating (the module's rule)."""
    return len(ids) >= min_tokens and tail_repeat_share(ids) >= share


def distinct_2(ids: Sequence[int]) -> float | None:
    """Distinct bigrams / bigrams of one answer (None below two tokens)."""
    pairs = list(zip(ids, ids[1:]))
    return len(set(pairs)) / len(pairs) if pairs else None


def per_prompt(generations: list[dict[str, Any]], losses: list[float | None]) -> dict[str, list[float | None]]:
    """The per-prompt values behind each measure (looping as 0/1)."""
    return {"heldout_loss": list(losses),
            "looping_share": [float(loops(g["output_ids"])) for g in generations],
            "distinct_2": [distinct_2(g["output_ids"]) for g in generations],
            "mean_length": [float(g["n_tokens"]) for g in generations]}


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(values: dict[str, list[float | None]]) -> dict[str, float | None]:
    return {m: _mean(values[m]) for m in MEASURES}


def bootstrap_mean(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean over prompts and its bootstrap 95% percentile interval."""
    import numpy as np

    v = np.array(values, dtype=float)
    means = v[np.random.default_rng(seed).integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(lo), float(hi)


def bootstrap_difference(a: Sequence[float | None], b: Sequence[float | None], resamples: int = 2000,
                         seed: int = 0) -> dict[str, Any]:
    """mean(a) - mean(b) over prompts where both have a value, and its bootstrap 95% interval."""
    d = [x - y for x, y in zip(a, b) if x is not None and y is not None]
    if not d:
        return {"difference": None, "ci95": [None, None], "prompts": 0}
    mean, lo, hi = bootstrap_mean(d, resamples, seed)
    return {"difference": mean, "ci95": [lo, hi], "prompts": len(d)}


def mean_over_seeds(rows: list[list[float | None]]) -> list[float | None]:
    return [_mean(col) for col in zip(*rows)]


# ---------------------------------------------------------------------------- sharing stages
def parse_vary(spec: str) -> tuple[str, list[str]]:
    key, sep, values = spec.partition("=")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not vals:
        raise ValueError(f"--vary {spec!r}: give KEY=V1,V2 (e.g. stages.filter.repetition=true,false)")
    return key.strip(), vals


def arm_dir(out: Path, value: str) -> Path:
    return out / ("arm-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", value) or "empty"))


def planned_hashes(runner) -> list[tuple[int, str, str]]:
    """(index, stage name, resume hash) of every stage the runner will run, as Runner.run computes them."""
    from curate.runner import stage_hash

    _, stages = runner.prepare()
    out, upstream = [], ""
    for i, stage in enumerate(stages):
        upstream = stage_hash(stage, upstream)
        out.append((i, stage.name, upstream))
    return out


def _link_tree(src: Path, dst: Path) -> None:
    from curate.runner import link_or_copy

    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(path, target)


def seed_from_donors(runner, donors: list[Path]) -> list[str]:
    """Link into the runner's folder the longest run of leading stages an earlier arm finished with
    the same resume hashes; returns their names. Files are hard links: every write in a run folder
    makes a new file (curate.layout), so an arm never changes another arm's bytes."""
    from curate.layout import RunLayout, read_marker

    plan = planned_hashes(runner)
    mine = runner.layout
    best: tuple[list[tuple[int, str, str]], RunLayout | None] = ([], None)
    for donor in donors:
        theirs = RunLayout(donor)
        shared = []
        for i, name, h in plan:
            marker = read_marker(theirs.stage_dir(i, name))
            if marker is None or marker.get("hash") != h:
                break
            shared.append((i, name, h))
        if len(shared) > len(best[0]):
            best = (shared, theirs)
    shared, theirs = best
    if theirs is None:
        return []
    for i, name, _ in shared:
        _link_tree(theirs.stage_dir(i, name), mine.stage_dir(i, name))
        if theirs.rejects(name).is_file() and not mine.rejects(name).exists():
            mine.rejects_dir.mkdir(parents=True, exist_ok=True)
            os.link(theirs.rejects(name), mine.rejects(name))
        if theirs.review(name).is_dir():
            _link_tree(theirs.review(name), mine.review(name))
    if theirs.root.joinpath("media").is_dir():
        _link_tree(theirs.root / "media", mine.root / "media")  # content-addressed: written once
    if len(shared) == len(plan) and (theirs.root / "shards").is_dir():  # nothing changes: same shards
        _link_tree(theirs.root / "shards", mine.root / "shards")
    return [name for _, name, _ in shared]


# ---------------------------------------------------------------------------- the experiment
def shard_totals(run: Path) -> dict[str, int]:
    """Samples and tokens in a run's shards (from their JSON members)."""
    from packing.format import JSON_MEMBER, read_raw, shard_paths

    samples = tokens = 0
    for raw in read_raw(shard_paths(run)):
        meta = json.loads(raw[JSON_MEMBER])
        samples += len(meta["samples"])
        tokens += int(meta["n_tokens"])
    return {"samples": samples, "tokens": tokens}


def run_ablation(recipe: str, inputs: list[str] | None, vary: str, out: str | Path, eval_prompts: str | Path,
                 steps: int | None = None, seeds: int = 1, max_new_tokens: int = 128, batch_size: int = 16,
                 sets: Sequence[str] = (), reference: bool = True, echo: Callable[[str], None] = print,
                 ) -> dict[str, Any]:
    """Run every arm (pipeline, fine-tune per seed, generate) and write OUT/ablation.json + table.txt."""
    from curate.generate import Generator, read_prompts
    from curate.layout import write_jsonl_atomic
    from curate.recipe import load_recipe
    from curate.runner import Runner
    from train.loop import fit

    key, values = parse_vary(vary)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = read_prompts(eval_prompts)
    base = load_recipe(recipe, list(sets), inputs)
    seed_list = [base.train.seed + i for i in range(seeds)]
    n_steps = steps or base.train.max_steps
    result: dict[str, Any] = {"key": key, "values": values, "recipe": str(recipe), "steps": n_steps,
                              "seeds": seed_list, "max_new_tokens": max_new_tokens, "prompts": len(prompts),
                              "arms": [], "differences": [], "reference": None}
    per_arm: dict[str, list[dict[str, list[float | None]]]] = {}
    done: list[Path] = []
    t_start = time.perf_counter()
    for value in values:
        sets_v = list(sets) + [f"{key}={value}"]
        rec = load_recipe(recipe, sets_v, inputs)
        folder = arm_dir(out, value)
        runner = Runner(rec, folder)
        linked = seed_from_donors(runner, done)
        t0 = time.perf_counter()
        stats = runner.run()
        ran = [s["stage"] for s in runner.summary["stages"] if not s.get("resumed")]
        resumed = [s["stage"] for s in runner.summary["stages"] if s.get("resumed")]
        echo(f"[ablate] {key}={value}: pipeline ran {len(ran)} stages ({', '.join(ran) or 'none'}), "
             f"shared {len(resumed)} ({', '.join(resumed) or 'none'}) in {time.perf_counter() - t0:.0f}s")
        done.append(folder)
        totals = shard_totals(folder)
        per_arm[value] = []
        for seed in seed_list:
            rec_s = load_recipe(recipe, sets_v + [f"train.seed={seed}"], inputs)
            t0 = time.perf_counter()
            rows, model = fit(rec_s, str(folder), n_steps, str(folder / f"train-seed{seed}.jsonl"), echo=echo,
                              save=False)
            t_train = time.perf_counter() - t0
            gen = Generator(model.llm, rec_s.stages.tokenize.tokenizer, rec_s.stages.tokenize.system_prompt)
            del model
            t0 = time.perf_counter()
            answers = gen.generate(prompts, max_new_tokens, batch_size)
            losses = gen.heldout_losses(prompts)
            values_s = per_prompt(answers, losses)
            write_jsonl_atomic(folder / f"generations-seed{seed}.jsonl",
                               [a | {"loops": bool(v), "heldout_loss": x}
                                for a, v, x in zip(answers, values_s["looping_share"], losses)], sort_keys=False)
            per_arm[value].append(values_s)
            arm = {"value": value, "seed": seed, **totals, **summarize(values_s),
                   "train_loss": [rows[0]["loss"], rows[-1]["loss"]] if rows else None,
                   "stages_ran": ran, "stages_shared": resumed, "linked": linked,
                   "seconds": {"pipeline": stats.get("wall_seconds"), "train": round(t_train, 1),
                               "generate": round(time.perf_counter() - t0, 1)}}
            result["arms"].append(arm)
            echo(f"[ablate] {key}={value} seed {seed}: " + ", ".join(
                f"{m} {fmt(arm[m])}" for m in MEASURES))
            del gen
    if reference:
        gen = Generator.load(base.train.llm, base.stages.tokenize.tokenizer)
        gen.encoder.system_prompt = base.stages.tokenize.system_prompt
        answers = gen.generate(prompts, max_new_tokens, batch_size)
        values_r = per_prompt(answers, gen.heldout_losses(prompts))
        write_jsonl_atomic(out / "generations-untuned.jsonl",
                           [a | {"loops": bool(v)} for a, v in zip(answers, values_r["looping_share"])],
                           sort_keys=False)
        result["reference"] = {"value": "untuned", "seed": None, "samples": 0, "tokens": 0, **summarize(values_r)}
        per_arm["untuned"] = [values_r]
    first = values[0]
    for value in values[1:] + (["untuned"] if reference else []):
        for m in MEASURES:
            a = mean_over_seeds([v[m] for v in per_arm[value]])
            b = mean_over_seeds([v[m] for v in per_arm[first]])
            result["differences"].append({"value": value, "baseline": first, "measure": m,
                                          **bootstrap_difference(a, b)})
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "table.txt").write_text(format_table(result) + "\n")
    return result


# ---------------------------------------------------------------------------- the table
def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def format_table(result: dict[str, Any]) -> str:
    head = ["value", "seed", "samples", "tokens", "heldout_loss", "looping_share", "distinct_2", "mean_length"]
    rows = [[fmt(a.get(h)) for h in head] for a in result["arms"]]
    if result.get("reference"):
        rows.append([fmt(result["reference"].get(h)) for h in head])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    lines = [f"{result['key']}: {result['steps']} steps, seeds {result['seeds']}, {result['prompts']} held-out "
             f"prompts, {result['max_new_tokens']} new tokens",
             "  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    if result["differences"]:
        lines.append("")
        lines.append("difference (value - baseline, mean over seeds; bootstrap 95% interval over prompts)")
        for d in result["differences"]:
            lo, hi = d["ci95"]
            lines.append(f"  {d['value']} - {d['baseline']}  {d['measure']:<14} {fmt(d['difference']):>7}  "
                         f"[{fmt(lo)}, {fmt(hi)}]")
    return "\n".join(lines)
