"""Open the built docs site in a real browser and check what a reader sees.

Headless Chromium from the system (Debian's `chromium` + `chromium-driver`) driven by Selenium; nothing is
downloaded at run time (no Selenium Manager, no `playwright install`). The site is served from SITE_DIR
on 127.0.0.1, and every other host is unreachable for the browser (`--host-resolver-rules`), so a page
that needs the network fails here as it would offline.

For the index, every module page, every study page and the Results page this asserts:
- no console error (failed requests included),
- every image loaded (`naturalWidth > 0`, lazy images made eager first),
- every link of the sidebar answers 200 from the site (and, with a `#fragment`, the element exists),
and on the index that the site search finds `fold_subjects` (typed into the search box; a result links
to the `data` page). Screenshots of the index, the search results and the Results page go to --shots.

    python tools/browser_check.py _docs --shots DIR      # exit 1 on a problem, 2 when no browser is found

The pages come from the notebooks: each `nbs/NN_name.ipynb` is `name.html`.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlparse

ROOT = Path(__file__).resolve().parents[1]
NO_BROWSER = 2


def find_browser() -> tuple[str, str]:
    "Paths of the system Chromium and its chromedriver ($CHROMIUM / $CHROMEDRIVER override)."
    chrome = os.environ.get("CHROMIUM") or next(
        filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None
    )
    driver = (
        os.environ.get("CHROMEDRIVER")
        or shutil.which("chromedriver")
        or ("/usr/lib/chromium/chromedriver" if Path("/usr/lib/chromium/chromedriver").exists() else None)
    )
    if not chrome or not driver:
        raise FileNotFoundError(
            f"no system Chromium and chromedriver (found chromium={chrome}, chromedriver={driver}); "
            "on Debian: apt-get install -y chromium chromium-driver"
        )
    return chrome, driver


def module_pages(site: Path) -> list[str]:
    "The pages every check visits: the index, each numbered notebook's page, the study pages, the Results page."
    pages = ["index.html"]
    for nb in sorted((ROOT / "nbs").glob("[0-9]*.ipynb")):
        pages.append(re.sub(r"^[0-9]+[a-z]?_", "", nb.stem) + ".html")
    for nb in sorted((ROOT / "nbs" / "study").glob("*.ipynb")):
        pages.append("study/" + re.sub(r"^[0-9]+[a-z]?_", "", nb.stem) + ".html")
    pages.append("results.html")
    missing = [p for p in pages if not (site / p).exists()]
    if missing:
        raise FileNotFoundError(f"pages missing from {site}: {missing}")
    return pages


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def serve(site: Path):
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/"


def start_browser(chrome: str, driver_path: str, width: int = 1280, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--disable-extensions",
        "--no-first-run",
    ]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)


LOAD_IMAGES_JS = """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.images);
imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
Promise.all(imgs.map(i => i.complete ? null : new Promise(r => {
    i.addEventListener('load', r); i.addEventListener('error', r); setTimeout(r, 10000);
})))
  .then(() => done(imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'))));
"""


def wait_loaded(drv, timeout: float = 30):
    t0 = time.time()
    while drv.execute_script("return document.readyState") != "complete":
        if time.time() - t0 > timeout:
            raise TimeoutError(f"{drv.current_url} did not finish loading in {timeout} s")
        time.sleep(0.1)


def console_errors(drv) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]


def sidebar_links(drv) -> list[str]:
    return drv.execute_script(
        "return Array.from(document.querySelectorAll('#quarto-sidebar a[href]')).map(a => a.href)"
    )


def check_link(url: str, base: str, cache: dict) -> str | None:
    "None when the site answers `url` with 200 (and holds its #fragment), else the problem."
    if not url.startswith(base):
        return None if urlparse(url).scheme in ("http", "https", "mailto") else f"{url}: not a web link"
    page, frag = urldefrag(url)
    if page not in cache:
        try:
            with urllib.request.urlopen(page, timeout=10) as r:
                cache[page] = (r.status, r.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as e:
            cache[page] = (e.code, "")
    status, body = cache[page]
    if status != 200:
        return f"{url}: HTTP {status}"
    if frag and not re.search(rf"""\sid=["']{re.escape(frag)}["']""", body):
        return f"{url}: no element with id {frag!r}"
    return None


def search_finds(drv, base: str, term: str, shot: Path | None) -> list[str]:
    "Type `term` into the site search of the index; return the problems (none when a result names it)."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    drv.get(base + "index.html")
    wait_loaded(drv)
    wait = WebDriverWait(drv, 20)
    button = wait.until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#quarto-search .aa-DetachedSearchButton, #quarto-search button") or [None]
        )[0]
    )
    button.click()
    box = wait.until(lambda d: (d.find_elements(By.CSS_SELECTOR, "input.aa-Input") or [None])[0])
    box.send_keys(term)
    try:
        items = wait.until(
            lambda d: [i for i in d.find_elements(By.CSS_SELECTOR, ".aa-Item") if term in i.text] or None
        )
    except Exception:
        texts = [i.text[:80] for i in drv.find_elements(By.CSS_SELECTOR, ".aa-Item")]
        return [f"site search for {term!r} shows no result naming it (results: {texts})"]
    if shot:
        drv.save_screenshot(str(shot))
    hrefs = [a.get_attribute("href") for i in items for a in i.find_elements(By.CSS_SELECTOR, "a[href]")]
    if not any("/data.html" in (h or "") for h in hrefs):
        return [f"site search for {term!r}: no result links to data.html ({hrefs[:5]})"]
    return []


def screenshot(drv, path: Path, max_height: int = 16000):
    "Screenshot of the whole page (up to max_height pixels)."
    h = min(max_height, int(drv.execute_script("return document.documentElement.scrollHeight")))
    w = drv.get_window_size()["width"]
    drv.set_window_size(w, max(h, 600))
    time.sleep(0.3)
    drv.save_screenshot(str(path))
    drv.set_window_size(w, 1000)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", type=Path, help="the built site (_docs)")
    ap.add_argument("--shots", type=Path, default=None, help="folder for the screenshots")
    ap.add_argument("--search", default="fold_subjects", help="term the site search must find")
    args = ap.parse_args(argv)
    if not (args.site / "index.html").exists():
        ap.error(f"{args.site}/index.html does not exist: build the site first")
    try:
        chrome, driver_path = find_browser()
    except FileNotFoundError as e:
        print(f"browser check SKIPPED: {e}")
        return NO_BROWSER
    try:
        import selenium  # noqa: F401
    except ImportError:
        print("browser check SKIPPED: the selenium package is not installed (pip install selenium)")
        return NO_BROWSER
    pages = module_pages(args.site)
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
    httpd, base = serve(args.site)
    problems, links, cache, t0 = [], set(), {}, time.time()
    drv = start_browser(chrome, driver_path)
    try:
        print(
            f"browser: {drv.capabilities.get('browserName')} {drv.capabilities.get('browserVersion')} ({chrome}); site "
            f"{args.site} at {base}"
        )
        for page in pages:
            drv.get(base + page)
            wait_loaded(drv)
            bad_imgs = drv.execute_async_script(LOAD_IMAGES_JS)
            n_imgs = drv.execute_script("return document.images.length")
            errs = console_errors(drv)
            problems += [f"{page}: image not loaded: {s}" for s in bad_imgs] + [
                f"{page}: console error: {e}" for e in errs
            ]
            side = sidebar_links(drv)
            if not side:
                problems.append(f"{page}: no sidebar links")
            links.update(side)
            print(
                f"  {page}: {n_imgs} images, {len(side)} sidebar links, {len(errs)} console errors, {len(bad_imgs)} "
                "broken images"
            )
            if args.shots and page in ("index.html", "results.html"):
                screenshot(drv, args.shots / page.replace(".html", ".png"))
        problems += [p for p in (check_link(u, base, cache) for u in sorted(links)) if p]
        problems += search_finds(drv, base, args.search, args.shots / "search.png" if args.shots else None)
        problems += [f"search page: console error: {e}" for e in console_errors(drv)]
    finally:
        drv.quit()
        httpd.shutdown()
    for p in problems:
        print("browser problem:", p)
    shots = f"; screenshots in {args.shots}" if args.shots else ""
    print(
        f"browser check: {len(pages)} pages, {len(links)} sidebar links, search for {args.search!r} "
        f"in {time.time() - t0:.0f} s: {'FAILED' if problems else 'OK'}{shots}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
