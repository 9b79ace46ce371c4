"""The stacked habitat classifier (kind ``stack``): bag-of-species members averaged, decoded along the EUNIS tree.

Members, all on the species of a plot as a bag (cover order ignored):

* ``logistic``: multinomial logistic regression on the 0/1 species vector;
* ``logistic_tfidf``: the same on tf-idf rows (rare species weigh more, rows of unit length);
* ``knn_jaccard``: the ``k`` most Jaccard-similar training plots vote, weighted by similarity;
* ``knn_cosine``: the same with the cosine of the tf-idf rows.

:meth:`HabitatStack.fit` makes every choice on the validation plots it is given (the inner spatial split of the
training plots, never a test fold): each logistic member's ``C`` and the members' weights (a simplex grid) by
log-loss, then the decoding by top-1 + macro-F1. The decoding scores class ``c`` as
``log p(c) + a log p(L2 parent of c) + b log p(L1 parent of c) - tau log prior(c)`` (parents' probabilities summed
from ``p``): a level-3 decision pulled towards the more reliable level-2 and level-1 ones, and rare classes lifted
(logit adjustment) for macro-F1; the result is renormalised. The members are then refitted on training + validation
plots with the chosen settings.

Saved as a folder (:func:`~geoplantnet.models.habitat_classifier.publish_folder`): ``arrays.npz`` (species, idf,
logistic coefficients, the training plots of the neighbour members; no pickle) and ``geoplantnet.json``.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from geoplantnet.core.config import HabitatStackConfig
from geoplantnet.core.hashing import file_digest, fingerprint
from geoplantnet.models.habitat_classifier import META, ClassifierFolderError, conformal_of, publish_folder, register
from geoplantnet.models.habitat_peers import SpeciesIndex, neighbour_vote
from geoplantnet.samples.plots import eunis_ancestor

FORMAT = "geoplantnet-habitat-stack-1"
KIND = "stack"
EPS = 1e-4  # probability floor of the log-loss and of the decoding's logs: a neighbour vote of 0 is not -inf


@dataclass
class Bag:
    """The species columns and idf weights of the training plots: sentences -> 0/1 and tf-idf matrices."""

    species: tuple[str, ...]
    idf: np.ndarray

    @classmethod
    def fit(cls, sentences: Sequence[Sequence[str]]) -> Bag:
        index = SpeciesIndex(sentences)
        x = index.matrix(sentences)
        df = np.asarray(x.sum(axis=0)).ravel()
        return cls(tuple(index.species), np.log((1 + x.shape[0]) / (1 + df)) + 1.0)

    def binary(self, sentences: Sequence[Sequence[str]]) -> sparse.csr_matrix:
        index = SpeciesIndex([self.species])  # the same sorted columns (tokens are already tokens)
        return index.matrix(sentences)

    def tfidf(self, x: sparse.csr_matrix) -> sparse.csr_matrix:
        w = x @ sparse.diags(self.idf)
        norm = np.sqrt(np.asarray(w.multiply(w).sum(axis=1)).ravel())
        return (sparse.diags(1.0 / np.where(norm > 0, norm, 1.0)) @ w).tocsr()


@dataclass
class Linear:
    """Softmax of ``x @ coef.T + intercept`` over the classes ``cols`` (indices into the stack's classes)."""

    coef: np.ndarray
    intercept: np.ndarray
    cols: np.ndarray

    @classmethod
    def fit(cls, x: sparse.csr_matrix, y: np.ndarray, c: float, seed: int) -> Linear:
        seen = np.unique(y)
        if len(seen) == 1:
            return cls(np.zeros((1, x.shape[1])), np.zeros(1), seen)
        m = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)
        coef, intercept = m.coef_, m.intercept_
        if len(seen) == 2:  # sklearn's binary model is one logit: softmax([0, z]) == sigmoid(z)
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        return cls(coef, intercept, m.classes_)

    def proba(self, x: sparse.csr_matrix, n_classes: int) -> np.ndarray:
        z = np.asarray(x @ self.coef.T) + self.intercept[None, :]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        out = np.zeros((x.shape[0], n_classes))
        out[:, self.cols] = e / e.sum(axis=1, keepdims=True)
        return out


@dataclass
class Members:
    """The fitted members on one set of training plots: their probabilities over the stack's classes."""

    bag: Bag
    train: sparse.csr_matrix  # 0/1 species of the training plots (the neighbour members)
    train_col: np.ndarray  # their class index
    linear: dict[str, Linear]
    n_classes: int
    knn: int

    @classmethod
    def fit(
        cls,
        sentences: Sequence[Sequence[str]],
        y: np.ndarray,
        n_classes: int,
        cfg: HabitatStackConfig,
        c: dict[str, float],
        seed: int,
    ) -> Members:
        """Members on ``sentences`` with class indices ``y``; a logistic member per (name, C) in ``c``."""
        bag = Bag.fit(sentences)
        x = bag.binary(sentences)
        feats = {"logistic": x, "logistic_tfidf": bag.tfidf(x)}
        linear = {name: Linear.fit(feats[name.split("@")[0]], y, value, seed) for name, value in c.items()}
        return cls(bag, x, y, linear, n_classes, cfg.knn)

    def proba(self, sentences: Sequence[Sequence[str]], names: Sequence[str]) -> dict[str, np.ndarray]:
        """(n, classes) probabilities of each member in ``names`` (a logistic name may carry ``@C``)."""
        x = self.bag.binary(sentences)
        out: dict[str, np.ndarray] = {}
        for name in names:
            base = name.split("@")[0]
            if base.startswith("logistic"):
                out[name] = self.linear[name].proba(x if base == "logistic" else self.bag.tfidf(x), self.n_classes)
            elif base == "knn_jaccard":
                out[name] = neighbour_vote(x, self.train, self.train_col, self.n_classes, self.knn, "jaccard")
            else:
                q, t = self.bag.tfidf(x), self.bag.tfidf(self.train)
                out[name] = neighbour_vote(q, t, self.train_col, self.n_classes, self.knn, "cosine")
        return out


def simplex(m: int, step: float) -> np.ndarray:
    """Every weight vector of ``m`` members on a grid of ``step`` summing to 1 (rows)."""
    n = max(1, round(1 / step))
    rows = [(*c, n - sum(c)) for c in itertools.product(range(n + 1), repeat=m - 1) if sum(c) <= n]
    return np.asarray(rows, dtype=float) / n


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean ``-log p(true class)`` (floored at EPS) over plots with a class (``y >= 0``)."""
    ok = y >= 0
    return float(-np.mean(np.log(np.maximum(p[ok, y[ok]], EPS)))) if ok.any() else 0.0


def parent_sums(classes: Sequence[str], level: int) -> sparse.csr_matrix:
    """(classes, classes) 0/1: 1 where two classes share their ancestor at ``level`` (``p @ M``: the parent's p)."""
    parent = np.asarray([eunis_ancestor(c, level) for c in classes], dtype=object)
    return sparse.csr_matrix((parent[:, None] == parent[None, :]).astype(float))


def decode(p: np.ndarray, classes: Sequence[str], a: float, b: float, tau: float, prior: np.ndarray) -> np.ndarray:
    """The EUNIS-consistent, logit-adjusted probabilities (module docstring); ``a = b = tau = 0`` returns ``p``."""
    if not (a or b or tau):
        return p
    s = np.log(np.maximum(p, EPS))
    if a:
        s += a * np.log(np.maximum(np.asarray(p @ parent_sums(classes, 2)), EPS))
    if b:
        s += b * np.log(np.maximum(np.asarray(p @ parent_sums(classes, 1)), EPS))
    s -= tau * np.log(prior)[None, :]
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def smoothed_prior(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Class frequencies of the training plots, one plot added to each class (a class only in validation is > 0)."""
    return (np.bincount(y, minlength=n_classes) + 1.0) / (len(y) + n_classes)


def top1_macro_f1(p: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy + macro-F1 over the true classes (``y = -1``: a class the model lacks, always wrong)."""
    top = np.argmax(p, axis=1)
    f1 = f1_score(y, top, labels=sorted(set(y[y >= 0])), average="macro", zero_division=0) if (y >= 0).any() else 0
    return float(np.mean(top == y) + f1)


def _index(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    where = {c: i for i, c in enumerate(classes)}
    return np.asarray([where.get(str(c), -1) for c in labels], dtype="int64")


@dataclass
class HabitatStack:
    """Weighted average of bag-of-species members, decoded along the EUNIS hierarchy (module docstring)."""

    cfg: HabitatStackConfig = field(default_factory=HabitatStackConfig)
    min_plots: int = 2
    seed: int = 0
    classes: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    version: str = ""
    parent: str = ""
    weights: dict[str, float] = field(default_factory=dict)  # member (logistic: "name@C") -> weight
    decoding: dict[str, float] = field(default_factory=lambda: {"a": 0.0, "b": 0.0, "tau": 0.0})
    prior: np.ndarray = field(default_factory=lambda: np.ones(0))
    choice: dict[str, Any] = field(default_factory=dict)  # the validation scores behind every choice
    members: Members | None = None
    conformal: dict[str, Any] | None = None  # {level, q, plots}: the habitat sets' calibration, when calibrated
    # the decoded probabilities of the validation plots before the refit (out of sample: for the calibration)
    validation_proba: np.ndarray | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return KIND

    @property
    def species(self) -> tuple[str, ...]:
        """Species tokens the model knows (others in a plot are ignored)."""
        return self.members.bag.species if self.members is not None else ()

    @property
    def vocabulary(self) -> frozenset[str]:
        """The species tokens the classifier knows, as a set."""
        return frozenset(self.species)

    def fit(
        self,
        sentences: Sequence[Sequence[str]],
        labels: Sequence[str],
        val_sentences: Sequence[Sequence[str]] = (),
        val_labels: Sequence[str] = (),
    ) -> HabitatStack:
        """Choose on (``val_sentences``, ``val_labels``), then refit on both sets; without validation plots the
        defaults (equal weights, no decoding, the middle of each C grid) are used."""
        all_s, all_y = [*sentences, *val_sentences], np.asarray([*labels, *val_labels], dtype=str)
        count = Counter(all_y)
        self.classes = tuple(sorted(c for c, n in count.items() if n >= self.min_plots))
        if not self.classes:
            raise ValueError(f"no habitat has {self.min_plots} plots to train the stack")
        self.names = self.names or ("",) * len(self.classes)
        names = self._choose(sentences, np.asarray(labels, dtype=str), val_sentences, np.asarray(val_labels, str))
        y = _index(all_y, self.classes)
        keep = y >= 0
        c = {n: float(n.split("@")[1]) for n in names if "@" in n}
        self.members = Members.fit(
            [all_s[i] for i in np.flatnonzero(keep)], y[keep], len(self.classes), self.cfg, c, self.seed
        )
        self.prior = smoothed_prior(y[keep], len(self.classes))
        return self

    def _choose(
        self, sentences: Sequence[Sequence[str]], y: np.ndarray, val: Sequence[Sequence[str]], val_y: np.ndarray
    ) -> list[str]:
        """Set ``weights`` and ``decoding`` from the validation plots; returns the members' names (``name@C``)."""
        cfg = self.cfg
        grids = {"logistic": cfg.logistic_c, "logistic_tfidf": cfg.tfidf_c}
        fy = _index(y, self.classes)
        vy = _index(val_y, self.classes)
        if not len(val) or len(np.unique(fy[fy >= 0])) < 2:
            names = [f"{m}@{grids[m][len(grids[m]) // 2]}" if m in grids else m for m in cfg.members]
            self.weights = {n: 1.0 / len(names) for n in names}
            self.choice = {"validation_plots": 0}
            return names
        keep = fy >= 0
        fit_s = [sentences[i] for i in np.flatnonzero(keep)]
        c = {f"{m}@{v}": v for m in cfg.members if m in grids for v in grids[m]}
        inner = Members.fit(fit_s, fy[keep], len(self.classes), cfg, c, self.seed)
        candidates = inner.proba(val, [*c, *(m for m in cfg.members if m not in grids)])
        # Plots of a class the inner members never saw carry no information about the weights (all members 0).
        seen = np.isin(vy, np.unique(fy[keep]))
        loss = {n: log_loss(p[seen], vy[seen]) for n, p in candidates.items()}
        names = [
            min((n for n in c if n.startswith(f"{m}@")), key=loss.__getitem__) if m in grids else m for m in cfg.members
        ]
        grid = simplex(len(names), cfg.weight_step)
        mix = lambda row: sum(w * candidates[n] for w, n in zip(row, names, strict=True))  # noqa: E731
        losses = [log_loss(mix(row)[seen], vy[seen]) for row in grid]
        best = int(np.argmin(losses))  # the first of equal losses: grid order
        self.weights = {n: float(w) for n, w in zip(names, grid[best], strict=True)}
        p = mix(grid[best])
        prior = smoothed_prior(fy[keep], len(self.classes))
        scores = {}
        for a, b, tau in itertools.product(cfg.parent_weights, cfg.parent_weights, cfg.tau):
            scores[(a, b, tau)] = top1_macro_f1(decode(p, self.classes, a, b, tau, prior), vy)
        first = max(scores.values())
        a, b, tau = next(k for k, v in scores.items() if v >= first - 1e-12)  # the first best in grid order
        self.decoding = {"a": a, "b": b, "tau": tau}
        self.validation_proba = decode(p, self.classes, a, b, tau, prior).astype("float32")
        self.choice = {
            "validation_plots": len(val),
            "validation_plots_seen_class": int(seen.sum()),
            "member_log_loss": {n: round(v, 4) for n, v in loss.items()},
            "stack_log_loss": round(losses[best], 4),
            "validation_top1_plus_macro_f1": round(first, 4),
            "decoding_scores": [[*k, round(v, 6)] for k, v in scores.items()],  # [a, b, tau, top-1 + macro-F1]
        }
        return names

    def member_proba(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """The weighted average of the members, before decoding."""
        if self.members is None:
            raise ClassifierFolderError("the habitat stack is not fitted")
        parts = self.members.proba(sentences, [n for n, w in self.weights.items() if w > 0])
        return sum(self.weights[n] * p for n, p in parts.items())

    def predict_proba(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """(n, classes) habitat probabilities of plots given as species lists; unknown species are ignored."""
        d = self.decoding
        out = decode(self.member_proba(sentences), self.classes, d["a"], d["b"], d["tau"], self.prior)
        return out.astype("float32")

    # folders ---------------------------------------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        m = self.members
        assert m is not None
        out = {
            "species": np.asarray(m.bag.species, dtype=str),
            "idf": m.bag.idf,
            "prior": self.prior,
            "train_indptr": m.train.indptr,
            "train_indices": m.train.indices,
            "train_col": m.train_col,
        }
        for i, (_, lin) in enumerate(sorted(m.linear.items())):
            out |= {f"linear{i}_coef": lin.coef, f"linear{i}_intercept": lin.intercept, f"linear{i}_cols": lin.cols}
        return out

    def save(self, folder: str | os.PathLike[str]) -> str:
        """Write ``arrays.npz`` + ``geoplantnet.json`` to ``folder`` (local or fsspec URL); sets and returns the
        version (hash of the arrays, classes and settings)."""
        if self.members is None:
            raise ClassifierFolderError("the habitat stack is not fitted; nothing to save")
        with tempfile.TemporaryDirectory(prefix="habitat-stack-") as tmp:
            stage = Path(tmp) / "model"
            stage.mkdir()
            np.savez(stage / "arrays.npz", **self._arrays())
            meta: dict[str, Any] = {
                "format": FORMAT,
                "kind": KIND,
                "classes": list(self.classes),
                "names": list(self.names),
                "parent": self.parent,
                "linear": sorted(self.members.linear),
                "weights": self.weights,
                "decoding": self.decoding,
                "knn": self.members.knn,
                "min_plots": self.min_plots,
                "seed": self.seed,
                "settings": self.cfg.model_dump(),
                "choice": self.choice,
                **({"conformal": self.conformal} if self.conformal is not None else {}),
            }
            self.version = fingerprint(file_digest(stage / "arrays.npz"), json.dumps(meta, sort_keys=True))
            (stage / META).write_text(json.dumps({**meta, "version": self.version}, indent=1))
            publish_folder(stage, folder, what="habitat stack")
        return self.version

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str = "cpu") -> HabitatStack:
        """The stack saved in ``folder`` (``device`` is ignored: it runs on the CPU)."""
        url = os.fspath(folder)
        fs, root = fsspec.core.url_to_fs(url)
        meta = json.loads(fs.cat_file(f"{root}/{META}"))
        if meta.get("format") != FORMAT:
            raise ClassifierFolderError(f"{url}: format {meta.get('format')!r}, expected {FORMAT!r}")
        with fs.open(f"{root}/arrays.npz", "rb") as f, np.load(f, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        bag = Bag(tuple(str(s) for s in a["species"]), a["idf"])
        n = len(meta["classes"])
        train = sparse.csr_matrix(
            (np.ones(len(a["train_indices"]), "float32"), a["train_indices"], a["train_indptr"]),
            shape=(len(a["train_indptr"]) - 1, len(bag.species)),
        )
        linear = {
            name: Linear(a[f"linear{i}_coef"], a[f"linear{i}_intercept"], a[f"linear{i}_cols"])
            for i, name in enumerate(meta["linear"])
        }
        return cls(
            cfg=HabitatStackConfig(**meta["settings"]),
            min_plots=meta["min_plots"],
            seed=meta["seed"],
            classes=tuple(meta["classes"]),
            names=tuple(meta["names"]),
            version=meta["version"],
            parent=meta.get("parent", ""),
            weights={k: float(v) for k, v in meta["weights"].items()},
            decoding={k: float(v) for k, v in meta["decoding"].items()},
            prior=a["prior"],
            choice=meta.get("choice", {}),
            members=Members(bag, train, a["train_col"], linear, n, int(meta["knn"])),
            conformal=conformal_of(meta, url),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "version": self.version,
            "parent": self.parent,
            "classes": len(self.classes),
            "species": len(self.species),
            "weights": self.weights,
            "decoding": self.decoding,
            "conformal": self.conformal,
        }


register(KIND, HabitatStack.load)
