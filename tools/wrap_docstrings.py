"""Wrap docstrings and comment lines longer than the line length (ruff format leaves both alone, ruff check flags them).

    python tools/wrap_docstrings.py nbs/00_core.ipynb tools/record_results.py   # rewrites the files in place
    python tools/wrap_docstrings.py --check nbs                                  # lists what it would change

A one-line docstring `"..."` over the limit becomes a triple-quoted one wrapped at spaces; a long line inside a
triple-quoted docstring is split at a space, the rest indented like the docstring. A long comment line becomes several
comment lines. A long line's one-line string literal is split at a space into two adjacent literals (where that
still parses). Only whitespace inside docstrings changes (nbdev renders them as Markdown, where a line break inside a
paragraph is a space). nbdev directives (`#|`) and code are never touched: what is left is for a person.
"""

import argparse
import ast
import io
import json
import textwrap
import tokenize
from pathlib import Path

LIMIT = 120


def _docstring_nodes(tree: ast.AST) -> list[ast.Constant]:
    "The string constants that are docstrings (first statement of a module, class or function)."
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                found.append(first.value)
    return found


def _split_at_space(text: str, width: int) -> list[str]:
    "`text` as pieces of at most `width` characters, split at spaces (a word longer than `width` stays whole)."
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [text]


def _wrap_docstring(lines: list[str], node: ast.Constant) -> bool:
    "Rewrite the docstring `node` in `lines` (0-based list of source lines) if it has a line over the limit."
    first, last = node.lineno - 1, node.end_lineno - 1
    if all(len(lines[i]) <= LIMIT for i in range(first, last + 1)):
        return False
    indent = " " * node.col_offset
    if first == last:  # "..." or """...""" on one line
        line = lines[first]
        head, literal, tail = (
            line[: node.col_offset],
            line[node.col_offset : node.end_col_offset],
            line[node.end_col_offset :],
        )
        prefix = literal[: len(literal) - len(literal.lstrip("rRuU"))]
        body = literal[len(prefix) :]
        quote = body[:3] if body[:3] in ('"""', "'''") else body[0]
        inner = body[len(quote) : -len(quote)]
        if '"""' in inner or inner.endswith('"') or tail.strip():
            return False
        pieces = _split_at_space(inner, LIMIT - len(indent))
        new = [f'{head}{prefix}"""{pieces[0]}'] + [indent + p for p in pieces[1:]]
        if len(new[0]) > LIMIT:  # the opening quotes pushed the first piece over: rewrap it
            pieces = _split_at_space(inner, LIMIT - len(indent) - 3)
            new = [f'{head}{prefix}"""{pieces[0]}'] + [indent + p for p in pieces[1:]]
        new[-1] += '"""'
        if len(new[-1]) > LIMIT:
            new.append(indent + '"""')
            new[-2] = new[-2][:-3]
        lines[first : first + 1] = new
        return True
    out = []
    for i in range(first, last + 1):
        line = lines[i]
        if len(line) <= LIMIT:
            out.append(line)
            continue
        lead = " " * (len(line) - len(line.lstrip())) if i > first else indent
        pieces = _split_at_space(line[len(lead) :] if i > first else line, LIMIT - (len(lead) if i > first else 0))
        out += [pieces[0] if i == first else lead + pieces[0]] + [lead + p for p in pieces[1:]]
    lines[first : last + 1] = out
    return True


def _wrap_comments(lines: list[str]) -> list[str]:
    "Long whole-line comments (not nbdev `#|` directives) wrapped into several comment lines."
    out = []
    for line in lines:
        s = line.lstrip()
        if len(line) > LIMIT and s.startswith("# ") and not s.startswith("#|"):
            lead = line[: len(line) - len(s)]
            out += [f"{lead}# {p}" for p in _split_at_space(s[2:], LIMIT - len(lead) - 2)]
        else:
            out.append(line)
    return out


def _split_point(text: str, limit: int) -> int | None:
    "Index of the last space in string literal `text` before `limit`, outside f-string braces; None if there is none."
    depth, best = 0, None
    for i, ch in enumerate(text[:limit]):
        depth += (ch == "{") - (ch == "}")
        if ch == " " and depth == 0 and i > len(text) - len(text.lstrip("rRbBuUfF")) + 1:
            best = i
    return best


def _split_strings(src: str) -> str:
    """A long line's one-line string literal split at a space into two adjacent literals, the second on the next line
    aligned with the first (only where the result still parses, i.e. inside brackets); `f` kept only where needed."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (tokenize.TokenError, SyntaxError):
        return src
    lines = src.split("\n")
    for tok in reversed(tokens):
        (row, col), (erow, ecol) = tok.start, tok.end
        line = lines[row - 1] if row - 1 < len(lines) else ""
        if tok.type != tokenize.STRING or row != erow or len(line) <= LIMIT or ecol <= LIMIT:
            continue
        text = tok.string
        prefix = text[: len(text) - len(text.lstrip("rRbBuUfF"))]
        quote = text[len(prefix)]
        if text[len(prefix) : len(prefix) + 3] in ('"""', "'''"):
            continue
        cut = _split_point(text, LIMIT - col - 1)
        if cut is None:
            continue
        a, b = text[: cut + 1] + quote, text[cut + 1 :]
        pa = prefix if "{" in a else prefix.replace("f", "").replace("F", "")
        pb = prefix if "{" in b else prefix.replace("f", "").replace("F", "")
        new = [line[:col] + pa + a[len(prefix) :], " " * col + pb + quote + b]
        candidate = lines[: row - 1] + new + lines[row:]
        try:
            ast.parse("\n".join(candidate))
        except SyntaxError:
            continue
        lines = candidate
    return "\n".join(lines)


def wrap_source(src: str) -> str:
    "`src` with its long docstrings and comment lines wrapped; unchanged when it does not parse (e.g. cell magics)."
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return src
    lines = src.split("\n")
    for node in sorted(_docstring_nodes(tree), key=lambda n: -n.lineno):  # bottom-up: earlier line numbers stay valid
        _wrap_docstring(lines, node)
    return _split_strings("\n".join(_wrap_comments(lines)))


def wrap_file(path: Path, check: bool = False) -> bool:
    "Wrap one `.py` file or every code cell of one notebook; True if anything changed (written unless `check`)."
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text())
        changed = False
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            src = "".join(cell["source"])
            new = wrap_source(src)
            if new != src:
                cell["source"] = new.splitlines(keepends=True)
                changed = True
        if changed and not check:
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        return changed
    src = path.read_text()
    new = wrap_source(src)
    if new != src and not check:
        path.write_text(new)
    return new != src


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="files or folders (.py and .ipynb inside them)")
    p.add_argument("--check", action="store_true", help="only list the files that would change")
    args = p.parse_args()
    files = [f for p in args.paths for f in ([p] if p.is_file() else sorted([*p.rglob("*.py"), *p.rglob("*.ipynb")]))]
    for f in files:
        if ".ipynb_checkpoints" not in f.parts and wrap_file(f, args.check):
            print(("would wrap " if args.check else "wrapped ") + str(f))


if __name__ == "__main__":
    main()
