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
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
@click.option("--debug", is_flag=True, help="show the full traceback of an error")
@click.pass_context
def main(ctx: click.Context, verbose: bool, debug: bool) -> None:
    """omnicurate: curate omni-modal instruction data into 2D-packed WebDataset shards."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
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
@click.option("--out", default=None, help="run folder (default runs/<recipe name>)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe key")
@click.option("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
@click.option("--retry-failed", is_flag=True, help="download stage: retry URLs that failed before")
def run(recipe: str, inputs: tuple[str, ...], out: str | None, overrides: tuple[str, ...],
        address: str | None, retry_failed: bool) -> None:
    """Run RECIPE (a path or a name under recipes/) and write shards, rejects and stats."""
    from curate.errors import UserError
    from curate.layout import write_text_atomic
    from curate.recipe import RecipeError, load_recipe
    from curate.runner import Runner
    from curate.stats import format_stats

    sets = list(overrides) + (["stages.download.retry_failed=true"] if retry_failed else [])
    try:  # everything a user can get wrong is found here, before any work
        rec = load_recipe(recipe, sets, list(inputs) or None)
        runner = Runner(rec, out or f"runs/{rec.name}", address)
        runner.prepare()
        runner.init_ray()
    except (RecipeError, UserError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    try:
        stats = runner.run()
    except KeyboardInterrupt:
        raise
    except Exception as e:
        import traceback

        log_file = write_text_atomic(runner.layout.logs / "error.log", traceback.format_exc())
        last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        fail(f"the run failed in stage {runner.current_stage or '(before the first stage)'}: {type(e).__name__}: "
             f"{last}. The traceback is in {log_file} (or rerun with --debug). Finished stages are kept: the "
             f"same command resumes after the fix.", code=1)
    click.echo(format_stats(stats))
    click.echo(f"shards in {runner.out / 'shards'}; rejects in {runner.out / 'rejects'}; "
               f"run took {stats['wall_seconds']:.1f}s")
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
@click.option("--tokenizer", default=None, help="decode the first tokens of each sample with this tokenizer")
def inspect(shard: str, limit: int, tokenizer: str | None) -> None:
    """Show the packed sequences of one shard: samples, budgets, media members."""
    from packing.loader import iter_packed

    tok = None
    if tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    for n, seq in enumerate(iter_packed([shard], decode=True)):
        if n >= limit:
            break
        ids = seq["input_ids"]
        click.echo(f"{seq['key']}: {len(ids)} tokens, {seq['pixel_values'].shape[0]} tiles, "
                   f"{len(seq['samples'])} samples, cu_seqlens={seq['cu_seqlens'].tolist()}")
        for s in seq["samples"]:
            media = ", ".join(m["kind"] + (f" {m['grid'][0]}x{m['grid'][1]}" if "grid" in m else "")
                              for m in s["media"])
            click.echo(f"  {s['id']} {s['source']}/{s['modality']}: {s['n_tokens']} tokens, "
                       f"{s['n_tiles']} tiles{' [' + media + ']' if media else ''}")
            if tok is not None:
                start = s["token_offset"]
                text = tok.decode(ids[start:start + 48].tolist())
                click.echo(f"    {text!r}")


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


if __name__ == "__main__":
    main()
