"""The docs site's preconditions, checked without Quarto: one page per notebook, one README generator,
notebooks papermill can run and nbdev_clean keeps runnable, no cell nbdev's doc build warns about, the
markdown that renders as stray asterisks, and a site checker that fails on a broken page. The site itself is
built and checked by `python tools/check_docs.py` and `tools/browser_check.py` (.ci/run)."""

import ast
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import check_docs  # noqa: E402

NBS = sorted(
    p
    for p in (ROOT / "nbs").rglob("*.ipynb")
    if not any(s.startswith((".", "_")) for s in p.relative_to(ROOT / "nbs").parts)
)


def test_every_notebook_has_its_own_page():
    "nbdev drops the number prefix: two notebooks that differ only by it would be one page (and the build fails)."
    pages = check_docs.expected_pages()
    assert len(pages) == len(NBS)
    dupes = sorted({p for p in pages if pages.count(p) > 1})
    assert not dupes, f"notebooks that become the same page: {dupes}"


def test_site_build_leaves_readme_alone():
    "nbdev_docs renders readme_nb only when it is newer than README.md: pointing it at README.md itself disables that."
    import nbdev.quarto as q
    from nbdev.config import get_config

    cfg = get_config(path=ROOT)
    assert (cfg.nbs_path / cfg.readme_nb).resolve() == (cfg.config_path / "README.md").resolve()
    assert q._readme_mtime_not_older(cfg.config_path / "README.md", cfg.nbs_path / cfg.readme_nb)


@pytest.mark.parametrize("nb", sorted((ROOT / "nbs" / "study").glob("*.ipynb")), ids=lambda p: p.name)
def test_study_notebooks_keep_what_papermill_needs(nb):
    "A kernel name and a language, kept by nbdev_clean with this project's settings."
    from nbdev.clean import clean_nb
    from nbdev.config import get_config

    data = json.loads(nb.read_text())
    ks = data["metadata"].get("kernelspec", {})
    assert ks.get("name") == "python3" and ks.get("language") == "python", f"{nb.name}: kernelspec {ks}"
    cfg = get_config(path=ROOT)
    cleaned = copy.deepcopy(data)
    clean_nb(
        cleaned,
        clear_all=cfg.clear_all,
        allowed_metadata_keys=cfg.get("allowed_metadata_keys", "").split(),
        allowed_cell_metadata_keys=cfg.get("allowed_cell_metadata_keys", "").split(),
        clean_ids=cfg.clean_ids,
    )
    assert (
        cleaned["metadata"]["kernelspec"]["name"] == "python3"
        and cleaned["metadata"]["kernelspec"]["language"] == "python"
    )


def _cells(kind):
    for nb in NBS:
        for c in json.loads(nb.read_text())["cells"]:
            if c["cell_type"] == kind:
                yield nb, c, "".join(c["source"])


def _has_docs(nb: Path) -> bool:
    "nbdev executes cells for the docs only in notebooks that export code or call show_doc."
    return any(
        re.search(r"^#\|\s*exports?\b|^show_doc", "".join(c["source"]), re.M)
        for c in json.loads(nb.read_text())["cells"]
        if c["cell_type"] == "code"
    )


def test_no_cell_mixes_imports_and_code():
    "nbdev's doc build executes every cell that imports (to run show_doc) and warns when it also holds other code."
    bad, docs = [], {nb: _has_docs(nb) for nb in NBS}
    for nb, c, src in _cells("code"):
        if not docs[nb]:
            continue
        if re.search(r"^#\|\s*(export|exports|exporti|exec_doc)\b", src, re.M) or re.search(
            r"^#\|\s*eval:\s*false", src, re.M
        ):
            continue
        try:
            tree = ast.parse("\n".join(l for l in src.splitlines() if not l.startswith(("%", "!"))))
        except SyntaxError:
            continue
        nodes = list(ast.walk(tree))
        if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in nodes) and any(
            isinstance(n, (ast.Expr, ast.Assign)) for n in nodes
        ):
            bad.append(f"{nb.relative_to(ROOT)} cell {c.get('id')}")
    assert not bad, f"put the imports of these cells in a cell of their own: {bad}"


def test_no_stored_output_makes_the_site_load_scripts_from_the_internet():
    """Quarto adds require.js and jQuery from a CDN to every page whose notebook stores a text/html or
    application/javascript output (a pandas table, a widget); offline the page then logs errors. Tables are stored as
    Markdown instead (`python tools/trim_outputs.py NB` converts them)."""
    bad = []
    for nb in NBS:
        for cell in json.loads(nb.read_text())["cells"]:
            for out in cell.get("outputs", []):
                kinds = set(out.get("data", {})) & {"text/html", "application/javascript"}
                if kinds and out.get("output_type") in ("display_data", "execute_result"):
                    bad.append(f"{nb.relative_to(ROOT)} cell {cell.get('id')}: {sorted(kinds)}")
    assert not bad, f"run `python tools/trim_outputs.py` on these notebooks: {bad}"


def test_markdown_lists_have_a_blank_line_before_them():
    "Without it pandoc shows the list as one paragraph with literal `*`/`-` markers."
    bad = []
    for nb, c, src in _cells("markdown"):
        lines, fence = src.split("\n"), False
        for prev, line in zip(lines, lines[1:]):
            if prev.startswith("```"):
                fence = not fence
            if fence:
                continue
            is_item = lambda l: re.match(r"\s*([-*+]|\d+\.)\s", l)
            if (
                is_item(line)
                and not line.startswith(" ")
                and prev.strip()
                and not is_item(prev)
                and not prev.startswith((" ", "|", ">"))
            ):
                bad.append(f"{nb.relative_to(ROOT)} cell {c.get('id')}: {line[:60]!r}")
    assert not bad, bad


def test_check_site_fails_on_a_broken_page(tmp_path):
    """tools/check_site.py passes a clean page and fails a missing image, a broken link or anchor, an error output, a
    stray `*`."""
    good = (
        '<html><head><title>t</title></head><body><main><h1 id="top">T</h1><p>fine <a href="#top">up</a></p>'
        '<img src="a.png"></main></body></html>'
    )
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "index.html").write_text(good)
    (tmp_path / "ok" / "a.png").write_bytes(b"\x89PNG")
    run = lambda d: subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_site.py"), str(d)], capture_output=True, text=True
    )
    assert run(tmp_path / "ok").returncode == 0, run(tmp_path / "ok").stdout
    for name, body in {
        "image": '<img src="missing.png">',
        "link": '<a href="nowhere.html">x</a>',
        "anchor": '<a href="#nope">x</a>',
        "error-output": (
            '<div class="cell-output cell-output-error"><pre>Traceback (most recent call last):</pre></div>'
        ),
        "markdown-leak": "<p>Two ways: * <strong>fused</strong>: one * two</p>",
    }.items():
        d = tmp_path / name
        d.mkdir()
        (d / "index.html").write_text(good.replace("<p>fine", body + "<p>fine"))
        (d / "a.png").write_bytes(b"\x89PNG")
        res = run(d)
        assert res.returncode == 1 and name in res.stdout, (name, res.stdout)


def test_site_build_output_that_points_at_notebooks_fails():
    "The lines of nbdev_docs' output that tools/check_docs.py turns into failures."
    for line in [
        "UserWarning: Found cells containing imports and other code. See FAQ.",
        "[WARNING] Could not convert TeX math x, rendering as TeX",
        "WARN: unable to resolve link",
    ]:
        assert check_docs.BAD_BUILD_LINES.search(line), line
    assert not check_docs.BAD_BUILD_LINES.search("Output created: _docs/index.html")


def test_results_page_from_a_report_notebook(tmp_path):
    "tools/record_results.py: the stamp, the report's prose and figures, code folded, logs dropped, never executed."
    import base64
    import io

    import nbformat
    import record_results
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1600, 400), (200, 30, 30)).save(buf, "PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_raw_cell("---\nskip_exec: true\n---"),
            nbformat.v4.new_markdown_cell("# Does it help?\n\nProse."),
            nbformat.v4.new_code_cell(
                "rep.figure('x')",
                outputs=[
                    nbformat.v4.new_output("stream", name="stderr", text="a log line"),
                    nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Image>"}),
                    nbformat.v4.new_output(
                        "display_data",
                        data={
                            "text/html": '<figure><img '
                            f'src="data:image/png;base64,{png}"><figcaption>F</figcaption></figure>'
                        },
                    ),
                ],
            ),
            nbformat.v4.new_code_cell("x = 1"),
        ]
    )
    nbformat.write(nb, str(tmp_path / "06_report.ipynb"))
    rec = {
        "command": "medsyn study --profile quick",
        "started": "2026-12-07 10:54 UTC",
        "commit": "abc1234",
        "machine": "a CPU, 2 CPU cores",
        "wall_s": 1500,
    }
    page = record_results.results_notebook(tmp_path / "06_report.ipynb", rec)
    text = json.dumps(page.dict() if hasattr(page, "dict") else page)
    assert page.cells[0].cell_type == "raw" and "skip_exec: true" in page.cells[0].source
    head = page.cells[1].source
    assert head.startswith("# Results") and all(
        v in head for v in ["2026-12-07 10:54 UTC", "`abc1234`", "a CPU, 2 CPU cores", "25.0 min"]
    )
    assert "## Does it help?" in text and "a log line" not in text and "x = 1" not in text
    fig = page.cells[3]
    assert fig.source.startswith("#| echo: false") and len(fig.outputs) == 2
    assert list(fig.outputs[1]["data"]) == ["text/markdown"], "text/html outputs make Quarto load require.js from a CDN"
    small = [
        fig.outputs[0]["data"]["image/png"],
        re.search(r"base64,([^\"]+)", fig.outputs[1]["data"]["text/markdown"]).group(1),
    ]
    for b64 in small:
        im = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert im.width <= 1100 and im.mode == "P" and len(b64) < len(png)


def test_results_page_is_a_stamped_recorded_run():
    "The committed Results page: made by tools/record_results.py, stamped, with the report's tables and figures."
    page = ROOT / "nbs" / "results.ipynb"
    assert page.exists(), "nbs/results.ipynb is missing: run `python tools/record_results.py`"
    nb = json.loads(page.read_text())
    src = ["".join(c["source"]) for c in nb["cells"]]
    assert "skip_exec: true" in src[0] and src[1].startswith("# Results")
    for field in ["| started |", "| commit |", "| machine |", "| wall time |"]:
        assert field in src[1], field
    outs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outs if "text/html" in o.get("data", {})], (
        "text/html outputs make Quarto load require.js from a CDN"
    )
    html = ["".join(o.get("data", {}).get("text/markdown", "")) for o in outs]
    assert sum(h.count("data:image/png;base64,") for h in html) >= 3, "fewer than 3 figures"
    assert sum(h.count("<figcaption>") for h in html) >= 3, "figures without captions"
    assert sum(h.count("<table") for h in html) >= 3, "fewer than 3 tables"
    assert not [o for o in outs if o.get("output_type") in ("error", "stream")]
    assert page.stat().st_size < 1_500_000, f"{page.name} is {page.stat().st_size} bytes: keep the figures small"
