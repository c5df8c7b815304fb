"""The ``morag-jobs`` command (and ``python -m morag_jobs``).

The command line needs the ``[cli]`` extra and some commands need others; a missing one
is named on one line rather than shown as a traceback.
"""

import sys
from typing import NoReturn

from morag_jobs._extras import explain


def main() -> None:
    """Console-script entry point: run the command line, or say which extra it needs."""
    try:
        from morag_jobs.cli import main as run  # noqa: PLC0415 (typer loads only here)
    except ModuleNotFoundError as error:
        _needs_extra(error, "the command line")
    try:
        run()
    except ModuleNotFoundError as error:
        _needs_extra(error, "this command")


def _needs_extra(error: ModuleNotFoundError, feature: str) -> NoReturn:
    if (missing := explain(error, feature)) is None:
        raise error
    sys.exit(f"morag-jobs: {missing}")


if __name__ == "__main__":
    main()
