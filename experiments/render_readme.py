"""Refreshes the tables in experiments/README.md from experiments/results/*.json.

Each block between ``<!-- table:NAME -->`` (or ``<!-- table:NAME:KEY -->`` for the list
``KEY`` of the results file instead of ``rows``) and ``<!-- /table -->`` is replaced by
``jaxflows table NAME``; run ``python experiments/render_readme.py`` after new results land.
A block whose results file does not exist yet (an experiment not run here) is left as it is.
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
        name, key = m.group(1), m.group(2) or "rows"
        tag = f"{name}:{key}" if m.group(2) else name
        if not os.path.exists(os.path.join(HERE, "results", f"{name}.json")):
            print(f"no results/{name}.json yet: table {tag} left as it is")
            return m.group(0)
        table = render_table(name, os.path.join(HERE, "results"), rows_key=key)
        return f"<!-- table:{tag} -->\n{table}\n<!-- /table -->"

    text = re.sub(r"<!-- table:(\w+)(?::(\w+))? -->.*?<!-- /table -->", repl, text, flags=re.S)
    with open(path, "w") as f:
        f.write(text)
    print(f"updated {path}")


if __name__ == "__main__":
    main()
