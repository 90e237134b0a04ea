"""Refreshes the tables in experiments/README.md from experiments/results/*.json.

Each block between ``<!-- table:NAME -->`` and ``<!-- /table -->`` is replaced by
``jaxflows table NAME``; run ``python experiments/render_readme.py`` after new results land.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxflows.eval.tables import render_table  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    path = os.path.join(HERE, "README.md")
    with open(path) as f:
        text = f.read()

    def repl(m):
        name = m.group(1)
        return f"<!-- table:{name} -->\n{render_table(name, os.path.join(HERE, 'results'))}\n" \
               "<!-- /table -->"

    text = re.sub(r"<!-- table:(\w+) -->.*?<!-- /table -->", repl, text, flags=re.S)
    with open(path, "w") as f:
        f.write(text)
    print(f"updated {path}")


if __name__ == "__main__":
    main()
