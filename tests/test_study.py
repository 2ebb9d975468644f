"""The study: statistics against scipy and a hand example, and the CI-sized study end to end (with resume)."""
import time

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from medsyn.study import holm, wilcoxon_vs_baseline, experiment_grid, study_config, study_main


def test_holm_matches_hand_example():
    # m = 4: sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.9, 0.8]), [1.0, 1.0])
    np.testing.assert_allclose(holm([0.02, np.nan, 0.3]), [0.04, np.nan, 0.3])


def test_wilcoxon_matches_scipy_on_known_example():
    x = np.array([0.81, 0.72, 0.90, 0.65, 0.77, 0.84, 0.70, 0.88])
    y = np.array([0.78, 0.70, 0.91, 0.60, 0.71, 0.80, 0.69, 0.83])
    subj = [f"s{i}" for i in range(8)]
    dice = pd.concat([pd.DataFrame(dict(fraction=1.0, variant=v, factor=f, fold=0, seed=0, subject=subj, dice=d))
                      for v, f, d in [("real", 0.0, y), ("joint", 1.0, x)]])
    res = wilcoxon_vs_baseline(dice)
    assert len(res) == 1 and res.n_pairs[0] == 8
    assert res.p[0] == pytest.approx(wilcoxon(x, y).pvalue) == pytest.approx(0.0234375)
    assert res.p_holm[0] == pytest.approx(res.p[0])  # one test: no correction


def test_quick_profile_grid_is_the_documented_one():
    grid = experiment_grid(study_config("quick"))
    assert set(grid.variant) == {"real", "joint"} and grid.cell.is_unique
    assert sorted(grid[grid.fraction == 1.0].factor.unique()) == [0, 0.5, 1, 2]


@pytest.mark.slow
def test_ci_study_end_to_end_and_resume(run_medsyn, tmp_path):
    "The smallest study runs end to end; tables/figures exist and are finite; a rerun skips every stage."
    runs = tmp_path / "runs"
    t0 = time.time()
    res = run_medsyn("study", "--profile", "ci", "--out", str(runs), timeout=900)
    first = time.time() - t0
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    out = runs / "default"
    for name in ["dice", "dice_per_class", "dice_summary", "wilcoxon", "quality", "gan_training", "dataset", "folds"]:
        for ext in ("csv", "md", "tex"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    for name in ["dataset_overview", "samples_joint", "real_vs_synthetic", "dice_vs_n", "small_data"]:
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000, f"{name}.{ext}"
    dice = pd.read_csv(out / "tables" / "dice.csv")
    assert {"variant", "n_synthetic", "fold", "subject", "dice"} <= set(dice.columns)
    assert np.isfinite(dice.dice).all() and dice.dice.between(0, 1).all()
    assert set(dice.variant) == {"real", "joint"} and (dice[dice.variant == "joint"].n_synthetic > 0).all()
    summary = pd.read_csv(out / "tables" / "dice_summary.csv")
    assert np.isfinite(summary["mean"]).all()
    quality = pd.read_csv(out / "tables" / "quality_per_fold.csv")
    assert all(d.startswith("n/a") for d, v in zip(quality.display, quality.value) if not np.isfinite(v))
    assert (runs / "report.html").stat().st_size > 0 and (out / "notebooks" / "04_segmentation.ipynb").exists()

    t0 = time.time()
    res2 = run_medsyn("study", "--profile", "ci", "--out", str(runs), timeout=600)
    assert res2.returncode == 0, res2.stdout[-4000:] + res2.stderr[-4000:]
    for stage in ["prepare", "gan", "generate", "segment", "quality", "report"]:
        assert f"[default] {stage}: already finished, skipped" in res2.stdout
    assert time.time() - t0 < first / 2
