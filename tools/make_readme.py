"""Write README.md from nbs/index.ipynb.

`nbdev_readme` does this with Quarto. Where Quarto is not installed this script produces the same
content (the notebook's markdown cells, code cells as fenced blocks) so the README never drifts
from the front page. `--check` exits 1 when README.md differs from what index.ipynb gives.
"""
from __future__ import annotations
import shutil, subprocess, sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- This file is generated from nbs/index.ipynb (nbdev_readme or tools/make_readme.py); edit the notebook. -->\n\n"


def readme_text(nb_path: Path = ROOT / "nbs" / "index.ipynb") -> str:
    "Markdown of the front-page notebook: markdown cells verbatim, exported code hidden, other code fenced."
    nb = nbformat.read(nb_path, as_version=4)
    parts = []
    for cell in nb.cells:
        src = cell.source.strip()
        if not src: continue
        if cell.cell_type == "markdown": parts.append(src)
        elif cell.cell_type == "code" and not src.startswith("#| hide"): parts.append(f"```python\n{src}\n```")
    return HEADER + "\n\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    target = ROOT / "README.md"
    if "--check" in argv:
        if not target.exists() or target.read_text() != readme_text():
            print("README.md is out of date with nbs/index.ipynb: run `python tools/make_readme.py`", file=sys.stderr)
            return 1
        print("README.md matches nbs/index.ipynb")
        return 0
    if shutil.which("quarto") and "--no-quarto" not in argv:
        return subprocess.call(["nbdev_readme"], cwd=ROOT)
    target.write_text(readme_text())
    print(f"wrote {target} from nbs/index.ipynb (quarto not installed: plain markdown rendering)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
