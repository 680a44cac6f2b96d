"""`curate`: run recipes, inspect shards, print statistics, build the demo corpus."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # air-gapped by default: never reach for a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


USER_ERROR_EXIT = 2  # a problem the user can fix (recipe, path, cluster): one paragraph, no traceback


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="debug logging, and Ray's own progress bars and logs")
@click.option("-q", "--quiet", is_flag=True, help="print errors only")
@click.option("--debug", is_flag=True, help="show the full traceback of an error")
@click.pass_context
def main(ctx: click.Context, verbose: bool, quiet: bool, debug: bool) -> None:
    """omnicurate: curate omni-modal instruction data into 2D-packed WebDataset shards."""
    if verbose and quiet:
        raise click.UsageError("--verbose and --quiet exclude each other")
    ctx.obj = {"verbose": verbose, "quiet": quiet, "debug": debug}
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def fail(message: str, code: int = USER_ERROR_EXIT) -> None:
    """Print one paragraph to stderr and exit: the user's errors get no traceback (use --debug)."""
    if (click.get_current_context().obj or {}).get("debug"):
        raise
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@main.command()
@click.argument("recipe")
@click.option("--input", "inputs", multiple=True, help="manifest(s) replacing the recipe's sources")
@click.option("--meta", default=None, metavar="FILE",
              help="an InternVL meta file whose datasets replace the recipe's sources (docs/manifests.md)")
@click.option("--out", default=None, help="run folder (default runs/<recipe name>)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe key")
@click.option("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
@click.option("--retry-failed", is_flag=True, help="download stage: retry URLs that failed before")
@click.pass_context
def run(ctx: click.Context, recipe: str, inputs: tuple[str, ...], meta: str | None, out: str | None,
        overrides: tuple[str, ...], address: str | None, retry_failed: bool) -> None:
    """Run RECIPE (a path or a name under recipes/) and write shards, rejects and stats.

    A terminal shows one live line per stage (rows, rows/s, elapsed, ETA), then its summary;
    other outputs get the summaries only. Ray's own output goes to OUT/logs/ (see --verbose).
    """
    from curate.errors import UserError
    from curate.layout import write_text_atomic
    from curate.progress import make_view, quiet_terminal
    from curate.recipe import RecipeError, load_recipe
    from curate.runner import Runner
    from curate.stats import format_stats

    opts = ctx.obj or {}
    sets = list(overrides) + (["stages.download.retry_failed=true"] if retry_failed else [])
    view = make_view("quiet" if opts.get("quiet") else "auto")
    try:  # everything a user can get wrong is found here, before any work
        rec = load_recipe(recipe, sets, list(inputs) or None, meta)
        runner = Runner(rec, out or f"runs/{rec.name}", address, view=view, verbose=opts.get("verbose", False))
        runner.prepare()
        with quiet_terminal(None if opts.get("verbose") else runner.layout.logs / "ray-output.log"):
            runner.init_ray()  # Ray's start-up notices go to the log, not the terminal
    except (RecipeError, UserError, FileNotFoundError, ValueError) as e:
        view.close()
        fail(str(e))
    try:
        with quiet_terminal(None if opts.get("verbose") else runner.layout.logs / "ray-output.log"):
            stats = runner.run()
    except KeyboardInterrupt:
        raise
    except UserError as e:  # found during the run (a broken JSON array, no row left after ingest)
        view.close()
        fail(str(e))
    except Exception as e:
        import traceback

        log_file = write_text_atomic(runner.layout.logs / "error.log", traceback.format_exc())
        last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        fail(f"the run failed in stage {runner.current_stage or '(before the first stage)'}: {type(e).__name__}: "
             f"{last}. The traceback is in {log_file} (or rerun with --debug). Finished stages are kept: the "
             f"same command resumes after the fix.", code=1)
    finally:
        view.close()
    if not opts.get("quiet"):
        click.echo(format_stats(stats))
        click.echo(f"shards in {runner.out / 'shards'}; rejects in {runner.out / 'rejects'}; report "
                   f"{runner.layout.report}; logs in {runner.layout.logs}; run took {stats['wall_seconds']:.1f}s")
    if not stats["invariant_ok"]:
        raise click.ClickException("counts do not add up (samples_in + synthesized != samples_out + rejected)")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def stats(run_dir: str, as_json: bool) -> None:
    """Print the statistics of a finished run folder (or its shards/ folder)."""
    from curate.stats import compute_stats, format_stats

    try:
        result = compute_stats(run_dir)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(result) if as_json else format_stats(result))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report(run_dir: str) -> None:
    """Write RUN_DIR/report.html: funnel, rejects, packing fill, mix and stage-time plots."""
    from curate.report.html import write_report

    try:
        click.echo(write_report(run_dir))
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.argument("shard", type=click.Path(exists=True, dir_okay=False))
@click.option("--limit", default=3, show_default=True, help="packed sequences to show")
@click.option("--tokenizer", default=None, help="tokenizer folder to decode with (default: the run's own)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per sequence")
def inspect(shard: str, limit: int, tokenizer: str | None, as_json: bool) -> None:
    """Show the packed sequences of one shard: samples, turns, trained spans, media members.

    Runs of media tokens are collapsed (`<IMG_CONTEXT> x 1792 (7 tiles x 256)`); text the loss
    is computed on is shown between « and ».
    """
    from curate.lookup import describe_sample, find_tokenizer, format_sample, read_sequences

    tok = None
    path = tokenizer or find_tokenizer(shard)
    if path:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    elif not as_json:
        click.echo("(no tokenizer found: pass --tokenizer to see the text)", err=True)
    for seq in read_sequences(shard, limit):
        meta = seq["meta"]
        samples = [describe_sample(s, seq["input_ids"], seq["labels"], tok, seq["members"]) for s in meta["samples"]]
        if as_json:
            click.echo(json.dumps({"key": seq["key"], "sequence": meta["sequence"], "n_tokens": meta["n_tokens"],
                                   "n_tiles": meta["n_tiles"], "members": seq["members"], "samples": samples},
                                  ensure_ascii=False))
            continue
        click.echo(f"{seq['key']} (sequence {meta['sequence']}): {meta['n_tokens']} tokens, {meta['n_tiles']} tiles, "
                   f"{len(samples)} samples, {sum(seq['members'].values()):,} bytes in {len(seq['members'])} members")
        for d in samples:
            click.echo("\n".join(format_sample(d)))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("sample_id")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def find(run_dir: str, sample_id: str, as_json: bool) -> None:
    """Where SAMPLE_ID (the manifest's id, or the pipeline's) went: shard, sequence and token
    offset, or the stage that rejected it and why; its synthesized children too."""
    from curate.lookup import find_sample, format_found

    found = find_sample(run_dir, sample_id)
    click.echo(json.dumps(found, ensure_ascii=False) if as_json else format_found(found))
    if not found["placed"] and not found["rejected"]:
        sys.exit(1)


@main.command()
@click.argument("shard_dir", type=click.Path(exists=True, file_okay=False))
def verify(shard_dir: str) -> None:
    """Check every shard against index.json (size and sha256)."""
    from packing.shards import verify_shards

    folder = Path(shard_dir)
    if (folder / "shards").is_dir():
        folder = folder / "shards"
    problems = verify_shards(folder)
    for p in problems:
        click.echo(p, err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{folder}: all shards match index.json")


@main.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--small", is_flag=True, help="a smaller corpus (for tests)")
def demo_data(out_dir: str, small: bool) -> None:
    """Build the offline demo corpus (text, image, multi-image, video, audio + broken files)."""
    from curate.demo import build_demo

    summary = build_demo(out_dir, small=small)
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.argument("recipe")
@click.option("--shards", required=True, type=click.Path(exists=True), help="a run folder, its shards/ or one shard")
@click.option("--max-steps", type=int, default=None, help="optimizer steps (default train.max_steps)")
@click.option("--log", "--log-file", "log_path", default=None,
              help="JSON lines, one per step (--log-file under torchrun, whose own --log-* options shadow --log)")
@click.option("--resume", is_flag=True, help="continue from the last checkpoint (train.checkpoint_dir)")
@click.option("--nproc", type=int, default=1, help="DDP ranks on this machine (runs torchrun -m curate train)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe key")
def train(recipe: str, shards: str, max_steps: int | None, log_path: str | None, resume: bool, nproc: int,
          overrides: tuple[str, ...]) -> None:
    """Train the omni model of RECIPE's `train:` section on packed shards (the reference consumer)."""
    import subprocess

    from curate.recipe import RecipeError, load_recipe

    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "-m", "curate", "train",
               recipe, "--shards", shards] + (["--max-steps", str(max_steps)] if max_steps else []) + \
              (["--log-file", log_path] if log_path else []) + (["--resume"] if resume else []) + \
              [x for o in overrides for x in ("--set", o)]
        sys.exit(subprocess.call(cmd))
    from train.loop import train as run_training
    from train.model import ModelError

    try:
        rec = load_recipe(recipe, list(overrides))
        rows = run_training(rec, shards, max_steps, log_path, resume, echo=click.echo)
    except (RecipeError, ModelError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if rows:
        click.echo(f"{len(rows)} steps; loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}")


@main.command("verify-packing")
@click.argument("recipe")
@click.option("--shards", required=True, type=click.Path(exists=True), help="a run folder, its shards/ or one shard")
@click.option("--sequences", type=int, default=4, help="packed sequences (with 2+ samples) to check")
@click.option("--tolerance", type=float, default=1e-3, help="max allowed |packed - alone| logit difference")
@click.option("--unmasked", is_flag=True, help="test option: let attention cross samples (must fail)")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, cuda or cuda:N: where the fp32 forwards run (the GPU attention path on cuda)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe key")
def verify_packing(recipe: str, shards: str, sequences: int, tolerance: float, unmasked: bool, device: str,
                   overrides: tuple[str, ...]) -> None:
    """Compare packed logits with each sample run alone; exit 1 when they differ beyond --tolerance."""
    from curate.recipe import RecipeError, load_recipe
    from train.loop import build_model
    from train.model import ModelError
    from train.verify import multi_sample_sequences, packing_differences

    try:
        rec = load_recipe(recipe, list(overrides))
        model = build_model(rec, device)
        batches = multi_sample_sequences(shards, sequences, rec.stages.media.tile_size)
    except (RecipeError, ModelError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    worst = 0.0
    for key, n, diff in packing_differences(model, batches, unmasked):
        click.echo(f"{key}: {n} samples, max |packed - alone| = {diff:.3e}")
        worst = max(worst, diff)
    if worst > tolerance:
        click.echo(f"FAIL: {worst:.3e} > tolerance {tolerance:g}: attention or positions cross packed samples",
                   err=True)
        sys.exit(1)
    click.echo(f"ok: packed and per-sample logits agree within {tolerance:g}")


@main.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--prompts", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSONL: {\"prompt\": ...} or {\"conversations\": [...]} per line")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy")
@click.option("--batch-size", type=int, default=16, show_default=True, help="prompts decoded together")
@click.option("--tokenizer", default=None, help="tokenizer folder (default: the run's, or the LLM folder's)")
@click.option("--out", "out_path", default=None, help="write the JSON lines here instead of stdout")
def generate(source: str, prompts: str, max_new_tokens: int, temperature: float, batch_size: int,
             tokenizer: str | None, out_path: str | None) -> None:
    """Answer held-out prompts with a trained run (RUN/train/latest.pt), a checkpoint or an LLM folder:
    one JSON line per prompt ({"id", "prompt", "output", "n_tokens", "stopped", "loops"})."""
    from curate.ablate import loops
    from curate.generate import GenerateError, Generator, read_prompts

    try:
        gen = Generator.load(source, tokenizer)
        rows = gen.generate(read_prompts(prompts), max_new_tokens, batch_size, temperature)
    except (GenerateError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    lines = [json.dumps({k: v for k, v in r.items() if k != "output_ids"} | {"loops": loops(r["output_ids"])},
                        ensure_ascii=False) for r in rows]
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text("".join(line + "\n" for line in lines))
    else:
        for line in lines:
            click.echo(line)


@main.command()
@click.argument("recipe")
@click.option("--input", "inputs", multiple=True, help="manifest(s) replacing the recipe's sources")
@click.option("--vary", required=True, metavar="KEY=V1,V2", help="the recipe key and its values, one arm each")
@click.option("--out", required=True, help="folder for the arms, ablation.json and table.txt")
@click.option("--eval-prompts", required=True, type=click.Path(exists=True, dir_okay=False),
              help="held-out prompts (JSONL; a conversation's last answer is the reference for held-out loss)")
@click.option("--steps", type=int, default=None, help="optimizer steps per fine-tune (default train.max_steps)")
@click.option("--seeds", type=int, default=1, show_default=True, help="fine-tunes per arm (train.seed, +1, ...)")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True, help="prompts decoded together")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe key in every arm")
@click.option("--no-reference", is_flag=True, help="skip the untuned model's reference row")
def ablate(recipe: str, inputs: tuple[str, ...], vary: str, out: str, eval_prompts: str, steps: int | None,
           seeds: int, max_new_tokens: int, batch_size: int, overrides: tuple[str, ...], no_reference: bool) -> None:
    """Run RECIPE once per value of a key (sharing the stages it does not touch), fine-tune the same
    model on each arm's shards, and compare the answers to held-out prompts (OUT/ablation.json)."""
    from curate.ablate import format_table, run_ablation
    from curate.errors import UserError
    from curate.generate import GenerateError
    from curate.recipe import RecipeError
    from train.model import ModelError

    try:
        result = run_ablation(recipe, list(inputs) or None, vary, out, eval_prompts, steps, seeds, max_new_tokens,
                              batch_size, overrides, not no_reference, echo=lambda m: click.echo(m, err=True))
    except (RecipeError, UserError, GenerateError, ModelError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    click.echo(format_table(result))
    click.echo(f"ablation.json and table.txt in {out}; took {result['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
