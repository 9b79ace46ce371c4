"""Training Pl@ntBERT: fill-mask pre-training on plot sentences, then habitat fine-tuning, as Dask tasks.

Both loops use AdamW with a linear warm-up and decay, early stopping on a spatially separate validation split of the
training plots (never the test fold), mixed precision on CUDA (bf16 where supported), and seeded masking so a rerun
gives the same model. :func:`submit` runs any of them as one Dask task with ``GPU=1`` when a worker offers it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import BertForMaskedLM, BertForSequenceClassification, PreTrainedTokenizerFast

from geoplantnet.core.config import PlotModelConfig, PlotTrainConfig
from geoplantnet.models.plantbert import PAD, SPECIAL, PlotModel, bert_config, mask_tokens
from geoplantnet.runtime.cluster import require_resources, task_resources
from geoplantnet.training.train import _precision, resolve_device, seed_everything

if TYPE_CHECKING:
    from distributed import Client, Future

log = logging.getLogger(__name__)


def _schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / max(1, steps - warm))
    )


def _autocast(device: torch.device, mixed: bool) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """bf16 autocast on CUDA devices that support it; fp16 would need a gradient scaler these small models do not
    earn back, so elsewhere they train in fp32."""
    dtype = _precision(device, mixed)
    if dtype is not torch.bfloat16:
        return contextlib.nullcontext
    return lambda: torch.autocast("cuda", dtype=torch.bfloat16)


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of plots of similar length (sorted within windows of 50 batches), in shuffled order: most
    plots are short, and a batch padded to its longest plot wastes little (about 2x faster on the GLC24 lists)."""
    order = rng.permutation(len(lengths))
    window = 50 * batch_size
    for start in range(0, len(order), window):
        part = order[start : start + window]
        order[start : start + window] = part[np.argsort(lengths[part], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def shuffle_species(ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each row's species tokens in a random order; [CLS] stays first, [SEP] and padding stay after them."""
    species = ids >= len(SPECIAL)
    position = torch.arange(ids.shape[1], dtype=torch.float32).expand(ids.shape)
    keys = torch.where(species, torch.rand(ids.shape, generator=generator), 2.0 + position)
    keys[:, 0] = -1.0
    return torch.gather(ids, 1, keys.argsort(dim=1))


def _batch(ids: np.ndarray, idx: np.ndarray, cfg: PlotTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The rows ``idx`` as a tensor, trailing padding cut, species shuffled for unordered lists."""
    batch = _trim(torch.as_tensor(ids[idx]))
    return shuffle_species(batch, gen) if cfg.shuffle_species else batch


def _step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    loss: torch.Tensor,
) -> float:
    """One optimiser step (gradients clipped at norm 1); the loss as a float."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return float(loss.detach())


class _EarlyStop:
    """The best weights so far by a score (higher is better), and when ``patience`` epochs brought nothing better."""

    def __init__(self, patience: int, min_delta: float) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best, self.state, self.stale = -math.inf, None, 0

    def update(self, score: float, model: torch.nn.Module) -> bool:
        """Record an epoch; True when training should stop."""
        if score > self.best + self.min_delta:
            self.best, self.state, self.stale = score, copy.deepcopy(model.state_dict()), 0
        else:
            self.stale += 1
        return self.stale >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


def _lengths(ids: np.ndarray) -> np.ndarray:
    return (ids != PAD).sum(axis=1)


def _mlm_loss(model: BertForMaskedLM, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-species cross-entropy with the vocabulary projection at the masked positions only (the full
    (batch, length, vocabulary) logits of ``BertForMaskedLM.forward`` cost ~10x more for nothing)."""
    hidden = model.bert(input_ids=inputs, attention_mask=(inputs != PAD).long()).last_hidden_state
    target = labels != -100
    logits = model.cls(hidden[target])
    return torch.nn.functional.cross_entropy(logits.float(), labels[target])


def _trim(ids: torch.Tensor) -> torch.Tensor:
    """Drop trailing columns that are padding everywhere in the batch (short plots train faster)."""
    width = int((ids != PAD).sum(1).max().item()) if len(ids) else 1
    return ids[:, : max(width, 1)]


@torch.no_grad()
def masked_loss(model: BertForMaskedLM, ids: np.ndarray, mask_prob: float, seed: int, device: torch.device) -> float:
    """Mean masked-species cross-entropy on fixed (seeded) masks: the early-stopping score of pre-training."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for start in range(0, len(ids), 512):
        batch = _trim(torch.as_tensor(ids[start : start + 512]))
        inputs, labels = mask_tokens(batch, mask_prob, model.config.vocab_size, gen)
        out = model(
            input_ids=inputs.to(device), attention_mask=(inputs != PAD).long().to(device), labels=labels.to(device)
        )
        n = int((labels != -100).sum())
        total += float(out.loss) * n
        count += n
    return total / max(count, 1)


Epochs = Callable[[dict[str, Any]], None]
"""Called after every epoch with its record (``epoch``, ``epochs`` planned, ``loss``, ``last``: early stopping or the
last planned epoch): what progress bars show."""


def _report(on_epoch: Epochs | None, record: dict[str, Any], epochs: int, last: bool) -> None:
    if on_epoch is not None:
        on_epoch({**record, "epochs": epochs, "last": last or record["epoch"] + 1 >= epochs})


_PER_TOKEN = ("word_embeddings.weight", "predictions.bias", "predictions.decoder.weight", "predictions.decoder.bias")


def carry_over(parent: PlotModel, tokenizer: PreTrainedTokenizerFast, model_cfg: PlotModelConfig) -> BertForMaskedLM:
    """A fill-mask model over ``tokenizer``'s vocabulary with ``parent``'s weights: a species both know keeps its
    embedding and output bias (matched by token, not id), a species new to ``parent`` starts from the new model's
    initialisation."""
    model = BertForMaskedLM(bert_config(model_cfg, len(tokenizer)))
    old, new = parent.tokenizer.get_vocab(), tokenizer.get_vocab()
    pairs = np.asarray([(i, old[t]) for t, i in new.items() if t in old], dtype="int64").reshape(-1, 2)
    to, frm = torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
    mine = model.state_dict()
    for key, value in parent.model.state_dict().items():
        value = value.detach().cpu()
        if key.endswith(_PER_TOKEN):  # rows by token, whatever the two vocabularies' sizes
            mine[key] = mine[key].clone()
            mine[key][to] = value[frm]
        else:
            mine[key] = value
    model.load_state_dict(mine)
    model.tie_weights()
    return model


def pretrain(
    tokenizer: PreTrainedTokenizerFast,
    ids: np.ndarray,
    val_ids: np.ndarray,
    model_cfg: PlotModelConfig,
    train_cfg: PlotTrainConfig,
    *,
    parent: PlotModel | None = None,
    epochs: int | None = None,
    on_epoch: Epochs | None = None,
) -> tuple[PlotModel, list[dict[str, float]]]:
    """Fill-mask pre-training on token-id rows; early stopping on the masked loss of ``val_ids``. From ``parent``'s
    weights when given (continued pre-training, :func:`carry_over`), for ``epochs`` (default
    ``train.pretrain_epochs``)."""
    seed_everything(train_cfg.seed)
    device = resolve_device(train_cfg.device)
    if parent is None:
        model = BertForMaskedLM(bert_config(model_cfg, len(tokenizer)))
    else:
        model = carry_over(parent, tokenizer, model_cfg)
    model.to(device)
    epochs = train_cfg.pretrain_epochs if epochs is None else epochs
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.pretrain_lr, weight_decay=train_cfg.weight_decay)
    steps = max(1, epochs * math.ceil(len(ids) / train_cfg.batch_size))
    sched = _schedule(opt, steps)
    amp = _autocast(device, train_cfg.mixed_precision)
    rng = np.random.default_rng(train_cfg.seed)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    history: list[dict[str, float]] = []
    lengths = _lengths(ids)
    stop = _EarlyStop(train_cfg.patience, 1e-4)
    for epoch in range(epochs):
        model.train()
        t0, seen, running = time.perf_counter(), 0, 0.0
        for idx in _batches(lengths, train_cfg.batch_size, rng):
            batch = _batch(ids, idx, train_cfg, gen)
            inputs, labels = mask_tokens(batch, train_cfg.mask_prob, len(tokenizer), gen)
            inputs, labels = inputs.to(device), labels.to(device)
            with amp():
                loss = _mlm_loss(model, inputs, labels)
            running += _step(model, opt, sched, loss) * len(idx)
            seen += len(idx)
        val = masked_loss(model, val_ids, train_cfg.mask_prob, train_cfg.seed + 1, device) if len(val_ids) else math.nan
        history.append(
            {"epoch": epoch, "loss": running / max(seen, 1), "val_loss": val, "seconds": time.perf_counter() - t0}
        )
        done = stop.update(-(val if len(val_ids) else running / max(seen, 1)), model)
        _report(on_epoch, history[-1], epochs, done)
        if done:
            break
    stop.restore(model)
    return PlotModel(tokenizer=tokenizer, model=model.eval(), cfg=model_cfg), history


def finetune(
    tokenizer: PreTrainedTokenizerFast,
    parent: PlotModel | None,
    ids: np.ndarray,
    labels: np.ndarray,
    val_ids: np.ndarray,
    val_labels: np.ndarray,
    classes: tuple[str, ...],
    model_cfg: PlotModelConfig,
    train_cfg: PlotTrainConfig,
    *,
    on_epoch: Epochs | None = None,
) -> tuple[PlotModel, list[dict[str, float]]]:
    """Habitat classification (labels index ``classes``) from the fill-mask weights of ``parent``, or from scratch;
    early stopping on the cross-entropy of the validation plots of trained classes (labels -1 = a class not trained:
    left out of the loss, counted wrong in the recorded accuracy)."""
    seed_everything(train_cfg.seed)
    device = resolve_device(train_cfg.device)
    model = BertForSequenceClassification(bert_config(model_cfg, len(tokenizer), len(classes)))
    if parent is not None:
        missing, _ = model.bert.load_state_dict(parent.model.bert.state_dict(), strict=False)
        if any(not k.startswith("pooler") for k in missing):
            raise RuntimeError(f"fine-tuning could not take the fill-mask weights: missing {missing}")
    model.to(device)
    epochs = train_cfg.finetune_epochs
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.finetune_lr, weight_decay=train_cfg.weight_decay)
    sched = _schedule(opt, max(1, epochs * math.ceil(len(ids) / train_cfg.batch_size)))
    amp = _autocast(device, train_cfg.mixed_precision)
    rng = np.random.default_rng(train_cfg.seed)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    stop = _EarlyStop(train_cfg.patience, 1e-6)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    lengths = _lengths(ids)
    for epoch in range(epochs):
        model.train()
        t0, seen, running = time.perf_counter(), 0, 0.0
        for idx in _batches(lengths, train_cfg.batch_size, rng):
            batch = _batch(ids, idx, train_cfg, gen).to(device)
            with amp():
                logits = model(input_ids=batch, attention_mask=(batch != PAD).long()).logits
            running += _step(model, opt, sched, loss_fn(logits.float(), y_all[idx].to(device))) * len(idx)
            seen += len(idx)
        clf = PlotModel(tokenizer=tokenizer, model=model, cfg=model_cfg, classes=classes)
        record = {"epoch": epoch, "loss": running / max(seen, 1), "seconds": time.perf_counter() - t0}
        if len(val_ids):
            proba = clf.predict_proba_ids(val_ids)
            record["val_accuracy"] = float(np.mean(proba.argmax(1) == val_labels))
            trained = val_labels >= 0
            record["val_loss"] = (
                float(-np.log(np.maximum(proba[trained, val_labels[trained]], 1e-12)).mean()) if trained.any() else 0.0
            )
        history.append(record)
        # Early stopping on the validation cross-entropy of plots whose class is trained: a spatial split holds few
        # plots and many untrained classes, so its accuracy jumps by chance from epoch to epoch (it chose poor epochs).
        done = stop.update(-record.get("val_loss", record["loss"]), model)
        _report(on_epoch, record, epochs, done)
        if done:
            break
    stop.restore(model)
    return (
        PlotModel(
            tokenizer=tokenizer,
            model=model.eval(),
            cfg=model_cfg,
            classes=classes,
            parent=parent.version if parent is not None else "",
        ),
        history,
    )


def submit(client: Client, fn: Callable[..., Any], *args: Any, key: str) -> Future:
    """Run ``fn(*args)`` as one Dask task, on a ``GPU`` worker when the cluster has one (mixed precision there)."""
    resources = task_resources(client)
    if resources:
        require_resources(client, resources)
    return client.submit(fn, *args, resources=resources, pure=False, key=f"{key}-{time.time_ns()}")
