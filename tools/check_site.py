#!/usr/bin/env python3
# A copy of ../shared/tools/quarto/check_site.py (the offline Quarto kit), kept here so that the site checks
# run wherever Quarto comes from; `tests/test_docs.py` checks that it still fails on a broken page.
"""Static checks of a rendered Quarto (or nbdev) HTML site.

Usage:  python3 check_site.py SITE_DIR [--allow CATEGORY]... [--json REPORT.json] [--quiet]

Reads every *.html page under SITE_DIR (except site_libs/) with the standard library's
html.parser (no third-party packages) and reports, per page:

  title          the page has no <title>
  image          an <img>/<source> points at a local file that does not exist
  resource       a local script, stylesheet or iframe that does not exist
  link           an internal link (<a href>, search.json) to a file that does not exist
  anchor         an internal link to a #fragment that no element on the target page has
  error-output   a stored error output (cell-output-error, or a Python traceback in an output)
  stderr-output  a stored stderr output (warnings, progress bars)
  markdown-leak  markdown that pandoc did not convert and that shows as text: ``` or :::
                 fences, {{< shortcodes >}}, [text](url), **bold**, a "# heading" line, raw HTML
                 tags, literal asterisks (a list without the blank line before it, or a `*` in
                 a docstring), and #| cell directives left in code

Prints a summary and exits 1 when there is a problem in a category not passed to --allow
(those are still listed), 2 on a usage error, 0 otherwise. --json writes the per-page report.
"""

import argparse
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

CATEGORIES = ["title", "image", "resource", "link", "anchor", "error-output", "stderr-output", "markdown-leak"]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"}
# text inside these is not prose: leaks are only looked for outside them
NOT_PROSE = {"pre", "code", "script", "style", "svg", "math", "kbd", "samp", "textarea", "template"}
BLOCK = {
    "p",
    "div",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "td",
    "th",
    "tr",
    "table",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "figcaption",
    "figure",
    "section",
    "br",
    "hr",
    "header",
    "footer",
    "caption",
    "details",
    "summary",
    "main",
    "nav",
    "aside",
    "pre",
}

PROSE_LEAKS = [
    ("``` fence", re.compile(r"^[ \t]*(```|~~~)", re.M)),
    ("::: div fence", re.compile(r"^[ \t]*:::", re.M)),
    ("shortcode", re.compile(r"\{\{[<%]")),
    ("markdown link", re.compile(r"!?\[[^\]\n]{1,200}\]\([^)\s]{1,300}\)")),
    ("**bold**", re.compile(r"\*\*[^*\n]+\*\*")),
    ("# heading line", re.compile(r"^[ \t]*#{1,6}[ \t]+\S", re.M)),
    ("raw HTML tag", re.compile(r"</?(?:div|span|img|table|tr|td|br|p|a|ul|li)\b[^<>\n]*>", re.I)),
    ("literal *", re.compile(r"\*+")),
    ("#| directive", re.compile(r"^[ \t]*#\|", re.M)),
]
CODE_LEAKS = [("#| directive", re.compile(r"^[ \t]*#\|", re.M))]
TRACEBACK = re.compile(r"Traceback \(most recent call last\)")


class Page(HTMLParser):
    """One pass over a page: ids, links, images, resources, outputs, prose and code text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []  # (tag, classes) of the open elements
        self.title = None
        self.ids = set()
        self.links = []  # hrefs of <a>
        self.images = []  # img/source src(set)
        self.resources = []  # script src, link href, iframe src
        self.prose = []  # text of <main> outside code (block breaks as "\n")
        self.code = []  # text of <main> code blocks (outside outputs)
        self.outputs = {}  # index of an output div in stack -> [kind, text parts]
        self.out_done = []  # (kind, text) of finished outputs
        self.counts = {"h2": 0, "code_cells": 0, "outputs": 0, "images": 0}
        self._in_title = False

    # context helpers
    def _inside(self, tags):
        return any(t in tags for t, _ in self.stack)

    def _in_main(self):
        return any(t == "main" for t, _ in self.stack)

    def _in_math(self):
        return any("math" in c for _, c in self.stack)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "title" and self.title is None and not self._inside({"svg", "body"}):
            self._in_title = True  # the page's <title>, not an SVG <title> inside the body
            self.title = ""
        elif tag == "a" and a.get("href") is not None:
            self.links.append(a["href"])
        elif tag in ("img", "source"):
            for key in ("src", "data-src"):
                if a.get(key):
                    self.images.append(a[key])
            if a.get("srcset"):
                self.images += [p.strip().split()[0] for p in a["srcset"].split(",") if p.strip()]
            if tag == "img" and self._in_main():
                self.counts["images"] += 1
        elif tag in ("script", "iframe") and a.get("src"):
            self.resources.append(a["src"])
        elif tag == "link" and a.get("href") and not ({"canonical", "alternate"} & set((a.get("rel") or "").split())):
            self.resources.append(a["href"])
        if tag == "h2" and self._in_main():
            self.counts["h2"] += 1
        if tag == "div" and "cell" in classes and self._in_main():
            self.counts["code_cells"] += 1
        if tag in BLOCK and self._in_main():
            self.prose.append("\n")
        if (
            tag == "code"
            and self._in_main()
            and not self.outputs
            and not self._inside(NOT_PROSE)
            and not self._in_math()
        ):
            self.prose.append("\u2039code\u203a")  # inline code shows as a placeholder in snippets
        if tag in ("pre", "code") and self._in_main() and not self.outputs:
            self.code.append("\n")
        if tag in VOID:
            return
        self.stack.append((tag, classes))
        if tag == "div" and any(c.startswith("cell-output") for c in classes) and not self._in_output_below():
            kind = (
                "error" if "cell-output-error" in classes else "stderr" if "cell-output-stderr" in classes else "output"
            )
            self.outputs[len(self.stack) - 1] = [kind, []]
            self.counts["outputs"] += 1

    def _in_output_below(self):
        return any(i < len(self.stack) - 1 for i in self.outputs)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag in BLOCK and self._in_main():
            self.prose.append("\n")
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                for j in range(len(self.stack) - 1, i - 1, -1):
                    if j in self.outputs:
                        kind, parts = self.outputs.pop(j)
                        self.out_done.append((kind, "".join(parts)))
                del self.stack[i:]
                break

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if not self._in_main():
            return
        if self.outputs:
            for _, parts in self.outputs.values():
                parts.append(data)
            return
        if self._inside(NOT_PROSE) or self._in_math():
            if self._inside({"pre", "code"}):
                self.code.append(data)
            return
        self.prose.append(data)


def snippet(text, start, end, width=40):
    s = " ".join(text[max(0, start - width) : end + width].split())
    return ("..." if start > width else "") + s + ("..." if end + width < len(text) else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", help="the rendered site folder (e.g. _docs or _site)")
    ap.add_argument(
        "--allow",
        action="append",
        default=[],
        choices=CATEGORIES,
        help="report problems of this category but do not fail on them (repeatable)",
    )
    ap.add_argument("--json", help="write the per-page report to this file")
    ap.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = ap.parse_args()

    site = Path(args.site).resolve()
    if not site.is_dir():
        print(f"check_site: {args.site} is not a folder", file=sys.stderr)
        return 2
    pages = sorted(p for p in site.rglob("*.html") if "site_libs" not in p.relative_to(site).parts)
    if not pages:
        print(f"check_site: no HTML pages under {args.site}", file=sys.stderr)
        return 2

    parsed = {}

    def parse(path):
        if path not in parsed:
            pg = Page()
            pg.feed(path.read_text(encoding="utf-8", errors="replace"))
            pg.close()
            parsed[path] = pg
        return parsed[path]

    problems = []  # (page, category, detail)
    report = {}
    n_links = 0

    def check_href(page_rel, base, href, category_missing):
        """Return a problem detail for a local href, or None."""
        nonlocal n_links
        u = urlparse(href)
        if u.scheme or u.netloc or href.startswith(("mailto:", "javascript:", "data:", "tel:")):
            return None
        if not u.path and not u.fragment:
            return None
        n_links += 1
        target = (base.parent / unquote(u.path)).resolve() if u.path else base
        if u.path:
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                return (category_missing, f"{href} (no such file)")
            try:
                target.relative_to(site)
            except ValueError:
                return (category_missing, f"{href} (outside the site folder)")
        if u.fragment and target.suffix == ".html":
            frag = unquote(u.fragment)
            if frag and frag not in parse(target).ids:
                return ("anchor", f"{href} (no id '{frag}' in {target.relative_to(site)})")
        return None

    for p in pages:
        rel = str(p.relative_to(site))
        pg = parse(p)
        r = {"title": (pg.title or "").strip(), **pg.counts}
        found = []
        if not r["title"]:
            found.append(("title", "no <title>"))
        for src in pg.images:
            bad = check_href(rel, p, src, "image")
            if bad:
                found.append(bad)
        for src in pg.resources:
            bad = check_href(rel, p, src, "resource")
            if bad:
                found.append(bad)
        for href in sorted(set(pg.links)):
            bad = check_href(rel, p, href, "link")
            if bad:
                found.append(bad)
        for kind, text in pg.out_done:
            first = " ".join(text.split())[:120]
            if kind == "error" or TRACEBACK.search(text):
                found.append(("error-output", first))
            elif kind == "stderr":
                found.append(("stderr-output", first))
        prose = "".join(pg.prose)
        covered = []  # spans already reported, so that **bold** is not also 4 literal *
        for name, rx in PROSE_LEAKS:
            for m in rx.finditer(prose):
                if any(a <= m.start() < b for a, b in covered):
                    continue
                covered.append((m.start(), m.end()))
                found.append(("markdown-leak", f"{name}: {snippet(prose, m.start(), m.end())!r}"))
        code = "".join(pg.code)
        for name, rx in CODE_LEAKS:
            for m in rx.finditer(code):
                found.append(("markdown-leak", f"{name} in code: {snippet(code, m.start(), m.end())!r}"))
        r["problems"] = [{"category": c, "detail": d} for c, d in found]
        report[rel] = r
        problems += [(rel, c, d) for c, d in found]

    # search.json (Quarto's site search index) points at pages and sections
    sj = site / "search.json"
    if sj.exists():
        try:
            entries = json.loads(sj.read_text(encoding="utf-8"))
        except ValueError:
            entries = []
            problems.append(("search.json", "link", "not valid JSON"))
        found = []
        for href in sorted({e.get("href", "") for e in entries if isinstance(e, dict)}):
            bad = check_href("search.json", site / "search.json", href, "link")
            if bad:
                found.append(bad)
        report["search.json"] = {"entries": len(entries), "problems": [{"category": c, "detail": d} for c, d in found]}
        problems += [("search.json", c, d) for c, d in found]

    failing = [x for x in problems if x[1] not in args.allow]
    by_cat = {c: sum(1 for x in problems if x[1] == c) for c in CATEGORIES}
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "site": str(site),
                    "pages": len(pages),
                    "internal_links_checked": n_links,
                    "problems_by_category": by_cat,
                    "pages_report": report,
                },
                indent=1,
                ensure_ascii=False,
            ),
            encoding="utf-8",
        )
    if not args.quiet:
        for rel, cat, detail in problems:
            flag = "" if cat not in args.allow else " (allowed)"
            print(f"{rel}: {cat}{flag}: {detail}")
    summary = ", ".join(f"{c} {n}" for c, n in by_cat.items() if n) or "none"
    status = "FAIL" if failing else "OK"
    print(
        f"check_site {status}: {len(pages)} pages, {n_links} internal links/images/resources "
        f"checked; problems: {summary}"
        + (f" ({len(problems) - len(failing)} allowed)" if len(failing) != len(problems) else "")
    )
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
