"""Peers of Pl@ntBERT on the same plots: bag-of-species models, k nearest plots, and a co-occurrence fill-mask baseline.

* :class:`BagOfSpeciesLogistic`: multinomial logistic regression on the 0/1 species vector of a plot (L2 penalty; its
  strength chosen on a validation split of the training plots);
* :class:`BagOfSpeciesForest`: a random forest on the same vectors;
* :class:`JaccardNeighbours`: the ``k`` training plots most similar by Jaccard index vote, weighted by similarity
  (the classic vegetation-science nearest-relevé assignment);
* :class:`CooccurrenceFill`: for fill-mask, the most frequent companions of the plot's other species
  (``sum_o P(candidate | o)``, ties by overall frequency).

All read plots as species lists (cover order ignored: a bag) through one :class:`SpeciesIndex` built on the training
plots; species it has not seen are ignored, as an [UNK] token tells the network nothing either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from geoplantnet.samples.plots import species_token


class SpeciesIndex:
    """Species token -> column, from the training plots."""

    def __init__(self, sentences: Sequence[Sequence[str]]) -> None:
        self.species = sorted({species_token(s) for sentence in sentences for s in sentence})
        self.column = {s: i for i, s in enumerate(self.species)}

    def matrix(self, sentences: Sequence[Sequence[str]]) -> sparse.csr_matrix:
        """(n, species) 0/1 CSR matrix; unknown species are dropped."""
        rows, cols = [], []
        for i, sentence in enumerate(sentences):
            for c in {self.column[t] for t in map(species_token, sentence) if t in self.column}:
                rows.append(i)
                cols.append(c)
        data = np.ones(len(rows), dtype="float32")
        return sparse.csr_matrix((data, (rows, cols)), shape=(len(sentences), len(self.species)))


def _encode(labels: Sequence[str], classes: tuple[str, ...]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index.get(str(c), -1) for c in labels], dtype="int64")


class _BagPeer:
    """Shared fit/predict plumbing: classes, species index, probabilities laid out over ``classes``."""

    name = "bag"

    def __init__(self, classes: tuple[str, ...], seed: int = 0) -> None:
        self.classes = classes
        self.seed = seed

    def _fit(self, x: sparse.csr_matrix, y: np.ndarray, x_val: sparse.csr_matrix, y_val: np.ndarray) -> None:
        raise NotImplementedError

    def fit(
        self,
        sentences: Sequence[Sequence[str]],
        labels: Sequence[str],
        val_sentences: Sequence[Sequence[str]] = (),
        val_labels: Sequence[str] = (),
    ) -> _BagPeer:
        self.index = SpeciesIndex(sentences)
        y = _encode(labels, self.classes)
        keep = y >= 0
        self._fit(
            self.index.matrix(sentences)[keep],
            y[keep],
            self.index.matrix(val_sentences),
            _encode(val_labels, self.classes),
        )
        return self

    def _proba(self, x: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def predict_proba(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """(n, classes) probabilities; classes absent from the fitted labels get 0."""
        p, seen = self._proba(self.index.matrix(sentences))
        out = np.zeros((len(sentences), len(self.classes)), dtype="float32")
        out[:, seen] = p
        return out


class BagOfSpeciesLogistic(_BagPeer):
    """Multinomial logistic regression on species presence; ``C`` from a validation split of the training plots."""

    name = "logistic"
    grid = (0.3, 1.0, 3.0, 10.0)

    def _model(self, c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=2000, random_state=self.seed)

    def _fit(self, x: sparse.csr_matrix, y: np.ndarray, x_val: sparse.csr_matrix, y_val: np.ndarray) -> None:
        self.c = self.grid[1]
        if x_val.shape[0] and len(np.unique(y)) > 1:
            scores = [float(np.mean(self._model(c).fit(x, y).predict(x_val) == y_val)) for c in self.grid]
            self.c = self.grid[int(np.argmax(scores))]
        self.model = self._model(self.c).fit(x, y) if len(np.unique(y)) > 1 else None
        self.only = int(y[0])

    def _proba(self, x: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        if self.model is None:
            return np.ones((x.shape[0], 1), "float32"), np.asarray([self.only])
        return self.model.predict_proba(x), self.model.classes_


class BagOfSpeciesForest(_BagPeer):
    """Random forest (500 trees, sqrt features) on species presence."""

    name = "random_forest"

    def _fit(self, x: sparse.csr_matrix, y: np.ndarray, x_val: sparse.csr_matrix, y_val: np.ndarray) -> None:
        self.model = RandomForestClassifier(n_estimators=500, min_samples_leaf=1, n_jobs=1, random_state=self.seed).fit(
            x, y
        )

    def _proba(self, x: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        return self.model.predict_proba(x), self.model.classes_


class JaccardNeighbours(_BagPeer):
    """The ``k`` most Jaccard-similar training plots vote, weighted by similarity."""

    name = "knn_jaccard"

    def __init__(self, classes: tuple[str, ...], seed: int = 0, k: int = 10) -> None:
        super().__init__(classes, seed)
        self.k = k

    def _fit(self, x: sparse.csr_matrix, y: np.ndarray, x_val: sparse.csr_matrix, y_val: np.ndarray) -> None:
        self.x, self.y = x.tocsr(), y

    def _proba(self, x: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        seen = np.unique(self.y)
        return neighbour_vote(x, self.x, np.searchsorted(seen, self.y), len(seen), self.k, "jaccard"), seen


def neighbour_vote(
    query: sparse.csr_matrix, train: sparse.csr_matrix, col: np.ndarray, n_classes: int, k: int, metric: str
) -> np.ndarray:
    """(n, n_classes) votes of the ``k`` training rows most similar to each query row, weighted by similarity and
    normalised: ``jaccard`` on 0/1 rows, ``cosine`` (a dot product) on rows of unit length."""
    out = np.zeros((query.shape[0], n_classes), dtype="float32")
    k = min(k, train.shape[0])
    train = train.tocsr()
    size = np.asarray(train.sum(axis=1)).ravel()
    qsize = np.asarray(query.sum(axis=1)).ravel()
    for start in range(0, query.shape[0], 2048):  # bounded memory: a block of query plots at a time
        block = query[start : start + 2048]
        sim = (block @ train.T).toarray()
        if metric == "jaccard":
            union = qsize[start : start + 2048, None] + size[None, :] - sim
            sim = np.divide(sim, union, out=np.zeros_like(sim), where=union > 0)
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        w = np.take_along_axis(sim, top, axis=1) + 1e-6  # an empty overlap still votes, barely
        rows = np.repeat(np.arange(block.shape[0]), k)
        np.add.at(out[start : start + block.shape[0]], (rows, col[top].ravel()), w.ravel())
    out /= out.sum(axis=1, keepdims=True)
    return out


PEERS: dict[str, type[_BagPeer]] = {p.name: p for p in (BagOfSpeciesLogistic, BagOfSpeciesForest, JaccardNeighbours)}


class CooccurrenceFill:
    """Fill-mask baseline: candidates scored by ``sum over visible species o of P(candidate | o)``."""

    def __init__(self, sentences: Sequence[Sequence[str]]) -> None:
        self.index = SpeciesIndex(sentences)
        b = self.index.matrix(sentences)
        self.count = np.asarray(b.sum(axis=0)).ravel()
        co = (b.T @ b).tocsr().astype("float64")
        co.setdiag(0)
        # Row o divided by the plots holding o: P(candidate | o).
        self.conditional = sparse.diags(1.0 / np.maximum(self.count, 1)) @ co
        self.prior = self.count / max(self.count.sum(), 1)

    def scores(self, visible: Sequence[Sequence[str]]) -> np.ndarray:
        """(n, species) scores; species already visible in the plot are excluded (-inf)."""
        v = self.index.matrix(visible)
        s = np.asarray((v @ self.conditional).todense()) + 1e-6 * self.prior[None, :]
        s[v.toarray() > 0] = -np.inf
        return s
