"""The reference classifier of a data set: trained once on its training split, saved, and reused by every evaluation.

Frechet distances are comparable only when the same network made the features, so the classifier is not retrained
per evaluation: it lives in OUTPUT_ROOT/classifiers/<data set>/ as config.json (what it was trained for and how),
model.safetensors and results.json (test accuracy, training time), written atomically like every run.
"""

import dataclasses
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from evaluation.classifier import Classifier, ClassifierConfig
from store.images import load_images
from store.runs import (CONFIG_FILE, MODEL_WEIGHTS, RESULTS_FILE, config_from_dict, file_sha256, load_run_model,
                        read_json, save_tensors, write_json)
from training import check_seed

DERIVED_FROM_DATA = ("image_channels", "image_size", "num_classes")


@dataclass
class ClassifierTrainConfig:
    # Prefixed names: an evaluation has its own batch_size and seed, for sampling, beside these.
    # Three epochs: 90.7% test accuracy on Fashion-MNIST in 70 s on one CPU thread; two gave 89.6% in 47 s.
    classifier_epochs: int = 3
    classifier_batch_size: int = 128
    classifier_learning_rate: float = 3e-3
    classifier_seed: int = 0

    def __post_init__(self):
        for name in ("classifier_epochs", "classifier_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")
        if not self.classifier_learning_rate > 0:
            raise ValueError(f"`classifier_learning_rate` must be positive, not {self.classifier_learning_rate}")
        check_seed(self.classifier_seed, "classifier_seed")


@dataclass
class ReferenceClassifier:
    model: Classifier  # in eval mode
    directory: Path
    trained: bool  # True when trained by this call, False when loaded
    results: dict  # results.json: test accuracy, training time
    weights_sha256: str

    def describe(self):
        """What a report needs to say which classifier made its features."""
        return {"directory": str(self.directory.resolve()), "weights_sha256": self.weights_sha256,
                "trained_now": self.trained, "config": dataclasses.asdict(self.model.config), **self.results}


def classifier_dir(root, data_config):
    """OUTPUT_ROOT/classifiers/<slug>: the data set's name, or for a folder its name and a hash of its path."""
    name = data_config.dataset
    if name.startswith("folder:"):
        path = str(Path(name[len("folder:"):]).resolve())
        name = f"folder-{Path(path).name}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "dataset"
    if data_config.image_size:
        name += f"-{data_config.image_size}px"
    return Path(root) / "classifiers" / name


def as_floats(images):
    """uint8 (b, c, H, W) -> float in [0, 1]; float images pass as they are."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def predict(model, images, batch_size=1000, desc=None):
    """(features (n, feature_dim) float32, predicted classes (n,)) of uint8 or [0, 1] float images, in batches.

    desc: a progress-bar title, or None for no bar.
    """
    model.eval()
    device = next(model.parameters()).device
    features, classes = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, dynamic_ncols=True,
                      disable=desc is None):
        batch_features = model.features(as_floats(images[start:start + batch_size]).to(device))
        features.append(batch_features.float().cpu())
        classes.append(model.head(batch_features).argmax(dim=1).cpu())
    if not features:
        raise ValueError("no images to classify")
    return torch.cat(features), torch.cat(classes)


def accuracy(model, images, labels, batch_size=1000, desc=None):
    _, predicted = predict(model, images, batch_size, desc)
    return (predicted == torch.as_tensor(labels)).float().mean().item()


def train_classifier(train_set, config, train_config, device="cpu", progress=True):
    """A fresh classifier fitted on train_set (an ImageSet); returns (model in eval mode, seconds)."""
    # A forked random state: the seed decides the weights without resetting the caller's generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_config.classifier_seed)
        model = Classifier(config).to(device)
    batch_size, epochs = train_config.classifier_batch_size, train_config.classifier_epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.classifier_learning_rate)
    generator = torch.Generator().manual_seed(train_config.classifier_seed)
    steps_per_epoch = max(1, len(train_set) // batch_size)  # the ragged last batch is dropped; order is reshuffled
    # One cycle (warm-up, then annealing) is what gets a three-epoch run past 90% on Fashion-MNIST.
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, train_config.classifier_learning_rate,
                                                   total_steps=epochs * steps_per_epoch)
    started = time.perf_counter()
    model.train()
    with tqdm(total=epochs * steps_per_epoch, desc="fit classifier", dynamic_ncols=True,
              disable=not progress) as bar:
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
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval(), time.perf_counter() - started


def load_or_train_classifier(data_config, root="checkpoints", *, train_set=None, test_set=None, model_config=None,
                             train_config=None, device="cpu", progress=True):
    """The data set's reference classifier: loaded if one was saved for it under root, else trained and saved.

    train_set, test_set: ImageSets of data_config's splits, when the caller has them already (else read here).
    model_config: a ClassifierConfig whose width and feature_dim are used when one is trained (its image shape and
    class count always come from the data). Returns a ReferenceClassifier.
    """
    directory = classifier_dir(root, data_config)
    test_set = test_set if test_set is not None else load_images(data_config, "test")
    channels, height, width = test_set.images.shape[1:]
    shape = {"image_channels": int(channels), "image_size": int(height), "num_classes": len(test_set.class_names)}
    if (directory / CONFIG_FILE).exists() and (directory / MODEL_WEIGHTS).exists():
        saved = read_json(directory / CONFIG_FILE)
        config = config_from_dict(ClassifierConfig, saved.get("model"), directory / CONFIG_FILE, "classifier")
        trained_for = (saved.get("data") or {}).get("dataset")
        found = {k: getattr(config, k) for k in shape}
        if trained_for != data_config.dataset or found != shape:
            raise ValueError(f"the classifier in {directory} was trained for {trained_for} {found}, not "
                             f"{data_config.dataset} {shape}: remove it to train a new one")
        _, model = load_run_model(directory, lambda _: Classifier(config))
        return ReferenceClassifier(model.to(device), directory, False, read_json(directory / RESULTS_FILE),
                                   file_sha256(directory / MODEL_WEIGHTS))

    if height != width:
        raise ValueError(f"the classifier needs square images, {data_config.dataset} has {height}x{width}")
    if shape["num_classes"] < 2:
        raise ValueError(f"the classifier needs at least 2 classes, {data_config.dataset} has {shape['num_classes']}")
    base = model_config or ClassifierConfig()
    config = dataclasses.replace(base, **shape)
    train_config = train_config or ClassifierTrainConfig()
    train_set = train_set if train_set is not None else load_images(data_config, "train")
    model, seconds = train_classifier(train_set, config, train_config, device, progress)
    results = {"test_accuracy": accuracy(model, test_set.images, test_set.labels,
                                         desc="classifier test" if progress else None),
               "train_seconds": seconds,
               "train_images_per_s": train_config.classifier_epochs * len(train_set) / max(seconds, 1e-9),
               "parameters": model.num_parameters(), "threads": torch.get_num_threads(), "device": str(device)}
    save_tensors(directory / MODEL_WEIGHTS, model.state_dict())
    write_json(directory / RESULTS_FILE, results)
    # config.json last: a directory counts as finished once it names what its weights were trained for.
    write_json(directory / CONFIG_FILE, {
        "model": dataclasses.asdict(config), "train": dataclasses.asdict(train_config),
        "data": dataclasses.asdict(data_config), "class_names": list(test_set.class_names)})
    return ReferenceClassifier(model, directory, True, results, file_sha256(directory / MODEL_WEIGHTS))
