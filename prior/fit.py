"""Training a prior on the maps of a tokenizer run: the maps it may read, the loss of one step, test bits per
token. `python -m pipelines.fit_prior` composes these with the shared training loop."""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from store.index_maps import read_index_maps
from store.runs import file_sha256


def read_maps_for(tokenizer_dir):
    """The tokenizer run's (train, test) maps, refused in one line when not made by that run's weights."""
    weights = Path(tokenizer_dir) / "model.safetensors"
    if not weights.exists():
        raise ValueError(f"tokenizer run {tokenizer_dir} has no model.safetensors")
    weights_sha256 = file_sha256(weights)
    splits = [read_index_maps(Path(tokenizer_dir) / "maps", split) for split in ("train", "test")]
    if any(maps.meta["weights_sha256"] != weights_sha256 for maps in splits):
        raise ValueError(f"the index maps in {tokenizer_dir}/maps were made by other weights than "
                         f"{weights} (SHA-256 differs): run fit_tokenizer --dump-only {tokenizer_dir}")
    return splits


def prior_step(model, batch, step, label_dropout, num_classes):
    tokens, labels = batch
    if num_classes:
        # "No label" is class index num_classes; dropping labels trains the unconditional half of guidance.
        dropped = torch.rand(labels.shape, device=labels.device) < label_dropout
        labels = torch.where(dropped, torch.full_like(labels, num_classes), labels)
    else:
        labels = None
    logits = model(tokens, labels)
    nats = F.cross_entropy(logits.float(), tokens)
    return nats, {"loss": nats.item(), "bits_per_token": nats.item() / math.log(2)}


@torch.no_grad()
def bits_per_token(model, dataset, batch_size, device, conditional):
    """Mean negative log-likelihood of the split, in bits per token (labels given when conditional)."""
    total_nats, total_tokens = 0.0, 0
    for tokens, labels in DataLoader(dataset, batch_size=batch_size):
        tokens = tokens.to(device)
        logits = model(tokens, labels.to(device) if conditional else None)
        total_nats += F.cross_entropy(logits.float(), tokens, reduction="sum").item()
        total_tokens += tokens.numel()
    return total_nats / max(1, total_tokens) / math.log(2)
