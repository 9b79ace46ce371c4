"""Pl@ntBERT and its peers: plot tables as sentences, the species tokenizer, masking, model files, the peers, the
scores, learning on a plot language with a known syntax, and the ``habitats`` command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geoplantnet.core.config import HabitatsConfig, PlotModelConfig, PlotTrainConfig
from geoplantnet.models.habitat_classifier import load_classifier
from geoplantnet.models.habitat_peers import PEERS, CooccurrenceFill, JaccardNeighbours
from geoplantnet.models.plantbert import (
    CLS,
    MASK,
    PAD,
    SEP,
    SPECIAL,
    UNK,
    PlotModel,
    PlotModelError,
    assemblage_ids,
    build_tokenizer,
    encode_sentences,
    mask_tokens,
    species_vocabulary_index,
)
from geoplantnet.samples.plots import (
    PlotTableError,
    assemblage_order,
    eunis_ancestor,
    eunis_level,
    plots_from_frame,
    read_plots,
)
from geoplantnet.testing.cli import Result, run_cli
from geoplantnet.training.plantbert import finetune, pretrain, shuffle_species
from geoplantnet.validation.habitats import fill_mask_scores, habitat_scores

ROOT = Path(__file__).resolve().parents[1]
TINY = PlotModelConfig(hidden=32, layers=2, heads=2, intermediate=64, max_species=12, dropout=0.0)


# --- a plot language with a known syntax ---------------------------------------------------------------------------


def community_plots(n: int, seed: int = 0, communities: int = 6, size: int = 8, per_plot: int = 5):
    """Plots drawn from disjoint communities of species (the habitat is the community), species of a community in
    a fixed dominance order; a shared generalist appears anywhere. Returns (sentences, habitat codes, x, y)."""
    rng = np.random.default_rng(seed)
    sentences, habitat = [], []
    for _ in range(n):
        c = int(rng.integers(communities))
        members = [f"Genus{c} species{j}" for j in range(size)]
        pick = sorted(rng.choice(size, per_plot, replace=False))
        sentence = [members[j] for j in pick]
        if rng.random() < 0.5:
            sentence.insert(int(rng.integers(len(sentence) + 1)), "Generalist common")
        sentences.append(sentence)
        habitat.append(f"R{c + 1}A")
    x, y = rng.uniform(0, 5, n), rng.uniform(40, 45, n)
    return sentences, np.asarray(habitat, dtype=object), x, y


# --- plot tables ---------------------------------------------------------------------------------------------------


def test_a_long_table_merges_layers_by_summed_cover_and_orders_species_by_cover(tmp_path: Path) -> None:
    long = pd.DataFrame(
        {
            "plot": ["a", "a", "a", "a", "b", "b"],
            "taxon": [
                "Poa pratensis",
                "Quercus robur",
                "Quercus robur",
                "Festuca rubra",
                "Poa pratensis",
                "Carex nigra",
            ],
            "cover": [30, 20, 15, 5, 1, 60],  # oak in two layers: 35 in all, above the grass
            "eunis": ["R22", "R22", "R22", "R22", "Q41", "Q41"],
            "lon": [10.0] * 4 + [11.0] * 2,
            "lat": [50.0] * 4 + [51.0] * 2,
        }
    )
    path = tmp_path / "plots.csv"
    long.to_csv(path, index=False)
    cfg = HabitatsConfig(species="taxon", cover="cover", habitat="eunis")
    plots = read_plots(path, cfg)
    assert list(plots.ids) == ["a", "b"]
    assert plots.sentences == [["Quercus_robur", "Poa_pratensis", "Festuca_rubra"], ["Carex_nigra", "Poa_pratensis"]]
    assert list(plots.habitat) == ["R22", "Q41"]
    assert plots.x.tolist() == [10.0, 11.0]
    assert any("merged by summed cover" in n for n in plots.notes)


def test_a_wide_table_splits_lists_and_a_plot_with_two_codes_is_unlabelled() -> None:
    df = pd.DataFrame(
        {"plot": [1, 2, 3, 4], "species": ["12 7 12 9", "3", "", "5 6"], "habitat": ["R1A", "R22 T19", "R1A", None]}
    )
    plots = plots_from_frame(df, HabitatsConfig())
    assert plots.sentences == [["12", "7", "9"], ["3"], ["5", "6"]]  # the empty plot dropped, a repeat kept once
    assert list(plots.habitat) == ["R1A", "", ""]
    assert plots.labelled.tolist() == [True, False, False]
    assert any("several habitat codes" in n for n in plots.notes) and any("without species" in n for n in plots.notes)
    semi = plots_from_frame(pd.DataFrame({"plot": [1], "species": ["Poa annua; Bellis perennis"]}), HabitatsConfig())
    assert semi.sentences == [["Poa_annua", "Bellis_perennis"]]


def test_a_missing_column_names_the_file_and_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "plots.csv"
    pd.DataFrame({"plot": [1], "taxa": ["a b"]}).to_csv(path, index=False)
    with pytest.raises(PlotTableError, match=r"plots\.csv: no column 'species' \(habitats\.species\)"):
        read_plots(path, HabitatsConfig())


def test_eunis_levels_follow_the_hierarchy_including_the_littoral_groups() -> None:
    assert [eunis_level(c) for c in ("R", "R1", "R1A", "MA", "MA2", "MA22", "MA225")] == [1, 2, 3, 1, 2, 3, 4]
    assert eunis_ancestor("R1A", 2) == "R1" and eunis_ancestor("R1A", 1) == "R"
    assert eunis_ancestor("MA225", 3) == "MA22" and eunis_ancestor("MA22", 1) == "MA"
    assert eunis_ancestor("T", 3) == "T"  # a coarser label stays as it is


# --- tokenizer, masking, assemblages -------------------------------------------------------------------------------


def test_the_tokenizer_has_one_token_per_species_and_counts_unknown_species() -> None:
    tok = build_tokenizer(["Poa pratensis", "Festuca rubra", "Poa pratensis"])
    assert len(tok) == len(SPECIAL) + 2
    ids, unknown = encode_sentences(tok, [["Festuca rubra", "Bellis perennis", "Poa pratensis"]], max_species=4)
    vocab = tok.get_vocab()
    assert ids.tolist() == [[CLS, vocab["Festuca_rubra"], UNK, vocab["Poa_pratensis"], SEP, PAD]]
    assert unknown == 1
    # The wrapped tokenizer agrees with our encoder on text.
    assert tok("Festuca_rubra Poa_pratensis")["input_ids"] == [CLS, vocab["Festuca_rubra"], vocab["Poa_pratensis"], SEP]


def test_masking_targets_species_only_in_80_10_10_proportions() -> None:
    vocab_size = 500
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(len(SPECIAL), vocab_size, (4000, 22), generator=gen)
    ids[:, 0], ids[:, 21] = CLS, SEP
    ids[:, 15:21] = PAD
    inputs, labels = mask_tokens(ids, 0.15, vocab_size, gen)
    target = labels != -100
    assert not target[:, 0].any() and not target[:, 15:].any()  # never a special token
    assert (target.sum(1) >= 1).all()  # every plot teaches something
    rate = target[:, 1:15].float().mean().item()
    assert 0.14 < rate < 0.17
    masked = (inputs[target] == MASK).float().mean().item()
    kept = (inputs[target] == ids[target]).float().mean().item()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.13  # kept includes random draws of the same token (rare)
    assert (inputs[target & (inputs != MASK)] >= len(SPECIAL)).all()  # random replacements are species
    assert torch.equal(inputs[~target], ids[~target])


def test_assemblages_become_token_rows_as_a_per_pixel_loop_would_build_them() -> None:
    rng = np.random.default_rng(1)
    species = [f"sp{i}" for i in range(9)]
    tok = build_tokenizer(species[:7])  # sp7, sp8 unknown to the model
    token_of = species_vocabulary_index(tok, species)
    prob = rng.random((50, 9)).astype("float32")
    thresholds = rng.uniform(0.3, 0.7, 9).astype("float32")
    for top_k in (None, 3):
        got = assemblage_ids(prob, token_of, thresholds, max_species=5, top_k=top_k)
        for i in range(len(prob)):
            ranked = [j for j in np.argsort(-prob[i], kind="stable") if token_of[j] != UNK]
            kept = ranked[:top_k] if top_k else [j for j in ranked if prob[i, j] >= thresholds[j]]
            kept = kept[:5]
            want = [CLS, *token_of[kept], SEP]
            assert got[i, : len(want)].tolist() == want and (got[i, len(want) :] == PAD).all()
    order, keep = assemblage_order(prob, thresholds, 4)
    ranked = np.where(keep, np.take_along_axis(prob, order, 1), -1.0)
    assert order.shape == (50, 4) and (np.diff(ranked, axis=1) <= 0).all()  # kept first, best first
    with pytest.raises(PlotTableError, match="map_species"):
        assemblage_order(prob, None, 4)


def test_shuffling_moves_species_only() -> None:
    ids = torch.tensor([[CLS, 10, 11, 12, 13, SEP, PAD, PAD]] * 200)
    out = shuffle_species(ids, torch.Generator().manual_seed(0))
    assert (out[:, 0] == CLS).all() and (out[:, 5] == SEP).all() and (out[:, 6:] == PAD).all()
    assert (out[:, 1:5].sort(dim=1).values == torch.tensor([10, 11, 12, 13])).all()
    assert len({tuple(r.tolist()) for r in out}) > 12  # of 24 orders


# --- peers and scores ----------------------------------------------------------------------------------------------


def test_scores_by_hand() -> None:
    classes = ["R1A", "R22", "T19"]
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    truth = ["R1A", "T19", "T19", "R1B"]  # second: top-2; fourth: a class never trained
    s = habitat_scores(truth, proba, classes, level=3)
    assert s["top1"] == pytest.approx(0.5) and s["top3"] == pytest.approx(0.75)
    assert s["untrained_class"] == pytest.approx(0.25)
    assert s["top1_level2"] == pytest.approx(0.75)  # R1A for R1B is right at level 2
    assert s["top1_level1"] == pytest.approx(0.75)
    # macro-F1 over the test classes R1A, R1B, T19: R1A P=1/2 R=1 -> 2/3; R1B 0; T19 P=1 R=1/2 -> 2/3
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)


def test_jaccard_neighbours_and_cooccurrence_on_plots_worked_by_hand() -> None:
    train = [["a", "b", "c"], ["a", "b", "d"], ["x", "y"], ["x", "y", "z"]]
    knn = JaccardNeighbours(("R1A", "T19"), k=2).fit(train, ["R1A", "R1A", "T19", "T19"])
    p = knn.predict_proba([["a", "b"], ["y", "z", "q"]])
    assert p[0].argmax() == 0 and p[1].argmax() == 1 and np.allclose(p.sum(1), 1)
    fill = CooccurrenceFill(train)
    scores = fill.scores([["a", "b"]])[0]
    col = fill.index.column
    assert np.isneginf(scores[col["a"]]) and np.isneginf(scores[col["b"]])
    assert scores[col["c"]] > scores[col["x"]] and scores[col["d"]] > scores[col["z"]]


def test_every_peer_learns_the_community_language() -> None:
    sentences, habitat, _, _ = community_plots(300, seed=2)
    test_s, test_h, _, _ = community_plots(100, seed=3)
    classes = tuple(sorted(set(habitat)))
    for name, peer in PEERS.items():
        model = peer(classes).fit(sentences, habitat, sentences[:50], habitat[:50])
        acc = habitat_scores(test_h, model.predict_proba(test_s), classes, 3)["top1"]
        assert acc > 0.95, (name, acc)


# --- Pl@ntBERT learns a syntax, and its files --------------------------------------------------------------------


@pytest.fixture(scope="module")
def language_models(tmp_path_factory: pytest.TempPathFactory):
    """A fill-mask model pre-trained on the community language and a classifier fine-tuned from it."""
    sentences, habitat, _, _ = community_plots(600, seed=4)
    tok = build_tokenizer(sorted({s for x in sentences for s in x}))
    ids, _ = encode_sentences(tok, sentences, TINY.max_species)
    cfg = PlotTrainConfig(
        pretrain_epochs=25, finetune_epochs=15, batch_size=32, pretrain_lr=3e-3, finetune_lr=2e-3, patience=5
    )
    fill, history = pretrain(tok, ids[100:], ids[:100], TINY, cfg)
    classes = tuple(sorted(set(habitat)))
    labels = np.asarray([classes.index(h) for h in habitat])
    clf, _ = finetune(tok, fill, ids[100:400], labels[100:400], ids[:100], labels[:100], classes, TINY, cfg)
    return fill, clf, history


def test_the_fill_mask_model_learns_which_species_go_together(language_models) -> None:
    fill, _, history = language_models
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    test, _, _, _ = community_plots(200, seed=5)
    train, _, _, _ = community_plots(600, seed=4)
    s = fill_mask_scores(fill, CooccurrenceFill(train[100:]), test, seed=0)
    # A hidden species is one of the 3-4 community members not visible: chance of a top-5 hit among 49 species is
    # about 10 %; knowing the syntax gives most of them.
    assert s["plantbert_top5"] > 0.8 and s["cooccurrence_top5"] > 0.8


def test_the_classifier_names_the_habitat_and_survives_a_save_and_load(language_models, tmp_path: Path) -> None:
    fill, clf, _ = language_models
    test, truth, _, _ = community_plots(200, seed=6)
    proba = clf.predict_proba(test)
    assert habitat_scores(truth, proba, clf.classes, 3)["top1"] > 0.95
    version = clf.save(tmp_path / "model")
    again = PlotModel.load(tmp_path / "model")
    assert again.version == version == clf.version and again.classes == clf.classes and again.kind == "classifier"
    np.testing.assert_allclose(again.predict_proba(test), proba, atol=1e-5)
    fill.save(tmp_path / "fill-mask")
    assert PlotModel.load(tmp_path / "fill-mask").kind == "fill-mask"
    with pytest.raises(PlotModelError, match="fine-tune it first"):
        PlotModel.load(tmp_path / "fill-mask").predict_proba(test)
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.docx").write_text("mine")
    with pytest.raises(PlotModelError, match="not a Pl@ntBERT folder"):
        clf.save(tmp_path / "thesis")
    assert (tmp_path / "thesis" / "chapter1.docx").read_text() == "mine"
    with pytest.raises(PlotModelError, match="not a Pl@ntBERT folder"):
        PlotModel.load(tmp_path / "thesis")
    # A saved model is replaced by the next save into its folder; object storage (fsspec) behaves the same.
    assert clf.save(tmp_path / "model") == version and PlotModel.load(tmp_path / "model").version == version
    # ... but never over a user's file put in it (habitats classify --out <out>/model/pred.csv): refused, kept
    (tmp_path / "model" / "pred.csv").write_text("mine")
    with pytest.raises(PlotModelError, match=r"not part of the model \(pred.csv\); refusing to replace it"):
        clf.save(tmp_path / "model")
    assert (tmp_path / "model" / "pred.csv").read_text() == "mine" and PlotModel.load(tmp_path / "model").version
    # any saved classifier is read by kind (habitats classify, habitat-map); names travel with the classes
    from geoplantnet.models.habitat_classifier import ClassifierFolderError, load_classifier

    clf.names = tuple(f"name of {c}" for c in clf.classes)
    clf.save(tmp_path / "named")
    again = load_classifier(tmp_path / "named")
    assert isinstance(again, PlotModel) and again.names == clf.names
    with pytest.raises(ClassifierFolderError, match="thesis: not a geoplantnet model folder"):
        load_classifier(tmp_path / "thesis")
    import fsspec

    mem = fsspec.filesystem("memory")
    mem.pipe("/bucket/mine/data.csv", b"mine")
    with pytest.raises(PlotModelError, match="not a Pl@ntBERT folder"):
        clf.save("memory://bucket/mine")
    assert mem.cat("/bucket/mine/data.csv") == b"mine"
    clf.save("memory://bucket/model")
    np.testing.assert_allclose(PlotModel.load("memory://bucket/model").predict_proba(test), proba, atol=1e-5)


def test_a_model_folder_is_replaced_only_when_every_file_in_it_is_the_model_s(tmp_path: Path) -> None:
    import fsspec

    from geoplantnet.models.habitat_classifier import META, ClassifierFolderError, publish_folder, read_meta

    stage = tmp_path / "stage"
    (stage / "sub").mkdir(parents=True)
    (stage / "weights.bin").write_bytes(b"w")
    (stage / "sub" / "vocab.txt").write_text("v")
    (stage / META).write_text(json.dumps({"kind": "stack"}))
    mem = fsspec.filesystem("memory")
    for folder in (str(tmp_path / "model"), f"memory://{tmp_path.name}/model"):  # memory: shared by tests
        publish_folder(stage, folder)
        assert read_meta(folder)["files"] == ["sub/vocab.txt", "weights.bin"]
        publish_folder(stage, folder)  # a plain re-save
        fs, root = fsspec.core.url_to_fs(folder)
        fs.pipe_file(f"{root}/sub/pred.csv", b"mine")
        with pytest.raises(ClassifierFolderError, match=r"not part of the model \(sub/pred.csv\); refusing"):
            publish_folder(stage, folder)
        assert fs.cat_file(f"{root}/sub/pred.csv") == b"mine" and fs.exists(f"{root}/{META}")
    # an older model without a manifest: its files are the new model's, or refused
    old = tmp_path / "old"
    old.mkdir()
    (old / "weights.bin").write_bytes(b"old")
    (old / META).write_text(json.dumps({"kind": "stack"}))
    publish_folder(stage, old)
    assert (old / "weights.bin").read_bytes() == b"w"
    (old / META).write_text(json.dumps({"kind": "stack"}))
    (old / "notes.txt").write_text("mine")
    with pytest.raises(ClassifierFolderError, match=r"\(notes.txt\); refusing to replace it"):
        publish_folder(stage, old)
    # a Pl@ntBERT folder from before manifests is replaced by a model of another kind (the stack after an upgrade)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (legacy / name).write_text("{}")
    (legacy / META).write_text(json.dumps({"kind": "classifier"}))
    publish_folder(stage, legacy)
    assert read_meta(legacy)["kind"] == "stack" and not (legacy / "config.json").exists()
    assert mem.exists(f"/{tmp_path.name}/model/weights.bin")


# --- the command ---------------------------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> Result:
    return run_cli(*args, cwd=cwd)  # in-process: the command's output and status are what is tested, not a process


@pytest.mark.slow
def test_the_habitats_command_evaluates_on_spatial_folds_and_saves_the_models(tmp_path: Path) -> None:
    sentences, habitat, x, y = community_plots(240, seed=7)
    rows = [
        {"plot": f"p{i}", "taxon": s, "cover": 50 - j, "eunis": habitat[i], "lon": x[i], "lat": y[i]}
        for i, sentence in enumerate(sentences)
        for j, s in enumerate(sentence)
    ]
    table = tmp_path / "plots.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    settings = [
        "--set",
        "habitats.folds=2",
        "--set",
        "habitats.block_size=1.5",
        "--set",
        "habitats.model.hidden=32",
        "--set",
        "habitats.model.heads=2",
        "--set",
        "habitats.model.layers=1",
        "--set",
        "habitats.model.intermediate=64",
        "--set",
        "habitats.train.pretrain_epochs=3",
        "--set",
        "habitats.train.finetune_epochs=3",
        "--set",
        "cluster.n_workers=1",
        "--set",
        f"workdir={tmp_path / 'work'}",
        "--set",
        "habitats.x=lon",
        "--set",
        "habitats.y=lat",
    ]
    out = tmp_path / "out"
    done = _cli(
        "habitats",
        "--config",
        str(ROOT / "pipelines" / "default.yaml"),
        "--plots",
        str(table),
        "--species-column",
        "taxon",
        "--cover",
        "cover",
        "--habitat",
        "eunis",
        "--out",
        str(out),
        "-q",
        *settings,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"plantbert", "logistic", "random_forest", "knn_jaccard", "stack"}
    assert summary["models"]["logistic"]["top1_mean"] > 0.9  # the language is easy for a bag of species
    folds = pd.read_csv(out / "folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1] and len(folds) == 10
    assert "| plantbert |" in (out / "report.md").read_text()
    # model/ is habitats.classifier (default: the stack, no fill-mask parent); fill-mask/ is saved beside it
    model = load_classifier(out / "model")
    assert model.kind == "stack" and model.parent == "" and model.version == summary["model"]["version"]
    assert summary["fill_mask_model"]["version"] == PlotModel.load(out / "fill-mask").version
    assert set(model.classes) == set(habitat)
    # A rerun into the same folder is allowed; a user's folder and a missing column are refused with one line.
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    refused = _cli(
        "habitats",
        "--config",
        str(ROOT / "pipelines" / "default.yaml"),
        "--plots",
        str(table),
        "--species-column",
        "taxon",
        "--cover",
        "cover",
        "--out",
        str(user),
        *settings,
        cwd=tmp_path,
    )
    assert refused.returncode == 2 and "refusing" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    bad = _cli(
        "habitats",
        "--config",
        str(ROOT / "pipelines" / "default.yaml"),
        "--plots",
        str(table),
        "--species-column",
        "species",
        "--out",
        str(tmp_path / "bad"),
        *settings,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "no column 'species' (habitats.species)" in bad.stderr


def test_the_report_shows_every_level_above_the_classifiers() -> None:
    from geoplantnet.reports.habitats import habitats_markdown, summary_table

    rows = pd.DataFrame(
        [
            {"fold": k, "model": "m", "top1": 0.5, "top3": 0.6, "macro_f1": 0.4, "top1_level3": 0.7}
            | {"top1_level2": 0.8, "top1_level1": 0.9}
            for k in (0, 1)
        ]
    )
    report = habitats_markdown(
        summary_table(rows), rows, pd.DataFrame(), HabitatsConfig(level=4), labelled=2, corpus=2, notes=[]
    )
    assert "| model | top-1 | top-3 | macro-F1 | top-1 L3 | top-1 L2 | top-1 L1 |" in report
    assert (
        "| m | 0.500 ± 0.000 | 0.600 ± 0.000 | 0.400 ± 0.000 | 0.700 ± 0.000 | 0.800 ± 0.000 | 0.900 ± 0.000 |"
        in report
    )


# --- the real extracts ---------------------------------------------------------------------------------------------

REAL = ROOT.parent / "shared" / "data" / "real"


@pytest.mark.real_data
def test_the_code_hierarchy_agrees_with_the_eunis_2021_list() -> None:
    lookup = REAL / "eunis_habitat_lookups" / "DERIVED_eunis_habitats__EUNIS_units.csv"
    if not lookup.is_file():
        pytest.skip(f"real data file {lookup} is absent")
    from geoplantnet.samples.plots import read_habitat_names

    names = read_habitat_names(lookup)
    assert len(names) > 300 and names["R1A"].startswith("Semi-dry perennial calcareous grassland")
    # every listed code's parent by the prefix rule is itself listed (the list has no bare "MA" row)
    orphans = [c for c in names if eunis_level(c) > 1 and eunis_ancestor(c, eunis_level(c) - 1) not in names]
    assert orphans == ["MA2"]


@pytest.mark.real_data
def test_the_glc24_pipeline_reads_the_surveys_as_published(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = REAL / "glc24_pa_habitats"
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent")
    from geoplantnet.core.config import load_config
    from geoplantnet.jobs.habitats import load_habitat_data
    from geoplantnet.validation.habitat_folds import assign_folds

    monkeypatch.chdir(ROOT)  # the pipeline names the data relative to the project
    cfg = load_config(ROOT / "pipelines" / "glc24-habitats.yaml", [])
    data = load_habitat_data(cfg)
    assert len(data.labelled) == 1418  # 1,434 surveys, 16 with two codes kept for pre-training only
    assert len(data.corpus) == 4273  # every labelled survey is also in the solution file: one sentence each
    assert len(set(data.labelled.habitat)) == 107 and "MA22" in set(data.labelled.habitat)
    folds, notes = assign_folds(data.labelled, cfg.habitats)
    assert not notes and sorted(np.bincount(folds)) == [283, 283, 284, 284, 284]
