"""Record one benchmark run beside `nbs/10_bench.ipynb`, so that the notebook renders measured numbers from a file
instead of typing them into Markdown.

    python tools/record_bench.py NAME [--note TEXT] -- nvlabs --nvlabs-dir ../nvlabs --rounds 4 --steps 2

runs `medsyn bench nvlabs ...` (everything after `--`), reads the JSON object it prints last, and writes
`nbs/bench/NAME.json`: the command, the UTC date, the machine (`medsyn.bench.bench_config`: CPU, capability, cores,
torch, its native-bf16 flags), the load average before and after, the note, and the benchmark's own JSON under `result`.
The write is atomic; an earlier record of the same name is replaced only when the run succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "nbs" / "bench"


def load_average() -> list[str]:
    "The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."
    return [f"{v:.2f}" for v in os.getloadavg()]


def last_json(stdout: str) -> dict:
    "The last line of `stdout` that is a JSON object (the benchmarks print their result last)."
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"the benchmark printed no JSON object; its output ended with:\n{stdout[-2000:]}")


def record(name: str, bench_args: list[str], note: str = "") -> Path:
    "Run `medsyn bench BENCH_ARGS` and write its record to nbs/bench/NAME.json; returns the file."
    import torch

    from medsyn.bench import bench_config
    from medsyn.networks import cpu_bf16_flags

    before = load_average()
    cmd = ["medsyn", "bench", *bench_args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rec = dict(
        command=shlex.join(cmd),
        date=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        machine={
            **{
                k: v
                for k, v in bench_config([torch.device("cpu")]).items()
                if k not in ("load_avg_1min", "compile_s", "timing")
            },
            "bf16_flags": cpu_bf16_flags(),  # what `precision='auto'` decides on
        },
        load_average_before=before,
        load_average_after=load_average(),
        note=note,
        result=last_json(p.stdout),
    )
    BENCH_DIR.mkdir(exist_ok=True)
    out = BENCH_DIR / f"{name}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=1) + "\n")
    tmp.replace(out)
    return out


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    i = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="the record's name: nbs/bench/NAME.json")
    ap.add_argument("--note", default="", help="what a reader should know about the run (machine state, purpose)")
    a = ap.parse_args(argv[:i])
    print(record(a.name, argv[i + 1 :], a.note))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
