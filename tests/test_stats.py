"""medsyn.stats: seed averaging, the run-aware paired t (CI, test and TOST from one inference), Holm, verdicts, MDE,
the type-I / coverage simulation and Friedman/Nemenyi, each against scipy/statsmodels called directly or a hand
computation."""

import time

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from statsmodels.formula.api import mixedlm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from medsyn.core import MedsynError
from medsyn.stats import (
    ARM,
    COMPARE_COLUMNS,
    EXPLORATORY,
    bootstrap_ci,
    ci_coverage,
    compare_arms,
    design_mde,
    friedman_nemenyi,
    holm,
    min_detectable_effect,
    paired_differences,
    per_seed,
    rejection_rate,
    run_t,
    seed_mean,
    simulate_study,
    simulate_type1,
    summary_table,
    t_inference,
    tost_paired,
    verdict,
    wilcoxon_p,
)

# the quick study's noise, measured on the default data (nbs/08b_stats.ipynb): sd of one real-only U-Net training's
# effect on
# its fold (sd_run, pooled over folds), residual seed noise per subject, subject×arm term
QUICK_NOISE = dict(model_sd=0.0082, seed_sd=0.010, interaction_sd=0.02)


def study_table(arms, n_subjects, fraction=1.0, seeds=3, folds=2, seed=0, baseline=("real", 0.0)):
    "A Dice table: `arms` = {(variant, factor): (effect, noise sd of the subject's difference)}, seeds add 0.005 noise."
    rng = np.random.default_rng(seed)
    rows = []
    level = 0.7 + 0.1 * rng.normal(size=n_subjects)
    for (variant, factor), (effect, sd) in {baseline: (0.0, 0.0), **arms}.items():
        shift = effect + sd * rng.normal(size=n_subjects)
        for i in range(n_subjects):
            for s in range(seeds):
                rows.append(
                    dict(
                        fraction=fraction,
                        variant=variant,
                        factor=factor,
                        n_synthetic=int(100 * factor),
                        n_real=100,
                        fold=i * folds // n_subjects,
                        seed=s,
                        subject=f"s{i}",
                        dice=level[i] + shift[i] + 0.005 * rng.normal(),
                        hd95=3.0,
                    )
                )
    return pd.DataFrame(rows)


def test_seed_mean_reduces_n_to_subjects():
    dice = study_table({("joint", 1.0): (0.0, 0.01)}, n_subjects=10, seeds=3)
    assert len(dice) == 2 * 10 * 3
    sm = seed_mean(dice)
    assert len(sm) == 2 * 10 and set(sm.n_seeds) == {3} and {"n_synthetic", "n_real"} <= set(sm.columns)
    expected = dice.groupby(ARM + ["fold", "subject"]).dice.mean().to_numpy()
    np.testing.assert_allclose(sm.dice.to_numpy(), expected)
    res = compare_arms(dice)
    assert res.n_subjects.tolist() == [10]  # n = test subjects, not subjects × seeds
    assert len(paired_differences(dice, average_seeds=False)) == 30
    with pytest.raises(MedsynError, match="per-class"):
        seed_mean(pd.concat([dice, dice]))


def test_bootstrap_ci_matches_scipy_and_normal_theory():
    d = np.array([0.03, 0.02, -0.01, 0.05, 0.06, 0.04, 0.01, 0.05])
    direct = scipy.stats.bootstrap(
        (d,), np.mean, n_resamples=10000, method="BCa", rng=np.random.default_rng(0)
    ).confidence_interval
    assert bootstrap_ci(d) == pytest.approx((direct.low, direct.high), abs=1e-12)
    lo, hi = bootstrap_ci(d, level=0.9)
    assert direct.low < lo < d.mean() < hi < direct.high  # a 90 % interval is inside the 95 % one
    big = np.random.default_rng(1).normal(0.02, 0.05, 400)
    half = 1.96 * big.std(ddof=1) / np.sqrt(len(big))
    assert bootstrap_ci(big, method="percentile") == pytest.approx((big.mean() - half, big.mean() + half), abs=0.0015)
    assert bootstrap_ci([0.2, 0.2, 0.2]) == (0.2, 0.2)
    assert all(np.isnan(bootstrap_ci([0.2])))


def test_tost_matches_statsmodels_and_hand_t():
    x = np.array([0.81, 0.72, 0.90, 0.65, 0.77, 0.84, 0.70, 0.88])
    y = np.array([0.78, 0.70, 0.91, 0.60, 0.71, 0.80, 0.69, 0.83])
    d = x - y
    for margin in (0.01, 0.02, 0.05, 0.1):
        assert tost_paired(d, margin) == pytest.approx(ttost_paired(x, y, -margin, margin)[0], abs=1e-12)
    se = d.std(ddof=1) / np.sqrt(len(d))
    hand = max(scipy.stats.t.sf((d.mean() + 0.05) / se, 7), scipy.stats.t.cdf((d.mean() - 0.05) / se, 7))
    assert tost_paired(d, 0.05) == pytest.approx(hand, abs=1e-12)
    assert tost_paired(d, 0.05) < 0.05 < tost_paired(d, 0.02)
    assert tost_paired(np.full(4, 0.001), 0.02) == 0.0 and tost_paired(np.full(4, 0.05), 0.02) == 1.0
    assert wilcoxon_p(d) == pytest.approx(0.0234375)  # exact: 6 of 256 sign patterns


def test_holm_known_vector():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.9, 0.8]), [1.0, 1.0])
    np.testing.assert_allclose(holm([0.02, np.nan, 0.3]), [0.04, np.nan, 0.3])
    p = np.random.default_rng(0).uniform(0, 0.3, 12)
    np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1])


def test_compare_arms_verdicts_on_constructed_data():
    many = study_table(
        {("joint", 1.0): (0.05, 0.01), ("joint", 2.0): (-0.05, 0.01), ("joint", 0.5): (0.0, 0.002)},
        n_subjects=40,
        fraction=1.0,
    )
    few = study_table({("joint", 1.0): (0.0, 0.05)}, n_subjects=5, fraction=0.1, seed=1)
    res = compare_arms(pd.concat([many, few]), margin=0.02)
    assert list(res.columns) == ARM + COMPARE_COLUMNS
    got = res.set_index(ARM)[["verdict", "mark"]].apply(tuple, axis=1).to_dict()
    assert got == {
        (1.0, "joint", 1.0): ("better", "▲*"),
        (1.0, "joint", 2.0): ("worse", "▼*"),
        (1.0, "joint", 0.5): ("equivalent", "≈"),
        (0.1, "joint", 1.0): ("inconclusive", ""),
    }
    np.testing.assert_allclose(res.p_holm, holm(res.p_test))  # Holm over all 4 arms
    np.testing.assert_allclose(res.p_tost_holm, holm(res.p_tost))  # and over the TOST family
    assert ((res.ci_low < res.mean_delta) & (res.mean_delta < res.ci_high)).all()
    assert res.set_index(ARM).n_subjects.to_dict()[(0.1, "joint", 1.0)] == 5


def test_significant_inside_the_margin_is_not_worse_and_baseline_is_a_parameter():
    # a tiny but real loss, 0.005 Dice on 60 subjects with almost no noise: significant AND inside the ±0.02 margin
    dice = study_table({("joint", 1.0): (-0.005, 0.001)}, n_subjects=60, baseline=("real-oversampled", 1.0))
    res = compare_arms(dice, baseline=("real-oversampled", 1.0))
    assert res.p_holm[0] < 0.05 and res.ci_high[0] < 0  # the difference is real …
    assert res.verdict[0] == "equivalent" and res.p_verdict[0] == res.p_tost_holm[0]  # … and too small to matter
    assert verdict(-0.012, -0.03, -0.004, 0.001, 0.3, n_runs=3) == ("inconclusive", "", 0.001)  # CI past the margin
    assert verdict(-0.05, -0.08, -0.02, 0.001, 0.9, n_runs=3)[0] == "worse"
    with pytest.raises(MedsynError, match="no baseline arm"):
        compare_arms(dice)  # the default ("real", 0) is not in this table


def test_one_training_per_fold_gives_no_verdict():
    dice = study_table({("joint", 1.0): (-0.05, 0.01)}, n_subjects=20, seeds=1)
    res = compare_arms(dice)
    assert res.n_runs[0] == 1 and res.p_test[0] < 0.001  # the subject-level t alone would say "worse"
    assert res.verdict[0] == EXPLORATORY and res.mark[0] == "" and np.isnan(res.p_verdict[0])
    assert compare_arms(study_table({("joint", 1.0): (-0.05, 0.01)}, n_subjects=20, seeds=2)).verdict[0] == "worse"


def test_run_t_is_the_crossed_mixed_model_and_the_paired_t():
    rng = np.random.default_rng(3)
    D = (
        0.02 * rng.normal(size=(3, 1)) + 0.03 * rng.normal(size=(1, 6)) + 0.01 * rng.normal(size=(3, 6))
    )  # runs × subjects
    long = pd.DataFrame(dict(d=D.ravel(), run=np.repeat(np.arange(3), 6), subject=np.tile(np.arange(6), 3), g=1))
    mm = mixedlm("d ~ 1", long, groups="g", vc_formula={"run": "0 + C(run)", "subject": "0 + C(subject)"}).fit(
        reml=True
    )
    assert run_t([D])["se_delta"] == pytest.approx(mm.bse["Intercept"], abs=2e-4)
    one = run_t([D[:1]])
    tt = scipy.stats.ttest_1samp(D[0], 0.0)
    inf = t_inference(one["mean_delta"], one["se_delta"], one["df"], margin=0.02)
    assert float(inf["p_test"]) == pytest.approx(tt.pvalue, abs=1e-12) and one["df"] == pytest.approx(5)
    assert float(inf["p_tost"]) == pytest.approx(ttost_paired(D[0], np.zeros(6), -0.02, 0.02)[0], abs=1e-12)


def test_run_t_holds_its_level_where_the_subject_level_test_fails():
    "Quick design size (10 subjects, 2 folds), a training-run effect as large as measured between seeds."
    t0 = time.time()
    one = simulate_study(n_sims=2000, n_seeds=1, seed=1, **QUICK_NOISE)
    two = simulate_study(n_sims=2000, n_seeds=2, seed=2, **QUICK_NOISE)
    alt = simulate_study(n_sims=2000, n_seeds=2, seed=3, effect=0.03, **QUICK_NOISE)
    old, new, cover = rejection_rate(one), rejection_rate(two, method="run_t"), ci_coverage(alt, 0.03)
    print(
        f"type-I: subject-level Wilcoxon, one training per fold {old:.3f}; run_t, two {new:.3f}; coverage {cover:.3f}"
    )
    assert old > 0.06  # today's test breaks the bar the issue sets …
    assert new <= 0.06 and cover >= 0.93  # … the run-aware t meets it
    assert rejection_rate(one, method="run_t") > 0.06  # (with one training per fold nothing can: hence "exploratory")
    assert rejection_rate(alt, method="run_t") > 0.1  # and still has power
    assert time.time() - t0 < 20


def test_summary_table_has_every_arm_and_subject_level_sd():
    dice = study_table({("joint", 1.0): (0.05, 0.01), ("joint", 2.0): (0.0, 0.002)}, n_subjects=12)
    summ = summary_table(dice)
    assert len(summ) == 3 and set(summ.n_subjects) == {12} and set(summ.n_seeds) == {3}
    base = summ[summ.variant == "real"].iloc[0]
    assert base.verdict == "baseline" and np.isnan(base.p_holm) and not base.significant
    sm = seed_mean(dice)
    assert base["sd"] == pytest.approx(sm[sm.variant == "real"].dice.std())
    assert base["dice"] == f"{base['mean']:.3f} ± {base['sd']:.3f}"
    assert summ.set_index(ARM).n_synthetic[(1.0, "joint", 2.0)] == 200
    ps = per_seed(dice)
    assert len(ps) == 3 and set(ps.n_seeds) == {3}
    assert ps.sd_within_subject.mean() == pytest.approx(0.005, abs=0.0015)


def test_min_detectable_effect_matches_noncentral_t():
    for n, sd in [(5, 0.02), (10, 0.03), (40, 0.05)]:
        delta = min_detectable_effect(n, sd)
        df, nc = n - 1, delta / sd * np.sqrt(n)
        tc = scipy.stats.t.ppf(0.975, df)
        assert scipy.stats.nct.sf(tc, df, nc) + scipy.stats.nct.cdf(-tc, df, nc) == pytest.approx(0.8, abs=1e-4)
    assert min_detectable_effect(10, 0.03) > min_detectable_effect(40, 0.03)
    assert min_detectable_effect(2.5, 0.03) > min_detectable_effect(
        5, 0.03
    )  # fractional n (Satterthwaite df + 1) works
    dice = study_table({("joint", 1.0): (0.0, 0.02), ("joint", 2.0): (0.0, 0.02)}, n_subjects=10)
    mde = design_mde(dice)
    res = compare_arms(dice)
    assert (mde.n_tests == 2).all() and (mde.alpha_test == 0.025).all()  # Holm's first step over the 2 arms
    for r, s in zip(mde.itertuples(), res.itertuples()):
        assert r.se_delta == pytest.approx(s.se_delta) and r.mde == pytest.approx(
            min_detectable_effect(s.df + 1, s.se_delta * np.sqrt(s.df + 1), alpha=0.025)
        )


def test_type1_error_seed_averaged_vs_pooled():
    t0 = time.time()
    averaged = simulate_type1(n_sims=1000, n_subjects=10, n_seeds=3, folds=2, seed=0)
    pooled = simulate_type1(n_sims=1000, n_subjects=10, n_seeds=3, folds=2, seed=0, pooled=True)
    power = rejection_rate(simulate_study(n_sims=500, effect=0.05, seed=1))
    print(f"type-I: seed-averaged {averaged:.3f}, pooled {pooled:.3f}; power at +0.05 Dice {power:.2f}")
    assert averaged <= 0.07
    assert pooled >= 0.12 and pooled > 2.5 * averaged
    assert power > 0.8
    assert time.time() - t0 < 20


def test_friedman_nemenyi_vs_scipy():
    rng = np.random.default_rng(0)
    tab = pd.DataFrame(
        0.7 + 0.05 * rng.normal(size=(6, 4)) + np.array([0, 0.03, 0.06, 0.01]),
        columns=["real×0", "joint×0.5", "joint×1", "joint×2"],
        index=[f"d{i}" for i in range(6)],
    )
    r = friedman_nemenyi(tab)
    direct = scipy.stats.friedmanchisquare(*tab.T.to_numpy())
    assert r.applicable and r.statistic == pytest.approx(direct.statistic) and r.p == pytest.approx(direct.pvalue)
    ranks = scipy.stats.rankdata(-tab.to_numpy(), axis=1).mean(0)
    np.testing.assert_allclose(r.ranks.to_numpy(), ranks)
    assert r.ranks.sum() == pytest.approx(4 * 5 / 2)
    assert r.cd == pytest.approx(2.569 * np.sqrt(4 * 5 / 36), abs=1e-3)  # Demšar's q_0.05 for k = 4
    assert ((r.pairwise.p < 0.05) == r.pairwise.significant).all() and len(r.pairwise) == 6
    na = friedman_nemenyi(tab.iloc[:2])
    assert not na.applicable and "not applicable" in na.reason
    with pytest.raises(MedsynError, match="missing values"):
        friedman_nemenyi(tab.mask(tab > 0.75))
