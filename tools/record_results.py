"""Record the README's main job and make it the docs site's Results page (`nbs/results.ipynb`).

    python tools/record_results.py                  # runs `medsyn study --profile quick` (about 30 min on 2 idle
                                                    # cores) into a scratch folder, then writes nbs/results.ipynb
    python tools/record_results.py --run-dir DIR    # (re)write the page from a finished run whose record.json says
                                                    # how it was made (this script writes one when it runs the study)

The page is the executed per-dataset report notebook of that run (`runs/default/notebooks/06_report.ipynb`):
its prose, tables and figures with their captions (the code that made them is folded away, logs are dropped,
exactly as `medsyn.study.report_notebook` does for `report.html`), under a stamp saying when, from which
commit, on which machine and in how long the run was made. Figures are stored as palette PNGs to keep the
notebook small. The page is never executed by `nbdev_test` or the site build (`skip_exec`): it shows what was
recorded, and stays until this script is run again.
"""

from __future__ import annotations

import argparse
import base64
import copy
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "nbs" / "results.ipynb"
COMMAND = "medsyn study --profile quick"
DATA_URI = re.compile(r"(data:image/png;base64,)([A-Za-z0-9+/=]+)")


def machine() -> str:
    """CPU model, cores, OS and torch of this machine, e.g. 'Intel Xeon ..., 2 CPU cores, Linux 6.1 x86_64, torch 2.5.1,
    no GPU'."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    system = f"{platform.system()} {platform.release()} {platform.machine()}"
    return f"{cpu}, {os.cpu_count()} CPU cores, {system}, torch {torch.__version__}, {gpu}"


def git_commit() -> str:
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "medsyn", "nbs/study"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return sha + (" (with uncommitted changes to medsyn/ or nbs/study/)" if dirty else "")


def run_study(out: Path) -> dict:
    "Run the README's main job into `out` and write `out/record.json`."
    out.mkdir(parents=True, exist_ok=True)
    rec = {
        "command": COMMAND,
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "machine": machine(),
    }
    t0 = time.time()
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    entry = "import sys; from medsyn.cli import main; sys.exit(main(sys.argv[1:]))"  # `medsyn` of this interpreter
    res = subprocess.run([sys.executable, "-c", entry, *COMMAND.split()[1:], "--out", str(out)], env=env)
    rec["wall_s"] = round(time.time() - t0)
    if res.returncode != 0:
        raise SystemExit(f"`{COMMAND}` failed (exit {res.returncode}); nbs/results.ipynb is unchanged")
    (out / "record.json").write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def small_png(b64: str, max_width: int = 1100) -> str:
    "A figure as a palette PNG (at most max_width pixels wide): the same picture in a fraction of the bytes."
    from PIL import Image

    im = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
    if im.width > max_width:
        im = im.resize((max_width, round(im.height * max_width / im.width)), Image.LANCZOS)
    buf = io.BytesIO()
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, "PNG", optimize=True)
    small = base64.b64encode(buf.getvalue()).decode()
    return small if len(small) < len(b64) else b64


def results_notebook(report: Path, rec: dict):
    "The Results page: title, stamp, then the report notebook's prose and outputs (code folded, logs dropped)."
    import nbformat

    from medsyn.study import report_notebook

    nb = report_notebook(nbformat.read(str(report), as_version=4))
    cells = []
    for c in nb.cells:
        c = copy.deepcopy(c)
        if c.cell_type == "markdown":  # the report's title becomes a section of this page
            c.source = "\n".join(("#" + l if l.startswith("#") else l) for l in c.source.split("\n"))
        elif c.cell_type == "code":
            c.source = "#| echo: false\n" + c.source
            c.execution_count = None
            for o in c.outputs:
                if "execution_count" in o:
                    o["execution_count"] = None
                data = o.get("data", {})
                if "image/png" in data:
                    data["image/png"] = small_png(data["image/png"])
                if (
                    "text/html" in data
                ):  # the report's tables and figures (<figure><img src="data:image/png;base64,...">)
                    html = DATA_URI.sub(lambda m: m.group(1) + small_png(m.group(2)), "".join(data["text/html"]))
                    # As markdown (raw HTML passes through pandoc unchanged): Quarto adds require.js and jQuery from a
                    # CDN to every page with a text/html output, and the site must work offline.
                    o["data"] = {"text/markdown": html}
        else:
            continue
        c.metadata = {}
        cells.append(c)
    # image: the page's preview picture; without it Quarto takes the first figure, a data: URI, as og:image.
    head = [
        nbformat.v4.new_raw_cell(
            "---\nskip_exec: true\nskip_showdoc: true\nimage: images/quick_samples_warped_cond.png\n---"
        ),
        nbformat.v4.new_markdown_cell(
            "# Results\n\n> The study's report from a recorded run of the README's main job on the bundled default "
            "dataset.\n\n"
            f"Made by `python tools/record_results.py`: a run of `{rec['command']}` (profile `quick`, dataset "
            "`default`), "
            "whose executed report notebook `runs/default/notebooks/06_report.ipynb` is this page. "
            "Rerun it to replace this page; the numbers below are what that run produced, nothing here is executed "
            "when the site is built.\n\n"
            "| recorded run | |\n|---|---|\n"
            f"| started | {rec['started']} |\n| commit | `{rec['commit']}` |\n| machine | {rec['machine']} |\n"
            f"| wall time | {rec['wall_s'] / 60:.1f} min ({rec['wall_s']} s) |\n"
            + (f"| note | {rec['note']} |\n" if rec.get("note") else "")
            + "\n"
            "The default dataset is simulated, not patient data (20 subjects generated from the MNI152 template's "
            "tissue maps with random anatomy, tumour-like lesions, four MR-like channels, bias field and noise; see "
            "`medsyn.data.prepare_cohort`), and the quick profile trains every GAN and U-Net for minutes on a CPU: the "
            "run shows the whole pipeline and how the report reads, not an answer to the study's question for patients."
        ),
    ]
    out = nbformat.v4.new_notebook(cells=head + cells)
    out.metadata = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, help="a finished run (the --out of `medsyn study`) holding record.json")
    ap.add_argument("--out", type=Path, help="where to run the study (default: a new scratch folder)")
    a = ap.parse_args(argv)
    if a.run_dir:
        if not (a.run_dir / "record.json").exists():
            ap.error(f"{a.run_dir}/record.json is missing: only a run made by this script says how it was made")
        run, rec = a.run_dir, json.loads((a.run_dir / "record.json").read_text())
    else:
        run = a.out or Path(tempfile.mkdtemp(prefix="medsyn-results-"))
        print(f"running `{COMMAND}` into {run}", flush=True)
        rec = run_study(run)
    report = run / "default" / "notebooks" / "06_report.ipynb"
    if not report.exists():
        raise SystemExit(f"{report} does not exist: the run did not finish its report stage")
    import nbformat

    nb = results_notebook(report, rec)
    nbformat.write(nb, str(PAGE))
    subprocess.run(["nbdev_clean", "--fname", str(PAGE)], cwd=ROOT, check=False)
    print(
        f"wrote {PAGE.relative_to(ROOT)} ({PAGE.stat().st_size / 1024:.0f} KiB) from {report}; wall time of the run "
        f"{rec['wall_s']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
