"""Fingerprints of training and sampling with fixed seeds, to show that a refactoring changed no number.

Trains a joint, a mask and a cond GAN on the toy dataset for 64 images each (no time budget, so the length does
not depend on the machine's load), then samples joint pairs, mask->cond pairs and warped-real-mask->cond pairs,
and prints sha256 prefixes of G, D, G_ema, the selection metric and the generated images and masks as JSON.

Run it for two checkouts and compare (one thread, so reductions run in the same order):

    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/old python tools/same_numbers.py > old.json
    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/new python tools/same_numbers.py > new.json
    diff <(grep -v '"medsyn"' old.json) <(grep -v '"medsyn"' new.json) && echo identical

It imports the names from where older versions kept them too (medsyn.train), so it can compare across a move.
"""

import hashlib
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.simplefilter("ignore")
import medsyn
from medsyn.data import load_canonical
from medsyn.generate import generate_pairs
from medsyn.train import train_gan

try:
    from medsyn.data import toy_dataset
except ImportError:
    from medsyn.train import toy_dataset
try:
    from medsyn.networks import load_checkpoint
except ImportError:
    from medsyn.train import load_checkpoint
import inspect

KIND = "kind" if "kind" in inspect.signature(train_gan).parameters else "cfg"
out = {"medsyn": medsyn.__file__}
root = Path(tempfile.mkdtemp())
toy = toy_dataset(root / "toy", n=16, res=32)
TINY = dict(channel_base=256, channel_max=32, z_dim=32, w_dim=32, mapping_layers=2)
h = lambda t: hashlib.sha256(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes()).hexdigest()[:16]
ck = {}
for kind in ("joint", "mask", "cond"):
    run = train_gan(
        toy,
        root / kind,
        kimg=0.064,
        batch=4,
        progress=False,
        metric="stats",
        metric_n=8,
        grid_n=2,
        seed=3,
        **{KIND: kind},
        **TINY,
    )
    c = load_checkpoint(run / "network-last.pt")
    out[kind] = {k: h(torch.cat([v.flatten().float() for v in c[k].values()])) for k in ("G", "D", "G_ema")}
    out[kind]["metric"] = c["metric"]
    out[kind]["cur_nimg"] = c["cur_nimg"]
    ck[kind] = run / "network-last.pt"
sets = dict(
    joint=dict(ckpt=ck["joint"]),
    chain=dict(ckpt=ck["cond"], mask_ckpt=ck["mask"]),
    warped=dict(ckpt=ck["cond"], masks_from=toy, warp_seed=2),
)
for name, kw in sets.items():
    d = load_canonical(generate_pairs(out_dir=root / f"syn_{name}", n=10, batch=4, seed=1, **kw))
    x, m = d.tensors()
    out["syn_" + name] = [h(x), h(m)]
print(json.dumps(out, indent=1, default=str))
