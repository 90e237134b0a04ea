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


def write_params(out: str, params, *, to_npz: bool, target: str) -> str:
    """Writes converted ``params`` to ``out`` (an ``.npz`` of flattened paths, or an Orbax params
    checkpoint loadable with ``config.init_from`` into ``target``), prints one line, returns the
    written path."""
    import numpy as np

    from jaxflows.convert.tarflow import flatten_params

    flat = flatten_params(params)
    num = sum(v.size for v in flat.values())
    if to_npz:
        np.savez(out, **flat)
        print(f"wrote {out}: {num:,} params")
        return out
    from jaxflows.train.pretrained import save_params

    out = save_params(out, params)
    print(f"wrote {out}: {num:,} params (Orbax checkpoint; load it with config.init_from="
          f"[{{'path': '{out}', 'source': 'params', 'target': '{target}'}}])")
    return out
