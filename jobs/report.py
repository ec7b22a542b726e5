"""spark-submit entry point: `spark-submit jobs/report.py --run-date YYYY-MM-DD [--conf k=v]`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from watchnext.cli import main as cli_main


def main(argv: Sequence[str]) -> int:
    return cli_main(["report", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
