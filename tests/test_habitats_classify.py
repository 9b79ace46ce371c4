"""``geoplantnet habitats classify``: a classifier saved by ``geoplantnet habitats`` (with its conformal calibration
and fill-mask model) applied to new plot tables, wide CSV and long Parquet, in process."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoplantnet.models.habitat_classifier import load_classifier
from geoplantnet.testing.cli import Result, cli_sets, run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "pipelines" / "default.yaml")
DANUBE = ROOT.parent / "shared" / "data" / "real" / "danube_dike_vegetation_eunis"
TINY = [
    "habitats.model.hidden=32",
    "habitats.model.heads=2",
    "habitats.model.layers=1",
    "habitats.model.intermediate=64",
    "habitats.model.max_species=12",
    "habitats.train.pretrain_epochs=4",
    "habitats.train.finetune_epochs=6",
    "habitats.train.finetune_lr=2e-3",
    "habitats.block_size=1.5",
]


def community_plots(n: int, seed: int) -> tuple[list[list[str]], list[str]]:
    """Plots of six disjoint communities of eight species (the habitat is the community), five members each in a
    fixed dominance order, and a generalist in half of them."""
    rng = np.random.default_rng(seed)
    sentences, habitat = [], []
    for _ in range(n):
        c = int(rng.integers(6))
        sentence = [f"Genus{c} species{j}" for j in sorted(rng.choice(8, 5, replace=False))]
        if rng.random() < 0.5:
            sentence.insert(int(rng.integers(len(sentence) + 1)), "Generalist common")
        sentences.append(sentence)
        habitat.append(f"R{c + 1}A")
    return sentences, habitat


def wide(sentences: Sequence[Sequence[str]], habitat: Sequence[str] | None = None, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {"plot": [f"p{i}" for i in range(len(sentences))], "species": [";".join(s) for s in sentences]}
    )
    frame["lon"], frame["lat"] = rng.uniform(0, 5, len(frame)), rng.uniform(40, 45, len(frame))
    if habitat is not None:
        frame["habitat"] = habitat
    return frame


def classify(*args: str | Path, cwd: Path) -> Result:
    return run_cli("habitats", "classify", "--config", CONFIG, "--set", f"workdir={cwd / 'work'}", *args, cwd=cwd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, shared_cluster_sets: list[str]) -> Path:
    """``geoplantnet habitats --no-evaluation`` on 300 community plots: ``<out>/model`` (calibrated) and
    ``<out>/fill-mask``."""
    tmp = tmp_path_factory.mktemp("classify")
    sentences, habitat = community_plots(300, seed=1)
    wide(sentences, habitat, seed=1).to_csv(tmp / "train.csv", index=False)
    out = tmp / "habitats"
    done = run_cli(
        "habitats", "--config", CONFIG, "--plots", tmp / "train.csv", "--out", out, "--no-evaluation", "-q",
        *cli_sets([*TINY, f"workdir={tmp / 'work'}", *shared_cluster_sets]), cwd=tmp,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_a_saved_classifier_carries_its_conformal_calibration(trained: Path) -> None:
    meta = json.loads((trained / "model" / "geoplantnet.json").read_text())
    conformal = meta["conformal"]
    assert conformal["level"] == 0.9 and 0 <= conformal["q"] <= 1 and conformal["plots"] >= 30
    assert load_classifier(trained / "model").conformal == conformal


def test_a_wide_csv_is_classified_with_sets_missing_and_unknown_species(trained: Path, tmp_path: Path) -> None:
    sentences, truth = community_plots(400, seed=9)
    sentences[0] = [*sentences[0], "Nova species", "Alia species"]  # two species the model never saw
    sentences[1] = ["Nova species"]  # a plot of unknown species only: classified all the same
    wide(sentences).to_csv(tmp_path / "plots.csv", index=False)
    done = classify("--model", trained / "model", "--plots", tmp_path / "plots.csv", "--out", tmp_path / "h.csv",
                    "--top-k", "3", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    table = pd.read_csv(tmp_path / "h.csv", keep_default_na=False)
    assert printed == json.loads((tmp_path / "h.csv.summary.json").read_text())
    assert printed["plots"] == 400 and printed["unknown_species"] == 3 and printed["plots_with_unknown"] == 2
    assert printed["conformal"]["level"] == 0.9 and printed["fill_mask"]["path"].endswith("fill-mask")
    assert list(table["plot"]) == [f"p{i}" for i in range(400)]
    assert table["unknown_species"].tolist()[:3] == [2, 1, 0] and table["species"][0] == len(sentences[0])
    # top-1 is the model's argmax; probabilities best first; the model has no names
    model = load_classifier(trained / "model")
    proba = model.predict_proba(sentences)
    assert (table["habitat_1"] == np.asarray(model.classes)[proba.argmax(1)]).all()
    np.testing.assert_allclose(table["probability_1"], proba.max(1), atol=1e-5)
    assert (table["probability_1"] >= table["probability_2"]).all() and (table["name_1"] == "").all()
    # the set holds top-1 and covers about the level on new plots of the same language
    sets = table["conformal_set"].str.split(";")
    assert all(top in s for top, s in zip(table["habitat_1"], sets, strict=True))
    coverage = np.mean([t in s for t, s in zip(truth, sets, strict=True)])
    assert coverage >= 0.8, coverage
    # missing species: five, never one of the plot's own, most likely first
    for i, sentence in enumerate(sentences):
        found = [table[f"missing_{j}"][i] for j in range(1, 6)]
        assert not set(found) & set(sentence), (found, sentence)
        assert list(table.loc[i, [f"missing_probability_{j}" for j in range(1, 6)]]) == sorted(
            table.loc[i, [f"missing_probability_{j}" for j in range(1, 6)]], reverse=True
        )
    # a community plot's first missing species is of its own community (or the generalist) far more often than
    # chance (about 4 of the 43 species not in a plot: 10 %), even after a few epochs of pre-training
    hits = [table["missing_1"][i].startswith(s[0].split()[0]) or table["missing_1"][i].startswith("Generalist")
            for i, s in enumerate(sentences) if i > 1]  # fmt: skip
    assert np.mean(hits) > 0.3, np.mean(hits)


def test_a_long_parquet_gives_the_same_classes_and_replaces_only_with_overwrite(trained: Path, tmp_path: Path) -> None:
    sentences, _ = community_plots(60, seed=11)
    long = pd.DataFrame(
        [
            {"relevé": f"p{i}", "taxon": s, "cover": 60 - 5 * j}
            for i, sentence in enumerate(sentences)
            for j, s in enumerate(sentence)
        ]
    )
    long.to_parquet(tmp_path / "plots.parquet")
    wide(sentences).to_csv(tmp_path / "plots.csv", index=False)
    args = ["--model", trained / "model", "--top-k", "2", "--missing", "3"]
    out = tmp_path / "h.parquet"
    long_args = [*args, "--plots", tmp_path / "plots.parquet", "--species-column", "taxon", "--cover", "cover"]
    done = classify(*long_args, "--set", "habitats.plot=relevé", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    again = classify(*args, "--plots", tmp_path / "plots.csv", "--out", tmp_path / "h.csv", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    table, csv = pd.read_parquet(out), pd.read_csv(tmp_path / "h.csv", keep_default_na=False)
    assert list(table.columns[:7]) == ["relevé", "habitat_1", "probability_1", "name_1", "habitat_2", "probability_2",
                                       "name_2"]  # fmt: skip
    assert "habitat_3" not in table and "missing_3" in table and "missing_4" not in table
    by_id = table.set_index("relevé").loc[csv["plot"]]
    assert (by_id["habitat_1"].to_numpy() == csv["habitat_1"].to_numpy()).all()
    assert (by_id["missing_1"].to_numpy() == csv["missing_1"].to_numpy()).all()
    refused = classify(*long_args, "--set", "habitats.plot=relevé", "--out", out, cwd=tmp_path)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    replaced = classify(*long_args, "--set", "habitats.plot=relevé", "--out", out, "--overwrite", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr[-3000:]


def test_a_classifier_without_calibration_or_fill_mask_writes_no_set_and_no_missing(
    trained: Path, tmp_path: Path
) -> None:
    model = tmp_path / "alone" / "model"
    shutil.copytree(trained / "model", model)
    meta = json.loads((model / "geoplantnet.json").read_text())
    meta.pop("conformal")
    (model / "geoplantnet.json").write_text(json.dumps(meta))
    sentences, _ = community_plots(20, seed=12)
    wide(sentences).to_csv(tmp_path / "plots.csv", index=False)
    done = classify("--model", model, "--plots", tmp_path / "plots.csv", "--out", tmp_path / "h.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table, summary = pd.read_csv(tmp_path / "h.csv"), json.loads(done.stdout)
    assert "conformal_set" not in table and not any(c.startswith("missing") for c in table.columns)
    assert summary["conformal"] is None and summary["fill_mask"] is None
    assert any("conformal" in n for n in summary["notes"]) and any("fill-mask" in n for n in summary["notes"])
    # the fill-mask model named explicitly
    done = classify("--model", model, "--plots", tmp_path / "plots.csv", "--out", tmp_path / "f.csv",
                    "--fill-mask", trained / "fill-mask", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and "missing_5" in pd.read_csv(tmp_path / "f.csv")


@pytest.mark.parametrize(
    "case, culprit",
    [
        ("fill-mask as model", "a fill-mask model, not a habitat classifier"),
        ("missing model", "no such folder"),
        ("out a folder", "is a folder"),
        ("out .txt", "h.txt"),
        ("user's file", "refusing to replace it"),
        ("no species column", "no column 'taxon' (habitats.species)"),
        ("classifier as fill-mask", "not a fill-mask model"),
        ("map model on predictors", "a habitat map model on point predictors cannot classify plot tables"),
    ],
)
def test_bad_inputs_are_refused_with_one_line(trained: Path, tmp_path: Path, case: str, culprit: str) -> None:
    sentences, _ = community_plots(5, seed=13)
    wide(sentences).to_csv(tmp_path / "plots.csv", index=False)
    (tmp_path / "mine.csv").write_text("my own table\n")
    (tmp_path / "folder").mkdir()
    model, plots, out, extra = trained / "model", tmp_path / "plots.csv", tmp_path / "h.csv", []
    if case == "fill-mask as model":
        model = trained / "fill-mask"
    elif case == "missing model":
        model = tmp_path / "nowhere"
    elif case == "out a folder":
        out = tmp_path / "folder"
    elif case == "out .txt":
        out = tmp_path / "h.txt"
    elif case == "user's file":
        out = tmp_path / "mine.csv"
    elif case == "no species column":
        extra = ["--species-column", "taxon"]
    elif case == "classifier as fill-mask":
        extra = ["--fill-mask", str(trained / "model")]
    elif case == "map model on predictors":  # refused from its geoplantnet.json, before any model file is read
        model = tmp_path / "map-model"
        model.mkdir()
        (model / "geoplantnet.json").write_text(json.dumps({"kind": "map-forest", "inputs": "joint"}))
    done = classify("--model", model, "--plots", plots, "--out", out, *extra, cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert culprit in done.stderr, done.stderr
    assert (tmp_path / "mine.csv").read_text() == "my own table\n" and not (tmp_path / "h.csv").exists()


@pytest.mark.real_data
def test_the_danube_plots_are_read_and_their_unknown_species_counted(trained: Path, tmp_path: Path) -> None:
    if not DANUBE.exists():
        pytest.skip(f"{DANUBE} is absent (../shared/data/real)")
    matrix = pd.read_csv(DANUBE / "data_processed_species.csv").set_index("name")
    long = matrix.reset_index().melt(id_vars="name", var_name="plot", value_name="cover")
    long = long[long["cover"] > 0]
    long.to_parquet(tmp_path / "danube.parquet")
    done = classify("--model", trained / "model", "--plots", tmp_path / "danube.parquet", "--species-column", "name",
                    "--cover", "cover", "--out", tmp_path / "danube.csv", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary, table = json.loads(done.stdout), pd.read_csv(tmp_path / "danube.csv")
    assert summary["plots"] == long["plot"].nunique() == len(table)
    assert summary["unknown_species"] == summary["species"] == len(long)  # the community language knows none of them
    assert summary["unknown_share"] == 1.0


def test_the_calibration_is_the_split_conformal_quantile_of_one_minus_the_true_probability() -> None:
    from geoplantnet.validation.conformal import habitat_calibration

    classes = ("R1A", "R2A", "R3A")
    proba = np.asarray([[0.7, 0.2, 0.1]] * 5 + [[0.4, 0.5, 0.1]] * 4)
    truth = ["R1A"] * 5 + ["R2A"] * 3 + ["T1A"]  # a habitat the classifier lacks scores 1
    # scores: 0.3 x5, 0.5 x3, 1.0; ceil(10 * 0.8) = 8th smallest = 0.5
    assert habitat_calibration(proba, classes, truth, 0.8) == {"level": 0.8, "q": 0.5, "plots": 9}
    assert habitat_calibration(proba[:3], classes, truth[:3], 0.9) is None  # too few plots for the level


def test_the_summary_names_the_models_without_their_credentials() -> None:
    from geoplantnet.jobs.habitat_classify import ClassifySummary

    secret = "GPN-SECRET-7f3a9c-do-not-leak"
    model = f"s3://me:{secret}@bucket/habitats/model?X-Amz-Signature={secret}"
    fill = f"https://host/fill-mask?token={secret}"
    summary = ClassifySummary(
        out="h.csv", summary="h.csv.summary.json", model=model, kind="stack", version="v", plots=1, species=1,
        unknown_species=0, unknown_share=0.0, plots_with_unknown=0, top_k=3, conformal=None,
        fill_mask={"path": fill, "version": "f"}, missing=5, notes=[f"{fill} is not the fill-mask model ..."],
    )  # fmt: skip
    text = json.dumps(summary.to_dict())  # what is printed and saved as <out>.summary.json
    assert secret not in text and "s3://bucket/habitats/model" in text and "https://host/fill-mask" in text
