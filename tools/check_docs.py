"""Build the docs site, or check offline what can be checked when Quarto is absent.

With Quarto installed this runs `nbdev_docs` (the full site into `_docs/`). Without it, it runs
`nbdev_proc_nbs` (notebook processing exactly as the site build does it) and then checks that every
doc link in the processed notebooks resolves: backticked `medsyn.*` symbols must exist in the
package index, and relative links must point at files that exist. Exit status 1 on any broken link.
"""
from __future__ import annotations
import re, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUARTO_MISSING = ("quarto render skipped: quarto is not installed here (get it from "
                  "https://quarto.org/docs/get-started/, then run `nbdev_docs`)")


def process_notebooks_without_quarto() -> Path:
    "Run nbdev_proc_nbs with nbdev's automatic Quarto download switched off; return the _proc folder."
    import nbdev.quarto as q
    q._ensure_quarto = lambda: None  # nbdev would try to download Quarto; we only process notebooks
    q.nbdev_proc_nbs.__wrapped__()
    return ROOT / "_proc"


def symbol_index() -> set[str]:
    from medsyn._modidx import d
    names = set(d["syms"])
    for mod in d["syms"].values(): names |= set(mod)
    return names


def broken_links(proc: Path) -> list[str]:
    "Links in processed notebooks that point nowhere."
    import nbformat
    syms, problems = symbol_index(), []
    for nb_path in sorted(proc.rglob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "markdown": continue
            for ref in re.findall(r"`(medsyn(?:\.\w+)+)`", cell.source):
                if ref not in syms: problems.append(f"{nb_path.relative_to(proc)}: `{ref}` is not in medsyn/_modidx.py")
            for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", cell.source):
                if re.match(r"^[a-z]+:", target): continue  # http:, https:, mailto:
                if not (nb_path.parent / target).exists(): problems.append(f"{nb_path.relative_to(proc)}: link to missing file {target}")
    return problems


def main() -> int:
    if shutil.which("quarto"):
        return subprocess.call(["nbdev_docs"], cwd=ROOT)
    proc = process_notebooks_without_quarto()
    problems = broken_links(proc)
    for p in problems: print("broken doc link:", p)
    n = len(list(proc.rglob("*.ipynb")))
    print(f"nbdev_proc_nbs processed {n} notebooks into {proc.relative_to(ROOT)}/; {len(problems)} broken doc links")
    print(QUARTO_MISSING)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
