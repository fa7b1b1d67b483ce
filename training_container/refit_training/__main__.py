"""`python -m refit_training train|serve`: the container's two commands (bin/train, bin/serve; the refit-train and
refit-serve console scripts).

The command's module, and with it numpy, pandas, scipy and scikit-learn, is imported with the cyclic garbage
collector paused. That import creates about 250,000 objects, none of them garbage, and the collector walks them
again and again as they pile up: pausing it takes 0.13 s off a 1.2 s start (measured on the README's benchmark
machine), a cost every restart after a spot interruption pays. The imported objects are then frozen
(`gc.freeze`), so the collections that training triggers skip them, and gunicorn workers forked by `serve` do not
write to their pages.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from types import ModuleType

COMMANDS = ("train", "serve")


def load_command(command: str) -> ModuleType:
    gc.disable()
    try:
        return importlib.import_module(f"refit_training.{command}")
    finally:
        gc.freeze()
        gc.enable()


def train() -> int:
    module = load_command("train")
    code = module.main()
    if code == module.EXIT_INTERRUPTED:
        # Finished folds are fsync'd and the log is flushed: skip the interpreter's teardown of pandas and
        # scikit-learn (a quarter of a second measured) so the interrupted job gives its instance back at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def serve() -> int:
    return load_command("serve").main()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in COMMANDS:
        given = " ".join(argv) or "nothing"
        print(f"usage: python -m refit_training {'|'.join(COMMANDS)} (got {given})", file=sys.stderr)
        return 2
    return train() if argv[0] == "train" else serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
