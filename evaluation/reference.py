"""The reference classifier of a data set: trained once on its training split, saved, and reused by every evaluation.

A classifier lives in OUTPUT_ROOT/classifiers/<data set>/ as config.json (the data config, the model config and
the training settings), model.safetensors and results.json (test accuracy), written atomically like every run.
"""

import dataclasses
import hashlib
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from evaluation.classifier import Classifier, ClassifierConfig
from pipelines.runs import load_state_strict, read_json, read_model_files, save_tensors, write_json


def classifier_dir(root, data_config):
    """OUTPUT_ROOT/classifiers/<name>: the data set's name, or for a folder its name and a hash of its path."""
    name = data_config.dataset
    if name.startswith("folder:"):
        path = str(Path(name[len("folder:"):]).resolve())
        name = f"folder-{Path(path).name}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    if data_config.image_size:
        name += f"-{data_config.image_size}px"
    return Path(root) / "classifiers" / name


def as_floats(images):
    """uint8 (b, c, H, W) -> float in [0, 1]; float images pass as they are."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def predict(model, images, batch_size=1000, desc=None):
    """(features (n, feature_dim), predicted classes (n,)) of uint8 or [0, 1] float images, in batches."""
    model.eval()
    device = next(model.parameters()).device
    features, classes = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, dynamic_ncols=True,
                      disable=desc is None):
        batch_features = model.features(as_floats(images[start:start + batch_size]).to(device))
        features.append(batch_features.cpu())
        classes.append(model.head(batch_features).argmax(dim=1).cpu())
    return torch.cat(features), torch.cat(classes)


def train_classifier(train_set, test_set, config, epochs=2, batch_size=128, learning_rate=2e-3, seed=0,
                     device="cpu"):
    """A fresh classifier fitted on train_set; returns (model, test accuracy, seconds)."""
    torch.manual_seed(seed)
    model = Classifier(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, len(train_set) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=epochs * steps_per_epoch)
    started = time.perf_counter()
    model.train()
    with tqdm(total=epochs * steps_per_epoch, desc="fit classifier", dynamic_ncols=True) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(train_set), generator=generator)
            for step in range(steps_per_epoch):
                picks = order[step * batch_size:(step + 1) * batch_size]
                images = as_floats(train_set.images[picks]).to(device)
                loss = F.cross_entropy(model(images), train_set.labels[picks].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - started
    _, predicted = predict(model, test_set.images)
    accuracy = (predicted == test_set.labels).float().mean().item()
    return model.eval(), accuracy, seconds


def load_or_train_classifier(data_config, train_set, test_set, root="checkpoints", epochs=2, device="cpu"):
    """The data set's reference classifier: loaded if one was saved for it, else trained and saved.

    Returns (model in eval mode, its directory, whether it was trained just now).
    """
    directory = classifier_dir(root, data_config)
    channels, size = train_set.images.shape[1], train_set.images.shape[2]
    config = ClassifierConfig(image_channels=channels, image_size=size, num_classes=len(train_set.class_names))
    if (directory / "model.safetensors").exists():
        saved, state = read_model_files(directory)
        if saved.get("model") != dataclasses.asdict(config) or saved.get("data") != dataclasses.asdict(data_config):
            raise ValueError(f"the classifier in {directory} was trained for other data or images: remove it "
                             "to train a new one")
        model = Classifier(config)
        load_state_strict(model, state, directory / "model.safetensors")
        return model.to(device).eval(), directory, False
    if size % 4 or len(train_set.class_names) < 2:
        raise ValueError(f"the reference classifier needs labelled images with a size divisible by 4; "
                         f"{data_config.dataset} has {size}x{size} and {len(train_set.class_names)} class(es)")
    model, accuracy, seconds = train_classifier(train_set, test_set, config, epochs=epochs, device=device)
    save_tensors(directory / "model.safetensors", model.state_dict())
    write_json(directory / "results.json", {"test_accuracy": accuracy, "train_seconds": seconds})
    # config.json last: a directory is complete once it names what it was trained for.
    write_json(directory / "config.json", {"model": dataclasses.asdict(config), "data": dataclasses.asdict(data_config),
                                           "train": {"epochs": epochs}, "class_names": train_set.class_names})
    return model, directory, True


def classifier_results(directory):
    return read_json(Path(directory) / "results.json")
