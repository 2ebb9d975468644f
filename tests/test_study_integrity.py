"""Study integrity: no artefact trained on a subject of its cell's test set, ever; stale artefacts recomputed; unchanged
reruns reuse."""

import json
import re

import pandas as pd
import pytest
import torch

from medsyn.core import MedsynError, load_json
from medsyn.data import load_canonical
from medsyn.study import (
    VARIANT_GANS,
    WARPED_VARIANTS,
    RunLayout,
    artefact_key,
    experiment_grid,
    gan_jobs,
    load_real,
    make_synthetic_set,
    read_manifest,
    run_cell,
    split_of,
    stage_gan,
    stage_generate,
    stage_prepare,
    stage_segment,
    study_config,
    study_run_dir,
    synthetic_inputs,
    write_real_subset,
)

STAGES = (stage_prepare, stage_gan, stage_generate, stage_segment)
TINY_GAN = dict(
    metric="stats",
    batch=4,
    metric_n=8,
    grid_n=2,
    channel_base=256,
    channel_max=32,
    z_dim=32,
    w_dim=32,
    mapping_layers=2,
)
# The leak checks need every artefact kind (both GAN kinds, real subsets, warped masks, cells), not their quality:
# tiny, short GANs (a few steps) and no control arms (they train on the same real subsets as the real-only cells).
LEAN = dict(controls=(), gan_overrides=TINY_GAN, gan_kimg={"joint": 0.02, "mask": 0.02, "cond": 0.016})


def run_stages(cfg, out):
    "Run the study stages in this process; returns the log lines."
    lines = []
    for stage in STAGES:
        stage(cfg, out, log=lines.append)
    return lines


def assert_no_leak(cfg, out):
    "Every GAN and U-Net of the current grid trained on its cell's training subjects only."
    lay, info = RunLayout(out), load_json(RunLayout(out).prepare_json)
    for job in gan_jobs(cfg).itertuples():
        split = split_of(info["splits"], job.fold, job.fraction)
        subjects = set(read_manifest(lay.gan_run(job.gan, job.fold, job.fraction))["inputs"]["subjects"])
        config = load_json(lay.gan_run(job.gan, job.fold, job.fraction) / "config.json")
        assert subjects == set(split["train"]) == set(config["subjects"]), job.name
        assert not subjects & (set(split["val"]) | set(split["test"])), job.name
    for cell in experiment_grid(cfg).itertuples():
        split = split_of(info["splits"], cell.fold, cell.fraction)
        m = read_manifest(lay.cell(cell.cell))
        assert m["complete"] and m["inputs"]["test"] == split["test"] and m["inputs"]["train"] == split["train"]
        assert not set(m["inputs"]["train"]) & (set(m["inputs"]["val"]) | set(m["inputs"]["test"]))
        tested = set(pd.read_csv(lay.cell(cell.cell) / "per_class.csv").subject)
        assert tested == set(split["test"]), cell.cell
        if cell.factor > 0 and cell.variant in VARIANT_GANS:
            syn = read_manifest(lay.synthetic(cell.variant, cell.fold, cell.fraction))
            assert set(syn["inputs"]["gan_subjects"]) <= set(split["train"]), (
                cell.cell
            )  # GAN subjects ⊆ the cell's training subjects
            if cell.variant in WARPED_VARIANTS:  # the masks came from the cell's own training subjects
                assert syn["inputs"]["masks"]["subjects"] == sorted(split["train"]), cell.cell
                assert set(syn["inputs"]["masks"]["subjects"]) <= set(syn["inputs"]["gan_subjects"]), cell.cell


@pytest.mark.slow
def test_changed_folds_and_split_seed_never_reuse_leaking_artefacts(tmp_path, capsys):
    out = tmp_path / "default"
    a = study_config("ci", **LEAN)
    run_stages(a, out)
    assert_no_leak(a, out)
    before = {p.parent.name: p.read_text() for p in (out / "gan").glob("*/manifest.json")}
    capsys.readouterr()

    b = study_config("ci", folds=3, split_seed=1, **LEAN)
    log_b = run_stages(b, out)
    log_b += capsys.readouterr().out.splitlines()  # what the jobs themselves print (an artefact reset, ...)
    assert_no_leak(b, out)
    assert any("recomputing" in l and "subjects" in l for l in log_b), "\n".join(log_b)
    for name, text in before.items():  # every GAN of the old folds was retrained or left unused
        if (out / "gan" / name).exists() and name in {j.name for j in gan_jobs(b).itertuples()}:
            assert (out / "gan" / name / "manifest.json").read_text() != text or json.loads(text)["inputs"][
                "subjects"
            ] == read_manifest(out / "gan" / name)["inputs"]["subjects"]
    folds = pd.read_csv(out / "tables" / "folds.csv")
    assert len(folds) == 3 * 2 and {"train_subjects", "val_subjects", "test_subjects"} <= set(folds.columns)
    for r in folds.itertuples():
        assert not set(r.train_subjects.split()) & set(r.test_subjects.split())
    gan = pd.read_csv(out / "tables" / "gan_training.csv")
    assert list(gan.columns[:7]) == ["gan", "fold", "fraction", "subjects", "kimg_reached", "snapshot_kimg", "seconds"]
    n_gans = len({g for v in b.variants for g in VARIANT_GANS[v]})  # one GAN per (kind, fold, fraction)
    assert len(gan) == 3 * 2 * n_gans == len(gan_jobs(b)) and (gan.kimg_reached >= gan.snapshot_kimg).all()

    log_again = run_stages(b, out)  # unchanged: nothing is trained or sampled again
    assert not [
        l
        for l in log_again
        if "recomputing" in l
        or "gan: training" in l
        or "gan: resuming" in l
        or l.startswith("generate: ")
        and "reused" not in l
        and not l.startswith("generate: done in")  # the stage's own summary line
        or l.startswith("segment: frac")
        or re.search(r"\] (gan|synthetic|cell)/\S+ done on", l)  # a job ran instead of being cached
    ], "\n".join(log_again)


def test_small_data_gans_train_on_the_fraction_subjects_only():
    cfg = study_config("ci")
    fractions = {(j.fold, j.fraction) for j in gan_jobs(cfg).itertuples()}
    assert fractions == {(f, x) for f in range(cfg.folds) for x in cfg.fractions}  # no GAN shared across fractions


def test_stage_notebooks_write_under_the_dataset_actually_used(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSYN_RUNS", str(tmp_path))
    cfg = study_config("ci", dataset=str(tmp_path / "my_data"))
    assert study_run_dir(cfg) == tmp_path / "my_data"
    assert study_run_dir(study_config("ci")) == tmp_path / "default"


@pytest.fixture(scope="module")
def warped_run(tmp_path_factory):
    "A CI-sized study of the warped+cond variant alone, with tiny cond GANs, through the generate stage."
    out = tmp_path_factory.mktemp("warped") / "default"
    cfg = study_config("ci", variants=("warped+cond",), fractions=(1.0,), gan_kimg=0.008, gan_overrides=TINY_GAN)
    for stage in (stage_prepare, stage_gan, stage_generate):
        stage(cfg, out, log=lambda m: None)
    return cfg, out


def test_warped_masks_come_from_the_cells_training_subjects(warped_run):
    cfg, out = warped_run
    lay, info = RunLayout(out), load_json(RunLayout(out).prepare_json)
    assert [j.gan for j in gan_jobs(cfg).itertuples()] == ["cond"] * cfg.folds
    for fold in range(cfg.folds):
        split = split_of(info["splits"], fold, 1.0)
        src = load_canonical(lay.real_subset(fold, 1.0))
        assert sorted(src.subjects) == sorted(split["train"])
        syn_dir = lay.synthetic("warped+cond", fold, 1.0)
        m = read_manifest(syn_dir)["inputs"]
        assert m["masks"]["subjects"] == sorted(split["train"]) and set(m["gan_subjects"]) == set(split["train"])
        assert m["masks"]["warp"]["seed"] == cfg.mask_warp_seed + fold
        _, real_masks = src.tensors()
        _, syn_masks = load_canonical(syn_dir).tensors()
        plain = real_masks[[k % len(real_masks) for k in range(len(syn_masks))]]
        assert set(syn_masks.unique().tolist()) <= set(src.labels) and not torch.equal(
            syn_masks, plain
        )  # warped label maps
    assert (out / "figures" / "samples_warped_cond.png").stat().st_size > 1000


def test_changed_warp_changes_the_synthetic_inputs(warped_run):
    cfg, out = warped_run
    lay = RunLayout(out)
    key = lambda c: artefact_key(synthetic_inputs(c, "warped+cond", 0, 1.0, 10, lay))
    base = key(cfg)
    assert key(study_config("ci", **{**_fields(cfg), "mask_warp": dict(rotate=20.0)})) != base
    assert key(study_config("ci", **{**_fields(cfg), "mask_warp_seed": 7})) != base
    assert key(study_config("ci", **_fields(cfg))) == base
    with pytest.raises(MedsynError, match="sheer"):
        study_config("ci", mask_warp=dict(sheer=0.1))


def _fields(cfg):
    return {
        k: getattr(cfg, k)
        for k in ("variants", "fractions", "gan_kimg", "gan_overrides", "mask_warp", "mask_warp_seed")
    }


def test_validation_or_test_subjects_never_supply_masks(warped_run):
    "Masks from a subset holding a test subject reach gan_subjects, and the segment stage refuses the cell."
    cfg, out = warped_run
    lay, info = RunLayout(out), load_json(RunLayout(out).prepare_json)
    real = load_real(cfg, info["data_dir"])
    split = split_of(info["splits"], 0, 1.0)
    leak = split["test"][0]
    write_real_subset(
        real, split["train"] + [leak], lay.real_subset(0, 1.0), info["dataset_sha256"], log=lambda m: None
    )
    cell = experiment_grid(cfg).query("variant == 'warped+cond' and fold == 0").iloc[0]
    make_synthetic_set(cfg, "warped+cond", 0, 1.0, 8, lay, log=lambda m: None)
    assert leak in read_manifest(lay.synthetic("warped+cond", 0, 1.0))["inputs"]["gan_subjects"]
    with pytest.raises(MedsynError, match=leak):
        run_cell(cell, cfg, real, info["splits"], out, log=lambda m: None, fingerprint=info["dataset_sha256"])
