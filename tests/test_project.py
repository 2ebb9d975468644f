"""The project's own house rules: the library is what the notebooks export, the README is what the
front page says, the docs process offline, and the `medsyn` command answers."""

import shutil
import subprocess
import sys

from conftest import ROOT


def _tracked_files():
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [p for p in out.decode().split("\0") if p]


def test_library_matches_notebook_export(tmp_path):
    "medsyn/ must be exactly what `nbdev_export` makes from the notebooks in nbs/."
    copy = tmp_path / "repo"
    for rel in _tracked_files():
        src = ROOT / rel
        if not src.exists() or src.is_dir():
            continue
        dst = copy / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
    exported = copy / "medsyn"
    res = subprocess.run(
        [sys.executable, "-c", "from nbdev.doclinks import nbdev_export; nbdev_export.__wrapped__()"],
        cwd=copy,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    diffs = []
    for new in sorted(exported.rglob("*.py")):
        rel = new.relative_to(copy)
        old = ROOT / rel
        if not old.exists() or old.read_text() != new.read_text():
            diffs.append(str(rel))
    for old in sorted((ROOT / "medsyn").rglob("*.py")):
        rel = old.relative_to(ROOT)
        if not (copy / rel).exists():
            diffs.append(f"{rel} (not produced by any notebook)")
    assert not diffs, f"medsyn/ differs from the notebook export in {diffs}: edit nbs/*.ipynb and run nbdev_export"


def test_readme_matches_index_notebook():
    res = subprocess.run([sys.executable, "tools/make_readme.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_readme_gives_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert 'pip install -e . && medsyn study --profile quick' in text
    assert 'pip install -e ".[dev]" && ruff format --check && ruff check && nbdev_test --n_workers 2 && pytest' in text


def test_every_notebook_declares_a_module_or_is_a_page():
    for nb in sorted((ROOT / "nbs").glob("[0-9][0-9]_*.ipynb")):
        assert "#| default_exp" in nb.read_text(), f"{nb.name} has no `#| default_exp` cell"


def test_cli_help_lists_subcommands(run_medsyn):
    res = run_medsyn("--help")
    assert res.returncode == 0, res.stderr
    for name in ["prepare", "train", "generate", "segment", "evaluate", "study"]:
        assert f"  {name} " in res.stdout


def test_cli_unknown_command_is_a_clear_error(run_medsyn):
    res = run_medsyn("frobnicate")
    assert res.returncode == 2 and "unknown command 'frobnicate'" in res.stderr
