#!/usr/bin/env python3
"""Write the training-trace figure and table of a checkpoint sweep (issue 19; nlalab.sweep.trace).

Usage: PYTHONPATH=src python3 scripts/gen_training_trace.py SWEEP_DIR --out docs/img/training_trace \
           --md docs/training_trace.md
SWEEP_DIR is the --out of `nlalab sweep` over a training folder (`checkpoints:` in the sweep file; docs/sweep.md).
Writes OUT.png (200 dpi), OUT.svg and, with --md, a Markdown page with the figure and the table.
"""

from __future__ import annotations

import argparse
import sys

from nlalab.errors import NLALabError
from nlalab.sweep.trace import write_training_trace


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("--out", default="docs/img/training_trace", help="figure path without suffix")
    ap.add_argument("--md", default=None, help="Markdown page to write (e.g. docs/training_trace.md)")
    a = ap.parse_args(argv)
    try:
        paths = write_training_trace(a.sweep_dir, a.out, a.md)
    except NLALabError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    for p in paths.values():
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
