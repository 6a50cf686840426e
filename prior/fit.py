"""Training a prior on the maps of a tokenizer run: the maps it may read, the loss of one step, test bits per
token. `python -m pipelines.fit_prior` composes these with the shared training loop."""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from store.index_maps import read_index_maps
from store.runs import MODEL_WEIGHTS, file_sha256, weights_file


def read_maps_for(tokenizer_dir):
    """The tokenizer run's (train, test) maps, refused in one line when not made by that run's weights."""
    weights = Path(tokenizer_dir) / weights_file(tokenizer_dir)
    if not weights.exists():
        raise ValueError(f"tokenizer run {tokenizer_dir} has no {MODEL_WEIGHTS}")
    weights_sha256 = file_sha256(weights)
    splits = [read_index_maps(Path(tokenizer_dir) / "maps", split) for split in ("train", "test")]
    if any(maps.meta["weights_sha256"] != weights_sha256 for maps in splits):
        raise ValueError(f"the index maps in {tokenizer_dir}/maps were made by other weights than "
                         f"{weights} (SHA-256 differs): run fit_tokenizer --dump-only {tokenizer_dir}")
    return splits


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
