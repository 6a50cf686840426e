"""Training a prior on the maps of a tokenizer run: the maps it may read, the run a new prior is from those maps'
metadata, the loss of one step, test bits per token. `python -m pipelines.fit_prior` composes these with the shared
training loop."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from prior.run import PriorRun, TokenizerReference
from store.images import SPLITS
from store.index_maps import read_index_maps
from store.runs import MAPS_FOLDER, MODEL_WEIGHTS, file_sha256, weights_file

CONDITIONS = ("auto", "none", "class")
# From BENCHMARKS.md ("Sample quality: the levers"): "no label" this fraction of the time, for guidance.
DEFAULT_LABEL_DROPOUT = 0.1


def read_maps_for(tokenizer_dir):
    """The tokenizer run's (train, test) maps, refused in one line when not made by that run's weights."""
    weights = Path(tokenizer_dir) / weights_file(tokenizer_dir)
    if not weights.exists():
        raise ValueError(f"tokenizer run {tokenizer_dir} has no {MODEL_WEIGHTS}")
    weights_sha256 = file_sha256(weights)
    splits = [read_index_maps(Path(tokenizer_dir) / MAPS_FOLDER, split) for split in SPLITS]
    if any(maps.meta.weights_sha256 != weights_sha256 for maps in splits):
        raise ValueError(f"the index maps in {tokenizer_dir}/maps were made by other weights than "
                         f"{weights} (SHA-256 differs): dump them again with "
                         f"python -m pipelines.fit_tokenizer --dump-only {tokenizer_dir}")
    return splits


def new_prior_run(tokenizer_dir, train_maps, model, train, condition="auto", label_dropout=None,
                  eval_batch_size=1000):
    """The PriorRun of a new prior on a tokenizer run's training maps (store.index_maps.IndexMaps): the codebook,
    grid and depth from the maps' metadata (over those of `model`, a PriorConfig of the other choices), a top
    prior's config and the conditioning on the top map for two levels, and the classes.

    condition: "class" conditions on the maps' labels (two or more classes needed), "none" does not, "auto" does
    when there are two or more; label_dropout: the fraction of "no label" steps (None: DEFAULT_LABEL_DROPOUT when
    conditional). A choice the maps cannot take is one ValueError."""
    if condition not in CONDITIONS:
        raise ValueError(f"`condition` must be one of {', '.join(CONDITIONS)}, not {condition!r}")
    if label_dropout is not None and not 0 <= label_dropout < 1:
        raise ValueError(f"`label_dropout` must lie in [0, 1), not {label_dropout}")
    if label_dropout and condition == "none":
        raise ValueError("`label_dropout` needs class conditioning (`condition` class or auto)")
    meta = train_maps.meta
    num_classes = len(meta.class_names or []) if condition != "none" else 0
    if condition == "class" and num_classes < 2:
        raise ValueError(f"`condition` class needs labelled maps; {tokenizer_dir} has {num_classes} class(es)")
    if num_classes < 2:
        num_classes = 0  # auto on maps of one class: unconditional
    if not num_classes and label_dropout:
        raise ValueError(f"`label_dropout` needs class conditioning; the maps of {tokenizer_dir} have no classes")
    shape = dict(codebook_size=meta.codebook_size, num_classes=num_classes, depth=meta.depth)
    top = None
    if train_maps.levels == 2:  # VQ-VAE-2: a top prior, and the bottom prior conditioned on the top maps
        top = dataclasses.replace(model, grid_height=meta.top_grid_height, grid_width=meta.top_grid_width, **shape)
        shape.update(condition_codebook_size=meta.codebook_size, condition_height=meta.top_grid_height,
                     condition_width=meta.top_grid_width)
    return PriorRun(
        top=top, model=dataclasses.replace(model, grid_height=meta.grid_height, grid_width=meta.grid_width,
                                           **shape),
        train=train, tokenizer=TokenizerReference(run=str(Path(tokenizer_dir).resolve()),
                                                  weights_sha256=meta.weights_sha256),
        label_dropout=(DEFAULT_LABEL_DROPOUT if label_dropout is None else label_dropout) if num_classes else 0.0,
        eval_batch_size=eval_batch_size, class_names=meta.class_names if num_classes else None,
        class_counts=np.bincount(np.asarray(train_maps.labels), minlength=num_classes).tolist()
        if num_classes else None)


def level_logits(model, tokens, labels, top):
    """[(level name, logits, target tokens)] of a flat prior ("bottom" only), or of a TwoLevelPrior (top, then
    bottom conditioned on it) when the batch carries top tokens."""
    if top is None:
        return [("bottom", model(tokens, labels), tokens)]
    bottom_logits, top_logits = model(tokens, labels, top)
    return [("top", top_logits, top), ("bottom", bottom_logits, tokens)]


def prior_step(model, batch, step, label_dropout, num_classes):
    """(mean negative log-likelihood per token, logs) of one batch; for a two-level prior, over the tokens of both
    levels, with each level's bits in the logs."""
    tokens, labels, *top = batch
    if num_classes:
        # "No label" is class index num_classes; dropping labels trains the unconditional half of guidance.
        dropped = torch.rand(labels.shape, device=labels.device) < label_dropout
        labels = torch.where(dropped, torch.full_like(labels, num_classes), labels)
    else:
        labels = None
    levels = level_logits(model, tokens, labels, top[0] if top else None)
    if len(levels) == 1:
        nats = F.cross_entropy(levels[0][1].float(), tokens)
        return nats, {"loss": nats.item(), "bits_per_token": nats.item() / math.log(2)}
    sums = {name: F.cross_entropy(logits.float(), target, reduction="sum") for name, logits, target in levels}
    counts = {name: target.numel() for name, _, target in levels}
    nats = sum(sums.values()) / sum(counts.values())
    return nats, {"loss": nats.item(), "bits_per_token": nats.item() / math.log(2),
                  **{f"{name}_bits_per_token": sums[name].item() / counts[name] / math.log(2) for name in sums}}


@torch.no_grad()
def bits_per_token(model, dataset, batch_size, device, conditional):
    """Mean negative log-likelihood of the split in bits per token (labels given when conditional), as a dict:
    {"bits_per_token": ...}, and for a two-level prior each level's too ("top_...", "bottom_...")."""
    totals = {"top": [0.0, 0], "bottom": [0.0, 0]}
    for tokens, labels, *top in DataLoader(dataset, batch_size=batch_size):
        tokens, labels = tokens.to(device), labels.to(device) if conditional else None
        for level, logits, target in level_logits(model, tokens, labels, top[0].to(device) if top else None):
            totals[level][0] += F.cross_entropy(logits.float(), target, reduction="sum").item()
            totals[level][1] += target.numel()
    nats = sum(total for total, _ in totals.values())
    count = sum(n for _, n in totals.values())
    bits = {"bits_per_token": nats / max(1, count) / math.log(2)}
    if totals["top"][1]:
        bits.update({f"{level}_bits_per_token": total / n / math.log(2) for level, (total, n) in totals.items()})
    return bits


def test_results(model, averaged, test_set, run, device):
    """A finished prior's test figures for results.json: bits per token (and per level, for two levels) of the
    weights sampled from (the average, when kept: loaded into model), of the raw weights too, and per image."""
    conditional = run.model.num_classes > 0
    raw = bits_per_token(model, test_set, run.eval_batch_size, device, conditional)
    bits = raw
    if averaged is not None:
        model.load_state_dict(averaged)
        bits = bits_per_token(model, test_set, run.eval_batch_size, device, conditional)
    tokens_per_grid = sum(math.prod(c.token_shape) for c in (run.top, run.model) if c is not None)
    return {"test_bits_per_token": bits["bits_per_token"],
            "test_bits_per_image": bits["bits_per_token"] * tokens_per_grid,
            **{f"test_{name}": value for name, value in bits.items() if name != "bits_per_token"},
            "test_bits_per_token_raw_weights": raw["bits_per_token"], "parameters": model.num_parameters()}
