"""Species and habitat status tables: matching a user's table to a map's species, the EU policy lists, the habitat Red
List with ancestor fallback, and the virtual region's status tables read back.

Real data (../shared/data/real, see each PROVENANCE.md): ``eu_policy_species_lists`` (EU invasive alien species of
Union concern, Habitats Directive Art. 17 checklist) and ``eunis_habitat_lookups`` (European Red List of Habitats
crosswalks to EUNIS 2021/2022); those tests skip when the folder is absent.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoplantnet.core.errors import InputError
from geoplantnet.samples.status import (
    SpeciesStatus,
    add_policy_lists,
    canonical_name,
    eu_invasive_names,
    habitat_status,
    habitats_directive_names,
    parse_category,
    read_habitat_red_list,
    read_species_status,
    species_on_list,
)
from geoplantnet.sim.habitats import HabitatSet
from geoplantnet.sim.region import PATHS
from geoplantnet.sim.species import EU_INVASIVE_PLANTS, SpeciesPool

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
IAS = REAL / "eu_policy_species_lists" / "IAS_list_union_concern+gbif.csv"
ART17 = REAL / "eu_policy_species_lists" / "habitats_directive_art_17_checklist+gbif_updated2025.csv"
RED_LIST = REAL / "eunis_habitat_lookups"

IDS = ["sp1", "sp2", "sp3", "sp4", "sp5"]
NAMES = ["Quercus robur", "Fagus sylvatica", "Pinus sylvestris", "Iris humilis subsp. arenaria", "Carex nigra"]


def _real(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real data {path} is absent")


def _csv(tmp_path: Path, rows: list[dict], name: str = "status.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# --- a user's species table ---------------------------------------------------------------------------------------
def test_rows_match_by_id_then_name_then_canonical_name_and_the_rest_is_reported(tmp_path):
    path = _csv(
        tmp_path,
        [
            {"species_id": "sp1", "species_name": "", "invasive": "yes", "iucn": "", "protected": ""},
            {"species_id": "", "species_name": "Fagus sylvatica", "invasive": "no", "iucn": "Vulnerable"},
            {"species_id": "", "species_name": "pinus  SYLVESTRIS L.", "protected": "x"},
            {"species_id": "", "species_name": "Iris humilis ssp. arenaria (Waldst. & Kit.) Á.Löve", "iucn": "EN"},
            {"species_id": "", "species_name": "Iris humilis", "iucn": "CR"},  # the species, not the map's subspecies
            {"species_id": "", "species_name": "Abies alba Mill.", "invasive": "1"},
            {"species_id": "sp9", "species_name": ""},
        ],
    )
    st = read_species_status(path, IDS, NAMES)
    rep = st.report
    assert (rep.rows, rep.by_id, rep.by_name, rep.by_canonical) == (7, 1, 1, 2)
    assert rep.unmatched == ["row 5: Iris humilis", "row 6: Abies alba Mill.", "row 7: sp9"]
    assert rep.species_without_row == ["sp5"] and rep.several_rows == []
    assert st.invasive.tolist() == [True, False, False, False, False]
    assert st.iucn.tolist() == ["", "VU", "", "EN", ""]
    assert st.threatened.tolist() == [False, True, False, True, False]
    assert st.protected.tolist() == [False, False, True, False, False]
    assert "4 of 7 rows matched" in rep.summary() and "row 7: sp9" in rep.summary()
    assert list(st.table().columns) == ["species_id", "species_name", "invasive", "iucn_category", "threatened",
                                        "protected"]  # fmt: skip


def test_several_rows_of_one_species_merge_flags_and_keep_the_worst_category(tmp_path):
    path = _csv(
        tmp_path,
        [
            {"scientific_name": "Quercus robur L.", "iucn_category": "Near Threatened", "threatened": "false"},
            {"scientific_name": "Quercus robur", "iucn_category": "EN", "threatened": "false"},
        ],
    )
    st = read_species_status(path, IDS, NAMES)
    assert st.iucn[0] == "EN" and st.threatened[0] and st.report.several_rows == ["sp1"]


def test_configured_columns_parquet_and_numeric_ids(tmp_path):
    path = tmp_path / "status.parquet"
    pd.DataFrame({"key": [2.0, np.nan], "latin": ["", "Carex nigra (L.) Reichard"], "alien": [True, False],
                  "annex": [False, True]}).to_parquet(path)  # fmt: skip
    st = read_species_status(
        path, [1, 2, 3], ["A a", "B b", "Carex nigra"], id_column="key", name_column="latin",
        invasive_column="alien", protected_column="annex",
    )  # fmt: skip
    assert st.invasive.tolist() == [False, True, False] and st.protected.tolist() == [False, False, True]
    assert (st.report.by_id, st.report.by_canonical) == (1, 1)


@pytest.mark.parametrize(
    ("value", "code"),
    [("VU", "VU"), ("en", "EN"), ("Critically Endangered", "CR"), ("critically endangeredR", "CR"),
     ("Near threatened", "NT"), ("Least Concern", "LC"), ("Data Deficient", "DD"), ("Not Evaluated", "NE"),
     ("Extinct in the Wild", "EW"), ("CR (PE)", "CR"), ("-", ""), (None, ""), (float("nan"), ""), ("rare", None)],
)  # fmt: skip
def test_iucn_codes_and_words(value, code):
    assert parse_category(value) == code


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("Pueraria montana (Lour.) Merr. var. lobata (Willd.)", "Pueraria montana var. lobata"),
     ("Lespedeza cuneata (Dum.Cours.) G.Don (Lespedeza juncea var. sericea (Thunb.) Lace)", "Lespedeza cuneata"),
     ("Salvinia ×molesta D.S.Mitch.", "Salvinia molesta"), ("Salix x rubens Schrank", "Salix rubens"),
     ("Rubus fruticosus agg.", "Rubus fruticosus"), ("Sphagnum spp.", "Sphagnum"), ("poa  ANNUA", "Poa annua"),
     ("Festuca ovina subsp hirtula", "Festuca ovina subsp. hirtula")],
)  # fmt: skip
def test_canonical_names(name, canonical):
    assert canonical_name(name) == canonical


def test_bad_files_and_columns_name_the_file_and_column(tmp_path):
    with pytest.raises(InputError, match=r"nope\.csv: no such file"):
        read_species_status(tmp_path / "nope.csv", IDS, NAMES)
    cases = {
        "no_key.csv": ({"taxonomy": "x", "invasive": "yes"}, "no species id or name column"),
        "no_flag.csv": ({"species_id": "sp1", "note": "x"}, "no status column"),
        "bad_iucn.csv": ({"species_id": "sp1", "iucn": "rare"}, r"column 'iucn' has a category .*'rare'"),
        "bad_bool.csv": ({"species_id": "sp1", "protected": "maybe"}, r"column 'protected' .*'maybe'"),
    }
    for name, (row, message) in cases.items():
        with pytest.raises(InputError, match=rf"{name}: {message}"):
            read_species_status(_csv(tmp_path, [row], name), IDS, NAMES)
    with pytest.raises(InputError, match=r"ok\.csv: no column 'taxon' \(species name\)"):
        read_species_status(_csv(tmp_path, [{"species_id": "sp1", "invasive": 1}], "ok.csv"), IDS, NAMES,
                            name_column="taxon")  # fmt: skip
    with pytest.raises(InputError, match=r"codes\.csv: no category column"):
        read_habitat_red_list(_csv(tmp_path, [{"code": "R1A", "name": "x"}], "codes.csv"))


# --- lists --------------------------------------------------------------------------------------------------------
def test_species_on_a_list_by_name_canonical_name_and_genus():
    on, rep = species_on_list(
        ["Sphagnum palustre", "Impatiens glandulifera", "Pinus sylvestris", "Ludwigia grandiflora"],
        ["Impatiens glandulifera", "Ludwigia grandiflora (Michx.) Greuter & Burdet", "Sphagnum spp.",
         "Abies nebrodensis"],
        source="my list",
    )  # fmt: skip
    assert on.tolist() == [True, True, False, True]
    assert (rep.by_name, rep.by_canonical, rep.by_genus) == (1, 1, 1) and rep.unmatched == ["row 4: Abies nebrodensis"]


def test_policy_lists_add_to_the_table_flags_and_keep_every_report(tmp_path):
    st = read_species_status(_csv(tmp_path, [{"species_id": "sp1", "invasive": "yes"}]), IDS, NAMES)
    out = add_policy_lists(st, invasive=["Carex nigra"], protected=["Iris humilis subsp. arenaria"])
    assert out.invasive.tolist() == [True, False, False, False, True] and not st.invasive[4]
    assert out.protected.tolist() == [False, False, False, True, False]
    assert [r.source for r in out.reports][1:] == ["EU invasive alien species list",
                                                  "Habitats Directive Art. 17 checklist"]  # fmt: skip
    with pytest.raises(InputError, match="no species names"):
        add_policy_lists(SpeciesStatus.empty(IDS), invasive=["Carex nigra"])


@pytest.mark.real_data
def test_real_eu_invasive_list_and_the_virtual_names_on_it():
    _real(IAS)
    plants = eu_invasive_names(IAS)
    assert len(plants) == 40  # PROVENANCE.md: 88 species of Union concern, 40 Plantae
    assert len(eu_invasive_names(IAS, kingdom=None)) == 88
    assert "Pueraria montana var. lobata" in plants and "Salvinia molesta" in plants
    # GBIF treats Pennisetum setaceum and Eichhornia crassipes as synonyms: their accepted names on request.
    assert set(eu_invasive_names(IAS, accepted_names=True)) - set(plants) == {
        "Cenchrus setaceus",
        "Pontederia crassipes",
    }
    names = [n for n, _ in EU_INVASIVE_PLANTS]
    on, rep = species_on_list(names, plants)
    assert on.all() and rep.by_name == len(names), rep.species_without_row


@pytest.mark.real_data
def test_real_habitats_directive_checklist():
    _real(ART17)
    protected = habitats_directive_names(ART17)
    assert len(protected) > 600 and "Arnica montana" in protected and "Sphagnum" in protected
    # "Sisymbrium supinum": GBIF matched only the family; the list's own name is kept.
    assert "Sisymbrium supinum" in protected and "Brassicaceae" not in protected
    on, rep = species_on_list(["Sphagnum fuscum", "Arnica montana L.", "Bellis perennis"], protected)
    assert on.tolist() == [True, True, False] and rep.by_genus == 1 and rep.by_canonical == 1


# --- habitats -----------------------------------------------------------------------------------------------------
@pytest.mark.real_data
def test_real_red_list_of_habitats():
    _real(RED_LIST)
    rl = read_habitat_red_list(RED_LIST)
    assert len(rl.sources) == 2 and len(rl) > 500
    # Checked by hand in the crosswalk CSVs:
    # R1A  <- E1.2a Semi-dry perennial calcareous grassland, "=", EU28 Vulnerable, EU28+ Vulnerable
    # MA211 <- A2.5a Arctic coastal salt marsh, "≈", EU28 "-", EU28+ Near Threatened
    # N15  <- B1.4a grey dune "≈" Vulnerable and B1.9 Machair "#" Least Concern: the full link wins
    # S61  <- F6.1a and F6.6 garrigues, both "<" Least Concern: partial links only
    # T3J  <- G3.Da Pinus mire woodland "<", EU28 Vulnerable, EU28+ Data Deficient: EU28 says more
    # MB25 (marine) <- three "<" Mediterranean biogenic habitats: Endangered, Endangered, Near Threatened
    expected = {"R1A": "VU", "MA211": "NT", "N15": "VU", "S61": "LC", "T3J": "VU", "MB25": "EN"}
    assert {c: rl[c] for c in expected} == expected
    assert {"S61", "T3J", "MB25"} <= rl.partial and not {"R1A", "N15"} & rl.partial
    st = habitat_status(["R1A", "T3J1", "N15", "X9", "", "J1"], rl)
    assert st.category.tolist() == ["VU", "VU", "VU", "", "", ""]
    assert st.threatened.tolist() == [True, True, True, False, False, False]
    assert st.source_code.tolist() == ["R1A", "T3J", "N15", "", "", ""]
    assert st.from_ancestor == ["T3J1"] and st.missing == ["X9", "J1"]


def test_a_users_habitat_table_and_the_worst_link():
    rl = {"R1": "NT", "R1A": "EN", "Q": "VU"}
    st = habitat_status(["R1A", "R1B", "R1B", "Q5C", "C1"], rl)
    assert st.category.tolist() == ["EN", "NT", "NT", "VU", ""]
    assert st.from_ancestor == ["R1B", "Q5C"] and st.missing == ["C1"]


def test_a_users_code_category_table_same_reader(tmp_path):
    path = _csv(tmp_path, [{"code": "R1A", "category": "Endangered"}, {"code": "R1A", "category": "LC"},
                           {"code": "Q1", "category": "-"}], "habitats.csv")  # fmt: skip
    rl = read_habitat_red_list(path)
    assert dict(rl) == {"R1A": "EN"} and not rl.partial


# --- the virtual region -------------------------------------------------------------------------------------------
def test_virtual_region_status_tables_read_back_to_the_pool(small_region):
    root = small_region / "region"
    pool = SpeciesPool.read_table(root / PATHS["species_table"])
    habitats = HabitatSet.from_table(pd.read_parquet(root / PATHS["habitat_table"]), pool)
    st = read_species_status(root / PATHS["species_status"], pool.ids, pool.names)
    assert st.report.by_id == pool.n and not st.report.unmatched and not st.report.species_without_row
    assert np.array_equal(st.invasive, pool.invasive) and np.array_equal(st.protected, pool.protected)
    assert np.array_equal(st.threatened, pool.threatened) and st.iucn.tolist() == list(pool.iucn)
    assert 0 < pool.protected.sum() < pool.n and not (pool.protected & pool.invasive).any()

    rl = read_habitat_red_list(root / PATHS["habitat_status"])
    hs = habitat_status(habitats.codes, rl)
    table = pd.read_csv(root / PATHS["habitat_status"], keep_default_na=False)
    assert hs.threatened.tolist() == table["threatened"].tolist()
    assert sorted(hs.missing) == sorted(c for c in habitats.codes if len(c) == 1)  # level 1: no category
    assert all(rl[c] for c in habitats.leaves)


@pytest.mark.real_data
def test_virtual_invasive_species_are_exactly_those_on_the_real_list(small_region):
    _real(IAS)
    pool = SpeciesPool.read_table(small_region / "region" / PATHS["species_table"])
    on, _ = species_on_list(pool.names, eu_invasive_names(IAS))
    assert pool.invasive.any() and np.array_equal(on, pool.invasive)
    # A larger pool: every invasive species (4 %) gets a real name and nothing else matches.
    rng = np.random.default_rng(0)
    env = {v: rng.normal(size=2000).astype("float32") for v in ("temperature", "precipitation", "soil_ph", "elevation")}
    env["land_cover"] = rng.integers(1, 10, 2000)
    big = SpeciesPool.generate(5, 400, env, rng.uniform(0, 5000, 2000), rng.uniform(0, 5000, 2000))
    on, rep = species_on_list(big.names, eu_invasive_names(IAS))
    assert big.invasive.sum() == 16 and np.array_equal(on, big.invasive), rep.summary()
