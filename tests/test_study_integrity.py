"""Study integrity: no artefact trained on a subject of its cell's test set, ever; stale artefacts recomputed; unchanged reruns reuse."""
import json
from pathlib import Path

import pandas as pd
import pytest

from medsyn.core import load_json
from medsyn.study import (VARIANT_GANS, RunLayout, experiment_grid, gan_jobs, read_manifest, split_of, stage_gan, stage_generate,
                          stage_prepare, stage_segment, study_config, study_run_dir)

STAGES = (stage_prepare, stage_gan, stage_generate, stage_segment)


def run_stages(cfg, out):
    "Run the study stages in this process; returns the log lines."
    lines = []
    for stage in STAGES: stage(cfg, out, log=lines.append)
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
            assert set(syn["inputs"]["gan_subjects"]) <= set(split["train"]), cell.cell   # GAN subjects ⊆ the cell's training subjects


@pytest.mark.slow
def test_changed_folds_and_split_seed_never_reuse_leaking_artefacts(tmp_path):
    out = tmp_path / "default"
    a = study_config("ci")
    run_stages(a, out)
    assert_no_leak(a, out)
    before = {p.parent.name: p.read_text() for p in (out / "gan").glob("*/manifest.json")}

    b = study_config("ci", folds=3, split_seed=1)
    log_b = run_stages(b, out)
    assert_no_leak(b, out)
    assert any("recomputing" in l and "subjects" in l for l in log_b), "\n".join(log_b)
    for name, text in before.items():                        # every GAN of the old folds was retrained or left unused
        if (out / "gan" / name).exists() and name in {j.name for j in gan_jobs(b).itertuples()}:
            assert (out / "gan" / name / "manifest.json").read_text() != text or \
                   json.loads(text)["inputs"]["subjects"] == read_manifest(out / "gan" / name)["inputs"]["subjects"]
    folds = pd.read_csv(out / "tables" / "folds.csv")
    assert len(folds) == 3 * 2 and {"train_subjects", "val_subjects", "test_subjects"} <= set(folds.columns)
    for r in folds.itertuples():
        assert not set(r.train_subjects.split()) & set(r.test_subjects.split())
    gan = pd.read_csv(out / "tables" / "gan_training.csv")
    assert list(gan.columns[:7]) == ["gan", "fold", "fraction", "subjects", "kimg_reached", "snapshot_kimg", "seconds"]
    assert len(gan) == 3 * 2 and (gan.kimg_reached >= gan.snapshot_kimg).all()

    log_again = run_stages(b, out)                            # unchanged: nothing is trained or sampled again
    assert not [l for l in log_again if "recomputing" in l or "gan: training" in l or "gan: resuming" in l
                or l.startswith("generate: ") and "reused" not in l or l.startswith("segment: frac")], "\n".join(log_again)


def test_small_data_gans_train_on_the_fraction_subjects_only():
    cfg = study_config("ci")
    fractions = {(j.fold, j.fraction) for j in gan_jobs(cfg).itertuples()}
    assert fractions == {(f, x) for f in range(cfg.folds) for x in cfg.fractions}   # no GAN shared across fractions


def test_stage_notebooks_write_under_the_dataset_actually_used(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSYN_RUNS", str(tmp_path))
    cfg = study_config("ci", dataset=str(tmp_path / "my_data"))
    assert study_run_dir(cfg) == tmp_path / "my_data"
    assert study_run_dir(study_config("ci")) == tmp_path / "default"
