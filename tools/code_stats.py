"""Size and structure figures of the `medsyn` package and its notebooks, as JSON (before/after numbers of notes).

Usage: python tools/code_stats.py [PACKAGE_DIR [NBS_DIR]]   (default: medsyn/ and nbs/ beside this folder)

Reports the largest modules and functions, how many functions exceed 60 lines, the imports between medsyn modules
(at the top of a module or inside a function), any import cycle, lines over 120 characters, how the study's stages
share their frame (stage functions that call `mark_done` / time themselves by hand), and for the notebooks: how many
exported cells are followed by an example or check (the next code cell, past at most one Markdown cell, is not
exported; fastcore's `01_basics` reaches 81 %), and how many notebooks keep outputs (figures, tables, results).
"""

import ast
import json
import sys
from pathlib import Path


def functions(tree):
    "(qualified name, lines) of every function and method, nested ones included."
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def medsyn_imports(tree, module: str, package: str, is_package: bool = False):
    """Imported medsyn modules, dotted below the package (`core`, `study.design`): {'top': set, 'inside': set}
    (inside = within a function body). `is_package`: `module` is a package's `__init__`."""
    top, inside = set(), set()
    here = module.split(".") if is_package else module.split(".")[:-1]  # the package a relative import starts from

    def targets(node):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from .core import x`, `from ..core import x` or `from . import x`
                base = here[: len(here) - (node.level - 1)]
                if node.module:
                    return [".".join(base + node.module.split("."))]
                return [".".join(base + [a.name]) for a in node.names]
            if node.module and node.module.split(".")[0] == package:
                rest = node.module.split(".")[1:]
                return [".".join(rest)] if rest else [a.name for a in node.names]
        if isinstance(node, ast.Import):
            return [a.name.split(".", 1)[1] for a in node.names if a.name.startswith(package + ".")]
        return []

    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            for t in targets(child):
                if t != module:
                    (inside if in_func else top).add(t)
            visit(child, in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return {"top": top, "inside": inside}


def module_files(pkg: Path) -> dict:
    "{dotted module name below the package: file} of every module, subpackages included (a package by its `__init__`)."
    out = {}
    for p in sorted(pkg.rglob("*.py")):
        parts = p.relative_to(pkg).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and not any(x.startswith("_") for x in parts):
            out[".".join(parts)] = p
    return out


def known(target: str, mods: dict) -> str:
    "The module an import target names: itself, or (for `from pkg import name`) the package it was imported from."
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target


def cycles(graph: dict) -> list:
    "Elementary cycles found by depth-first search (each reported once, rotated to its smallest member)."
    found = set()

    def dfs(start, node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                found.add(tuple(path))
            elif nxt not in path and nxt > start:
                dfs(start, nxt, path + [nxt])

    for s in sorted(graph):
        dfs(s, s, [s])
    return [list(c) for c in sorted(found)]


def stage_frames(mods: dict[str, Path]) -> dict:
    "The study's stage functions (`stage_*`) and how many repeat the frame by hand (own `mark_done` or clock)."
    found, by_hand = [], []
    for name, path in mods.items():
        if not name.startswith("study"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("stage_") and node.name != "stage_done":
                found.append(node.name)
                calls = {ast.unparse(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)}
                if "mark_done" in calls or "time.time" in calls or "time.perf_counter" in calls:
                    by_hand.append(node.name)
    return dict(stages=len(found), stages_repeating_the_frame=sorted(by_hand))


def _directives(src: str) -> set[str]:
    "nbdev directives of a cell (`#| export`, `#|hide`, ...) as a set of words."
    return {w for line in src.splitlines() if line.startswith("#|") for w in line[2:].split()[:1]}


def notebook_stats(nbs: Path) -> dict:
    "Exported cells followed by an example or check, and notebooks keeping outputs, over `nbs/**/*.ipynb`."
    exported = followed = with_outputs = total = 0
    for path in sorted(nbs.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        cells = json.loads(path.read_text())["cells"]
        total += 1
        with_outputs += any(c.get("outputs") for c in cells if c["cell_type"] == "code")
        for i, c in enumerate(cells):
            if c["cell_type"] != "code" or not _directives("".join(c["source"])) & {"export", "exports"}:
                continue
            exported += 1
            nxt = cells[i + 1 : i + 3]
            if nxt and nxt[0]["cell_type"] == "markdown":
                nxt = nxt[1:]
            src = "".join(nxt[0]["source"]) if nxt and nxt[0]["cell_type"] == "code" else None
            followed += src is not None and not _directives(src) & {"export", "exports", "exporti"}
    return dict(
        notebooks=total,
        notebooks_with_outputs=with_outputs,
        exported_cells=exported,
        exported_cells_followed_by_example=followed,
        share_followed_by_example=round(followed / max(exported, 1), 3),
        notebook_code_lines_over_120_chars=sum(
            len(line) > 120
            for p in nbs.rglob("*.ipynb")
            for c in json.loads(p.read_text())["cells"]
            if c["cell_type"] == "code"
            for line in "".join(c["source"]).splitlines()
        ),
    )


def stats(pkg: Path, nbs: Path | None = None) -> dict:
    package = pkg.name
    mods = module_files(pkg)
    funcs, graph, top_n, inside_n, long_lines, lines = [], {}, 0, 0, 0, 0
    for name, path in mods.items():
        text = path.read_text()
        tree = ast.parse(text)
        funcs += [(f"{name}.{q}", n) for q, n in functions(tree)]
        imp = medsyn_imports(tree, name, package, path.name == "__init__.py")
        imp = {k: {known(t, mods) for t in v} - {"", name} for k, v in imp.items()}
        graph[name] = imp["top"] | imp["inside"]
        top_n += len(imp["top"])
        inside_n += len(imp["inside"] - imp["top"])
        long_lines += sum(len(line) > 120 for line in text.splitlines())
        lines += len(text.splitlines())
    funcs.sort(key=lambda f: -f[1])
    return dict(
        package=str(pkg),
        modules=len(mods),
        lines=lines,
        functions=len(funcs),
        largest_functions=[dict(name=n, lines=k) for n, k in funcs[:5]],
        functions_over_60_lines=sum(k > 60 for _, k in funcs),
        module_imports_at_top=top_n,
        module_imports_only_inside_functions=inside_n,
        import_cycles=cycles(graph),
        lines_over_120_chars=long_lines,
        largest_modules=sorted(((m, len(p.read_text().splitlines())) for m, p in mods.items()), key=lambda x: -x[1])[
            :4
        ],
        **stage_frames(mods),
        **(notebook_stats(nbs) if nbs and nbs.is_dir() else {}),
    )


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    pkg = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "medsyn"
    nbs = Path(sys.argv[2]) if len(sys.argv) > 2 else pkg.parent / "nbs"
    print(json.dumps(stats(pkg, nbs), indent=1))
