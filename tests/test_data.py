"""medsyn.data: round trips NIfTI -> canonical -> tensors (orientation and labels), subject-level splits,
every bad-input error, the simulated default cohort, the bundled MNI152 template slabs, the MSD downloader and
`medsyn prepare`."""

import json
import shutil
import tarfile

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medsyn.core import MedsynError, save_json
from medsyn.data import (
    COHORT_LABELS,
    FORMAT_VERSION,
    MNI152_LABELS,
    CohortConfig,
    default_dataset,
    download_msd,
    file_md5,
    lesion_overlap,
    load_canonical,
    make_synthetic_msd,
    mni152_dataset,
    mni152_volumes,
    plot_dataset_overview,
    prepare,
    prepare_cohort,
    read_msd,
    subject_kfold,
    subsample_subjects,
    train_val_test_split,
    verify_checksum,
    write_canonical,
)
from medsyn.viz import save_figure

LABELS = {0: "background", 1: "organ", 2: "lesion"}


def _nii(path, data, aff=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if aff is None else aff), path)
    return path


def _asymmetric_case(shape=(12, 10, 8)):
    "An image whose every axis is distinguishable and a label with a marker in one corner region."
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    img = (x + 2 * y + 4 * z).astype(np.float32) + 1
    lab = np.zeros(shape, np.uint8)
    lab[1:3, 6:9, 2:6] = 1  # left(x small), anterior(y large)
    lab[8:10, 1:3, 3:5] = 2  # right, posterior
    return img, lab


def _reoriented(data, aff, flips=(), perm=(0, 1, 2)):
    "The same world-space image stored with flipped and permuted voxel axes (and the matching affine)."
    out = data
    F = np.eye(4)
    for a in flips:
        out = np.flip(out, a)
        G = np.eye(4)
        G[a, a] = -1
        G[a, 3] = data.shape[a] - 1
        F = F @ G
    P = np.eye(4)[list(perm) + [3]].T  # new voxel axis k = old axis perm[k]
    return np.ascontiguousarray(np.transpose(out, perm)), aff @ F @ P


@pytest.mark.parametrize("flips,perm", [((), (0, 1, 2)), ((0,), (0, 1, 2)), ((0, 1), (0, 1, 2)), ((1,), (2, 0, 1))])
def test_roundtrip_preserves_orientation_and_labels(tmp_path, flips, perm):
    img, lab = _asymmetric_case()
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    ri, raff = _reoriented(img, aff, flips, perm)
    rl, _ = _reoriented(lab, aff, flips, perm)
    assert nib.aff2axcodes(raff) != ("R", "A", "S") or not flips
    _nii(tmp_path / "src/images/s1.nii.gz", ri, raff)
    _nii(tmp_path / "src/labels/s1.nii.gz", rl, raff)
    full = load_canonical(
        prepare(
            tmp_path / "src",
            tmp_path / "out",
            res=10,
            axis=2,
            empty_fraction=0.0,
            label_names={0: "bg", 1: "a", 2: "b"},
            crop_threshold=None,
        )
    )
    assert len(full) == img.shape[2]  # every slice is stored (whole-volume evaluation) ...
    ds = full.for_training()  # ... and empty_fraction=0 trains on foreground slices only
    x, y = ds.tensors()
    assert list(ds.index.slice) == [2, 3, 4, 5]
    # expected layout of axial slice k: rows = y reversed (anterior on top), cols = x; the 10x12 mm slice is
    # resized to 8x10 pixels of 1.2 mm (nearest) and padded with one background row above and below
    k = 3
    exp = torch.from_numpy(np.ascontiguousarray(lab[:, ::-1, k].T)).float()  # (Y, X) = (10, 12)
    exp = torch.nn.functional.interpolate(exp[None, None], size=(8, 10), mode="nearest-exact")[0, 0]
    exp = torch.nn.functional.pad(exp, (0, 0, 1, 1)).long()
    assert ds.index.spacing_0.tolist() == [1.2] * 4
    assert torch.equal(y[list(ds.index.slice).index(k)], exp)
    assert set(y.unique().tolist()) == {0, 1, 2}
    # label 1 (anterior-left) is top-left, label 2 (posterior-right) bottom-right
    r1, c1 = np.argwhere(y[1].numpy() == 1).mean(0)
    r2, c2 = np.argwhere(y[1].numpy() == 2).mean(0)
    assert r1 < r2 and c1 < c2


def test_anisotropic_voxels_are_not_squashed(tmp_path):
    "A 5 mm-slice volume seen from the side (axis 0) keeps its physical aspect ratio."
    lab = np.zeros((6, 40, 8), np.uint8)
    lab[:, 10:30, 2:6] = 1  # 20 mm (y) x 20 mm (z, 4 slices of 5 mm)
    img = 1.0 + lab.astype(np.float32)
    aff = np.diag([1.0, 1.0, 5.0, 1.0])
    _nii(tmp_path / "src/images/s.nii.gz", img, aff)
    _nii(tmp_path / "src/labels/s.nii.gz", lab, aff)
    ds = load_canonical(
        prepare(tmp_path / "src", tmp_path / "out", res=40, axis=0, empty_fraction=0.0, crop_threshold=None)
    )
    _, y = ds.tensors()
    rows, cols = np.nonzero(y[0].numpy())
    assert np.ptp(rows) + 1 == np.ptp(cols) + 1 == 20  # a square, 20 x 20 pixels of 1 mm


def test_roundtrip_msd_4d_and_nnunet_channel_files_agree(tmp_path):
    a = load_canonical(prepare(make_synthetic_msd(tmp_path / "a", n_subjects=3), tmp_path / "ca", res=16))
    b = load_canonical(prepare(make_synthetic_msd(tmp_path / "b", n_subjects=3, four_d=False), tmp_path / "cb", res=16))
    xa, ya = a.tensors()
    xb, yb = b.tensors()
    assert a.modalities == b.modalities == ["T1", "T2"] and a.labels == LABELS
    assert torch.equal(ya, yb) and torch.allclose(xa, xb)
    assert xa.shape[1:] == (2, 16, 16) and set(ya.unique().tolist()) == {0, 1, 2}


def test_canonical_dataset_batches_with_a_dataloader(tmp_path):
    ds = load_canonical(prepare(make_synthetic_msd(tmp_path / "s", n_subjects=3), tmp_path / "c", res=16))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 2, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 16, 16) and batch["mask"].dtype == torch.int64
    assert len(batch["subject"]) == 4 and all(isinstance(s, str) for s in batch["sample_id"])
    x, y = ds.tensors()
    assert torch.equal(batch["image"], x[:4]) and torch.equal(batch["mask"], y[:4])


def test_nnunet_v2_labels_and_channel_names(tmp_path):
    root = make_synthetic_msd(tmp_path / "v2", n_subjects=3, four_d=False)
    meta = json.loads((root / "dataset.json").read_text())
    meta.pop("modality")
    meta.pop("training")
    meta.update(
        channel_names={"0": "T1", "1": "T2"}, labels={"background": 0, "organ": 1, "lesion": 2}, file_ending=".nii.gz"
    )
    save_json(meta, root / "dataset.json")
    st = read_msd(root)
    assert st.labels == LABELS and st.modalities == ["T1", "T2"] and len(st.cases) == 3
    assert len(st.cases[0].images) == 2


def test_nifti_pairs_one_file_per_modality(tmp_path):
    img, lab = _asymmetric_case()
    for s in ("p1", "p2", "p3"):
        _nii(tmp_path / f"src/{s}/t1.nii.gz", img)
        _nii(tmp_path / f"src/{s}/flair.nii.gz", 2 * img)
        _nii(tmp_path / f"src/{s}/seg.nii.gz", lab)
    out = prepare(
        tmp_path / "src",
        tmp_path / "out",
        res=8,
        images={"t1": "{subject}/t1.nii.gz", "flair": "{subject}/flair.nii.gz"},
        labels="{subject}/seg.nii.gz",
        label_names={0: "bg", 1: "a", 2: "b"},
    )
    ds = load_canonical(out)
    assert ds.modalities == ["t1", "flair"] and ds.subjects == ["p1", "p2", "p3"]


def test_png_pairs_remap_binary_masks(tmp_path):
    (tmp_path / "src/images").mkdir(parents=True)
    (tmp_path / "src/masks").mkdir()
    for i in range(4):
        m = np.zeros((20, 24), np.uint8)
        m[5:12, 3 : 9 + i] = 255
        Image.fromarray((m // 2 + 20).astype(np.uint8)).save(tmp_path / f"src/images/s{i}.png")
        Image.fromarray(m).save(tmp_path / f"src/masks/s{i}.png")
    ds = load_canonical(prepare(tmp_path / "src", tmp_path / "out", res=12))
    assert ds.labels == {0: "background", 1: "label_255"} and len(ds.subjects) == 4
    _, y = ds.tensors()
    assert set(y.unique().tolist()) == {0, 1}


def test_splits_have_no_subject_overlap(tmp_path):
    ds = load_canonical(prepare(make_synthetic_msd(tmp_path / "s", n_subjects=7), tmp_path / "c", res=8))
    sp = ds.splits()
    tvt = sp["train_val_test"]
    parts = [set(tvt[p]) for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(ds.subjects)
    for f in range(5):
        tr, va, te = ds.split("train", fold=f), ds.split("val", fold=f), ds.split("test", fold=f)
        assert not (set(tr.subjects) | set(va.subjects)) & set(te.subjects) and not set(tr.subjects) & set(va.subjects)
        assert len(tr) + len(va) + len(te) == len(ds) and len(va.subjects) >= 1
    assert sorted(s for fold in sp["folds"] for s in fold["test"]) == ds.subjects
    subs = [f"p{i}" for i in range(40)]
    for seed in range(3):
        tr, va, te = train_val_test_split(subs, seed=seed)
        assert (len(tr), len(va), len(te)) == (24, 8, 8) and not set(tr) & set(te)
        assert set(subsample_subjects(subs, 0.25, seed)) <= set(subsample_subjects(subs, 0.5, seed))
        assert subject_kfold(subs, 5, seed) == subject_kfold(list(reversed(subs)), 5, seed)


# --- bad input: every case names the file -------------------------------------------------------------


def _pair(root, img, lab, aff_img=None, aff_lab=None):
    _nii(root / "images/a.nii.gz", img, aff_img)
    _nii(root / "labels/a.nii.gz", lab, aff_lab)
    return root


@pytest.fixture
def case():
    img, lab = _asymmetric_case()
    return img, lab


BAD = {
    "shape mismatch": (lambda i, l: (i, l[:-1]), "labels/a.nii.gz: label shape"),
    "affine mismatch": (lambda i, l: (i, l, None, np.diag([1, 1, 2, 1.0])), "labels/a.nii.gz: label affine differs"),
    "undeclared label": (lambda i, l: (i, l * 2), "labels/a.nii.gz: label values [4]"),
    "nan voxels": (lambda i, l: (np.where(l > 0, np.nan, i), l), "images/a.nii.gz: "),
    "inf voxels": (lambda i, l: (np.where(l > 0, np.inf, i), l), "NaN/inf voxels"),
    "2d image": (lambda i, l: (i[..., 0], l[..., 0]), "use --layout png"),
    "4d label": (lambda i, l: (i, np.stack([l, l], -1)), "labels/a.nii.gz: label is 4D"),
    "5d image": (lambda i, l: (i[..., None, None].repeat(2, 3).repeat(2, 4), l), "images/a.nii.gz: image is 5D"),
    "4d image, too few modalities": (lambda i, l: (np.stack([i, i], -1), l), "missing modalities"),
    "probability labels": (lambda i, l: (i, l * 0.5), "labels/a.nii.gz: label has non-integer values"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_volume_input_is_a_clear_error(tmp_path, case, name):
    make, msg = BAD[name]
    root = _pair(tmp_path / "src", *make(*case))
    mods = ["t1", "t2", "flair"] if "modalities" in name else None
    with pytest.raises(MedsynError, match=None) as e:
        prepare(root, tmp_path / "out", res=8, label_names={0: "bg", 1: "a", 2: "b"}, modalities=mods)
    assert msg in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_corrupt_and_empty_and_unmatched_inputs(tmp_path, case):
    root = _pair(tmp_path / "corrupt", *case)
    (root / "labels/a.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    with pytest.raises(MedsynError, match="labels/a.nii.gz: cannot read NIfTI"):
        prepare(root, tmp_path / "o1", label_names=LABELS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsynError, match="empty folder"):
        prepare(tmp_path / "empty", tmp_path / "o2")
    root = _pair(tmp_path / "unmatched", *case)
    _nii(root / "images/b.nii.gz", case[0])
    with pytest.raises(MedsynError, match="images/b.nii.gz: image without a label"):
        prepare(root, tmp_path / "o3", label_names=LABELS)
    msd = make_synthetic_msd(tmp_path / "msd", n_subjects=2, four_d=False)
    (msd / "imagesTr/synth_000_0001.nii.gz").unlink()
    with pytest.raises(MedsynError, match=r"missing modality files \['synth_000_0001.nii.gz'\]"):
        prepare(msd, tmp_path / "o4")
    msd = make_synthetic_msd(tmp_path / "msd_empty", n_subjects=1, four_d=False)
    (msd / "labelsTr/synth_000.nii.gz").unlink()
    with pytest.raises(MedsynError, match="labelsTr: empty folder"):
        prepare(msd, tmp_path / "o5")


def test_bad_png_inputs(tmp_path):
    (tmp_path / "src/images").mkdir(parents=True)
    (tmp_path / "src/masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "src/images/a.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "src/masks/a.png")
    with pytest.raises(MedsynError, match="masks/a.png: mask shape"):
        prepare(tmp_path / "src", tmp_path / "o1", label_names={0: "bg"})
    Image.fromarray(np.full((8, 8), 3, np.uint8)).save(tmp_path / "src/masks/a.png")
    with pytest.raises(MedsynError, match=r"masks/a.png: mask values \[3\]"):
        prepare(tmp_path / "src", tmp_path / "o2", label_names={0: "bg", 1: "x"})
    (tmp_path / "src/images/a.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(MedsynError, match="images/a.png: cannot read image"):
        prepare(tmp_path / "src", tmp_path / "o3")


def test_write_canonical_rejects_bad_samples(tmp_path):
    ok = dict(image=np.zeros((1, 4, 4)), mask=np.zeros((4, 4), int), subject="s", slice=0)
    with pytest.raises(MedsynError, match=r"normalized to \[0, 1\]"):
        write_canonical(
            tmp_path / "a", [dict(ok, image=np.full((1, 4, 4), 2.0))], name="x", modalities=["m"], labels={0: "bg"}
        )
    with pytest.raises(MedsynError, match=r"label ids \[5\] not declared"):
        write_canonical(
            tmp_path / "b", [dict(ok, mask=np.full((4, 4), 5))], name="x", modalities=["m"], labels={0: "bg"}
        )
    with pytest.raises(MedsynError, match="duplicate sample id"):
        write_canonical(tmp_path / "c", [ok, ok], name="x", modalities=["m"], labels={0: "bg"})
    assert not any((tmp_path / n).exists() for n in "abc")


def test_partial_or_foreign_dataset_is_refused(tmp_path):
    out = write_canonical(
        tmp_path / "d",
        [dict(image=np.zeros((1, 4, 4)), mask=np.zeros((4, 4), int), subject=f"s{i}", slice=0) for i in range(3)],
        name="x",
        modalities=["m"],
        labels={0: "bg"},
    )
    assert len(load_canonical(out)) == 3
    meta = json.loads((out / "dataset.json").read_text())
    save_json(dict(meta, format_version=FORMAT_VERSION + 1), out / "dataset.json")
    with pytest.raises(MedsynError, match="d/dataset.json: format_version"):
        load_canonical(out)
    save_json(meta, out / "dataset.json")
    next((out / "samples").iterdir()).unlink()
    with pytest.raises(MedsynError, match="1 sample files listed in index.csv are missing"):
        load_canonical(out)
    (out / "dataset.json").unlink()
    with pytest.raises(MedsynError, match="d/dataset.json: missing"):
        load_canonical(out)
    with pytest.raises(MedsynError, match="dataset folder not found"):
        load_canonical(tmp_path / "nothing")


# --- the simulated default cohort ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    "The default dataset built in a fresh cache (never depends on a previous one)."
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSYN_CACHE", str(cache))
        path = default_dataset(64)
        assert path.parent.parent == cache and default_dataset(64) == path  # the second call reads the cache
    return load_canonical(path)


def test_default_dataset_is_the_simulated_cohort(cohort, tmp_path):
    ds = cohort
    assert ds.labels == COHORT_LABELS and ds.modalities == ["T1", "T2", "FLAIR", "T1c"] and ds.resolution == (64, 64)
    assert len(ds.subjects) == 20 and ds.meta["simulated"] is True
    assert ds.meta["provenance"].startswith("SIMULATED, NOT PATIENT DATA")
    sim = ds.meta["simulation"]
    assert (
        sim["config"]["n_subjects"] == 20 and sim["config"]["seed"] == 0 and set(sim["contrasts"]) == set(ds.modalities)
    )
    assert all(set(s["intensities"]) == set(ds.modalities) for s in sim["subjects"].values())
    _, y = ds.tensors()
    assert set(y.unique().tolist()) == set(range(6))  # background, CSF, GM, WM, oedema, core
    with_lesion = {ds.index.subject[i] for i in range(len(ds)) if (y[i] >= 4).any()}
    assert with_lesion == {s for s, v in sim["subjects"].items() if v["lesion"]}
    assert 0 < len(set(ds.subjects) - with_lesion) < len(with_lesion)  # most subjects have a lesion, some none
    # empty slices are stored, and only some of them are trained on (the usual 10 %)
    empty = ds.index.fg_fraction == 0
    assert empty.any() and 0 < (ds.index.train & empty).sum() < empty.sum()
    fig = plot_dataset_overview(ds, n=4)
    assert len(fig.axes) == 4 * 5 + 1 and all(p.exists() for p in save_figure(fig, tmp_path / "fig/overview"))


def test_cohort_lesions_overlap_healthy_tissue_in_every_channel(cohort):
    """No single channel separates the lesion: in each, a large share of lesion pixels lies within healthy tissue's
    range."""
    ov = lesion_overlap(cohort)  # measured (seed 0): T1 0.99 / 1.0, T2 0.88 / 0.88, FLAIR 0.49 / 0.59, T1c 1.0 / 0.83
    assert list(ov.index) == ["oedema", "tumour core"] and list(ov.columns) == cohort.modalities
    assert (ov.to_numpy() > 0.4).all() and (ov.drop(columns="FLAIR").to_numpy() > 0.75).all(), ov


def test_prepare_cli_names_the_default_cohort(tmp_path):
    """`medsyn prepare default` is the simulated cohort; options of file layouts are refused before anything is
    simulated."""
    from medsyn.data import prepare_main

    with pytest.raises(MedsynError, match="default: --label-map do not apply to the bundled dataset"):
        prepare_main(["default", "--out", str(tmp_path / "o"), "--label-map", "4=3"])
    assert not (tmp_path / "o").exists()


def test_cohort_is_deterministic_per_seed(tmp_path):
    from medsyn.data import dataset_hash

    small = dict(n_subjects=3, size=32, lesion_share=2 / 3)
    a = prepare_cohort(tmp_path / "a", CohortConfig(**small, seed=1), res=32)
    b = prepare_cohort(tmp_path / "b", CohortConfig(**small, seed=1), res=32)
    c = prepare_cohort(tmp_path / "c", CohortConfig(**small, seed=2), res=32)
    assert dataset_hash(a) == dataset_hash(b) != dataset_hash(c)


# --- the bundled template slabs ----------------------------------------------------------------------------


def test_mni152_dataset_real_template(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSYN_CACHE", str(tmp_path / "cache"))  # never depends on a previous cache
    path = mni152_dataset(64)
    assert path.parent.parent == tmp_path / "cache" and mni152_dataset(64) == path
    ds = load_canonical(path)
    assert ds.labels == MNI152_LABELS and ds.modalities == ["T1"] and ds.resolution == (64, 64)
    assert len(ds.subjects) == 10 and ds.meta["pseudo_subjects"] is True
    assert "NOT independent patients" in ds.meta["provenance"] and "McConnell" in ds.meta["provenance"]
    x, y = ds.tensors()
    assert set(y.unique().tolist()) == {0, 1, 2, 3}
    # each tissue has the T1 contrast expected of it: WM brightest, then GM, then CSF
    mean = {k: x[:, 0][y == k].mean().item() for k in (1, 2, 3)}
    assert mean[2] > mean[1] > mean[3]
    # slabs are contiguous and disjoint in slice number
    ranges = ds.index.groupby("subject").slice.agg(["min", "max"]).sort_values("min")
    assert (ranges["min"].to_numpy()[1:] > ranges["max"].to_numpy()[:-1]).all()
    tr, va, te = (set(ds.split(p).subjects) for p in ("train", "val", "test"))
    assert not (tr & va or tr & te or va & te)
    fig = plot_dataset_overview(ds, n=2)
    assert all(p.exists() for p in save_figure(fig, tmp_path / "fig/overview"))


def test_mni152_dataset_roundtrip_through_nifti(tmp_path, monkeypatch):
    "The real template written as NIfTI in another orientation gives the same canonical slices and labels."
    monkeypatch.setenv("MEDSYN_CACHE", str(tmp_path / "cache"))
    ds = load_canonical(mni152_dataset(64))
    t1, lab, aff = mni152_volumes()
    ri, raff = _reoriented(t1.astype(np.uint8), aff, flips=(0, 1))
    rl, _ = _reoriented(lab, aff, flips=(0, 1))
    _nii(tmp_path / "src/images/mni.nii", ri, raff)
    _nii(tmp_path / "src/labels/mni.nii", rl, raff)
    rt = load_canonical(
        prepare(tmp_path / "src", tmp_path / "out", res=64, empty_fraction=0.0, label_names=MNI152_LABELS)
    )
    pos = {k: i for i, k in enumerate(rt.index.slice)}
    x, y = ds.tensors()
    rx, ry = rt.tensors()
    j = [pos[k] for k in ds.index.slice]
    assert torch.equal(ry[j], y) and torch.allclose(rx[j], x, atol=1e-4)


# --- download and CLI ------------------------------------------------------------------------------------


def test_download_msd_offline_message_and_checksum(tmp_path):
    with pytest.raises(MedsynError) as e:
        download_msd("Task02_Heart", root=tmp_path, url="http://127.0.0.1:9/Task02_Heart.tar", timeout=2)
    msg = str(e.value)
    assert "http://127.0.0.1:9/Task02_Heart.tar" in msg and str(tmp_path / "Task02_Heart.tar") in msg
    assert "06ee59366e1e5124267b774dbd654057" in msg  # the published MD5 the user can check against
    src = make_synthetic_msd(tmp_path / "build/Task97_Tiny", n_subjects=2)
    with tarfile.open(tmp_path / "Task97_Tiny.tar", "w") as t:
        t.add(src, arcname="Task97_Tiny")
    good = file_md5(tmp_path / "Task97_Tiny.tar")
    with pytest.raises(MedsynError, match="Task97_Tiny.tar: md5 checksum"):
        download_msd("Task97_Tiny", root=tmp_path, url="http://127.0.0.1:9/x", md5="f" * 32)
    folder = download_msd("Task97_Tiny", root=tmp_path, url="http://127.0.0.1:9/x", md5=good)
    assert (folder / "dataset.json").exists() and len(read_msd(folder).cases) == 2
    verify_checksum(tmp_path / "Task97_Tiny.tar", good)
    shutil.rmtree(tmp_path / "build")


def test_cli_prepare_on_synthetic_msd(tmp_path, run_medsyn):
    src = make_synthetic_msd(tmp_path / "Task96_Cli", n_subjects=5)
    res = run_medsyn(
        "prepare",
        str(src),
        "--out",
        str(tmp_path / "out"),
        "--res",
        "16",
        "--axis",
        "2",
        "--layout",
        "msd",
        "--empty-fraction",
        "0.5",
        "--seed",
        "1",
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["n_subjects"] == 5 and summary["resolution"] == [16, 16]
    ds = load_canonical(tmp_path / "out")
    assert len(ds) == summary["n_slices"] and len(ds.splits()["folds"]) == 5
    assert not (tmp_path / "out" / "splits.json").exists()  # splits are computed, never a second record
    res = run_medsyn("prepare", str(src), "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "already exists" in res.stderr and "--overwrite" in res.stderr
    res = run_medsyn(
        "prepare", str(src), "--out", str(tmp_path / "mr"), "--ct-window", "-1000,2000"
    )  # T1/T2: no CT channel
    assert res.returncode == 2 and "--ct-window applies to CT channels" in res.stderr and not (tmp_path / "mr").exists()
    res = run_medsyn("prepare", "--help")
    assert res.returncode == 0 and "--empty-fraction" in res.stdout and "--ct-window" in res.stdout
    res = run_medsyn("prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "o2"))
    assert res.returncode == 2 and "nope: folder not found" in res.stderr


def test_png_layout_trains_on_empty_fraction_of_its_empty_images(tmp_path):
    """Each PNG is its own slice: the empty ones used for training are drawn over all images (not round(0.1 * 1) = 0
    each)."""
    from PIL import Image

    (tmp_path / "src/images").mkdir(parents=True)
    (tmp_path / "src/masks").mkdir()
    for i in range(24):
        m = np.zeros((16, 16), np.uint8)
        if i < 4:
            m[4:10, 4:10] = 1  # 4 with foreground, 20 empty
        Image.fromarray((m * 100 + 30).astype(np.uint8)).save(tmp_path / f"src/images/s{i:02d}.png")
        Image.fromarray(m).save(tmp_path / f"src/masks/s{i:02d}.png")
    ds = load_canonical(
        prepare(tmp_path / "src", tmp_path / "out", res=16, empty_fraction=0.25, label_names={0: "bg", 1: "fg"})
    )
    assert len(ds) == 24  # every image is kept for evaluation
    tr = ds.for_training()
    fg = tr.index.fg_fraction > 0
    assert fg.sum() == 4 and (~fg).sum() == 5  # 0.25 x 20 empty images


def test_volumes_keep_every_slice_and_their_spacing(tmp_path):
    "Test subjects are evaluated on whole volumes: empty slices are stored; empty_fraction only thins training."
    ds = load_canonical(
        prepare(make_synthetic_msd(tmp_path / "s", n_subjects=3), tmp_path / "c", res=8, empty_fraction=0.0)
    )
    assert len(ds) == 3 * 16  # all 16 axial slices of each volume
    tr = ds.for_training()
    assert (tr.index.fg_fraction > 0).all() and len(tr) < len(ds)
    assert ds.spacing(ds.subjects[0])[0] == pytest.approx(2.0)  # the volume's 2 mm slice spacing
