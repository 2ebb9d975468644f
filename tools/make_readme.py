"""Write README.md from nbs/index.ipynb: the README's one generator.

The README is the front page's markdown cells verbatim and its shown code cells as fenced blocks, with
or without Quarto. `nbdev_readme` (a Quarto rendering in another format) is not used: settings.ini points
`readme_nb` at README.md itself, so `nbdev_docs` leaves README.md alone. `--check` exits 1 when README.md
differs from what index.ipynb gives.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- This file is generated from nbs/index.ipynb by tools/make_readme.py; edit the notebook. -->\n\n"


def readme_text(nb_path: Path = ROOT / "nbs" / "index.ipynb") -> str:
    "Markdown of the front-page notebook: markdown cells verbatim, exported code hidden, other code fenced."
    nb = nbformat.read(nb_path, as_version=4)
    parts = []
    for cell in nb.cells:
        src = cell.source.strip()
        if not src:
            continue
        if cell.cell_type == "markdown":
            parts.append(src)
        elif cell.cell_type == "code" and not src.startswith("#| hide"):
            parts.append(f"```python\n{src}\n```")
    return HEADER + "\n\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    target = ROOT / "README.md"
    if "--check" in argv:
        if not target.exists() or target.read_text() != readme_text():
            print("README.md is out of date with nbs/index.ipynb: run `python tools/make_readme.py`", file=sys.stderr)
            return 1
        print("README.md matches nbs/index.ipynb")
        return 0
    target.write_text(readme_text())
    print(f"wrote {target} from nbs/index.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
