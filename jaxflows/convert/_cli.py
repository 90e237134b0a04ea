"""The converters' command-line wrapper: a :class:`jaxflows.errors.UserError` becomes one
``error: ...`` line on stderr and exit status 2, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from jaxflows.errors import UserError


def run_cli(main: Callable[[list[str] | None], None], argv: list[str] | None) -> int:
    """Runs ``main(argv)``; returns 0, or exits with status 2 after printing a UserError."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0
