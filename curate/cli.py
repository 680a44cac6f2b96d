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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def main(verbose: bool) -> None:
    """omnicurate: curate omni-modal instruction data into 2D-packed WebDataset shards."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


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
    from curate.recipe import RecipeError, load_recipe
    from curate.runner import Runner
    from curate.stats import format_stats

    sets = list(overrides) + (["stages.download.retry_failed=true"] if retry_failed else [])
    try:
        rec = load_recipe(recipe, sets, list(inputs) or None)
        runner = Runner(rec, out or f"runs/{rec.name}", address)
        runner.prepare()
    except (RecipeError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    stats = runner.run()
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


@main.command()
@click.argument("recipe")
@click.option("--shards", required=True, type=click.Path(exists=True), help="a run folder, its shards/ or one shard")
@click.option("--max-steps", type=int, default=None, help="optimizer steps (default train.max_steps)")
@click.option("--log", "--log-file", "log_path", default=None,
              help="JSON lines, one per step (--log-file under torchrun, whose own --log-* options shadow --log)")
@click.option("--resume", is_flag=True, help="continue from the last checkpoint (train.checkpoint_dir)")
@click.option("--nproc", type=int, default=1, help="DDP ranks on this machine (runs torchrun -m train)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe key")
def train(recipe: str, shards: str, max_steps: int | None, log_path: str | None, resume: bool, nproc: int,
          overrides: tuple[str, ...]) -> None:
    """Train the omni model of RECIPE's `train:` section on packed shards (the reference consumer)."""
    import subprocess

    from curate.recipe import RecipeError, load_recipe

    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "-m", "train", recipe,
               "--shards", shards] + (["--max-steps", str(max_steps)] if max_steps else []) + \
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
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe key")
def verify_packing(recipe: str, shards: str, sequences: int, tolerance: float, unmasked: bool,
                   overrides: tuple[str, ...]) -> None:
    """Compare packed logits with each sample run alone; exit 1 when they differ beyond --tolerance."""
    from curate.recipe import RecipeError, load_recipe
    from train.loop import build_model
    from train.model import ModelError
    from train.verify import multi_sample_sequences, packing_differences

    try:
        rec = load_recipe(recipe, list(overrides))
        model = build_model(rec)
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


if __name__ == "__main__":
    main()
