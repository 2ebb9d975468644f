"""The study: statistics against scipy and a hand example, and the CI-sized study end to end (with resume)."""

import re
import shutil
import time
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from medsyn.core import load_json, save_json
from medsyn.stats import EXPLORATORY, VERDICTS
from medsyn.study import (
    STAGES,
    RunLayout,
    dice_findings,
    ensure_kernel,
    execute_notebook,
    experiment_grid,
    lookup_findings,
    lookup_warning,
    notebook_parameters,
    read_manifest,
    render_report,
    run_config,
    segmentation_tables,
    study_config,
    study_notebooks_dir,
    trivial_baseline_check,
    write_table,
)

HOSTILE = "<img src=x onerror=alert(1)>"


class ReportHTML(HTMLParser):
    """What a rendered report shows: its images, figure captions, tables, table captions and the code blocks nbconvert
    emits."""

    def __init__(self, html: str):
        super().__init__()
        self.images, self.tables, self.figcaptions, self.captions, self.code = 0, 0, [], [], 0
        self._in = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        self.images += tag == "img"
        self.tables += tag == "table"
        self.code += "jp-InputPrompt" in cls or "hl-ipython" in cls or "input_area" in cls or "jp-OutputPrompt" in cls
        if tag in ("figcaption", "caption"):
            self._in = [tag, ""]

    def handle_data(self, data):
        if self._in:
            self._in[1] += data

    def handle_endtag(self, tag):
        if self._in and tag == self._in[0]:
            (self.figcaptions if tag == "figcaption" else self.captions).append(self._in[1].strip())
            self._in = None


def assert_reads_like_a_paper(path, n_test: int, min_figures: int):
    """A rendered report: no code, prompts, logs or front matter; every figure and table numbered and captioned, no
    unfilled field."""
    html = path.read_text()
    r = ReportHTML(html)
    assert r.code == 0, f"{path}: {r.code} code inputs/prompts"
    for leftover in (
        "skip_exec",
        "papermill parameters",
        "study_header(",
        "rep.table(",  # front matter, code
        'data-mime-type="text/plain"',
        'data-mime-type="application/vnd.jupyter.stderr"',
    ):  # logs, reprs
        assert leftover not in html, f"{path}: shows {leftover!r}"
    assert r.images == len(r.figcaptions) >= min_figures, (path, r.images, r.figcaptions)
    assert [c.split(".")[0] for c in r.figcaptions] == [f"Figure {i}" for i in range(1, r.images + 1)]
    assert r.tables == len(r.captions) > 0 and [c.split(".")[0] for c in r.captions] == [
        f"Table {i}" for i in range(1, r.tables + 1)
    ]
    assert not [c for c in r.figcaptions + r.captions if re.search(r"\{\w+\}", c)], "a caption with an unfilled field"
    assert f"n = {n_test} test subjects" in html, f"{path}: the number of test subjects is not quoted"


def test_trivial_baseline_is_fitted_on_training_subjects_only(monkeypatch):
    "The intensity lookup sees the training view of the training subjects, never a validation or test subject."
    from medsyn import segment
    from medsyn.data import default_dataset, fold_subjects, load_canonical

    seen = []
    fit = segment.IntensityLookup.fit
    monkeypatch.setattr(
        segment.IntensityLookup, "fit", lambda self, ds, **kw: (seen.append(set(ds.subjects)), fit(self, ds, **kw))[1]
    )
    real = load_canonical(default_dataset(64))
    tr, va, te = fold_subjects(real.subjects, 0, 2)
    scores = segment.lookup_baseline(real, tr, te)
    assert seen == [set(tr)] and set(scores.subject) == set(te)


def test_quick_profile_grid_is_the_documented_one():
    grid = experiment_grid(study_config("quick"))
    assert set(grid.variant) == {"real", "warped+cond", "intensity-lookup"} and grid.cell.is_unique
    assert (
        sorted(grid[grid.fraction == 1.0].factor.unique()) == [0, 1] and len(grid) == 10
    )  # (2 seeds x 2 arms + lookup) x 2 folds
    trained = grid[grid.variant.isin(["real", "warped+cond"])]
    assert (trained.groupby(["variant", "fold"]).seed.nunique() >= 2).all()  # the headline comparison can get a verdict
    assert {"real-oversampled", "real-noaug"} <= set(
        experiment_grid(study_config("full")).variant
    )  # full keeps the controls


def toy_dice(seeds=(0, 1), lookup=(0.86, 0.70), n=5, seed=0):
    """Two folds of n subjects: real-only U-Net near 0.865 / 0.80, warped+cond 0.04 lower, a deterministic lookup per
    fold."""
    rng = np.random.default_rng(seed)
    rows = []
    level = {(f, i): (0.865, 0.80)[f] + 0.03 * rng.normal() for f in (0, 1) for i in range(n)}
    for s in seeds:
        run = {(v, f): 0.005 * rng.normal() for v in ("real", "warped+cond") for f in (0, 1)}
        for (f, i), x in level.items():
            for v, fac, shift in (("real", 0.0, 0.0), ("warped+cond", 1.0, -0.04)):
                rows.append(
                    dict(
                        fraction=1.0,
                        variant=v,
                        factor=fac,
                        n_synthetic=int(50 * fac),
                        n_real=50,
                        fold=f,
                        seed=s,
                        subject=f"f{f}s{i}",
                        dice=x + shift + run[(v, f)] + 0.003 * rng.normal(),
                    )
                )
            if s == seeds[0]:
                rows.append(
                    dict(
                        fraction=1.0,
                        variant="intensity-lookup",
                        factor=0.0,
                        n_synthetic=0,
                        n_real=50,
                        fold=f,
                        seed=s,
                        subject=f"f{f}s{i}",
                        dice=lookup[f] + (x - (0.865, 0.80)[f]) + 0.03 * rng.normal(),
                    )
                )
    return pd.DataFrame(rows)


def test_lookup_wording_on_a_fold_where_they_tie():
    "Fold 0: the U-Net's mean is above the lookup's but the paired CI reaches 0: 'no better than', never 'beats'."
    t = trivial_baseline_check(toy_dice())
    real = t[t.variant == "real"].set_index("fold")
    assert real.dice[0] > real.dice_lookup[0] and real.ci_low[0] < 0 and not real.beats_lookup[0]  # a tie, not a win
    assert real.beats_lookup[1] and real.ci_low[1] > 0
    w = lookup_warning(t)
    assert (
        "fold 0 at 100 %" in w
        and "the real-only U-Net is no better than a per-pixel intensity lookup" in w
        and "fold 1" not in w.split("either")[0]
    )
    assert "beats" not in w and "on 1 of 2 (fold, fraction) pairs" in lookup_findings(t)
    assert set(t.variant) == {"real", "warped+cond"} and (t.n_runs == 2).all()  # every arm, trainings counted


def test_report_prose_never_outruns_the_tables():
    """Each sentence carries its table row's verdict and the p it rests on; one training per fold gives no better/worse
    anywhere."""
    for seeds in [(0,), (0, 1)]:
        tabs = segmentation_tables(toy_dice(seeds), study_config("quick"))
        summ = tabs["dice_summary"]
        text = dice_findings(summ, 10)
        rows = summ[summ.verdict != "baseline"]
        assert set(rows.verdict) <= set(VERDICTS)
        for r in rows.itertuples():
            line = next(l for l in text.splitlines() if f"**{r.variant}×{r.factor:g}**" in l)
            assert line.endswith(f"**{r.verdict}**.")
            if r.verdict != EXPLORATORY:
                assert f"p = {r.p_verdict:.3g}" in line
        if seeds == (0,):
            assert set(rows.verdict) == {EXPLORATORY} and not any(
                f"**{v}**" in text for v in ("better", "worse", "equivalent")
            )
        else:
            assert rows.set_index("variant").verdict["warped+cond"] == "worse"  # −0.04 with 2 trainings per fold


def assert_report_quotes_names_as_text(out, copy):
    """The finished study `out`, its names replaced by markup as a hostile `dataset.json` and hostile subject ids would
    bring them (prepare record and every table's text columns), reported again: every name shows as text, no markup."""
    shutil.copytree(out, copy)
    lay = RunLayout(copy)
    info = load_json(lay.prepare_json)
    info.update(
        name=HOSTILE,
        modalities=[f"{m} {HOSTILE}" for m in info["modalities"]],
        labels={k: f"{v} {HOSTILE}" for k, v in info["labels"].items()},
    )
    save_json(info, lay.prepare_json)
    for csv in (copy / "tables").glob("*.csv"):
        t = pd.read_csv(csv)
        for c in [
            c for c in ("dataset", "subject", "subjects", "train", "val", "test", "label", "class") if c in t.columns
        ]:
            t[c] = t[c].astype(str) + " " + HOSTILE
        write_table(t, csv.with_suffix(""))
    nb = STAGES[-1][1]
    execute_notebook(
        study_notebooks_dir() / nb, lay.notebook(nb), notebook_parameters(run_config(copy), copy), ensure_kernel()
    )
    html = render_report(lay.notebook(nb), copy / "report.html", title=f"medsyn study: {HOSTILE}").read_text()
    assert html.count("&lt;img src=x onerror=alert") >= 3, "the hostile names are not quoted in the report"
    assert "<img src=x" not in html and "onerror=alert(1)>" not in html, "a name from the user's files became markup"
    for md in (copy / "tables").glob("*.md"):
        assert "<img" not in md.read_text(), md


@pytest.mark.slow
def test_ci_study_end_to_end_and_resume(run_medsyn, tmp_path):
    "The smallest study runs end to end; tables/figures exist and are finite; a rerun skips every stage."
    runs = tmp_path / "runs"
    t0 = time.time()
    # On the template slabs (the cost CI was sized for): on the default simulated cohort the quality stage alone (4
    # channels + mask through Inception) ran over 11 min on one idle core; the cohort's preparation, lesion tables and
    # provenance are tested in test_data.py and below (test_dataset_names...), its full run is the README main job.
    res = run_medsyn("study", "--profile", "ci", "--datasets", "mni152", "--out", str(runs), timeout=1800)
    first = time.time() - t0
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    out = runs / "mni152"
    for name in [
        "dice",
        "dice_per_class",
        "dice_summary",
        "comparisons",
        "vs_dilution",
        "trivial_baseline",
        "design_power",
        "dice_per_seed",
        "learning_curves",
        "quality",
        "gan_training",
        "dataset",
        "folds",
    ]:
        for ext in ("csv", "md", "tex"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    for name in [
        "dataset_overview",
        "samples_joint",
        "samples_warped_cond",
        "real_vs_synthetic",
        "dice_vs_n",
        "small_data",
    ]:
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000, f"{name}.{ext}"
    dice = pd.read_csv(out / "tables" / "dice.csv")
    assert {"variant", "n_synthetic", "fold", "subject", "dice"} <= set(dice.columns)
    assert np.isfinite(dice.dice).all() and dice.dice.between(0, 1).all()
    assert set(dice.variant) == {"real", "joint", "warped+cond", "real-oversampled", "real-noaug", "intensity-lookup"}
    assert (dice[dice.variant.isin(["joint", "warped+cond"])].n_synthetic > 0).all()
    summary = pd.read_csv(out / "tables" / "dice_summary.csv")
    assert np.isfinite(summary["mean"]).all() and set(summary.verdict) <= {"baseline", *VERDICTS}
    assert {
        "mean_delta",
        "ci_low",
        "ci_high",
        "p_test",
        "p_holm",
        "p_tost",
        "n_runs",
        "verdict",
        "mark",
        "p_verdict",
    } <= set(summary.columns)
    assert (summary[summary.verdict != "baseline"].n_seeds == 1).all()
    # one training per fold: the tables support no verdict, so neither table nor report prints one
    assert set(summary[summary.verdict != "baseline"].verdict) == {EXPLORATORY}
    assert set(pd.read_csv(out / "tables" / "vs_dilution.csv").verdict) == {EXPLORATORY}
    trivial = pd.read_csv(out / "tables" / "trivial_baseline.csv")
    assert not (out / "report.md").exists()  # one rendering of the report: the notebook's HTML
    for html in (out / "report.html",):
        text = html.read_text()
        assert not any(
            w in text
            for w in (
                "<strong>better</strong>",
                "<strong>worse</strong>",
                "<strong>equivalent</strong>",
                "**better**",
                "**worse**",
                "**equivalent**",
            )
        ), html
        assert ("no better than a per-pixel intensity lookup" in text.lower()) == (not trivial.beats_lookup.all()), html
    # the dilution control draws from as many samples, with as many steps per epoch, as its synthetic arm
    lay = RunLayout(out)
    for c in experiment_grid(study_config("ci")).query("variant in ['joint', 'warped+cond']").itertuples():
        arm, ctrl = (
            read_manifest(lay.cell(c.cell)),
            read_manifest(lay.cell(c.cell.replace(f"_{c.variant}_", "_real-oversampled_"))),
        )
        assert (
            arm["n_train_samples"] == ctrl["n_train_samples"] > 0 and arm["steps_per_epoch"] == ctrl["steps_per_epoch"]
        )
        assert arm["inputs"]["n_synthetic"] == ctrl["inputs"]["n_synthetic"] > 0
    quality = pd.read_csv(out / "tables" / "quality_per_fold.csv")
    assert set(quality.comparison) == {
        "synthetic vs real train",
        "synthetic vs half A",
        "real half B vs half A",
        "synthetic vs held-out",
        "real train vs held-out",
    }
    assert all(d.startswith("n/a") for d, v in zip(quality.display, quality.value) if not np.isfinite(v))
    assert "Synthetic pairs of the warped+cond GAN of fold 0" in (out / "report.html").read_text()
    html = (out / "report.html").read_text()
    assert (
        "NOT independent patients" in html[html.find("<body") :][:20000]
    )  # the reader learns what the data are at once
    assert not (out / "tables" / "lesion_scores.csv").exists()  # the slabs name no lesion labels
    assert (out / "notebooks" / "04_segmentation.ipynb").exists()
    n_test = dice[dice.variant == "real"].subject.nunique()  # every subject is tested once, in its fold
    assert_reads_like_a_paper(out / "report.html", n_test, min_figures=5)
    assert_reads_like_a_paper(runs / "report.html", n_test, min_figures=3)
    assert_report_quotes_names_as_text(out, tmp_path / "hostile" / "default")

    t0 = time.time()
    res2 = run_medsyn("study", "--profile", "ci", "--datasets", "mni152", "--out", str(runs), timeout=600)
    assert res2.returncode == 0, res2.stdout[-4000:] + res2.stderr[-4000:]
    for stage in ["prepare", "gan", "generate", "segment", "quality", "report"]:
        assert f"[mni152] {stage}: already finished, skipped" in res2.stdout
    assert time.time() - t0 < first / 2


def test_dataset_names_resolve_to_the_cohort_and_the_template():
    "`--dataset default` is the simulated cohort (stated in its dataset.json); `mni152` is the template slabs."
    from medsyn.study import resolve_dataset

    default = load_json(resolve_dataset(study_config("ci")) / "dataset.json")
    assert default["simulated"] is True and default["provenance"].startswith("SIMULATED, NOT PATIENT DATA")
    assert default["n_subjects"] == 20 and default["lesion_labels"] == [4, 5]
    mni = load_json(resolve_dataset(study_config("ci", dataset="mni152")) / "dataset.json")
    assert mni["name"] == "mni152" and "NOT independent patients" in mni["provenance"]
