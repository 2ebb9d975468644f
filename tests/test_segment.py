"""The segmentation U-Net on the bundled default dataset: it trains, and subjects never leak between train and test."""
import json, math

import numpy as np
import pytest
import torch

from medsyn.data import default_dataset, load_canonical
from medsyn.segment import (seg_config, experiment_split, segment_experiment, train_unet, build_unet, unet_features,
                            load_unet, segment_main)

TINY = dict(max_epochs=1, steps_per_epoch=2, batch_size=8, channels=(4, 8, 16), strides=(2, 2))


@pytest.fixture(scope="module")
def real():
    return load_canonical(default_dataset(64))


def test_unet_trains_a_few_steps_with_finite_loss(real):
    tr, va, _ = experiment_split(real.subjects, fold=0, k=5)
    run = train_unet([real.subset(tr)], real.subset(va), seg_config("quick", **{**TINY, "max_epochs": 2}))
    assert len(run.history) == 2 and np.isfinite(run.history.loss).all()
    assert 0 <= run.best_val_dice <= 1


def test_per_subject_metrics_only_on_held_out_subjects(real):
    for fold in range(5):
        tr, va, te = experiment_split(real.subjects, fold=fold, k=5)
        assert not (set(tr) | set(va)) & set(te) and not set(tr) & set(va)
    tr, va, te = experiment_split(real.subjects, fold=1, k=5)
    res = segment_experiment(real, tr, va, te, cfg=seg_config("quick", **TINY))
    tested = set(res["per_class"].subject)
    assert tested == set(te)
    assert not tested & (set(res["train_subjects"]) | set(res["val_subjects"]))
    assert res["per_class"].dice.between(0, 1).all()
    assert res["n_real"] == int(real.index.subject.isin(tr).sum())


def test_small_data_fraction_keeps_test_subjects(real):
    full = experiment_split(real.subjects, fold=0, k=5)
    half = experiment_split(real.subjects, fold=0, k=5, fraction=0.5)
    assert half[2] == full[2] and half[1] == full[1] and set(half[0]) < set(full[0])


def test_bottleneck_features_shape():
    net = build_unet(1, 4, seg_config("quick"))
    feats = unet_features(net)(torch.rand(3, 1, 64, 64))
    assert feats.shape == (3, seg_config("quick").channels[-1]) and torch.isfinite(feats).all()


def test_segment_cli_writes_metrics_and_model(tmp_path, capsys):
    out = tmp_path / "seg"
    rc = segment_main(["--train", str(default_dataset(64)), "--fold", "0", "--folds", "5", "--epochs", "1", "--out", str(out)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(summary["mean_dice"]) and summary["n_synthetic"] == 0
    for name in ("per_class.csv", "per_subject.csv", "history.csv", "summary.json", "unet.pt"):
        assert (out / name).stat().st_size > 0
    model, info = load_unet(out / "unet.pt")
    assert info["labels"][1] == "gray matter" and model(torch.rand(1, 1, 64, 64)).shape == (1, 4, 64, 64)
