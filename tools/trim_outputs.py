"""Keep only the outputs of a notebook that a reader should see: figures, tables and short results.

Usage: python tools/trim_outputs.py nbs/NAME.ipynb [...]

After executing a notebook to store what its examples show (`jupyter nbconvert --to notebook --execute --inplace`),
this keeps figures (one PNG each, no duplicate JPEG), tables (HTML, stored as Markdown so that the offline site needs
no require.js) and short printed or returned results (at most
`MAX_LINES` lines and `MAX_CHARS` characters, the fastcore rhythm's "a check or a displayed result"), and drops what
would only be noise or would change from machine to machine: standard error (warnings, logs), progress bars (`\\r`),
long printouts, anything naming a temporary folder, errors, and execution counts. Run `nbdev_clean` afterwards.
"""

import json
import re
import sys
from pathlib import Path

MAX_LINES, MAX_CHARS = 25, 2500
# A temporary folder or a home directory in a printed path differs on every machine and run.
VOLATILE = re.compile(r"/tmp/|/var/folders/|tmp[a-z0-9_]{6,}|/root/|/home/\w+")


def _text(out: dict) -> str:
    "The text of a stream output or of a plain-text result."
    src = out.get("text") if out["output_type"] == "stream" else (out.get("data") or {}).get("text/plain", "")
    return "".join(src) if isinstance(src, list) else src or ""


def _short_and_stable(text: str) -> bool:
    "A short text with no progress-bar redraws and no temporary paths."
    return (
        bool(text.strip())
        and "\r" not in text
        and len(text) <= MAX_CHARS
        and text.count("\n") <= MAX_LINES
        and not VOLATILE.search(text)
    )


def keep(out: dict) -> dict | None:
    "The output as it is kept (figure, table or short result), or None to drop it."
    kind, data = out["output_type"], out.get("data") or {}
    if "image/png" in data:
        return {**out, "data": {k: v for k, v in data.items() if k in ("image/png", "text/plain")}}
    if "text/html" in data and not VOLATILE.search("".join(data["text/html"])):
        # Kept as Markdown (raw HTML passes through pandoc): a text/html output makes Quarto load require.js from a CDN.
        return {**out, "data": {"text/markdown": data["text/html"], "text/plain": data.get("text/plain", "")}}
    if kind == "stream" and out.get("name") == "stdout" and _short_and_stable(_text(out)):
        return out
    if kind in ("execute_result", "display_data") and "text/plain" in data and _short_and_stable(_text(out)):
        return {**out, "data": {"text/plain": data["text/plain"]}}
    return None


def trim(path: Path) -> int:
    "Trim the outputs of one notebook in place; the number of outputs dropped."
    nb = json.loads(path.read_text())
    dropped = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        kept = [k for k in map(keep, cell.get("outputs", [])) if k is not None]
        dropped += len(cell.get("outputs", [])) - len(kept)
        cell["outputs"] = kept
        cell["execution_count"] = None
        for out in kept:
            if "execution_count" in out:
                out["execution_count"] = None
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return dropped


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: dropped {trim(Path(name))} output(s) (stderr, progress, long or machine-specific text)")
