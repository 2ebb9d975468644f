"""Issue #17: every bad input or hostile environment gives exit code 2, one line `medsyn CMD: error: ...` naming the
offending path (or option), no traceback, and no partial output at the target."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import medsyn.core as C
import medsyn.data as D
from medsyn.cli import main
from medsyn.data import load_canonical, make_synthetic_msd, toy_dataset, write_canonical
from medsyn.train import train_gan

TINY = dict(channel_base=256, channel_max=32, z_dim=32, w_dim=32, mapping_layers=2)


def refused(capsys, *args, names=(), target=None):
    "Run `medsyn ARGS` in-process and check the refusal; returns stderr."
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert err.startswith(f"medsyn {args[0]}: error: ") and "Traceback" not in err, err
    for n in names:
        assert str(n) in err, (n, err)
    if target is not None:
        assert_no_output(Path(target))
    return err


def assert_no_output(target: Path):
    "Nothing at the target, and no half-written sibling."
    assert not target.exists() or target.is_file(), f"{target} was created"
    if target.parent.is_dir():
        assert not [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")], list(
            target.parent.iterdir()
        )


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("bad")


@pytest.fixture(scope="module")
def msd(root):
    return make_synthetic_msd(root / "msd", n_subjects=3)


@pytest.fixture(scope="module")
def toy(root):
    return toy_dataset(root / "toy", n=16, res=32)


@pytest.fixture(scope="module")
def ckpts(root, toy):
    kw = dict(batch=4, progress=False, metric_n=8, grid_n=2, **TINY)
    return {
        cfg: train_gan(toy, root / f"run-{cfg}", kind=cfg, kimg=0.008, **kw) / "network-last.pt"
        for cfg in ("joint", "mask")
    }


def _nifti_pairs(folder: Path, label_fn, n=3):
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        lab = label_fn(i).astype(np.int16)
        img = (100 + 50 * (lab != 0) + rng.normal(0, 5, lab.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(img, np.eye(4)), folder / "images" / f"s{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), folder / "labels" / f"s{i}.nii.gz")
    return folder


def _ball(shape=(16, 16, 8)):
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    return (g**2).sum(0) < 0.4


# --- medsyn prepare -------------------------------------------------------------------------------------------------


def _msd_with(root: Path, name: str, edit) -> Path:
    src = make_synthetic_msd(root / name, n_subjects=3)
    meta = json.loads((src / "dataset.json").read_text())
    (src / "dataset.json").write_text(json.dumps(edit(meta)))
    return src


PREPARE_JSON_CASES = {
    "dataset.json is a list": lambda m: [m],
    "training entry without label": lambda m: {**m, "training": [{"image": e["image"]} for e in m["training"]]},
    "training is not a list": lambda m: {**m, "training": "all"},
    "labels is a list": lambda m: {**m, "labels": ["background", "organ"]},
}


@pytest.mark.parametrize("case", list(PREPARE_JSON_CASES))
def test_prepare_malformed_dataset_json(tmp_path, capsys, case):
    src = _msd_with(tmp_path, "src", PREPARE_JSON_CASES[case])
    refused(
        capsys,
        "prepare",
        src,
        "--out",
        tmp_path / "out",
        "--res",
        "16",
        "--quiet",
        names=[src / "dataset.json"],
        target=tmp_path / "out",
    )


def test_prepare_out_is_a_file_even_with_overwrite(msd, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    refused(
        capsys, "prepare", msd, "--out", f, "--overwrite", "--res", "16", "--quiet", names=[f, "is an existing file"]
    )
    assert f.read_text() == "mine"


@pytest.mark.parametrize("where", ["/proc/medsyn-test/out", "/sys/medsyn-test/out", "/proc/self/medsyn-out"])
def test_prepare_out_on_an_unwritable_pseudo_file_system(msd, capsys, where):
    if not Path("/" + where.split("/")[1]).is_dir():
        pytest.skip(f"no /{where.split('/')[1]} here")
    refused(
        capsys,
        "prepare",
        msd,
        "--out",
        where,
        "--res",
        "16",
        "--quiet",
        names=[where, "cannot create the output folder"],
    )
    assert not Path(where).exists()


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_prepare_out_on_a_read_only_mount(msd, tmp_path, capsys, monkeypatch, code):
    "tests run as root, so a chmod'ed folder would not stop them: the file system refuses through a patched mkdtemp."

    def ro(*a, **k):
        raise OSError(code, os.strerror(code), str(tmp_path / "ro"))

    monkeypatch.setattr(C.tempfile, "mkdtemp", ro)
    refused(
        capsys,
        "prepare",
        msd,
        "--out",
        tmp_path / "ro" / "out",
        "--res",
        "16",
        "--quiet",
        names=[tmp_path / "ro" / "out", C._ERRNO_REASONS[code]],
        target=tmp_path / "ro" / "out",
    )


def test_prepare_missing_parent_on_a_read_only_mount(msd, tmp_path, capsys, monkeypatch):
    ro_root, orig = tmp_path / "mnt", Path.mkdir

    def mkdir(self, *a, **k):
        if str(self).startswith(str(ro_root)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return orig(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    out = ro_root / "a" / "b" / "out"
    refused(capsys, "prepare", msd, "--out", out, "--res", "16", "--quiet", names=[out, "read-only file system"])
    assert not ro_root.exists()


def test_prepare_disk_full_keeps_the_earlier_dataset(msd, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ds"
    assert main(["prepare", str(msd), "--out", str(out), "--res", "16", "--quiet"]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in (out / "samples").iterdir()}
    orig, calls = np.savez_compressed, []

    def full(*a, **k):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(a[0]))
        return orig(*a, **k)

    monkeypatch.setattr(D.np, "savez_compressed", full)
    err = refused(
        capsys,
        "prepare",
        msd,
        "--out",
        out,
        "--res",
        "16",
        "--quiet",
        "--overwrite",
        "--seed",
        "1",
        names=[out, "disk full", "is unchanged"],
    )
    assert "free some space" in err
    assert {p.name: p.read_bytes() for p in (out / "samples").iterdir()} == before and len(load_canonical(out)) > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]


def test_prepare_negative_label_is_an_error(tmp_path, capsys):
    def lab(i):
        a = _ball().astype(np.int16)
        a[0, 0, :] = -1  # a -1 class in one corner
        return a

    src = _nifti_pairs(tmp_path / "src", lab)
    refused(
        capsys,
        "prepare",
        src,
        "--out",
        tmp_path / "out",
        "--res",
        "16",
        "--quiet",
        names=[src / "labels" / "s0.nii.gz", "negative label values [-1]"],
        target=tmp_path / "out",
    )


def test_prepare_all_background_is_refused(tmp_path, capsys):
    src = _nifti_pairs(tmp_path / "src", lambda i: np.zeros((16, 16, 8)))
    refused(
        capsys,
        "prepare",
        src,
        "--out",
        tmp_path / "out",
        "--res",
        "16",
        "--quiet",
        names=[src / "images" / "s0.nii.gz", "background only"],
        target=tmp_path / "out",
    )


def _png_pairs(folder: Path, mask_ext: str, quality=75):
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    yy, xx = np.mgrid[:48, :48]
    for i in range(3):
        m = (np.hypot(yy - 24 - i, xx - 22) < 10).astype(np.uint8) * 255
        Image.fromarray((60 + m // 2).astype(np.uint8)).save(folder / "images" / f"s{i}.png")
        Image.fromarray(m).save(
            folder / "masks" / f"s{i}.{mask_ext}", **({"quality": quality} if mask_ext == "jpg" else {})
        )
    return folder


def test_prepare_jpeg_masks_are_refused(tmp_path, capsys):
    src = _png_pairs(tmp_path / "src", "jpg")
    refused(
        capsys,
        "prepare",
        src,
        "--out",
        tmp_path / "out",
        "--res",
        "16",
        "--quiet",
        names=[src / "masks", ".jpg", "PNG"],
        target=tmp_path / "out",
    )


def test_prepare_compression_noise_in_png_masks_is_refused(tmp_path, capsys):
    src = _png_pairs(tmp_path / "src", "jpg")
    for p in (src / "masks").glob("*.jpg"):  # a JPEG'd mask re-saved as PNG keeps the noise
        Image.open(p).save(p.with_suffix(".png"))
        p.unlink()
    refused(
        capsys,
        "prepare",
        src,
        "--out",
        tmp_path / "out",
        "--res",
        "16",
        "--quiet",
        names=[src / "masks", "compression noise"],
        target=tmp_path / "out",
    )


# --- medsyn train ---------------------------------------------------------------------------------------------------


def _one_label(root: Path) -> Path:
    return write_canonical(
        root / "one",
        [dict(image=np.full((1, 8, 8), 0.5), mask=np.zeros((8, 8), int), subject=f"s{i}", slice=0) for i in range(4)],
        name="one",
        modalities=["m"],
        labels={0: "background"},
    )


TRAIN_DATA = {
    "empty folder": (lambda r: (r / "empty").mkdir() or r / "empty", "dataset.json: missing"),
    "missing folder": (lambda r: r / "nothing", "dataset folder not found"),
    "single subject, fewer samples than a batch": (
        lambda r: toy_dataset(r / "single", n=4, res=32),
        "fewer than one batch",
    ),
    "one label": (_one_label, "declares only the labels"),
}


@pytest.mark.parametrize("case", list(TRAIN_DATA))
def test_train_bad_data(tmp_path, capsys, case):
    make, msg = TRAIN_DATA[case]
    data = make(tmp_path)
    refused(
        capsys,
        "train",
        "--data",
        data,
        "--kimg",
        "1",
        "--outdir",
        tmp_path / "run",
        "--no-progress",
        names=[data, msg],
        target=tmp_path / "run",
    )


@pytest.mark.parametrize("kimg", ["0", "-1", "nan"])
def test_train_bad_kimg(toy, tmp_path, capsys, kimg):
    refused(
        capsys,
        "train",
        "--data",
        toy,
        "--kimg",
        kimg,
        "--outdir",
        tmp_path / "run",
        names=["--kimg"],
        target=tmp_path / "run",
    )


@pytest.mark.parametrize("kind", ["truncated", "foreign", "text"])
def test_train_resume_from_a_bad_checkpoint(toy, ckpts, tmp_path, capsys, kind):
    run = tmp_path / "run"
    shutil.copytree(ckpts["joint"].parent, run)
    last = run / "network-last.pt"
    if kind == "truncated":
        last.write_bytes(last.read_bytes()[:300])
    elif kind == "foreign":
        torch.save({"weights": torch.ones(3)}, last)
    else:
        last.write_text("not a checkpoint")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    refused(
        capsys,
        "train",
        "--data",
        toy,
        "--kimg",
        "0.016",
        "--outdir",
        run,
        "--batch",
        "4",
        "--no-progress",
        names=[last, "--replace"],
    )
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing touched


@pytest.mark.parametrize("where", ["/proc/medsyn-test/run", "/sys/medsyn-test/run"])
def test_train_unwritable_outdir(toy, capsys, where):
    refused(
        capsys,
        "train",
        "--data",
        toy,
        "--kimg",
        "0.008",
        "--outdir",
        where,
        "--batch",
        "4",
        "--no-progress",
        *[x for k, v in TINY.items() for x in ("--set", f"{k}={v}")],
        names=[where, "cannot create the run folder"],
    )


# --- medsyn generate ------------------------------------------------------------------------------------------------


def test_generate_missing_truncated_wrong_variant(ckpts, tmp_path, capsys):
    out = tmp_path / "syn"
    refused(
        capsys,
        "generate",
        "--ckpt",
        tmp_path / "none.pt",
        "--out",
        out,
        "--n",
        "2",
        names=[tmp_path / "none.pt"],
        target=out,
    )
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(ckpts["joint"].read_bytes()[:500])
    refused(
        capsys,
        "generate",
        "--ckpt",
        bad,
        "--out",
        out,
        "--n",
        "2",
        names=[bad, "unreadable GAN checkpoint"],
        target=out,
    )
    refused(
        capsys,
        "generate",
        "--ckpt",
        ckpts["mask"],
        "--out",
        out,
        "--n",
        "2",
        names=[ckpts["mask"], "'mask' generator"],
        target=out,
    )


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--n", "0"], "--n 0"),
        (["--n", "-5"], "--n -5"),
        (["--trunc", "-0.1"], "--trunc -0.1"),
        (["--trunc", "2.5"], "--trunc 2.5"),
    ],
)
def test_generate_bad_numbers(ckpts, tmp_path, capsys, args, msg):
    refused(
        capsys,
        "generate",
        "--ckpt",
        ckpts["joint"],
        "--out",
        tmp_path / "syn",
        *args,
        names=[msg],
        target=tmp_path / "syn",
    )


# --- medsyn evaluate ------------------------------------------------------------------------------------------------


def test_evaluate_missing_empty_mismatched(toy, root, tmp_path, capsys):
    refused(capsys, "evaluate", "--real", tmp_path / "none", "--fake", toy, "--quiet", names=[tmp_path / "none"])
    (tmp_path / "empty").mkdir()
    refused(capsys, "evaluate", "--real", toy, "--fake", tmp_path / "empty", "--quiet", names=[tmp_path / "empty"])
    one = toy_dataset(tmp_path / "one-channel", n=8, res=32, n_modalities=1)
    refused(
        capsys,
        "evaluate",
        "--real",
        toy,
        "--fake",
        one,
        "--metrics",
        "mask_stats",
        "--quiet",
        names=[one, "mismatched channels"],
    )


@pytest.mark.parametrize("kind", ["text", "gan checkpoint", "missing"])
def test_evaluate_seg_model_that_is_not_a_unet(toy, ckpts, tmp_path, capsys, kind):
    model = {"text": tmp_path / "unet.pt", "gan checkpoint": ckpts["joint"], "missing": tmp_path / "none.pt"}[kind]
    if kind == "text":
        model.write_text("hello")
    refused(
        capsys,
        "evaluate",
        "--real",
        toy,
        "--fake",
        toy,
        "--metrics",
        "dice",
        "--seg-model",
        model,
        "--quiet",
        "--out",
        tmp_path / "m.json",
        names=[model],
        target=tmp_path / "m.json",
    )


# --- medsyn segment (argument checks) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,msg",
    [(["--fold", "7"], "--fold 7"), (["--fraction", "0"], "--fraction 0"), (["--epochs", "0"], "--epochs 0")],
)
def test_segment_bad_arguments(toy, tmp_path, capsys, args, msg):
    refused(capsys, "segment", "--train", toy, "--out", tmp_path / "seg", *args, names=[msg], target=tmp_path / "seg")


def test_segment_out_inside_the_data(toy, capsys):
    refused(capsys, "segment", "--train", toy, "--out", toy / "seg", names=[toy / "seg", "overlaps the dataset"])
    assert not (toy / "seg").exists()


# --- medsyn study: refused before anything runs -------------------------------------


def _study(tmp_path, *args):
    env = dict(os.environ, MEDSYN_RUNS=str(tmp_path / "runs"), OMP_NUM_THREADS="1")
    try:
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from medsyn.cli import main; sys.exit(main())",
                "study",
                *map(str, args),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("medsyn study did not refuse the input (it started running)")


@pytest.mark.parametrize(
    "args,name",
    [
        (["--datasets", "no_such_dataset_xyz"], "no_such_dataset_xyz"),
        (["--set", "no_such_field=1"], "no_such_field"),
        (["--set", "folds=abc"], "folds"),
    ],
    ids=["unknown dataset", "unknown --set field", "wrong-typed --set"],
)
def test_study_bad_input(tmp_path, args, name):
    r = _study(tmp_path, "--profile", "quick", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and name in r.stderr, r.stderr


def test_study_out_is_a_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    r = _study(tmp_path, "--profile", "quick", "--out", f)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(f) in r.stderr, r.stderr
    assert f.read_text() == "mine"


# --- the whole path through the console script: exit 2, no traceback ------------------------------------------------


def test_console_script_exit_code_and_no_traceback(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "dataset.json").write_text("[1, 2]")
    (src / "imagesTr").mkdir()
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from medsyn.cli import main; sys.exit(main())",
            "prepare",
            str(src),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(src / "dataset.json") in r.stderr, r.stderr
    assert_no_output(tmp_path / "out")
