"""An interpreter for the EUNIS-ESy expert system (Chytrý et al. 2020, Tichý et al. 2019): vegetation plots (taxon
cover) plus a few header fields in, EUNIS habitat codes out. It is the expert-system peer of the habitat models.

The definition file (JUICE expert-system format, e.g. ``EUNIS-ESy-2021-06-01.txt``) has four sections:

1. *Species aggregation*: an unindented aggregate name (``Abies cilicica   -  0``) followed by indented member names
   (``     Abies cilicica subsp. cilicica   0``). The trailing number is JUICE's layer code (0 = all layers merged);
   it is kept in :attr:`ExpertSystem.aggregate_codes` / :attr:`ExpertSystem.member_codes`. Plot taxa are renamed to
   their aggregate before anything is counted, as JUICE and the R implementation (Bruelheide et al. 2021) do.
2. *Species groups*: ``### name`` (a group) or ``##D +NN name`` (a discriminating group of the set ``+NN``) followed
   by indented species names.
3. *Group definitions*: per habitat a line ``<priority>          <code> <name>`` (fixed width: code in columns
   12-16) and a membership formula, possibly over several lines, until a blank line.
4. *Similarity*: unused.

Membership formulas combine ``<...>`` expressions with ``AND``, ``OR``, ``NOT`` (binary "and not", as the R code's
``&!``; a leading ``NOT`` is unary) and parentheses; ``AND``/``NOT`` bind tighter than ``OR`` (R precedence).
An expression compares a left- and a right-hand condition with ``GR`` (>), ``GE`` (>=) or ``EQ`` (==):

* ``#TC G`` total cover of group ``G`` (``#TC A|#TC B``: of the union; ``... EXCEPT #TC C`` or ``EXCEPT Species``:
  minus those taxa); ``#T$ G``: total cover of all taxa *not* in ``G``; a bare right-hand ``#T$``: of all taxa not in
  the left-hand group; a bare left-hand ``#T$`` (``<#T$ GE 30>``): total cover of the plot.
* ``$NN`` (right-hand): NN % of the plot's total cover.
* ``#SC G`` the highest cover of a single taxon of ``G``; on the right-hand side the left-hand taxa are excluded
  (``<Fagus sylvatica GR #SC Trees>``: Fagus beats every other tree). ``#$$`` the highest cover of a single taxon
  outside the left-hand group (``<#SC Dryas GE #$$>``: a Dryas taxon is the plot's dominant).
* ``### G`` the number of taxa of ``G`` present; ``<#NN G>`` (no right-hand side): at least NN taxa of ``G``.
* ``<##Q +NN G>`` (no right-hand side): the sum of square-rooted cover of ``G`` is greater than that of every other
  ``##D`` group of the set ``+NN`` (``NON``, written out in the R code as ``GR NON ##Q +NN G``); ``<##D +NN G>``
  and ``<##C +NN G>``: the same with the number of taxa and the total cover.
* a taxon name (``<Phragmites australis GR 50>``): the cover of that taxon.
* ``$$N field`` numeric header field (missing = 0, as in JUICE and the R code), ``$$C field EQ value`` categorical
  header field (case-insensitive; missing = no match).

Cover of several records of one taxon in a plot (layers, or names merged by the aggregation) is combined as
independent overlapping covers, ``100 * (1 - prod(1 - c/100))``; total covers of groups use the same rule (the R
code's ``total.cover``). Assignment: among the habitats whose formula is true, the highest priority wins (priority
characters ordered ``0-9A-Za-z``); several different habitats at that priority give ``+``, none gives ``?``.
Alternative formulas of one habitat (``N15!``, ``N15!!``: the same habitat recognised by its specialists, at a lower
priority; the numbered ``T3M`` plantation formulas) count as that habitat: results carry the base code (``N15``).

Everything is computed on a sparse plot x taxon cover matrix: one vector per distinct condition, one boolean vector
per distinct expression, then formulas as vector logic, so no Python loop runs over plots.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from geoplantnet.core.errors import InputError

__all__ = [
    "EsyDefinitionError",
    "EsyEvaluation",
    "ExpertSystem",
    "HabitatFormula",
    "base_code",
    "normalize_taxon_name",
    "wide_to_long",
]

log = logging.getLogger(__name__)

PRIORITY_ORDER = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
NO_MATCH = "?"
TIE = "+"
_OPS = ("GR", "GE", "EQ")
_OP_RE = re.compile(r"\s(GR|GE|EQ)\s")
_PREFIXES = ("#TC", "#T$", "#SC", "###", "##Q", "##D", "##C")
_NAME_LINE = re.compile(r"^([0-9A-Za-z])\s{2,}\S")
_ROUND = 9  # decimals kept before comparing, so float noise does not break ties such as 0 GE 0

# header fields the formulas name -> other spellings accepted in a user's header (looked up case-insensitively)
_HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "altitude (m)": ("altitude", "altitude_m", "elevation"),
    "deg_lat": ("latitude", "lat"),
    "deg_lon": ("longitude", "lon"),
    "dataset": ("dataset",),
}


class EsyDefinitionError(InputError):
    """A malformed expert-system definition file; the message names the file and line."""


def base_code(code: str) -> str:
    """The habitat a formula code stands for: ``N15!`` and ``N15!!`` are alternative formulas of ``N15``."""
    return code.rstrip("!")


def normalize_taxon_name(name: str) -> str:
    """A data taxon name as the definition file spells it: ``_`` to spaces, ``ssp``/``ssp.`` to ``subsp.``, single
    spaces."""
    s = str(name).replace("_", " ")
    s = re.sub(r"\bssp\b\.?", "subsp.", s)
    return " ".join(s.split())


def wide_to_long(table: pd.DataFrame, taxon_column: str = "name") -> pd.DataFrame:
    """A taxa x plots cover table (one column per plot) as the long ``plot, taxon, cover`` table :meth:`ExpertSystem.
    classify` reads; zero covers (absent taxa) are dropped."""
    long = table.melt(id_vars=[taxon_column], var_name="plot", value_name="cover").rename(
        columns={taxon_column: "taxon"}
    )
    long["cover"] = pd.to_numeric(long["cover"], errors="coerce").fillna(0.0)
    return long.loc[long["cover"] > 0, ["plot", "taxon", "cover"]].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------------
# parsed structures


@dataclass(frozen=True)
class TaxSet:
    """A set of taxa, or (``negate``) every taxon outside it."""

    names: frozenset[str]
    negate: bool = False


@dataclass(frozen=True)
class Term:
    """One side of an expression: ``kind`` is const, pct, tc, sc, count, sqrt, non, hnum or hcat."""

    kind: str
    taxa: TaxSet | None = None
    value: float | str | None = None  # const value, pct fraction, header field, or NON (measure, group) pair


@dataclass(frozen=True)
class Expression:
    """A membership expression ``left OP right``; ``text`` is the source between ``<`` and ``>``."""

    text: str
    left: Term
    op: str
    right: Term


@dataclass(frozen=True)
class HabitatFormula:
    """One formula of section 3: ``code`` as written (``N15!``), ``habitat`` its base code (``N15``)."""

    code: str
    habitat: str
    name: str
    priority: str
    rank: int
    formula: str
    line: int
    tree: tuple[Any, ...] = field(repr=False)


@dataclass
class EsyEvaluation:
    """Everything :meth:`ExpertSystem.evaluate` computed: per plot the assigned code, the formulas that hold (plots x
    formulas, columns numbered as :attr:`ExpertSystem.formulas`) and the data taxa no part of the system names."""

    codes: pd.Series
    matches: pd.DataFrame
    unmatched_taxa: list[str]

    def matching_types(self, formulas: Sequence[HabitatFormula]) -> pd.Series:
        """Per plot the habitats whose formula holds, as ``code:priority`` strings, highest priority first."""
        order = sorted(range(len(formulas)), key=lambda i: -formulas[i].rank)
        labels = np.array([f"{formulas[i].code}:{formulas[i].priority}" for i in order], dtype=object)
        m = self.matches.to_numpy()[:, order]
        return pd.Series([tuple(labels[row]) for row in m], index=self.matches.index, name="matching_types")


# ---------------------------------------------------------------------------------------------------------------
# parsing


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.lines = text.splitlines()
        self.source = source

    def fail(self, line: int, what: str) -> EsyDefinitionError:
        return EsyDefinitionError(f"{self.source}:{line}: {what}")

    def sections(self) -> dict[int, tuple[int, int]]:
        """Section number -> (first line index, end line index) of its body, 0-based."""
        found: dict[int, tuple[int, int]] = {}
        start: dict[int, int] = {}
        for i, raw in enumerate(self.lines):
            m = re.match(r"^SECTION (\d+):\s*(.*)$", raw.strip())
            if not m:
                continue
            n, rest = int(m.group(1)), m.group(2).strip()
            if rest.lower() == "end":
                if n not in start:
                    raise self.fail(i + 1, f"'SECTION {n}: End' without its start")
                found[n] = (start.pop(n) + 1, i)
            else:
                if n in start or n in found:
                    raise self.fail(i + 1, f"SECTION {n} starts twice")
                start[n] = i
        for n, i in start.items():
            raise self.fail(i + 1, f"SECTION {n} has no 'SECTION {n}: End'")
        for n in (1, 2, 3):
            if n not in found:
                raise self.fail(
                    len(self.lines), f"no SECTION {n} (expected sections 1-3: aggregation, groups, definitions)"
                )
        return found

    def aggregation(self, lo: int, hi: int) -> tuple[dict[str, list[str]], dict[str, int], dict[str, int]]:
        aggs: dict[str, list[str]] = {}
        agg_codes: dict[str, int] = {}
        member_codes: dict[str, int] = {}
        current: str | None = None
        for i in range(lo, hi):
            raw = self.lines[i]
            if not raw.strip():
                continue
            if raw[0].isspace():
                if current is None:
                    raise self.fail(i + 1, "indented species before any aggregate name in SECTION 1")
                m = re.match(r"^(.*?)(?:\s+(\d+))?$", raw.strip())
                assert m is not None
                name = " ".join(m.group(1).split())
                aggs[current].append(name)
                member_codes.setdefault(name, int(m.group(2) or 0))
            else:
                m = re.match(r"^(.*?)(?:\s+-)?(?:\s+(\d+))?$", raw.strip())
                assert m is not None
                current = " ".join(m.group(1).split())
                if not current:
                    raise self.fail(i + 1, "empty aggregate name in SECTION 1")
                aggs.setdefault(current, [])
                agg_codes[current] = int(m.group(2) or 0)
        return aggs, agg_codes, member_codes

    def groups(self, lo: int, hi: int) -> tuple[dict[str, frozenset[str]], dict[str, str], dict[str, int]]:
        members: dict[str, list[str]] = {}
        kinds: dict[str, str] = {}
        lines: dict[str, int] = {}
        current: str | None = None
        for i in range(lo, hi):
            raw = self.lines[i]
            if not raw.strip():
                continue
            if raw[0].isspace():
                if current is None:
                    raise self.fail(i + 1, "indented species before any '### name' group header in SECTION 2")
                members[current].append(" ".join(raw.split()))
                continue
            m = re.match(r"^(###|##D|\$\$C|\$\$N) (\S.*)$", raw.rstrip())
            if not m:
                raise self.fail(i + 1, f"expected a group header '### name' or '##D +NN name', got {raw.strip()!r}")
            name = " ".join(m.group(2).split())
            if name in members:
                raise self.fail(i + 1, f"species group {name!r} defined twice (first on line {lines[name]})")
            if m.group(1) == "##D" and not re.match(r"^\+\d+", name):
                raise self.fail(i + 1, f"discriminating group {name!r} lacks its set number '+NN'")
            current, members[name], kinds[name], lines[name] = name, [], m.group(1), i + 1
        return {k: frozenset(v) for k, v in members.items()}, kinds, lines

    def definitions(self, lo: int, hi: int) -> list[tuple[int, str, str, str, str]]:
        """(line, priority, code, name, formula text) per habitat formula."""
        out: list[tuple[int, str, str, str, str]] = []
        i = lo
        while i < hi:
            raw = self.lines[i]
            if not raw.strip() or raw.startswith("---"):
                i += 1
                continue
            if not _NAME_LINE.match(raw):
                raise self.fail(
                    i + 1, f"expected a habitat line '<priority>   <code> <name>', got {raw.strip()[:60]!r}"
                )
            prio = raw[0]
            if len(raw) > 11 and not raw[1:11].strip():
                code, name = raw[11:16].strip(), raw[16:].strip()  # fixed width: code in columns 12-16
            else:
                m = re.match(r"^\S\s+([A-Za-z0-9]+!{0,2})\s*(.*)$", raw)
                assert m is not None
                code, name = m.group(1), m.group(2).strip()
            if not re.fullmatch(r"[A-Za-z0-9]+!{0,2}", code):
                raise self.fail(i + 1, f"malformed habitat code {code!r}")
            parts: list[str] = []
            j = i + 1
            while j < hi and self.lines[j].strip() and not _NAME_LINE.match(self.lines[j]):
                if not self.lines[j].startswith("---"):
                    parts.append(self.lines[j].strip())
                j += 1
            if not parts:
                raise self.fail(i + 1, f"habitat {code} has no membership formula")
            out.append((i + 1, prio, code, name, " ".join(parts)))
            i = j
        return out


def _tokenize(formula: str, fail: Any) -> list[str]:
    tokens: list[str] = []
    i, n = 0, len(formula)
    while i < n:
        c = formula[i]
        if c.isspace():
            i += 1
        elif c in "()":
            tokens.append(c)
            i += 1
        elif c == "<":
            j = formula.find(">", i)
            if j < 0 or "<" in formula[i + 1 : j]:
                raise fail(f"unclosed '<' at character {i + 1} of the formula")
            tokens.append(formula[i : j + 1])
            i = j + 1
        else:
            m = re.match(r"(AND|OR|NOT)\b", formula[i:])
            if not m:
                raise fail(f"unexpected text {formula[i : i + 20]!r} in the formula (expected <...>, AND, OR, NOT)")
            tokens.append(m.group(1))
            i += len(m.group(1))
    return tokens


class _FormulaParser:
    """Recursive descent: or := and ('OR' and)*; and := unary (('AND'|'NOT') unary)*; unary := 'NOT' unary | atom."""

    def __init__(self, tokens: list[str], fail: Any) -> None:
        self.t, self.i, self.fail = tokens, 0, fail

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise self.fail("the formula ends early")
        self.i += 1
        return tok

    def parse(self) -> tuple[Any, ...]:
        tree = self.or_()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()!r} after a complete formula (unbalanced parentheses?)")
        return tree

    def or_(self) -> tuple[Any, ...]:
        left = self.and_()
        while self.peek() == "OR":
            self.take()
            left = ("or", left, self.and_())
        return left

    def and_(self) -> tuple[Any, ...]:
        left = self.unary()
        while self.peek() in ("AND", "NOT"):
            op = self.take()
            right = self.unary()
            left = ("and", left, right) if op == "AND" else ("andnot", left, right)
        return left

    def unary(self) -> tuple[Any, ...]:
        tok = self.take()
        if tok == "NOT":
            return ("not", self.unary())
        if tok == "(":
            inner = self.or_()
            if self.peek() != ")":
                raise self.fail("missing ')' (unbalanced parentheses)")
            self.take()
            return inner
        if tok.startswith("<"):
            return ("expr", tok[1:-1].strip())
        raise self.fail(f"unexpected {tok!r}")


# ---------------------------------------------------------------------------------------------------------------
# the expert system


class ExpertSystem:
    """A parsed EUNIS-ESy definition; :meth:`classify` assigns plots to habitats."""

    def __init__(
        self,
        aggregates: dict[str, list[str]],
        aggregate_codes: dict[str, int],
        member_codes: dict[str, int],
        groups: dict[str, frozenset[str]],
        group_kinds: dict[str, str],
        formulas: list[HabitatFormula],
        expressions: dict[str, Expression],
        source: str = "<text>",
    ) -> None:
        self.aggregates = aggregates
        self.aggregate_codes = aggregate_codes
        self.member_codes = member_codes
        self.groups = groups
        self.group_kinds = group_kinds
        self.formulas = formulas
        self.expressions = expressions
        self.source = source
        # member -> aggregate; a member listed under two aggregates keeps the first (4 such names in the 2021 file)
        self.synonyms: dict[str, str] = {}
        for agg, members in aggregates.items():
            for m in members:
                if m != agg:
                    self.synonyms.setdefault(m, agg)
        self.known_taxa: frozenset[str] = frozenset(
            set(aggregates) | set(self.synonyms) | {t for g in groups.values() for t in g} | self._condition_taxa()
        )

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path) -> ExpertSystem:
        """Parse a definition file (JUICE expert-system text, e.g. ``EUNIS-ESy-2021-06-01.txt``)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise EsyDefinitionError(f"{p}: cannot read the expert-system file ({e.strerror})") from e
        return cls.from_text(text, source=str(p))

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> ExpertSystem:
        """Parse definition text; ``source`` names it in error messages."""
        ps = _Parser(text, source)
        sec = ps.sections()
        aggs, agg_codes, member_codes = ps.aggregation(*sec[1])
        groups, kinds, _ = ps.groups(*sec[2])
        expressions: dict[str, Expression] = {}
        formulas: list[HabitatFormula] = []
        for line, prio, code, name, text_ in ps.definitions(*sec[3]):

            def fail(what: str, line: int = line, code: str = code) -> EsyDefinitionError:
                return ps.fail(line, f"{code}: {what}")

            tree = _FormulaParser(_tokenize(text_, fail), fail).parse()
            for atom in _atoms(tree):
                if atom not in expressions:
                    expressions[atom] = _parse_expression(atom, groups, fail)
            formulas.append(
                HabitatFormula(code, base_code(code), name, prio, PRIORITY_ORDER.index(prio), text_, line, tree)
            )
        if not formulas:
            raise ps.fail(sec[3][0], "SECTION 3 defines no habitat")
        return cls(aggs, agg_codes, member_codes, groups, kinds, formulas, expressions, source)

    def _condition_taxa(self) -> set[str]:
        out: set[str] = set()
        for e in self.expressions.values():
            for t in (e.left, e.right):
                if t.taxa is not None:
                    out |= t.taxa.names
        return out

    @property
    def header_fields(self) -> tuple[str, ...]:
        """The header fields the formulas read (``DEG_LON``, ``Country``, ...), sorted."""
        names = {
            str(t.value) for e in self.expressions.values() for t in (e.left, e.right) if t.kind in ("hnum", "hcat")
        }
        return tuple(sorted(names))

    def header_field(self, column: str) -> str | None:
        """The formula field a header column stands for (case-insensitive, with the accepted other spellings:
        ``Altitude`` -> ``Altitude (m)``); None if no formula reads it."""
        want = column.strip().lower()
        for name in self.header_fields:
            if want == name.lower() or want in _HEADER_ALIASES.get(name.lower(), ()):
                return name
        return None

    # -- taxa ---------------------------------------------------------------------------------------------------

    def canonical_taxon(self, name: str, extra_synonyms: Mapping[str, str] | None = None) -> str:
        """The name the system counts a data taxon under: normalised, renamed by ``extra_synonyms``, then by the
        species aggregation (member -> aggregate)."""
        n = normalize_taxon_name(name)
        if extra_synonyms:
            n = extra_synonyms.get(n, n)
        return self.synonyms.get(n, n)

    # -- evaluation ---------------------------------------------------------------------------------------------

    def evaluate(
        self,
        plots: pd.DataFrame,
        header: pd.DataFrame | None = None,
        *,
        plot_column: str = "plot",
        taxon_column: str = "taxon",
        cover_column: str = "cover",
        synonyms: Mapping[str, str] | None = None,
    ) -> EsyEvaluation:
        """Evaluate every formula on every plot; ``plots`` is a long table (plot, taxon, cover in %), ``header`` is
        indexed by plot (DEG_LON, DEG_LAT, Altitude, Country, Coast_EEA, Dunes_Bohn, Ecoreg, dataset where known)."""
        for c in (plot_column, taxon_column, cover_column):
            if c not in plots.columns:
                raise InputError(f"plot table lacks the column {c!r} (has {list(plots.columns)})")
        cover = pd.to_numeric(plots[cover_column], errors="coerce")
        if cover.isna().any() or (cover < 0).any() or (cover > 100).any():
            bad = plots.loc[cover.isna() | (cover < 0) | (cover > 100)].iloc[0]
            raise InputError(
                f"cover must be a percentage 0-100; plot {bad[plot_column]!r} taxon {bad[taxon_column]!r} "
                f"has {bad[cover_column]!r}"
            )
        keep = cover > 0
        plot_ids = pd.Index(pd.unique(plots[plot_column]))
        if header is not None:
            plot_ids = plot_ids.append(header.index.difference(plot_ids, sort=False))
        names = plots.loc[keep, taxon_column].astype(str)
        uniq = pd.unique(names)
        canon_of = {n: self.canonical_taxon(n, synonyms) for n in uniq}
        taxa_col = names.map(canon_of)
        unmatched = sorted({c for c in canon_of.values() if c not in self.known_taxa})
        if unmatched:
            log.warning("ESy: %d taxa not named in %s: %s", len(unmatched), self.source, ", ".join(unmatched))
        taxa = pd.Index(sorted(set(taxa_col)))
        rows = plot_ids.get_indexer(plots.loc[keep, plot_column])
        cols = taxa.get_indexer(taxa_col)
        # combine records of one taxon in one plot as independent overlapping covers: sum of log(1 - c/100)
        c = np.minimum(cover[keep].to_numpy(dtype=float), 100.0 - 1e-9) / 100.0
        logkeep = sp.coo_matrix((np.log1p(-c), (rows, cols)), shape=(len(plot_ids), len(taxa))).tocsr()
        logkeep.sum_duplicates()
        cov = logkeep.copy()
        cov.data = -np.expm1(cov.data) * 100.0
        ev = _Evaluator(self, cov, logkeep, taxa, plot_ids, header)
        atom_values = {text: ev.expression(e) for text, e in self.expressions.items()}
        matrix = np.column_stack([_eval_tree(f.tree, atom_values) for f in self.formulas])
        matches = pd.DataFrame(matrix, index=plot_ids, columns=pd.RangeIndex(len(self.formulas)))
        codes = self._assign(matrix, plot_ids)
        codes.attrs["unmatched_taxa"] = unmatched
        return EsyEvaluation(codes, matches, unmatched)

    def _assign(self, matrix: np.ndarray, plot_ids: pd.Index) -> pd.Series:
        ranks = np.array([f.rank for f in self.formulas])
        habitats = pd.Index(sorted({f.habitat for f in self.formulas}))
        onehot = np.zeros((len(self.formulas), len(habitats)), dtype=np.int32)
        onehot[np.arange(len(self.formulas)), habitats.get_indexer([f.habitat for f in self.formulas])] = 1
        best = np.where(matrix, ranks[None, :], -1).max(axis=1, initial=-1)
        top = matrix & (ranks[None, :] == best[:, None])
        top_hab = (top.astype(np.int32) @ onehot) > 0  # alternative formulas of one habitat count once
        n_top = top_hab.sum(axis=1)
        out = np.where(n_top == 1, habitats.to_numpy(dtype=object)[top_hab.argmax(axis=1)], TIE)
        out = np.where(n_top == 0, NO_MATCH, out)
        return pd.Series(out, index=plot_ids, name="esy", dtype=object)

    def classify(
        self,
        plots: pd.DataFrame,
        header: pd.DataFrame | None = None,
        *,
        plot_column: str = "plot",
        taxon_column: str = "taxon",
        cover_column: str = "cover",
        synonyms: Mapping[str, str] | None = None,
    ) -> pd.Series:
        """The EUNIS code per plot (``?`` none, ``+`` a tie); ``.attrs["unmatched_taxa"]`` lists the data taxa the
        system does not name (they still count in total covers)."""
        return self.evaluate(
            plots,
            header,
            plot_column=plot_column,
            taxon_column=taxon_column,
            cover_column=cover_column,
            synonyms=synonyms,
        ).codes

    def matching_types(self, plots: pd.DataFrame, header: pd.DataFrame | None = None, **kwargs: Any) -> pd.Series:
        """Diagnostics: per plot every formula that holds, as ``code:priority``, highest priority first."""
        return self.evaluate(plots, header, **kwargs).matching_types(self.formulas)

    def formula(self, code: str) -> list[HabitatFormula]:
        """The formulas of a habitat (base code or code as written)."""
        return [f for f in self.formulas if code in (f.code, f.habitat)]


# ---------------------------------------------------------------------------------------------------------------
# expressions


def _atoms(tree: tuple[Any, ...]) -> Iterable[str]:
    if tree[0] == "expr":
        yield tree[1]
    else:
        for sub in tree[1:]:
            yield from _atoms(sub)


def _eval_tree(tree: tuple[Any, ...], atoms: Mapping[str, np.ndarray]) -> np.ndarray:
    kind = tree[0]
    if kind == "expr":
        return atoms[tree[1]]
    if kind == "not":
        return ~_eval_tree(tree[1], atoms)
    a, b = _eval_tree(tree[1], atoms), _eval_tree(tree[2], atoms)
    if kind == "and":
        return a & b
    if kind == "andnot":
        return a & ~b
    return a | b


def _taxset(spec: str, prefix: str, groups: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """Taxa of ``#TC A|#TC B`` (prefix stripped from each item); a name that is no group is a single taxon."""
    out: set[str] = set()
    for item in spec.split("|"):
        s = item.strip()
        if s.startswith(prefix + " "):
            s = s[len(prefix) + 1 :].strip()
        elif s[:3] in _PREFIXES and s[3:4] == " ":
            s = s[4:].strip()
        name = " ".join(s.split())
        out |= groups.get(name, frozenset({name}))
    return frozenset(out)


def _parse_side(s: str, groups: Mapping[str, frozenset[str]], fail: Any, lhs: Term | None = None) -> Term:
    s = " ".join(s.split())
    if re.fullmatch(r"-?\d+(\.\d+)?", s):
        return Term("const", value=float(s))
    if re.fullmatch(r"\$\d+(\.\d+)?", s):
        return Term("pct", value=float(s[1:]) / 100.0)
    if s.startswith("$$N "):
        return Term("hnum", value=s[4:].strip())
    if s.startswith("$$C "):
        return Term("hcat", value=s[4:].strip())
    if s.startswith("NON "):
        inner = s[4:].strip()
        measure = {"##Q": "sqrt", "##D": "count", "###": "count", "##C": "tc"}.get(inner[:3])
        if measure is None:
            raise fail(f"NON needs ##Q, ##D or ##C, got {s!r}")
        return Term("non", value=f"{measure}|{inner[4:].strip()}")
    lhs_taxa = lhs.taxa.names if lhs is not None and lhs.taxa is not None else frozenset()
    if s == "#T$":  # bare: all taxa outside the left-hand group (or the whole plot on the left)
        return Term("tc", TaxSet(lhs_taxa, negate=True))
    if s == "#$$":
        return Term("sc", TaxSet(lhs_taxa, negate=True))
    left, _, except_ = s.partition(" EXCEPT ")
    prefix = left[:3] if left[:3] in _PREFIXES and left[3:4] == " " else None
    names = _taxset(left, prefix or "", groups)
    if except_:
        names = names - _taxset(except_, except_[:3] if except_[:3] in _PREFIXES else "", groups)
    if prefix == "#T$":
        return Term("tc", TaxSet(names, negate=True))
    if prefix == "#SC":
        # right-hand #SC: the highest cover among the group's other taxa (the R code adds "EXCEPT <left-hand side>")
        return Term("sc", TaxSet(names - lhs_taxa if lhs is not None else names))
    if prefix in ("###", "##D"):
        return Term("count", TaxSet(names))
    if prefix == "##Q":
        return Term("sqrt", TaxSet(names))
    if prefix is None and s[:1] in "#$":
        raise fail(f"unknown condition {s!r}")
    return Term("tc", TaxSet(names))  # #TC, ##C, or a single taxon (its cover)


def _parse_expression(text: str, groups: Mapping[str, frozenset[str]], fail: Any) -> Expression:
    t = " ".join(text.split())
    m = _OP_RE.search(t)
    if m is None:
        m2 = re.fullmatch(r"#(\d\d) (.+)", t)
        if m2:
            return Expression(
                t,
                Term("count", TaxSet(_taxset(m2.group(2), "", groups))),
                "GE",
                Term("const", value=float(m2.group(1))),
            )
        m2 = re.fullmatch(r"(##Q|##D|##C|###) (.+)", t)
        if m2:
            name = m2.group(2).strip()
            left = _parse_side(t, groups, fail)
            right = _parse_side(f"NON {m2.group(1)} {name}", groups, fail)
            return Expression(t, left, "GR", right)
        raise fail(f"expression <{t}> has no operator (GR, GE, EQ) and is not #NN, ##Q, ##D or ##C")
    lhs_text, op, rhs_text = t[: m.start()], m.group(1), t[m.end() :]
    if _OP_RE.search(rhs_text) and not rhs_text.startswith("$$"):
        raise fail(f"expression <{t}> has more than one operator")
    left = _parse_side(lhs_text, groups, fail)  # a bare left-hand #T$ (<#T$ GE 30>) is the plot's total cover
    if left.kind == "hcat":
        if op != "EQ":
            raise fail(f"categorical header condition <{t}> needs EQ")
        return Expression(t, left, op, Term("const", value=rhs_text.strip()))
    if left.kind in ("const", "pct"):
        raise fail(f"expression <{t}> has no condition on its left-hand side")
    return Expression(t, left, op, _parse_side(rhs_text, groups, fail, lhs=left))


def _set_key(group: str) -> str | None:
    m = re.match(r"^\+(\d+)", group)
    return m.group(1) if m else None


class _Evaluator:
    """Condition vectors over plots, cached per distinct condition."""

    def __init__(
        self,
        system: ExpertSystem,
        cov: sp.csr_matrix,
        logkeep: sp.csr_matrix,
        taxa: pd.Index,
        plots: pd.Index,
        header: pd.DataFrame | None,
    ) -> None:
        self.s, self.cov, self.log, self.taxa, self.plots = system, cov, logkeep, taxa, plots
        self.present = cov.copy()
        self.present.data = (self.present.data > 0).astype(float)
        self.sqrt = cov.sqrt()
        self.header = header.reindex(plots) if header is not None else pd.DataFrame(index=plots)
        self.cache: dict[Any, np.ndarray] = {}
        self.taxa_set = {t: i for i, t in enumerate(taxa)}

    def mask(self, ts: TaxSet) -> np.ndarray:
        m = np.zeros(len(self.taxa), dtype=float)
        idx = [self.taxa_set[n] for n in ts.names if n in self.taxa_set]
        m[idx] = 1.0
        return 1.0 - m if ts.negate else m

    def term(self, t: Term) -> np.ndarray:
        key = (t.kind, t.taxa, t.value)
        if key in self.cache:
            return self.cache[key]
        n = len(self.plots)
        if t.kind == "const":
            v = np.full(n, float(t.value))  # type: ignore[arg-type]
        elif t.kind == "pct":
            v = self.term(Term("tc", TaxSet(frozenset(), negate=True))) * float(t.value)  # type: ignore[arg-type]
        elif t.kind == "tc":
            v = -np.expm1(self.log @ self.mask(t.taxa)) * 100.0  # type: ignore[arg-type]
        elif t.kind == "count":
            v = self.present @ self.mask(t.taxa)  # type: ignore[arg-type]
        elif t.kind == "sqrt":
            v = self.sqrt @ self.mask(t.taxa)  # type: ignore[arg-type]
        elif t.kind == "sc":
            v = self.cov.multiply(self.mask(t.taxa)[None, :]).tocsr().max(axis=1).toarray().ravel()  # type: ignore[arg-type]
        elif t.kind == "non":
            v = self.non(*str(t.value).split("|", 1))
        elif t.kind == "hnum":
            col = self.header_column(str(t.value))
            v = np.zeros(n) if col is None else pd.to_numeric(col, errors="coerce").fillna(0.0).to_numpy(float)
        else:
            raise AssertionError(t.kind)
        v = np.round(np.asarray(v, dtype=float), _ROUND)
        self.cache[key] = v
        return v

    def non(self, measure: str, group: str) -> np.ndarray:
        """The highest value of ``measure`` among the other ##D groups of the group's set (0 when there are none)."""
        # the set is the leading +NN; the 2021 file writes some names without the space ("+10Calcareous-...")
        key = _set_key(group)
        others = [g for g, k in self.s.group_kinds.items() if k == "##D" and key and _set_key(g) == key and g != group]
        out = np.zeros(len(self.plots))
        for g in others:
            out = np.maximum(out, self.term(Term(measure, TaxSet(self.s.groups[g]))))
        return out

    def header_column(self, name: str) -> pd.Series | None:
        cols = {str(c).lower(): c for c in self.header.columns}
        for cand in (name.lower(), *_HEADER_ALIASES.get(name.lower(), ())):
            if cand in cols:
                return self.header[cols[cand]]
        return None

    def expression(self, e: Expression) -> np.ndarray:
        if e.left.kind == "hcat":
            col = self.header_column(str(e.left.value))
            if col is None:
                return np.zeros(len(self.plots), dtype=bool)
            want = str(e.right.value).strip().lower()
            return (col.astype("string").str.strip().str.lower() == want).fillna(False).to_numpy(bool)
        a, b = self.term(e.left), self.term(e.right)
        if e.op == "GR":
            return a > b
        if e.op == "GE":
            return a >= b
        return a == b
