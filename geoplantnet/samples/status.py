"""Species and habitat status: which species of a species map are invasive, threatened or protected, and the Red
List category of each EUNIS habitat code, read from users' tables and from the EU policy lists.

Species rows find their species of the map in three steps, each only for rows the step before left unmatched: by id,
by the exact name, then by the canonical name (:func:`canonical_name`: authorship, case, extra whitespace and the
hybrid sign dropped; ``subsp.``/``var.``/``f.`` kept, so a subspecies never flags its whole species). A
:class:`MatchReport` counts the rows of each step and lists every row that matched nothing and every species of the
map that no row names: a status table silently missing half its species would make an indicator map wrong without
any sign.

Categories are IUCN codes (``LC``, ``NT``, ``VU``, ``EN``, ``CR``, ``DD``, ``NE``, ``EX``, ``EW``, ``RE``, ``CO``) or
their words (``"Critically Endangered"``); threatened means ``VU``, ``EN`` or ``CR``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from geoplantnet.core.errors import InputError
from geoplantnet.samples.plots import eunis_ancestor, eunis_level
from geoplantnet.samples.tables import read_table

THREATENED = ("VU", "EN", "CR")
# Most severe first: "worst" among several categories is the first in this order; DD and NE say least.
SEVERITY = ("EX", "EW", "RE", "CO", "CR", "EN", "VU", "NT", "LC", "DD", "NE")
_WORDS = {
    "extinct in the wild": "EW",
    "regionally extinct": "RE",
    "extinct": "EX",
    "collapsed": "CO",
    "critically endangered": "CR",
    "endangered": "EN",
    "vulnerable": "VU",
    "near threatened": "NT",
    "least concern": "LC",
    "data deficient": "DD",
    "not evaluated": "NE",
    "not assessed": "NE",
}
_WORD_ORDER = sorted(_WORDS, key=len, reverse=True)  # "extinct in the wild" before "extinct"
_VAGUE = ("", "NE", "DD")  # says nothing about the threat
_MISSING = {"", "-", "–", "nan", "none", "null", "na", "n/a"}
_TRUE = {"true", "yes", "y", "t", "1", "1.0", "x"}
_FALSE = {"false", "no", "n", "f", "0", "0.0"} | _MISSING
_RANKS = {"subsp.": "subsp.", "subsp": "subsp.", "ssp.": "subsp.", "ssp": "subsp.", "var.": "var.", "var": "var."}
_RANKS |= {"f.": "f.", "fo.": "f.", "forma": "f.", "subvar.": "subvar."}
_DROPPED = {"×", "x", "cf.", "aff.", "agg.", "aggr.", "s.l.", "s.lat.", "sp.", "spp.", "s.str."}
_PARENS = re.compile(r"\([^()]*\)")

ID_COLUMNS = ("species_id", "speciesId", "species_key", "taxon_id", "id")
NAME_COLUMNS = ("species_name", "scientific_name", "scientificName", "species", "name", "taxon")
INVASIVE_COLUMNS = ("invasive", "is_invasive", "alien_invasive")
IUCN_COLUMNS = ("iucn_category", "iucn", "red_list_category", "red_list", "category")
THREATENED_COLUMNS = ("threatened", "is_threatened")
PROTECTED_COLUMNS = ("protected", "is_protected")


class StatusTableError(InputError):
    """A status table or list that cannot be read or lacks a column (the message names the file and column)."""


# --- values -----------------------------------------------------------------------------------------------------
def parse_category(value: object) -> str | None:
    """An IUCN code from a code or words (``"VU"``, ``"vu"``, ``"Vulnerable"``, ``"CR (PE)"``,
    ``"Critically EndangeredR"``); ``""`` for an empty cell or ``"-"``; ``None`` when unreadable."""
    text = " ".join(str(value).split()) if value is not None else ""
    if text.lower() in _MISSING:
        return ""
    head = re.split(r"[\s(/,;]", text.upper(), maxsplit=1)[0]
    if head in SEVERITY:
        return head
    low = text.lower()
    # Prefix match: the Red List of habitats has footnote letters glued on ("Critically EndangeredR").
    return next((_WORDS[w] for w in _WORD_ORDER if low.startswith(w)), None)


def worst_category(categories: Sequence[str]) -> str:
    """The most severe of some IUCN codes (``""`` when none is given)."""
    known = [c for c in categories if c in SEVERITY]
    return min(known, key=SEVERITY.index) if known else ""


def _is_epithet(token: str) -> bool:
    return bool(token) and token.replace("-", "").isalpha()


def canonical_name(name: object) -> str:
    """``Genus epithet [rank infraspecific]`` of a scientific name: authorship and parenthesised text (authors,
    synonyms) dropped, ``×``/``x``, ``cf.``, ``agg.``, ``s.l.``, ``sp.`` dropped (an aggregate reads as its nominal
    species), ranks spelled ``subsp.``/``var.``/``f.``, genus capitalised and the rest lower case:
    ``"Pueraria montana (Lour.) Merr. var. lobata (Willd.)"`` -> ``"Pueraria montana var. lobata"``."""
    text = unicodedata.normalize("NFC", str(name)).replace("×", " × ").replace("_", " ")
    while _PARENS.search(text):  # nested parentheses, innermost first
        text = _PARENS.sub(" ", text)
    tokens = [t for t in text.split() if t.lower() not in _DROPPED]
    if not tokens or not _is_epithet(tokens[0]):
        return " ".join(text.split())
    out = [tokens[0].capitalize()]
    # The species epithet is the second word unless that is an author ("L.", "Mill.") or a rank.
    if len(tokens) > 1 and _is_epithet(tokens[1]) and tokens[1].lower() not in _RANKS:
        out.append(tokens[1].lower())
        # Infraspecific parts may follow authorship ("Pueraria montana Merr. var. lobata"): scan for rank + epithet.
        for rank, epithet in pairwise(tokens[2:]):
            if rank.lower() in _RANKS and _is_epithet(epithet):
                out += [_RANKS[rank.lower()], epithet.lower()]
    return " ".join(out)


def _bools(values: pd.Series, path: str, column: str) -> np.ndarray:
    text = values.map(lambda v: str(v).strip().lower() if v is not None else "")
    bad = ~text.isin(_TRUE | _FALSE)
    if bad.any():
        raise StatusTableError(
            f"{path}: column {column!r} has a value that is not true/false/yes/no/1/0/x: {values[bad].iloc[0]!r}"
        )
    return text.isin(_TRUE).to_numpy()


def _categories(values: pd.Series, path: str, column: str) -> np.ndarray:
    parsed = values.map(parse_category)
    bad = parsed.isna()
    if bad.any():
        raise StatusTableError(
            f"{path}: column {column!r} has a category that is not an IUCN code or name: {values[bad].iloc[0]!r}"
        )
    return parsed.to_numpy(dtype=object)


def _key(value: object) -> str:
    """An id as text: ``3.0`` read from a CSV with gaps is the id ``3``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


# --- matching ---------------------------------------------------------------------------------------------------
@dataclass
class MatchReport:
    """How the rows of a table or list found the species of a map."""

    source: str
    rows: int = 0
    by_id: int = 0
    by_name: int = 0
    by_canonical: int = 0
    by_genus: int = 0  # list entries naming a whole genus ("Sphagnum spp.")
    unmatched: list[str] = field(default_factory=list)  # rows that matched no species of the map
    species_without_row: list[str] = field(default_factory=list)  # species ids no row named
    several_rows: list[str] = field(default_factory=list)  # species ids named by more than one row (merged)

    @property
    def matched(self) -> int:
        return self.by_id + self.by_name + self.by_canonical + self.by_genus

    def summary(self) -> str:
        """One line: counts, then the first unmatched rows."""
        line = (
            f"{self.source}: {self.matched} of {self.rows} rows matched ({self.by_id} by id, {self.by_name} by name, "
            f"{self.by_canonical} by canonical name, {self.by_genus} by genus); {len(self.unmatched)} unmatched; "
            f"{len(self.species_without_row)} species without a row"
        )
        return line + (f"; unmatched: {', '.join(self.unmatched[:5])}" if self.unmatched else "")


class _Axis:
    """Lookups from the species axis of a map: id, exact name, canonical name, genus -> species indices."""

    def __init__(self, species_ids: Sequence[object], species_names: Sequence[object] | None) -> None:
        self.ids = np.asarray([_key(s) for s in species_ids], dtype=object)
        self.names = None if species_names is None else np.asarray([str(n).strip() for n in species_names], object)
        if self.names is not None and len(self.names) != len(self.ids):
            raise ValueError(f"{len(self.ids)} species ids but {len(self.names)} names")
        self.by_id = _index(self.ids)
        self.by_name = _index(self.names) if self.names is not None else {}
        canon = [canonical_name(n) for n in self.names] if self.names is not None else []
        self.by_canonical = _index(canon)
        self.by_genus = _index([c.split()[0] if c else "" for c in canon])

    def match(
        self, ids: Sequence[object] | None, names: Sequence[object] | None, source: str, genus: bool = False
    ) -> tuple[list[list[int]], MatchReport]:
        """Species indices of each row (empty when none), and the report."""
        n = len(ids if ids is not None else names or ())
        report = MatchReport(source=source, rows=n)
        targets: list[list[int]] = []
        for r in range(n):
            sid = _key(ids[r]) if ids is not None else ""
            name = "" if names is None or _key(names[r]) == "" else str(names[r]).strip()
            canon = canonical_name(name) if name else ""
            steps = {
                "by_id": self.by_id.get(sid, []) if sid else [],
                "by_name": self.by_name.get(name, []) if name else [],
                "by_canonical": self.by_canonical.get(canon, []) if canon else [],
                "by_genus": self.by_genus.get(canon, []) if genus and canon and " " not in canon else [],
            }
            step, hit = next(((k, v) for k, v in steps.items() if v), ("", []))
            if hit:
                setattr(report, step, getattr(report, step) + 1)
            else:
                report.unmatched.append(f"row {r + 1}: {', '.join(x for x in (sid, name) if x) or '(empty)'}")
            targets.append(hit)
        counts = np.bincount([i for t in targets for i in t], minlength=len(self.ids))
        report.species_without_row = [str(s) for s in self.ids[counts == 0]]
        report.several_rows = [str(s) for s in self.ids[counts > 1]]
        return targets, report


def _index(keys: Sequence[str] | np.ndarray) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        if k:
            out.setdefault(str(k), []).append(i)
    return out


# --- species status ---------------------------------------------------------------------------------------------
@dataclass
class SpeciesStatus:
    """Per species of a map's species axis (in its order): flags, the IUCN category (``""`` unknown), reports."""

    species_ids: np.ndarray
    species_names: np.ndarray | None
    invasive: np.ndarray
    threatened: np.ndarray
    protected: np.ndarray
    iucn: np.ndarray
    reports: list[MatchReport] = field(default_factory=list)

    @property
    def report(self) -> MatchReport:
        """The first report: the user's table (or the first list when there is none)."""
        return self.reports[0]

    @classmethod
    def empty(cls, species_ids: Sequence[object], species_names: Sequence[object] | None = None) -> SpeciesStatus:
        """No species flagged (start of a status built from the policy lists alone)."""
        axis = _Axis(species_ids, species_names)
        n = len(axis.ids)
        no = np.zeros(n, dtype=bool)
        return cls(axis.ids, axis.names, no, no.copy(), no.copy(), np.full(n, "", dtype=object))

    def table(self) -> pd.DataFrame:
        """One row per species: id, name, invasive, iucn_category, threatened, protected."""
        names = self.species_names if self.species_names is not None else np.full(len(self.species_ids), "")
        return pd.DataFrame(
            {
                "species_id": self.species_ids,
                "species_name": names,
                "invasive": self.invasive,
                "iucn_category": self.iucn,
                "threatened": self.threatened,
                "protected": self.protected,
            }
        )


def _pick(df: pd.DataFrame, path: str, given: str | None, defaults: Sequence[str], what: str) -> str | None:
    """The configured column (which must exist) or the first default present (case-insensitive)."""
    if given is not None:
        if given not in df.columns:
            raise StatusTableError(
                f"{path}: no column {given!r} ({what}); columns are {', '.join(map(str, df.columns))}"
            )
        return given
    lower = {str(c).lower(): str(c) for c in df.columns}
    return next((lower[d.lower()] for d in defaults if d.lower() in lower), None)


def read_species_status(
    path: str | Path,
    species_ids: Sequence[object],
    species_names: Sequence[object] | None = None,
    *,
    id_column: str | None = None,
    name_column: str | None = None,
    invasive_column: str | None = None,
    iucn_column: str | None = None,
    threatened_column: str | None = None,
    protected_column: str | None = None,
) -> SpeciesStatus:
    """Flags of the species ``species_ids`` (names optional, same order) from a CSV or Parquet status table.

    Columns left ``None`` are found by their usual names (``species_id``; ``species_name``, ``scientific_name``,
    ``species``; ``invasive``; ``iucn_category``, ``iucn``, ``red_list``; ``threatened``; ``protected``). A species
    named by several rows gets the union of their flags and the worst category; threatened is the ``threatened``
    column or a ``VU``/``EN``/``CR`` category.
    """
    where = str(path)
    df = read_table(path, "species status")
    sid = _pick(df, where, id_column, ID_COLUMNS, "species id")
    name = _pick(df, where, name_column, NAME_COLUMNS, "species name")
    if sid is None and name is None:
        raise StatusTableError(
            f"{where}: no species id or name column (looked for {', '.join(ID_COLUMNS + NAME_COLUMNS)})"
        )
    cols = {
        "invasive": _pick(df, where, invasive_column, INVASIVE_COLUMNS, "invasive"),
        "iucn": _pick(df, where, iucn_column, IUCN_COLUMNS, "IUCN category"),
        "threatened": _pick(df, where, threatened_column, THREATENED_COLUMNS, "threatened"),
        "protected": _pick(df, where, protected_column, PROTECTED_COLUMNS, "protected"),
    }
    if all(c is None for c in cols.values()):
        raise StatusTableError(f"{where}: no status column (invasive, iucn_category, threatened or protected)")
    flags = {k: _bools(df[c], where, c) for k, c in cols.items() if c is not None and k != "iucn"}
    iucn = _categories(df[cols["iucn"]], where, cols["iucn"]) if cols["iucn"] else np.full(len(df), "", object)
    status = SpeciesStatus.empty(species_ids, species_names)
    axis = _Axis(status.species_ids, status.species_names)
    targets, report = axis.match(
        None if sid is None else df[sid].tolist(), None if name is None else df[name].tolist(), where
    )
    row_threat = flags.get("threatened", np.zeros(len(df), bool)) | np.isin(iucn, THREATENED)
    for r, hit in enumerate(targets):
        for i in hit:
            status.invasive[i] |= flags.get("invasive", np.zeros(len(df), bool))[r]
            status.protected[i] |= flags.get("protected", np.zeros(len(df), bool))[r]
            status.threatened[i] |= row_threat[r]
            status.iucn[i] = worst_category([status.iucn[i], iucn[r]])
    status.reports.append(report)
    return status


# --- the EU policy lists ----------------------------------------------------------------------------------------
def _policy_names(path: str | Path, what: str, kingdom: str | None, accepted_names: bool) -> tuple[str, ...]:
    where = str(path)
    df = read_table(path, what)
    for col in ("verbatimScientificName", *(("kingdom",) if kingdom else ())):
        if col not in df.columns:
            raise StatusTableError(f"{where}: no column {col!r} ({what})")
    if kingdom:
        df = df[df["kingdom"].astype(str).str.strip().str.lower() == kingdom.lower()]
    # The list's own (verbatim) name: GBIF's match is sometimes a higher rank (a family for a failed match).
    names = [canonical_name(n) for n in df["verbatimScientificName"].dropna()]
    if accepted_names and {"status", "species", "rank"} <= set(df.columns):
        synonyms = df[(df["status"] == "SYNONYM") & (df["rank"] == "SPECIES") & df["species"].notna()]
        names += [canonical_name(n) for n in synonyms["species"]]
    return tuple(dict.fromkeys(n for n in names if n))


def eu_invasive_names(
    path: str | Path, *, kingdom: str | None = "Plantae", accepted_names: bool = False
) -> tuple[str, ...]:
    """Canonical names of the EU invasive alien species of Union concern (``IAS_list_union_concern+gbif.csv``), plants
    only by default (``kingdom=None``: all). ``accepted_names`` adds GBIF's accepted name of the entries GBIF treats
    as synonyms (``Pennisetum setaceum`` -> ``Cenchrus setaceus``): catches maps on a newer taxonomy but may flag a
    broader taxon where GBIF lumps species."""
    return _policy_names(path, "EU invasive alien species list", kingdom, accepted_names)


def habitats_directive_names(
    path: str | Path, *, kingdom: str | None = "Plantae", accepted_names: bool = False
) -> tuple[str, ...]:
    """Canonical names of the Habitats Directive Art. 17 checklist taxa (protected), plants only by default; genus
    entries (``Sphagnum spp.``) read as the genus. ``accepted_names`` as in :func:`eu_invasive_names`."""
    return _policy_names(path, "Habitats Directive Art. 17 checklist", kingdom, accepted_names)


def species_on_list(
    names: Sequence[object], list_names: Sequence[str], *, source: str = "list"
) -> tuple[np.ndarray, MatchReport]:
    """Which species ``names`` are on a list: exact name, canonical name, or a genus entry of the list naming the
    species' genus; the report's rows are the list's entries."""
    axis = _Axis(np.arange(len(names)), names)
    targets, report = axis.match(None, list(list_names), source, genus=True)
    on = np.zeros(len(names), dtype=bool)
    on[[i for t in targets for i in t]] = True
    return on, report


def add_policy_lists(
    status: SpeciesStatus,
    *,
    invasive: Sequence[str] = (),
    protected: Sequence[str] = (),
    invasive_source: str = "EU invasive alien species list",
    protected_source: str = "Habitats Directive Art. 17 checklist",
) -> SpeciesStatus:
    """``status`` with the species on the invasive / protected lists flagged too (union), the lists' reports added."""
    if status.species_names is None:
        raise StatusTableError("the species map has no species names: the policy lists match species by name")
    out = SpeciesStatus(
        status.species_ids,
        status.species_names,
        status.invasive.copy(),
        status.threatened.copy(),
        status.protected.copy(),
        status.iucn.copy(),
        list(status.reports),
    )
    for names, flags, source in (
        (invasive, out.invasive, invasive_source),
        (protected, out.protected, protected_source),
    ):
        if len(names):
            on, report = species_on_list(out.species_names, names, source=source)
            flags |= on
            out.reports.append(report)
    return out


# --- habitats ---------------------------------------------------------------------------------------------------
FULL_LINKS = ("=", "≈", ">", "")  # the EUNIS unit is (about) the Red List habitat or a part of it
PARTIAL_LINKS = ("<", "#")  # the Red List habitat is only a part of the unit, or they overlap


class HabitatRedList(Mapping[str, str]):
    """EUNIS code -> Red List category; ``partial``: codes whose category comes from partial links only."""

    def __init__(self, categories: dict[str, str], partial: set[str], sources: Sequence[str]) -> None:
        self.categories = dict(categories)
        self.partial = frozenset(partial)
        self.sources = tuple(sources)

    def __getitem__(self, code: str) -> str:
        return self.categories[code]

    def __iter__(self) -> Iterator[str]:
        return iter(self.categories)

    def __len__(self) -> int:
        return len(self.categories)


def _normalised_headers(df: pd.DataFrame) -> dict[str, str]:
    return {" ".join(str(c).lower().split()): str(c) for c in df.columns}


def _find(headers: dict[str, str], pattern: str | None, plain: Sequence[str] = ()) -> str | None:
    for h, c in headers.items():
        if (pattern is not None and re.fullmatch(pattern, h)) or h in plain:
            return c
    return None


def _red_list_links(path: Path) -> list[tuple[str, str, str]]:
    """(code, qualifier, category) of each row of a Red List crosswalk or of a user's (code, category) table."""
    where = str(path)
    df = read_table(path, "habitat Red List")
    heads = _normalised_headers(df)
    code = _find(heads, r"eunis .*code", ("code", "eunis_code", "eunis code", "habitat", "habitat_code"))
    qualifier = _find(heads, r"eunis .*qualifier", ("qualifier",))
    plus = _find(heads, r".*categor\w* eu28\+")
    eu28 = _find(heads, r".*categor\w* eu28")
    plain = _find(heads, None, ("red_list_category", "category", "iucn_category", "red_list", "iucn"))
    if code is None:
        raise StatusTableError(f"{where}: no EUNIS code column (a 'EUNIS ... code' or 'code' column)")
    if plus is None and eu28 is None and plain is None:
        raise StatusTableError(f"{where}: no category column ('Overall category EU28+'/'EU28' or 'category')")
    # EU28+ covers the wider region (and habitats absent from the EU28); EU28 where EU28+ says nothing or only DD.
    cats = [_categories(df[c], where, c) for c in (plus, eu28, plain) if c is not None]
    best = cats[0].copy()
    for more in cats[1:]:
        vague, informative = np.isin(best, _VAGUE), ~np.isin(more, _VAGUE)
        best = np.where((vague & informative) | ((best == "") & (more != "")), more, best)
    quals = df[qualifier].map(lambda q: " ".join(str(q).split()) if pd.notna(q) else "") if qualifier else None
    links = []
    for r, c in enumerate(df[code]):
        key = _key(c)
        if key:
            links.append((key, "" if quals is None else quals.iloc[r], str(best[r])))
    return links


def read_habitat_red_list(path_or_dir: str | Path | Sequence[str | Path]) -> HabitatRedList:
    """EUNIS code -> Red List category from the European Red List of Habitats crosswalks (a folder: its
    ``*cross_to_EUNIS_2021*.csv`` and ``*cross_to_EUNIS_2022*.csv``), or from users' (code, category) tables.

    Category of a row: ``Overall category EU28+``, else EU28 where EU28+ is ``"-"``, empty, Not Evaluated or Data
    Deficient (a VU in the EU28 says more than a DD for the wider region); DD when both say DD.
    Several Red List habitats may link to one code; the rule: the worst category among the full links (qualifier
    ``=``, ``≈`` or ``>``, or none: the unit is the Red List habitat or a part of it, so its assessment covers the
    unit); a code with only partial links (``<``: the Red List habitat is a part of the unit; ``#``: overlap) takes
    the worst of those, as a precaution, and is listed in ``partial``.
    """
    if isinstance(path_or_dir, (str, Path)) and Path(path_or_dir).is_dir():
        folder = Path(path_or_dir)
        paths = sorted([*folder.glob("*cross_to_EUNIS_2021*.csv"), *folder.glob("*cross_to_EUNIS_2022*.csv")])
        if not paths:
            raise StatusTableError(f"{folder}: no *cross_to_EUNIS_2021*.csv or *cross_to_EUNIS_2022*.csv file")
    elif isinstance(path_or_dir, (str, Path)):
        paths = [Path(path_or_dir)]
    else:
        paths = [Path(p) for p in path_or_dir]
    full: dict[str, list[str]] = {}
    part: dict[str, list[str]] = {}
    for path in paths:
        for code, qualifier, category in _red_list_links(path):
            (part if qualifier in PARTIAL_LINKS else full).setdefault(code, []).append(category)
    categories = {c: worst_category(v) for c, v in part.items() if c not in full}
    partial = {c for c, v in categories.items() if v}
    categories |= {c: worst_category(v) for c, v in full.items()}
    return HabitatRedList({c: v for c, v in categories.items() if v}, partial, [str(p) for p in paths])


@dataclass
class HabitatStatus:
    """Per habitat code: category (``""`` none), threatened, the code the category came from, and what was missing."""

    codes: np.ndarray
    category: np.ndarray
    threatened: np.ndarray
    source_code: np.ndarray  # the code itself or the ancestor whose category applies ("" none)
    from_ancestor: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """One row per code: code, red_list_category, threatened, source_code."""
        return pd.DataFrame(
            {
                "code": self.codes,
                "red_list_category": self.category,
                "threatened": self.threatened,
                "source_code": self.source_code,
            }
        )


def habitat_status(codes: Sequence[str], red_list: Mapping[str, str]) -> HabitatStatus:
    """Category and threatened flag of each code; a code without a category takes its nearest ancestor's
    (``R1A`` -> ``R1`` -> ``R``; listed in ``from_ancestor``); codes with neither are listed in ``missing``
    (empty codes, unlabelled pixels, are skipped)."""
    codes_arr = np.asarray([str(c).strip() for c in codes], dtype=object)
    category = np.full(len(codes_arr), "", dtype=object)
    source = np.full(len(codes_arr), "", dtype=object)
    from_ancestor: list[str] = []
    missing: list[str] = []
    for i, code in enumerate(codes_arr):
        if not code:
            continue
        chain = [code] + [eunis_ancestor(code, level) for level in range(eunis_level(code) - 1, 0, -1)]
        hit = next((c for c in chain if red_list.get(c)), None)
        if hit is None:
            missing.append(code)
            continue
        category[i], source[i] = red_list[hit], hit
        if hit != code:
            from_ancestor.append(code)
    return HabitatStatus(
        codes=codes_arr,
        category=category,
        threatened=np.isin(category, THREATENED),
        source_code=source,
        from_ancestor=list(dict.fromkeys(from_ancestor)),
        missing=list(dict.fromkeys(missing)),
    )
