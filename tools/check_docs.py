"""Build the docs site with a real Quarto and check it; offline checks only where no Quarto can be had.

Quarto is the one on PATH, else the offline kit `../shared/tools/quarto/get_quarto.sh` beside the
checkout (installed on first use into its prefix, about 20 s; see its README). With it this
1. runs `nbdev_docs` (the whole site into `_docs/`) and fails when it fails, when it prints a
   warning about our notebooks (nbdev's "Found cells containing imports and other code", pandoc
   `[WARNING]`s, Quarto `WARN`s), or when it changed README.md (whose one generator is
   `tools/make_readme.py`);
2. checks that every notebook became its page (each module, each study stage, the index and the
   Results page);
3. runs `tools/check_site.py _docs`: exit 1 on a missing image or resource, a broken internal link
   or anchor, a stored error or stderr output, or markdown that shows as text.

Without any Quarto it says so (the render is SKIPPED, not passed), runs `nbdev_proc_nbs` (the
notebook processing of the site build) and checks the doc links of the processed notebooks.
`--offline` forces that mode. Exit status 1 on any problem.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT.parent / "shared" / "tools" / "quarto"
QUARTO_MISSING = (
    "quarto render SKIPPED: no `quarto` on PATH and no offline kit at ../shared/tools/quarto/ "
    "(install Quarto from https://quarto.org/docs/get-started/, or run get_quarto.sh of the kit), "
    "so only the offline checks ran"
)
# Output of the site build that points at our notebooks: nbdev's processor warnings, pandoc and Quarto warnings.
BAD_BUILD_LINES = re.compile(r"Found cells containing imports|^\[WARNING\]|^WARN|^ERROR", re.M)


def find_quarto(log=print) -> str | None:
    "Path of a `quarto` launcher: the one on PATH, else the offline kit's (installed on first use), else None."
    if q := shutil.which("quarto"):
        return q
    script = KIT / "get_quarto.sh"
    if not script.exists():
        return None
    log(f"quarto is not on PATH: installing the offline kit with {script} (idempotent; its README says where)")
    res = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines or not Path(lines[-1]).exists():
        log(f"the offline Quarto kit failed to install (exit {res.returncode})")
        return None
    return lines[-1]


def expected_pages() -> list[str]:
    "Site pages the notebooks must become: nbdev drops the number prefix (`nbs/01_data.ipynb` -> `data.html`)."
    pages = []
    for nb in sorted((ROOT / "nbs").rglob("*.ipynb")):
        rel = nb.relative_to(ROOT / "nbs")
        if any(p.startswith((".", "_")) for p in rel.parts):
            continue
        pages.append(str(rel.with_name(re.sub(r"^[0-9]+[a-z]?_", "", rel.stem) + ".html")))
    return pages


def build_site(quarto: str) -> int:
    env = {**os.environ, "PATH": f"{Path(quarto).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    readme = (ROOT / "README.md").read_bytes()
    print(f"nbdev_docs with {quarto}", flush=True)
    t0 = time.time()
    res = subprocess.run(["nbdev_docs"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    took = time.time() - t0
    sys.stdout.write(res.stdout)
    problems = []
    if res.returncode != 0:
        problems.append(f"nbdev_docs failed (exit {res.returncode})")
    for m in BAD_BUILD_LINES.finditer(res.stdout):
        line = res.stdout[m.start() : res.stdout.find("\n", m.start())]
        problems.append(f"the site build warns: {line.strip()}")
    if (ROOT / "README.md").read_bytes() != readme:
        problems.append(
            "nbdev_docs rewrote README.md (its one generator is tools/make_readme.py; see readme_nb in settings.ini)"
        )
        (ROOT / "README.md").write_bytes(readme)
    docs = ROOT / "_docs"
    for page in expected_pages():
        if not (docs / page).exists():
            problems.append(f"no page _docs/{page} for nbs/{page}")
    if not problems:
        res = subprocess.run([sys.executable, str(ROOT / "tools" / "check_site.py"), str(docs)], cwd=ROOT)
        if res.returncode != 0:
            problems.append("tools/check_site.py found problems in the rendered site (listed above)")
    for p in problems:
        print("site problem:", p)
    n = len(list(docs.rglob("*.html"))) - len(list((docs / "site_libs").rglob("*.html"))) if docs.exists() else 0
    print(f"site build: {n} pages in _docs/ in {took:.0f} s; {'FAILED' if problems else 'OK'}")
    return 1 if problems else 0


def process_notebooks_without_quarto() -> Path:
    "Run nbdev_proc_nbs with nbdev's automatic Quarto download switched off; return the _proc folder."
    import nbdev.quarto as q

    q._ensure_quarto = lambda: None  # nbdev would try to download Quarto; we only process notebooks
    q.nbdev_proc_nbs.__wrapped__()
    return ROOT / "_proc"


def symbol_index() -> set[str]:
    from medsyn._modidx import d

    names = set(d["syms"])
    for mod in d["syms"].values():
        names |= set(mod)
    return names


def broken_links(proc: Path) -> list[str]:
    "Links in processed notebooks that point nowhere."
    import nbformat

    syms, problems = symbol_index(), []
    for nb_path in sorted(proc.rglob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "markdown":
                continue
            for ref in re.findall(r"`(medsyn(?:\.\w+)+)`", cell.source):
                if ref not in syms:
                    problems.append(f"{nb_path.relative_to(proc)}: `{ref}` is not in medsyn/_modidx.py")
            for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", cell.source):
                if re.match(r"^[a-z]+:", target):
                    continue  # http:, https:, mailto:
                if not (nb_path.parent / target).exists():
                    problems.append(f"{nb_path.relative_to(proc)}: link to missing file {target}")
    return problems


def offline_checks() -> int:
    proc = process_notebooks_without_quarto()
    problems = broken_links(proc)
    for p in problems:
        print("broken doc link:", p)
    n = len(list(proc.rglob("*.ipynb")))
    print(f"nbdev_proc_nbs processed {n} notebooks into {proc.relative_to(ROOT)}/; {len(problems)} broken doc links")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    quarto = None if "--offline" in argv else find_quarto()
    if quarto:
        return build_site(quarto)
    rc = offline_checks()
    print(QUARTO_MISSING)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
