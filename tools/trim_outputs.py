"""Keep only the outputs of a notebook that carry meaning: figures (one PNG each) and tables (HTML).

Usage: python tools/trim_outputs.py nbs/NAME.ipynb [...]

After executing a notebook to store its figures (`jupyter nbconvert --to notebook --execute --inplace`), this
drops printed streams (warnings, progress bars, logs with temporary paths), plain-text results, duplicate JPEG
renderings of a PNG and execution counts, so that only what a reader should see is kept and diffs stay small.
Run `nbdev_clean` afterwards.
"""

import json
import sys
from pathlib import Path


def trim(path: Path) -> int:
    nb = json.loads(path.read_text())
    dropped = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            if "image/png" in data:
                out["data"] = {k: v for k, v in data.items() if k in ("image/png", "text/plain")}
            elif "text/html" in data:
                out["data"] = {k: v for k, v in data.items() if k in ("text/html", "text/plain")}
            else:
                dropped += 1
                continue
            kept.append(out)
        cell["outputs"] = kept
        cell["execution_count"] = None
        for out in kept:
            if "execution_count" in out:
                out["execution_count"] = None
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return dropped


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: dropped {trim(Path(name))} output(s) without a figure or table")
