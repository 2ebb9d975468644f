"""The segmentation U-Net on the bundled default dataset: it trains, and subjects never leak between train and test."""

import json
import math

import numpy as np
import pytest
import torch

from medsyn.core import MedsynError
from medsyn.data import fold_subjects, load_canonical, mni152_dataset
from medsyn.segment import (
    build_unet,
    load_unet,
    seg_config,
    segment_experiment,
    segment_main,
    train_unet,
    unet_features,
    volume_scores,
)

TINY = dict(max_epochs=1, steps_per_epoch=2, batch_size=8, channels=(4, 8, 16), strides=(2, 2))


@pytest.fixture(scope="module")
def real():
    return load_canonical(mni152_dataset(64))  # 137 slices: fast; the simulated default is exercised by test_study


def test_unet_trains_a_few_steps_with_finite_loss(real):
    tr, va, _ = fold_subjects(real.subjects, fold=0, k=5)
    run = train_unet([real.subset(tr)], real.subset(va), seg_config("quick", **{**TINY, "max_epochs": 2}))
    assert len(run.history) == 2 and np.isfinite(run.history.loss).all()
    assert 0 <= run.best_val_dice <= 1


def test_per_subject_metrics_only_on_held_out_subjects(real):
    for fold in range(5):
        tr, va, te = fold_subjects(real.subjects, fold=fold, k=5)
        assert not (set(tr) | set(va)) & set(te) and not set(tr) & set(va)
    tr, va, te = fold_subjects(real.subjects, fold=1, k=5)
    res = segment_experiment(real, tr, va, te, cfg=seg_config("quick", **TINY))
    tested = set(res["per_class"].subject)
    assert tested == set(te)
    assert not tested & (set(res["train_subjects"]) | set(res["val_subjects"]))
    assert res["per_class"].dice.between(0, 1).all()
    assert res["n_real"] == len(real.subset(tr).for_training())
    assert (
        res["per_class"].groupby("subject").n_slices.first().to_dict()
        == real.subset(te).index.groupby("subject").size().to_dict()
    )


def test_small_data_fraction_keeps_test_subjects_and_counts_validation(real):
    full = fold_subjects(real.subjects, fold=0, k=2)
    half = fold_subjects(real.subjects, fold=0, k=2, fraction=0.5)
    assert half[2] == full[2] and set(half[0]) | set(half[1]) < set(full[0]) | set(full[1])
    assert len(half[0]) + len(half[1]) == int(
        0.5 * (len(full[0]) + len(full[1])) + 0.5
    )  # labelled subjects (half up), not only train


def test_leak_guard_names_the_subject(real):
    tr, va, te = fold_subjects(real.subjects, fold=0, k=5)
    with pytest.raises(MedsynError, match=te[0]):
        segment_experiment(real, tr + [te[0]], va, te, cfg=seg_config("quick", **TINY))


def test_hd95_in_mm_on_an_anisotropic_volume_and_the_missed_class():
    """Two boxes 2 slices apart along an axis of 4 mm slices: HD95 = 8 mm, not 2 pixels; a missed class gets the
    diagonal."""
    gt = torch.zeros(6, 10, 10, dtype=torch.long)
    pr = torch.zeros_like(gt)
    gt[1, 3:7, 3:7] = 1
    pr[3, 3:7, 3:7] = 1  # same square, shifted by two slices
    gt[4, 0:2, 0:2] = 2  # class 2 missed by the prediction
    dice, hd = volume_scores(pr, gt, 4, spacing=(4.0, 0.5, 0.5))
    assert hd[0] == pytest.approx(8.0)
    assert dice[1] == 0 and hd[1] == pytest.approx(math.sqrt((6 * 4) ** 2 + 5**2 + 5**2))
    assert math.isnan(dice[2]) and math.isnan(hd[2])  # class 3 absent from both: excluded


def test_bottleneck_features_shape():
    net = build_unet(1, 4, seg_config("quick"))
    feats = unet_features(net)(torch.rand(3, 1, 64, 64))
    assert feats.shape == (3, seg_config("quick").channels[-1]) and torch.isfinite(feats).all()


def test_segment_cli_writes_metrics_and_model(tmp_path, capsys):
    out = tmp_path / "seg"
    rc = segment_main(
        ["--train", str(mni152_dataset(64)), "--fold", "0", "--folds", "5", "--epochs", "1", "--out", str(out)]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(summary["mean_dice"]) and summary["n_synthetic"] == 0
    for name in ("per_class.csv", "per_subject.csv", "history.csv", "summary.json", "unet.pt"):
        assert (out / name).stat().st_size > 0
    model, info = load_unet(out / "unet.pt")
    assert info["labels"][1] == "gray matter" and model(torch.rand(1, 1, 64, 64)).shape == (1, 4, 64, 64)
