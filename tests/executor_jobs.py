"""Toy jobs for tests/test_executor.py: each reads its inputs' files, writes its own atomically, and logs every start
(node, pid, time) beside it, so a test can count how often a job ran and where. Importable by Ray's workers."""

import json
import os
import time
from pathlib import Path

from medsyn.core import atomic_write_text
from medsyn.executor import Job, _gpu_ids, _node_name


def toy_job(out: str, value: int, inputs=(), seconds: float = 0.0, fail: bool = False) -> dict:
    "Append a start line to OUT.runs, wait `seconds`, then write `value` + the inputs' totals to OUT (or raise)."
    with open(out + ".runs", "a") as f:
        f.write(json.dumps(dict(node=_node_name(), pid=os.getpid(), t=time.time(), gpu=_gpu_ids())) + "\n")
    total = value + sum(json.loads(Path(p).read_text())["total"] for p in inputs)
    time.sleep(seconds)
    if fail:
        raise ValueError(f"toy failure in {Path(out).name}")
    atomic_write_text(out, json.dumps(dict(total=total)))
    return dict(total=total)


def toy_setup(log: str) -> str:
    "A per-node setup that records where and when it ran."
    with open(log, "a") as f:
        f.write(json.dumps(dict(node=_node_name(), t=time.time())) + "\n")
    return "ok"


def exists(path: str) -> bool:
    return Path(path).exists()


def toy_grid(root: str | Path, seconds: float = 0.5, fail: str | None = None) -> list[Job]:
    """Two folds of the study's shape: per fold a GAN (1 GPU), a synthetic set (1 GPU) from it, two U-Net cells (1 CPU)
    on it and a quality job (1 CPU) over both cells. Outputs under `root`; a job is done when its file exists."""
    import functools

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = []

    def add(name, kind, value, deps=(), gpus=0.0):
        out = str(root / name.replace("/", "_"))
        ins = [str(root / d.replace("/", "_")) for d in deps]
        jobs.append(
            Job(
                name,
                kind,
                toy_job,
                dict(out=out, value=value, inputs=ins, seconds=seconds, fail=name == fail),
                deps=deps,
                gpus=gpus,
                is_done=functools.partial(exists, out),
            )
        )

    for fold in (0, 1):
        add(f"gan/fold{fold}", "gan", 1 + fold, gpus=1)
        add(f"synthetic/fold{fold}", "synthetic", 10, [f"gan/fold{fold}"], gpus=1)
        for c in (0, 1):
            add(f"cell/fold{fold}/{c}", "cell", 100 * (c + 1), [f"synthetic/fold{fold}"])
        add(f"quality/fold{fold}", "quality", 0, [f"cell/fold{fold}/0", f"cell/fold{fold}/1"])
    return jobs
