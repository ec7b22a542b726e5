"""spark-submit entry point: `spark-submit jobs/ncf.py --run-date YYYY-MM-DD [--env ...] [--conf k=v]`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from watchnext.cli import main as cli_main


def main(argv: Sequence[str]) -> int:
    return cli_main(["ncf", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
