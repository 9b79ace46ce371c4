"""Pl@ntBERT: a BERT over species tokens that learns the syntax of vegetation plots, and its habitat classifier.

A plot is a sentence whose words are species, most abundant first. The tokenizer has one token per species (built with
``tokenizers``, a whole-word ``WordLevel`` model, wrapped as a ``PreTrainedTokenizerFast``); the fill-mask model is a
``BertForMaskedLM`` and the classifier a ``BertForSequenceClassification`` fine-tuned from it. Both are built from
:class:`~geoplantnet.core.config.PlotModelConfig`, never downloaded, and saved with ``save_pretrained`` in one folder
with the tokenizer and a ``geoplantnet.json`` (classes, version = content hash of the weights).

Sentences enter as token-id arrays built without Python loops over pixels (:func:`assemblage_ids`), so the habitat map
feeds millions of predicted assemblages through the same code as the training plots.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, PreTrainedTokenizerFast

from geoplantnet.core.config import PlotModelConfig
from geoplantnet.core.hashing import file_digest, fingerprint
from geoplantnet.models.habitat_classifier import META as CLASSIFIER_META
from geoplantnet.models.habitat_classifier import ClassifierFolderError, publish_folder, register
from geoplantnet.samples.plots import assemblage_order, species_token

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(len(SPECIAL))
META = CLASSIFIER_META
FORMAT = "geoplantnet-plantbert/1"


class PlotModelError(ClassifierFolderError):
    """A Pl@ntBERT folder that cannot be read (the message names the folder)."""


def build_tokenizer(species: Sequence[str]) -> PreTrainedTokenizerFast:
    """One token per species (sorted, so the same species give the same ids), plus the special tokens."""
    words = sorted({species_token(s) for s in species} - set(SPECIAL))
    vocab = {tok: i for i, tok in enumerate((*SPECIAL, *words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def encode_sentences(
    tokenizer: PreTrainedTokenizerFast, sentences: Sequence[Sequence[str]], max_species: int
) -> tuple[np.ndarray, int]:
    """Token ids (n, max_species + 2), [PAD]-filled, each plot cut to its ``max_species`` most abundant; and the
    number of species tokens that were unknown to the tokenizer (mapped to [UNK])."""
    vocab = tokenizer.get_vocab()
    out = np.full((len(sentences), max_species + 2), PAD, dtype="int64")
    unknown = 0
    for i, sentence in enumerate(sentences):
        ids = [vocab.get(species_token(s), UNK) for s in sentence[:max_species]]
        unknown += sum(1 for t in ids if t == UNK)
        out[i, 0] = CLS
        out[i, 1 : len(ids) + 1] = ids
        out[i, len(ids) + 1] = SEP
    return out, unknown


def species_vocabulary_index(tokenizer: PreTrainedTokenizerFast, species: Sequence[str]) -> np.ndarray:
    """Token id of each of a store's species (``UNK`` where the model never saw it)."""
    vocab = tokenizer.get_vocab()
    return np.asarray([vocab.get(species_token(s), UNK) for s in species], dtype="int64")


def assemblage_ids(
    prob: np.ndarray,
    token_of: np.ndarray,
    thresholds: np.ndarray | None,
    max_species: int,
    top_k: int | None = None,
) -> np.ndarray:
    """Predicted assemblages (n, S probabilities) as token ids (n, max_species + 2), all in array operations.

    Species the model does not know (``UNK`` in ``token_of``) are left out rather than fed as [UNK]: a classifier
    never saw an [UNK] standing for a confident prediction."""
    known = token_of != UNK
    p = np.where(known[None, :], prob, -np.inf)
    order, keep = assemblage_order(p, thresholds, max_species, top_k)
    keep &= np.isfinite(np.take_along_axis(p, order, axis=1))
    n, length = order.shape
    # Kept species first, in probability order (a stable sort on "not kept" moves them to the front).
    rank = np.argsort(~keep, axis=1, kind="stable")
    order = np.take_along_axis(order, rank, axis=1)
    count = keep.sum(axis=1)
    out = np.full((n, max_species + 2), PAD, dtype="int64")
    out[:, 0] = CLS
    cols = np.arange(length)[None, :]
    body = np.where(cols < count[:, None], token_of[order], PAD)
    out[:, 1 : length + 1] = body
    out[np.arange(n), count + 1] = SEP
    return out


def mask_tokens(
    ids: torch.Tensor, mask_prob: float, vocab_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking on species tokens only: ``mask_prob`` of them are targets, of which 80 % become [MASK], 10 % a
    random species, 10 % stay; special tokens are never targets. Every plot with a species gets at least one target.
    Returns (inputs, labels) with labels -100 where not a target."""
    species = ids >= len(SPECIAL)
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    target = species & (draw < mask_prob)
    # A plot with no target teaches nothing: its species with the lowest draw becomes the target.
    none = species.any(1) & ~target.any(1)
    if none.any():
        pick = torch.where(species, draw, torch.full_like(draw, 2.0)).argmin(1)
        target[none, pick[none]] = True
    labels = torch.where(target, ids, torch.full_like(ids, -100))
    inputs = ids.clone()
    how = torch.rand(ids.shape, generator=generator, device=ids.device)
    inputs[target & (how < 0.8)] = MASK
    swap = target & (how >= 0.8) & (how < 0.9)
    rand = torch.randint(len(SPECIAL), vocab_size, ids.shape, generator=generator, device=ids.device)
    inputs[swap] = rand[swap]
    return inputs, labels


def bert_config(cfg: PlotModelConfig, vocab_size: int, n_labels: int | None = None) -> BertConfig:
    """The BERT configuration of a plot model (positions for the [CLS] + species + [SEP] sentence)."""
    if cfg.hidden % cfg.heads:
        raise PlotModelError(f"habitats.model.hidden={cfg.hidden} is not a multiple of heads={cfg.heads}")
    extra = {"num_labels": n_labels} if n_labels else {}
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.intermediate,
        max_position_embeddings=cfg.max_species + 2,
        type_vocab_size=1,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=PAD,
        **extra,
    )


@dataclass
class PlotModel:
    """A tokenizer with its fill-mask or habitat-classification BERT, the classes and the settings it was built from."""

    tokenizer: PreTrainedTokenizerFast
    model: BertForMaskedLM | BertForSequenceClassification
    cfg: PlotModelConfig
    classes: tuple[str, ...] = ()  # habitat codes of the classifier's outputs ("" for the fill-mask model)
    version: str = ""
    parent: str = ""  # version of the fill-mask model it was fine-tuned from ("" = trained from scratch)
    names: tuple[str, ...] = ()  # habitat names of the classes, where known
    conformal: dict[str, Any] | None = None  # {level, q, plots}: the habitat sets' calibration (classifier only)

    @property
    def kind(self) -> str:
        return "classifier" if self.classes else "fill-mask"

    @property
    def vocabulary(self) -> frozenset[str]:
        """The species tokens the tokenizer knows (others are fed as [UNK])."""
        return frozenset(self.tokenizer.get_vocab()) - set(SPECIAL)

    def save(self, folder: str | os.PathLike[str]) -> str:
        """``save_pretrained`` model and tokenizer into ``folder`` (local or an fsspec URL), atomically for a local
        folder; sets and returns :attr:`version` (hash of the weights and metadata)."""
        url = os.fspath(folder)
        with tempfile.TemporaryDirectory(prefix="plantbert-") as tmp:
            stage = Path(tmp) / "model"
            self.model.save_pretrained(stage)
            self.tokenizer.save_pretrained(stage)
            weights = sorted(stage.glob("*.safetensors")) or sorted(stage.glob("*.bin"))
            self.version = fingerprint([file_digest(w) for w in weights], self.classes, self.parent)
            meta = {
                "format": FORMAT,
                "kind": self.kind,
                "classes": list(self.classes),
                "version": self.version,
                "parent": self.parent,
                "names": list(self.names),
                "model": self.cfg.model_dump(),
                **({"conformal": self.conformal} if self.conformal is not None else {}),
            }
            (stage / META).write_text(json.dumps(meta, indent=1))
            publish_folder(stage, url, what="Pl@ntBERT", error=PlotModelError)
        return self.version

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> PlotModel:
        """Rebuild a saved plot model (eval mode) from a local folder or an fsspec URL."""
        url = os.fspath(folder)
        fs, root = fsspec.core.url_to_fs(url)
        if not fs.exists(f"{root}/{META}"):
            raise PlotModelError(f"{url}: not a Pl@ntBERT folder (no {META})")
        with tempfile.TemporaryDirectory(prefix="plantbert-") as tmp:
            local = Path(root) if "file" in fs.protocol else Path(tmp)
            if local != Path(root):
                for f in fs.ls(root, detail=False):
                    fs.get_file(f, str(local / Path(f).name))
            meta = json.loads((local / META).read_text())
            if meta.get("format") != FORMAT:
                raise PlotModelError(f"{url}: format {meta.get('format')!r}, expected {FORMAT!r}")
            tokenizer = PreTrainedTokenizerFast.from_pretrained(local)
            klass = BertForSequenceClassification if meta["kind"] == "classifier" else BertForMaskedLM
            model = klass.from_pretrained(local).to(device).eval()
        return cls(
            tokenizer=tokenizer,
            model=model,
            cfg=PlotModelConfig(**meta["model"]),
            classes=tuple(meta["classes"]),
            version=meta["version"],
            parent=meta.get("parent", ""),
            names=tuple(meta.get("names", ())),
            conformal=meta.get("conformal"),
        )

    # inference ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, ids: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Raw outputs for token-id rows: (n, classes) for a classifier, (n, L, vocab) for the fill-mask model."""
        device = next(self.model.parameters()).device
        self.model.eval()
        out = []
        for start in range(0, len(ids), batch_size):
            batch = torch.as_tensor(ids[start : start + batch_size], device=device)
            out.append(self.model(input_ids=batch, attention_mask=(batch != PAD).long()).logits.float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)), "float32")

    def predict_proba_ids(self, ids: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Habitat probabilities (n, classes) of token-id rows."""
        if not self.classes:
            raise PlotModelError("a fill-mask model does not classify habitats; fine-tune it first")
        logits = self.logits(ids, batch_size)
        return _softmax(logits)

    def predict_proba(self, sentences: Sequence[Sequence[str]], batch_size: int = 1024) -> np.ndarray:
        """Habitat probabilities (n, classes) of plots given as species lists (cover order)."""
        ids, _ = encode_sentences(self.tokenizer, sentences, self.cfg.max_species)
        return self.predict_proba_ids(ids, batch_size)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "parent": self.parent,
            "classes": len(self.classes),
            "vocabulary": len(self.tokenizer),
            **({"conformal": self.conformal} if self.classes else {}),
            **self.cfg.model_dump(),
        }


def missing_species_logits(
    model: PlotModel, sentences: Sequence[Sequence[str]], places: Sequence[int], batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """The fill-mask model's logits (n, vocabulary) for a species missing from each plot: a [MASK] inserted at
    ``places[i]`` of the plot's species (cover order); the special tokens and the plot's own species get -inf. Also
    which plots had their [MASK] within ``max_species`` (a row without one is all -inf). The one home of "which
    species is missing here" (fill-mask scores on held-out plots, ``habitats classify``)."""
    vocab = model.tokenizer.get_vocab()
    masked = [[*s[:j], "[MASK]", *s[j:]] for s, j in zip(sentences, places, strict=True)]
    ids, _ = encode_sentences(model.tokenizer, masked, model.cfg.max_species)  # "[MASK]" encodes as the MASK id
    rows, cols = np.nonzero(ids == MASK)
    has_mask = np.zeros(len(masked), dtype=bool)
    has_mask[rows] = True
    logits = np.full((len(masked), len(model.tokenizer)), -np.inf, dtype="float32")
    for start in range(0, len(rows), batch_size):  # batches: the model's output is (rows, positions, vocabulary)
        r, c = rows[start : start + batch_size], cols[start : start + batch_size]
        logits[r] = model.logits(ids[r], batch_size)[np.arange(len(r)), c]
    logits[:, : len(SPECIAL)] = -np.inf
    for r, s in enumerate(sentences):
        logits[r, [vocab[t] for t in map(species_token, s) if t in vocab]] = -np.inf
    return logits, has_mask


def rank_missing_species(model: PlotModel, sentences: Sequence[Sequence[str]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` species the fill-mask model finds most likely missing from each plot, best first: a [MASK] after the
    plot's species (at the last place within ``max_species``), its probability renormalised over the species not in
    the plot. Returns species tokens (n, k; ``""`` past the candidates) and probabilities (n, k; NaN there)."""
    places = [min(len(s), model.cfg.max_species - 1) for s in sentences]
    logits, _ = missing_species_logits(model, sentences, places)
    k = min(k, logits.shape[1])
    finite = np.isfinite(logits)
    peak = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - np.where(np.isfinite(peak), peak, 0.0))  # exp(-inf) = 0: the plot's own species
    prob = e / np.maximum(e.sum(axis=1, keepdims=True), np.finfo("float32").tiny)
    order = np.argsort(-np.where(finite, prob, -1.0), axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(prob, order, axis=1)
    valid = np.take_along_axis(finite, order, axis=1)
    token = np.asarray(model.tokenizer.convert_ids_to_tokens(list(range(len(model.tokenizer)))), dtype=object)
    return np.where(valid, token[order], ""), np.where(valid, top, np.nan).astype("float32")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype("float32")


register("classifier", lambda folder, device: PlotModel.load(folder, device))
register("fill-mask", lambda folder, device: PlotModel.load(folder, device))
