"""`python -m train` / `torchrun --nproc-per-node K -m train RECIPE --shards DIR`: the `curate train` command.

Reading a recipe is curate's job and train/ imports nothing from curate/ (layers point down),
so this entry point does not import the command: it hands the process over to
`python -m curate train ...` (exec keeps the process id, so torchrun still sees and signals it).
"""

import os
import sys

if __name__ == "__main__":
    os.execv(sys.executable, [sys.executable, "-m", "curate", "train", *sys.argv[1:]])
