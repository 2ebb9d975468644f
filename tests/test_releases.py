"""#32: the study's datasets as users download them: every known release prepares with one command on a tiny
generated copy of its exact on-disk layout; patterns that cannot crash; label maps; CT windows; orientation notes."""

import json
import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest

from medsyn.core import MedsynError
from medsyn.data import (
    _RELEASE_COPIES,
    CT_WINDOWS,
    RELEASES,
    detect_release,
    load_canonical,
    make_release_copy,
    prepare,
    prepare_main,
)

# slices along the slicing axis of every copy: shape (20, 24, 16) in RAS; IBSR slices coronally (axis 1)
SLICES = {r: 24 if r == "ibsr18" else 16 for r in RELEASES}
SKIPPED = {r: 0 if r in ("kits23", "ibsr18") else 1 for r in RELEASES}
CHANNELS = {
    "brats2020": ["T1", "T1Gd", "T2", "FLAIR"],
    "brats2021": ["T1", "T1Gd", "T2", "FLAIR"],
    "brats2023-gli": ["T1", "T1Gd", "T2", "FLAIR"],
    "kits19": ["CT"],
    "kits23": ["CT"],
    "ibsr18": ["T1"],
    "msd": ["FLAIR", "T1w", "t1gd", "T2w"],
    "nnunet-v1": ["CT"],
    "nnunet-v2": ["T1", "T1ce", "T2", "Flair"],
}


def _prepared(release, tmp_path, **kw):
    src = make_release_copy(release, tmp_path / "src")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = prepare(src, tmp_path / "out", res=16, **kw)
    return src, load_canonical(out), json.loads((out / "dataset.json").read_text())


def _stack(ds):
    items = [ds[i] for i in range(len(ds))]
    return np.stack([np.asarray(s["image"][0]) for s in items]), np.stack([np.asarray(s["mask"]) for s in items])


@pytest.mark.parametrize("release", list(RELEASES))
def test_release_prepares_with_one_command(release, tmp_path):
    src, ds, meta = _prepared(release, tmp_path)
    assert detect_release(src) == release
    assert meta["release"] == release and meta["skipped_unlabelled"] == SKIPPED[release]
    assert ds.modalities == CHANNELS[release]
    assert len(ds.subjects) == 3
    assert ds.index.groupby("subject").size().tolist() == [SLICES[release]] * 3  # every slice of the slicing axis
    # label ids: the layers (outer, middle, inner) of the copy carry the release's ids, renumbered 0..K-1 in order
    ids = _RELEASE_COPIES[release]["ids"]
    src_ids = sorted({0, *ids} | ({int(k) for k in RELEASES[release].get("label_names", {})}))
    assert {int(k): v for k, v in meta["label_values"].items()} == dict(enumerate(src_ids))
    if "label_names" in RELEASES[release]:
        assert ds.labels == {i: RELEASES[release]["label_names"][v] for i, v in enumerate(src_ids)}
    # image and mask stay aligned: thresholding the image gives the mask back, and intensity rises layer by layer
    img, mask = _stack(ds)
    fg, body = mask > 0, (mask == 0) & (img > 0.05)
    thr = (np.median(img[body]) + np.median(img[fg])) / 2
    dice = 2 * ((img > thr) & fg).sum() / ((img > thr).sum() + fg.sum())
    assert dice > 0.9, dice
    new = [src_ids.index(v) for v in ids]
    if len(set(new)) == 3:
        med = [np.median(img[mask == k]) for k in new]
        assert med[0] < med[1] < med[2], (new, med)


def test_cli_prints_the_detection(tmp_path, capsys):
    src = make_release_copy("brats2020", tmp_path / "src")
    assert prepare_main([str(src), "--out", str(tmp_path / "out"), "--res", "16", "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("detected BraTS 2020 (--preset brats2020)") and "1 unlabelled skipped" in out[0]
    assert (
        "labels {0: 'background', 1: 'necrotic tumour core', 2: 'peritumoral oedema', 4: 'enhancing tumour'}" in out[0]
    )
    summary = json.loads(out[-1])
    assert summary["release"] == "brats2020" and summary["skipped_unlabelled"] == 1 and summary["n_subjects"] == 3


def test_repeated_subject_and_glob_class_patterns(tmp_path):
    "The issue's crash cases: {subject} in folder and file name, a glob class, with --preset none."
    src = make_release_copy("brats2020", tmp_path / "src")
    top = src / _RELEASE_COPIES["brats2020"]["top"]
    imgs = {
        m: f"{{subject}}/{{subject}}_{s}.nii*"
        for m, s in (("t1", "t1"), ("t1ce", "t1ce"), ("t2", "t2"), ("flair", "flair"))
    }
    ds = load_canonical(
        prepare(top, tmp_path / "out", res=16, preset="none", images=imgs, labels="{subject}/*[sS]eg*.nii*")
    )
    assert len(ds.subjects) == 3 and ds.modalities == ["t1", "t1ce", "t2", "flair"]
    ibsr = make_release_copy("ibsr18", tmp_path / "ibsr") / "IBSR_nifti_stripped"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_canonical(
            prepare(
                ibsr,
                tmp_path / "out2",
                res=16,
                preset="none",
                axis=1,
                images="IBSR_{subject}/IBSR_{subject}_ana_strip.nii.gz",
                labels="IBSR_{subject}/IBSR_{subject}_segTRI_ana.nii.gz",
            )
        )
    assert ds.subjects == ["01", "02", "03"]


def test_pattern_errors_are_clear(tmp_path):
    src = make_release_copy("brats2021", tmp_path / "src")
    with pytest.raises(
        MedsynError, match=r"no file matches '\*\*/\{subject\}/nothing_\*.nii' \(1[0-9] files there, e.g."
    ):
        prepare(
            src,
            tmp_path / "o1",
            preset="none",
            images="**/{subject}/{subject}_t1.nii*",
            labels="**/{subject}/nothing_*.nii",
        )
    with pytest.raises(MedsynError, match="never closed"):
        prepare(src, tmp_path / "o2", preset="none", images="{subject}/*[t1.nii*", labels="{subject}/*seg*")
    with pytest.raises(MedsynError, match=r"unknown placeholder\(s\) \{case\}"):
        prepare(src, tmp_path / "o3", preset="none", images="{case}/{subject}.nii", labels="{subject}/*seg*")
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))


def test_symlinked_cases_are_followed(tmp_path):
    src = make_release_copy("brats2021", tmp_path / "src")
    top = src / _RELEASE_COPIES["brats2021"]["top"]
    links = tmp_path / "links"
    links.mkdir()
    for d in sorted(top.iterdir()):
        if d.is_dir():
            (links / d.name).symlink_to(d, target_is_directory=True)
    (links / "loop").symlink_to(links, target_is_directory=True)  # a cycle must not hang the walk
    assert detect_release(links) == "brats2021"
    ds = load_canonical(prepare(links, tmp_path / "out", res=16))
    assert len(ds.subjects) == 3


def test_options_a_layout_cannot_use_are_refused_or_applied(tmp_path):
    msd = make_release_copy("msd", tmp_path / "msd")
    with pytest.raises(MedsynError, match="--images do not apply to an MSD / nnU-Net folder"):
        prepare(msd, tmp_path / "o1", layout="msd", images="x/{subject}.nii.gz")
    with pytest.raises(MedsynError, match="--labels do not apply to --preset msd"):
        prepare(msd, tmp_path / "o1", preset="msd", labels="x/{subject}.nii.gz")
    with pytest.raises(MedsynError, match="names 2 channels but the data has 4"):
        prepare(msd, tmp_path / "o1", modalities=["a", "b"])
    with pytest.raises(MedsynError, match=r"--label-names gives ids \[7\]"):
        prepare(msd, tmp_path / "o1", label_names={7: "x"})
    ds = load_canonical(
        prepare(msd, tmp_path / "o2", res=16, modalities=["FLAIR", "T1", "T1Gd", "T2"], label_names={1: "oedema"})
    )
    assert ds.modalities == ["FLAIR", "T1", "T1Gd", "T2"] and ds.labels[1] == "oedema"


def test_kits_without_its_json_asks_for_the_preset(tmp_path):
    src = make_release_copy("kits19", tmp_path / "src")
    (src / "kits19" / "data" / "kits.json").unlink()
    with pytest.raises(MedsynError, match="pass --preset kits19 or --preset kits23"):
        detect_release(src)
    assert load_canonical(prepare(src, tmp_path / "out", res=16, preset="kits19")).meta["release"] == "kits19"


def test_brats_regions_put_two_releases_on_one_scheme(tmp_path):
    metas, masks = [], []
    for r in ("brats2020", "brats2023-gli", "msd"):
        _, ds, meta = _prepared(r, tmp_path / r, label_map="brats-regions")
        metas.append(meta)
        masks.append(_stack(ds)[1])
    for m in metas:
        assert m["labels"] == {"0": "background", "1": "whole tumour", "2": "tumour core", "3": "enhancing tumour"}
        assert m["regions"] == {"whole tumour": [1, 2, 3], "tumour core": [2, 3], "enhancing tumour": [3]}
        assert m["label_map"] == "brats-regions"
    assert np.array_equal(masks[0], masks[1])  # the same phantom: the same ids everywhere after the map
    _, _, meta = _prepared("brats2020", tmp_path / "num", label_map="4=3")
    assert (
        meta["label_map"] == "4=3" and meta["labels"]["3"] == "enhancing tumour" and meta["label_values"]["3"] == 4
    )  # the ids in the source files


def test_nnunet_v2_region_labels(tmp_path):
    _, ds, meta = _prepared("nnunet-v2", tmp_path)
    assert ds.labels == {0: "background", 1: "whole tumor", 2: "tumor core", 3: "enhancing tumor"}
    assert meta["regions"] == {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}


def test_ct_windows_by_task(tmp_path):
    _, _, meta = _prepared("kits19", tmp_path / "a")
    assert meta["normalization"]["ct_window"] == "abdomen" and meta["normalization"]["windows"] == {
        "CT": list(CT_WINDOWS["abdomen"])
    }
    _, _, meta = _prepared("kits23", tmp_path / "b", ct_window="bone")
    assert meta["normalization"]["windows"] == {"CT": list(CT_WINDOWS["bone"])}
    with pytest.raises(MedsynError, match="unknown CT window 'spleen'"):
        prepare_main([str(tmp_path / "b" / "src"), "--out", str(tmp_path / "c"), "--ct-window", "spleen"])


def test_orientation_warnings(tmp_path):
    src = make_release_copy("ibsr18", tmp_path / "ibsr")
    with pytest.warns(UserWarning, match=r"3 of 3 volumes: .*no orientation \(qform_code = sform_code = 0\)"):
        prepare(src, tmp_path / "o1", res=16)
    assert "no orientation" in json.loads((tmp_path / "o1" / "dataset.json").read_text())["warnings"][0]
    kits = make_release_copy("kits19", tmp_path / "kits")
    for f in (kits / "kits19" / "data").rglob("*.nii.gz"):  # KiTS19's first release: slices on the x axis of the affine
        img = nib.load(str(f))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([3.0, 0.8, 0.8, 1.0])), str(f))
    with pytest.warns(
        UserWarning,
        match=r"slicing along axis 2 \(axial, 0.8 mm\) but axis 0 \(sagittal\) has the coarsest spacing \(3 mm\)",
    ):
        prepare(kits, tmp_path / "o2", res=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right axis: no warning
        prepare(kits, tmp_path / "o3", res=16, axis=0)


def test_study_refuses_too_few_subjects_before_training(tmp_path):
    """The study checks its dataset up front: a 3-subject BraTS copy fails in seconds, naming how many subjects the
    profile needs."""
    from medsyn.study import study_main

    src = make_release_copy("brats2020", tmp_path / "src")
    prepare(src, tmp_path / "ds", res=64)
    with pytest.raises(MedsynError, match="3 subjects .* too few for profile ci: .* need at least 6 subjects"):
        study_main(["--profile", "ci", "--datasets", str(tmp_path / "ds"), "--out", str(tmp_path / "runs")])
    assert not (tmp_path / "runs" / "ds").exists()


@pytest.mark.parametrize("annotation,modality", [("rtstruct", "CT"), ("seg", "CT"), ("rtstruct", "MR")])
def test_dicom_series_with_rtstruct_or_seg(annotation, modality, tmp_path, monkeypatch):
    """A hospital-style export: CT series (files in reverse order), RTSTRUCT contours or a DICOM-SEG, one unannotated
    series."""
    import tempfile

    from medsyn.data import make_dicom_copy

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    src = make_dicom_copy(tmp_path / "src", annotation=annotation, modality=modality)
    ds = load_canonical(prepare(src, tmp_path / "out", res=32, ct_window="abdomen" if modality == "CT" else None))
    meta = ds.meta
    assert ds.modalities == [modality] and ds.labels == {0: "background", 1: "Kidney", 2: "Tumour"}
    assert ds.subjects == ["PAT000", "PAT001"] and meta["skipped_unlabelled"] == 1
    assert ds.index.groupby("subject").size().tolist() == [10, 10]
    assert meta["normalization"]["windows"] == {
        modality: list(CT_WINDOWS["abdomen"]) if modality == "CT" else None
    }  # HU: RescaleIntercept
    img, mask = _stack(ds)
    fg, body = mask > 0, (mask == 0) & (img > 0.05)
    thr = (np.median(img[body]) + np.median(img[fg])) / 2
    dice = 2 * ((img > thr) & fg).sum() / ((img > thr).sum() + fg.sum())
    assert dice > 0.9, dice  # contours land on the right voxels
    assert np.median(img[mask == 1]) < np.median(img[mask == 2])
    assert not list((tmp_path / "tmp").iterdir())  # the NIfTI conversion is removed
    one = load_canonical(prepare(src, tmp_path / "out2", res=32, roi=["tumour"]))
    assert one.labels == {0: "background", 1: "Tumour"}


def test_dicom_errors_name_the_file(tmp_path):
    from medsyn.data import make_dicom_copy

    src = make_dicom_copy(tmp_path / "src", n_subjects=1)
    with pytest.raises(MedsynError, match=r"RTSTRUCT.dcm: no ROI named \['Liver'\]; it has \['Kidney', 'Tumour'\]"):
        prepare(src, tmp_path / "o1", roi=["Liver"])
    with pytest.raises(MedsynError, match="--roi do not apply to --preset kits23"):
        prepare(make_release_copy("kits23", tmp_path / "k"), tmp_path / "o1", roi=["Kidney"])
    with pytest.raises(MedsynError, match="--images do not apply to DICOM"):
        prepare(src, tmp_path / "o1", layout="dicom", images="{subject}/x")
    (src / "PAT000" / "CT_abdomen" / "IM00004").unlink()  # a slice missing in the middle
    with pytest.raises(MedsynError, match=r"CT_abdomen \(series 2, .*uneven slice spacing"):
        prepare(src, tmp_path / "o2")
    shutil.rmtree(src / "PAT000" / "CT_abdomen")
    with pytest.raises(MedsynError, match="RTSTRUCT.dcm: the RTSTRUCT was drawn on series .* which is not under"):
        prepare(src, tmp_path / "o3")
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))


def test_options_that_do_not_apply_are_named(tmp_path):
    src = make_release_copy("kits23", tmp_path / "src")
    with pytest.raises(
        MedsynError,
        match=r"--window names modalities \['t2'\] that the data does not have \(its channels are \['CT'\]\)",
    ):
        prepare(src, tmp_path / "o1", windows={"T2": (0, 1900)})
    with pytest.raises(MedsynError, match="--label-map do not apply to the bundled dataset"):
        prepare_main(["mni152", "--out", str(tmp_path / "o2"), "--label-map", "4=3"])
    from PIL import Image

    (tmp_path / "png/images").mkdir(parents=True)
    (tmp_path / "png/masks").mkdir()
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(tmp_path / "png/images/a.png")
    Image.fromarray(np.eye(8, dtype=np.uint8)).save(tmp_path / "png/masks/a.png")
    with pytest.raises(MedsynError, match="--axis does not apply to 2D images"):
        prepare(tmp_path / "png", tmp_path / "o3", axis=0)
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))
