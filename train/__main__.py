"""`python -m train` / `torchrun --nproc-per-node K -m train RECIPE --shards DIR`: the `curate train` command."""

from curate.cli import main

if __name__ == "__main__":
    main(["train", *__import__("sys").argv[1:]])
