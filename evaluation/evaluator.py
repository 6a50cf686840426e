"""evaluate(): a tokenizer, a prior and its samples, offline, in the features of a classifier trained on the data set.

Figures: Frechet distances (train vs test, the floor; reconstructions vs test; samples vs test), reconstruction
MSE and PSNR, the classifier's accuracy on test images, on reconstructions and (class-conditional priors) on
samples against the class asked for, and the prior's test bits per token. With an output folder, it holds
report.json, report.html and the pictures it shows, built in a temporary folder and renamed into place.

    from evaluation import EvaluationConfig, evaluate
    report = evaluate("checkpoints/prior/RUN", config=EvaluationConfig(n_samples=2000))  # the dict of report.json
"""

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from evaluation.classifier import ClassifierConfig
from evaluation.frechet import feature_statistics, frechet_distance
from evaluation.inception import (cached_weights_path, check_installed, fid, inception_features, inception_weights,
                                  kid, load_inception)
from evaluation.manifold import NEAREST_K, copies, precision_recall_density_coverage
from evaluation.reference import (ClassifierTrainConfig, as_floats, classifier_dir, load_or_train_classifier,
                                  predict)
from evaluation.report import plot_curves, plot_mosaic, plot_usage, write_html
from generation import ImageGenerator, ProgressBar, check_memory
from prior.sampling import SETTINGS, ClassLabels, SamplingConfig, check_count
from store.images import DataConfig, load_images, read_image_collection
from store.index_maps import read_maps_meta
from store.runs import (MAPS_FOLDER, META_FILE, METRICS_FILE, RESULTS_FILE, check_output_folder, file_sha256,
                        newest_run, output_lock, path_from, read_json, read_metrics, recorded_path, staged_folder,
                        weights_file, write_json)
from tokenizer import Tokenizer, psnr
from training import batches_in_order, check_seed

TOKENIZER_PANELS = [("loss", "step", [("loss", "train")], True), ("MSE", "step", [("mse", "train")], True),
                    ("perplexity", "step", [("perplexity", "train")], False),
                    ("codes used", "step", [("codes_used", "train")], False)]
FEATURES = ("classifier", "inception")
MANIFOLD_FIGURES = ("precision", "recall", "density", "coverage")
RECONSTRUCTION_FIGURES = ("fd_reconstructions_vs_test", "reconstruction_mse", "reconstruction_psnr",
                          "classifier_accuracy_on_reconstructions",
                          *(f"reconstructions_{name}" for name in MANIFOLD_FIGURES))
INCEPTION_FIGURES = ("inception_fid_train_vs_test", "inception_fid_reconstructions_vs_test",
                     "inception_fid_samples_vs_test", "inception_kid_samples_vs_test",
                     *(f"inception_{name}" for name in MANIFOLD_FIGURES))
INCEPTION_BATCH = 50  # images through Inception at once: 299x299 activations take ~25 MiB per image
PRIOR_PANELS = [("loss (nats per token)", "step", [("loss", "train")], False),
                ("bits per token", "epoch", [("bits_per_token", "train"), ("test_bits_per_token", "test")], False)]


def _inputs(runs, output_root, data_config, images, config):
    """What an evaluation reads, which its output folder may never be, lie inside or hold."""
    inception = (config.inception_weights or cached_weights_path()) if config.features == "inception" else None
    return [*runs.directories(), classifier_dir(output_root, data_config), *data_config.sources(), images, inception]


def _figures_of_results(path, keys):
    """The named figures of a run's results.json, None for those it lacks (or when it is missing)."""
    results = read_json(path) if Path(path).exists() else {}
    return {name: results.get(key) for name, key in keys.items()}


def _usage_histograms(tokenizer_dir):
    """The test split's usage histogram as a list of levels (one level unless residual), or None if not dumped."""
    maps_dir = Path(tokenizer_dir) / MAPS_FOLDER
    if not (maps_dir / META_FILE).exists():
        return None
    histogram = read_maps_meta(maps_dir).splits.get("test", {}).get("usage_histogram")
    if not histogram:
        return None
    return histogram if isinstance(histogram[0], list) else [histogram]


def _reconstruct(tokenizer, images, batch_size, progress, accelerator=None):
    """Reconstructions (n, c, H, W) float of uint8 images, and the summed squared error in [0, 1] units; the
    batches shared across the processes of accelerator."""
    def work(start, stop):
        _, decoded, batch_error = tokenizer.reconstruct(images[start:stop].to(tokenizer.device))
        return decoded.cpu(), batch_error

    reconstructions, squared_error = [], 0.0
    for _, (decoded, batch_error) in tqdm(batches_in_order(accelerator, len(images), batch_size, work),
                                          total=math.ceil(len(images) / batch_size), desc="reconstruct test",
                                          leave=False, dynamic_ncols=True, disable=not progress):
        squared_error += batch_error
        reconstructions.append(decoded)
    return torch.cat(reconstructions), squared_error


def _check_same_tokenizer(prior_dir, generator, tokenizer_dir):
    """A tokenizer run named beside a prior must be the one the prior was trained for: that path, or its weights."""
    trained_for = recorded_path(prior_dir, generator.run.tokenizer.run)
    weights = Path(tokenizer_dir) / weights_file(tokenizer_dir)
    if Path(tokenizer_dir).resolve() != trained_for.resolve() and not (
            weights.exists() and file_sha256(weights) == generator.run.tokenizer.weights_sha256):
        raise ValueError(f"prior {prior_dir} was trained for tokenizer {trained_for}, not {tokenizer_dir}")


@dataclass
class EvaluationConfig:
    """What evaluate() samples and how; the sampling settings left None take SamplingConfig's defaults, as
    `python -m pipelines.sample` does."""
    n_samples: int = 10000  # grids sampled from the prior (a class-conditional one: the training split's mix)
    batch_size: int = 500  # grids sampled at once, and images per batch through the tokenizer and classifier
    seed: int = 0
    label: str | None = None
    # The sampling settings (prior.sampling.SamplingConfig's fields; None: its defaults).
    temperature: float | tuple[float, float] | None = None
    temperature_schedule: str | None = None
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float | tuple[float, float] | None = None
    guidance_schedule: str | None = None
    guidance_from: int | float | None = None
    prior_weights: str | None = None  # the prior's weights file (default: its averaged weights when kept)
    # When a reference classifier is first trained for the data set: its width and feature_dim (the image shape
    # and class count come from the data), and how it is trained.
    classifier: ClassifierConfig | None = None
    classifier_train: ClassifierTrainConfig | None = None
    # "classifier": the reference classifier's features; "inception": also Inception-v3's (FID, KID, precision,
    # recall, density, coverage), with the weights file inception_weights (default: torch's hub cache, downloaded
    # there when missing).
    features: str = "classifier"
    inception_weights: str | None = None

    def __post_init__(self):
        check_count(self.n_samples, self.batch_size)
        check_seed(self.seed)
        if self.features not in FEATURES:
            raise ValueError(f"`features` must be one of {', '.join(FEATURES)}, not {self.features!r}")


def evaluate(prior_dir=None, tokenizer_dir=None, config=None, *, images=None, data_config=None,
             output_root="checkpoints", out=None, overwrite=False, device="cpu", progress=True, accelerator=None):
    """Evaluate a prior run and its tokenizer (or, with tokenizer_dir alone, the tokenizer); returns the report.

    With neither run given, the newest prior under output_root is evaluated. The reference classifier is read
    from (or trained once into) output_root/classifiers/<data set>. With out, the report folder (report.json,
    report.html, pictures) is written there, refusing an existing folder unless overwrite, and refusing always a
    folder that is, lies inside or holds what the evaluation reads. Samples are drawn as `python -m
    pipelines.sample` draws them (ImageGenerator.request), by config (an EvaluationConfig).

    images: instead of runs, a folder or .npz of images some other model made (store.images.read_image_collection),
    scored as samples against data_config's test split (a DataConfig, default Fashion-MNIST): no reconstructions.

    accelerator: under `accelerate launch`/`torchrun`, the processes share the sampling, decoding and
    reconstruction batches (every process gets the same report; only the main one writes the folder and trains a
    missing classifier).
    """
    config = config or EvaluationConfig()
    main_process = accelerator is None or accelerator.is_main_process
    progress = progress and main_process
    started_all = time.perf_counter()
    seconds = {}
    if images is not None and (prior_dir is not None or tokenizer_dir is not None):
        raise ValueError("images made elsewhere are scored on their own: give them without a prior or tokenizer run")
    if prior_dir is None and tokenizer_dir is None and images is None:
        prior_dir = newest_run(output_root, "prior")

    started = time.perf_counter()
    runs = _Runs(None) if images is not None else _load_runs(prior_dir, tokenizer_dir, config, device)
    data_config = (data_config or DataConfig()) if runs.tokenizer is None else runs.tokenizer.run.data
    inception = config.features == "inception"
    if inception:
        check_installed()
    if out is not None:  # before any work (a download of the Inception weights too), and never over what is read
        check_output_folder(out, overwrite, inputs=_inputs(runs, output_root, data_config, images, config))
    # A second evaluation writing the same folder is refused here, before any work.
    with output_lock(out, out is not None and main_process):
        inception_path = inception_weights(config.inception_weights, progress) if inception else None
        seconds["load_runs"] = time.perf_counter() - started
        train_set, test_set, samples = _load_data(runs, config, data_config, prior_dir, images, progress, accelerator,
                                                  seconds)
        started = time.perf_counter()
        with accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext():
            reference = load_or_train_classifier(data_config, output_root, train_set=train_set, test_set=test_set,
                                                 model_config=config.classifier, train_config=config.classifier_train,
                                                 device=device, progress=progress)
        seconds["classifier"] = time.perf_counter() - started
        measured = _measure(runs, reference, config, train_set, test_set, samples, prior_dir, inception_path, device,
                            progress, accelerator, seconds)
        seconds["total"] = time.perf_counter() - started_all
        report = _report(out, runs, prior_dir, images, data_config, reference, inception_path, config, device,
                         (train_set, test_set, samples), measured, seconds)
        if out is not None and main_process:
            write_report(out, overwrite, report, runs, prior_dir, train_set, test_set, measured.reconstructions,
                         samples, measured.nearest_training)
        return report


def _load_data(runs, config, data_config, prior_dir, images, progress, accelerator, seconds):
    """(train set, test set, samples): the data set's splits, checked against the runs, and the samples to score
    (drawn from the prior, or read from images made elsewhere; None for a tokenizer alone)."""
    started = time.perf_counter()
    train_set, test_set = load_images(data_config, "train"), load_images(data_config, "test")
    if runs.tokenizer is not None:
        runs.tokenizer.check_images(test_set.images.shape[1:], data_config.dataset)
    if runs.num_classes and list(runs.generator.run.class_names or []) != list(test_set.class_names):
        raise ValueError(f"the classes of prior {prior_dir} are not those of {data_config.dataset}: "
                         "its samples' classes cannot be checked")
    samples = None
    if images is not None:
        channels, size, _ = test_set.images.shape[1:]
        samples = read_image_collection(images, channels, size)  # uint8: converted a batch at a time
    seconds["load_data"] = time.perf_counter() - started

    if runs.generator is not None:
        # The images are joined from their batches (two copies for a moment), and their features kept.
        feature_dim = (config.classifier or ClassifierConfig()).feature_dim
        check_memory(config.n_samples * (2 * runs.generator.bytes_per_sample() + 4 * feature_dim),
                     f"{config.n_samples} samples with their tokens, images and features",
                     "evaluate fewer (`n_samples`)")
        started = time.perf_counter()
        samples = _draw_samples(runs, config, progress, accelerator)
        seconds["sample_and_decode"] = time.perf_counter() - started
    return train_set, test_set, samples


@dataclass
class _Measured:
    """What _measure found: the figures, the per-class accuracy of the samples, their nearest training images, the
    test images' reconstructions and the training images the floor figures pick."""
    figures: dict
    per_class: dict | None
    nearest_training: object
    reconstructions: torch.Tensor | None
    floor_picks: object


def _measure(runs, reference, config, train_set, test_set, samples, prior_dir, inception_path, device, progress,
             accelerator, seconds):
    """Every figure of the report, in the reference classifier's features (and Inception's, when asked)."""
    def features_of(images, desc):
        return predict(reference.model, images, config.batch_size, desc if progress else None)

    started = time.perf_counter()
    # The floor of the figures that depend on the sets' sizes: as many training images as samples (or test images).
    floor_picks = _floor_picks(len(train_set), len(test_set) if samples is None else len(samples))
    features, figures = _real_figures(features_of, train_set, test_set, floor_picks)
    seconds["features_real"] = time.perf_counter() - started

    reconstructions = None
    if runs.tokenizer is not None:
        started = time.perf_counter()
        reconstructions, reconstruction_figures = _reconstruction_figures(
            runs.tokenizer, test_set, features_of, {"stats": features["test_stats"], "features": features["test"]},
            config.batch_size, progress, accelerator)
        figures.update(reconstruction_figures)
        seconds["reconstructions"] = time.perf_counter() - started
    else:
        figures.update(dict.fromkeys(RECONSTRUCTION_FIGURES))

    started = time.perf_counter()
    sample_figures, per_class, nearest_training = _sample_figures(samples, runs.asked, features_of, features,
                                                                  test_set.class_names,
                                                                  figures["fd_reconstructions_vs_test"])
    figures.update(sample_figures)
    if samples is not None:
        seconds["features_samples"] = time.perf_counter() - started
    figures.update(_run_figures(prior_dir, runs.tokenizer))

    figures.update(dict.fromkeys(INCEPTION_FIGURES))
    if inception_path is not None:
        started = time.perf_counter()
        figures.update(_inception_figures(load_inception(inception_path, device), train_set, test_set, floor_picks,
                                          reconstructions, samples, progress))
        seconds["inception"] = time.perf_counter() - started
    return _Measured(figures, per_class, nearest_training, reconstructions, floor_picks)


def _report(out, runs, prior_dir, images, data_config, reference, inception_path, config, device, sets, measured,
            seconds):
    """report.json's content: what was read (relative to out; absolute for a report that is only returned), the
    settings, the counts (sets: train set, test set, samples), the figures and the seconds."""
    train_set, test_set, samples = sets
    where = lambda path: (None if path is None else path_from(out, path) if out is not None
                          else str(Path(path).resolve()))
    return {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        # The tokenizer run the prior was trained for (its weights may be read from the copy the prior carries).
        "runs": {"tokenizer": None if runs.tokenizer is None
                 else where(runs.tokenizer.run_dir) if runs.generator is None
                 else where(recorded_path(prior_dir, runs.generator.run.tokenizer.run)),
                 "tokenizer_loaded_from": None if runs.tokenizer is None else where(runs.tokenizer.run_dir),
                 "tokenizer_weights_sha256": None if runs.tokenizer is None else runs.tokenizer.weights_sha256,
                 "prior": where(prior_dir),
                 "prior_weights": None if runs.generator is None else runs.generator.weights,
                 "images": where(images)},
        "dataset": dataclasses.asdict(data_config),
        "classifier": reference.describe(),
        "inception": None if inception_path is None else {"weights": where(inception_path),
                                                          "weights_sha256": file_sha256(inception_path)},
        "settings": {"n_samples": config.n_samples if runs.generator is not None else 0,
                     "batch_size": config.batch_size, "seed": config.seed,
                     **(runs.sampling.record() if runs.sampling else {}), "label": config.label,
                     "sampled_class_counts": None if runs.asked is None else runs.asked.counts(),
                     "features": config.features, "nearest_k": NEAREST_K,
                     "floor_train_images": len(measured.floor_picks),
                     "device": str(device), "threads": torch.get_num_threads()},
        "counts": {"train": len(train_set), "test": len(test_set), "samples": 0 if samples is None else len(samples)},
        "figures": measured.figures,
        "per_class_sample_accuracy": measured.per_class,
        "seconds": seconds,
    }


@dataclass
class _Runs:
    """What an evaluation reads: the tokenizer (None when scoring images made elsewhere), and with a prior its
    generator, the class ids asked for (ClassLabels or None) and the SamplingConfig they are drawn with."""
    tokenizer: Tokenizer | None
    generator: ImageGenerator | None = None
    asked: ClassLabels | None = None
    sampling: SamplingConfig | None = None
    tokenizer_dirs: tuple = ()  # every tokenizer run read (a prior's copy, a tokenizer run named beside it)

    @property
    def num_classes(self):
        return self.generator.model.config.num_classes if self.generator is not None else 0

    def directories(self):
        return [*(() if self.generator is None else (self.generator.run_dir,)), *self.tokenizer_dirs]


def _load_runs(prior_dir, tokenizer_dir, config, device):
    """The runs to evaluate, and the sampling request resolved now, before minutes of work (the other sampling
    arguments are checked where the samples are drawn, which comes before the classifier and the features)."""
    if prior_dir is None:
        tokenizer = Tokenizer.load(tokenizer_dir, device=device)
        return _Runs(tokenizer, tokenizer_dirs=(tokenizer.run_dir,))
    generator = ImageGenerator.load(prior_dir, device, config.prior_weights)
    if tokenizer_dir is not None:
        _check_same_tokenizer(prior_dir, generator, tokenizer_dir)
    asked, sampling = generator.request(config.n_samples, config.label,
                                        **{name: getattr(config, name) for name in SETTINGS})
    named = () if tokenizer_dir is None else (Path(tokenizer_dir),)
    return _Runs(generator.tokenizer, generator, asked, sampling, (generator.tokenizer.run_dir, *named))


def _draw_samples(runs, config, progress, accelerator):
    """The samples' images (n, c, H, W) float on the CPU, drawn as sample draws them (the request resolved)."""
    bar = ProgressBar(desc="sample", unit="pos", leave=False, dynamic_ncols=True, disable=not progress)
    try:
        batches = runs.generator.draw_batches(config.n_samples, runs.asked, runs.sampling, seed=config.seed,
                                              batch_size=config.batch_size, progress=bar, accelerator=accelerator,
                                              decode=True)
        return torch.cat([images for _, _, images in batches])
    finally:
        bar.close()


def _floor_picks(n_train, count):
    """Indices of `count` training images (all when fewer), the same whatever the sampling seed."""
    if count >= n_train:
        return torch.arange(n_train)
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(0))[:count].sort().values


def _manifold_figures(real, generated, prefix):
    """precision, recall, density, coverage of generated against real features under prefix_*; None with fewer
    than k + 1 points on either side."""
    if min(len(real), len(generated)) <= NEAREST_K:
        return {f"{prefix}{name}": None for name in MANIFOLD_FIGURES}
    values = precision_recall_density_coverage(real, generated)
    return {f"{prefix}{name}": values[name] for name in MANIFOLD_FIGURES}


def _real_figures(features_of, train_set, test_set, floor_picks):
    """The classifier's test accuracy and the floor (train vs test: the Frechet distance of the whole training split,
    precision... of floor_picks), and the features kept: train, test, the test features' statistics."""
    train_features, _ = features_of(train_set.images, "features train")
    test_features, test_predicted = features_of(test_set.images, "features test")
    test_stats = feature_statistics(test_features)
    figures = {"classifier_test_accuracy": (test_predicted == test_set.labels).float().mean().item(),
               "fd_train_vs_test": frechet_distance(feature_statistics(train_features), test_stats),
               **_manifold_figures(test_features, train_features[floor_picks], "train_")}
    return {"train": train_features, "test": test_features, "test_stats": test_stats}, figures


def _reconstruction_figures(tokenizer, test_set, features_of, test, batch_size, progress, accelerator):
    """(the test split's reconstructions, their figures: Frechet distance, MSE, PSNR, classifier accuracy, precision,
    recall, density, coverage); test: {"stats": the test features' statistics, "features": the test features}."""
    reconstructions, squared_error = _reconstruct(tokenizer, test_set.images, batch_size, progress, accelerator)
    mse = squared_error / test_set.images.numel()
    features, predicted = features_of(reconstructions, "features reconstructions")
    return reconstructions, {
        "fd_reconstructions_vs_test": frechet_distance(feature_statistics(features), test["stats"]),
        "reconstruction_mse": mse, "reconstruction_psnr": psnr(mse),
        "classifier_accuracy_on_reconstructions": (predicted == test_set.labels).float().mean().item(),
        # Each test image beside its own decoding: an upper bound of what the tokenizer lets samples reach.
        **_manifold_figures(test["features"], features, "reconstructions_")}


def _sample_figures(samples, asked, features_of, real, class_names, fd_reconstructions):
    """(the samples' figures, None where there are no samples; the classifier's accuracy per class asked for; each
    sample's nearest training image: (distances, indices) in the classifier's features, or None)."""
    figures = dict(fd_samples_vs_test=None, fd_samples_over_reconstructions=None, classifier_accuracy_on_samples=None,
                   copies_samples=None, copies_test=None, **dict.fromkeys(MANIFOLD_FIGURES))
    if samples is None:
        return figures, None, None
    features, predicted = features_of(samples, "features samples")
    if len(samples) >= 2:
        figures["fd_samples_vs_test"] = frechet_distance(feature_statistics(features), real["test_stats"])
        if fd_reconstructions is not None:
            figures["fd_samples_over_reconstructions"] = figures["fd_samples_vs_test"] / max(fd_reconstructions, 1e-12)
    figures.update(_manifold_figures(real["test"], features, ""))
    found = copies(features, real["train"], real["test"])
    figures["copies_samples"], figures["copies_test"] = found["fraction"], found["test_fraction"]
    nearest_training = (found["distances"], found["indices"])
    if asked is None:
        return figures, None, nearest_training
    asked = asked[:]
    hits = (predicted == asked).float()
    figures["classifier_accuracy_on_samples"] = hits.mean().item()
    return figures, {name: hits[asked == c].mean().item() if (asked == c).any() else None
                     for c, name in enumerate(class_names)}, nearest_training


def _inception_figures(extractor, train_set, test_set, floor_picks, reconstructions, samples, progress):
    """FID (train vs test: floor_picks of the training split; reconstructions vs test; samples vs test), the samples'
    KID, precision, recall, density and coverage, in Inception-v3's features (torch-fidelity)."""
    def features_of(images, desc):
        return inception_features(extractor, images, INCEPTION_BATCH, f"inception {desc}" if progress else None)

    test = features_of(test_set.images, "test")
    figures = {"inception_fid_train_vs_test": fid(features_of(train_set.images[floor_picks], "train"), test)}
    if reconstructions is not None:
        figures["inception_fid_reconstructions_vs_test"] = fid(features_of(reconstructions, "reconstructions"), test)
    if samples is not None and len(samples) >= 2:
        generated = features_of(samples, "samples")
        figures["inception_fid_samples_vs_test"] = fid(generated, test)
        figures["inception_kid_samples_vs_test"] = kid(generated, test)[0]
        figures.update(_manifold_figures(test, generated, "inception_"))
    return figures


def _run_figures(prior_dir, tokenizer):
    """The figures the runs' own results.json files hold: the prior's test bits, the tokenizer's codebook use."""
    prior_figures = {"prior_test_bits_per_token": "test_bits_per_token",
                     "prior_test_bits_per_image": "test_bits_per_image"}
    figures = _figures_of_results(Path(prior_dir) / RESULTS_FILE, prior_figures) if prior_dir is not None \
        else dict.fromkeys(prior_figures)
    tokenizer_figures = {"codebook_perplexity_test": "test_perplexity", "codes_used_test": "test_codes_used"}
    figures.update(_figures_of_results(tokenizer.run_dir / RESULTS_FILE, tokenizer_figures) if tokenizer is not None
                   else dict.fromkeys(tokenizer_figures))
    return figures


def write_report(out, overwrite, report, runs, prior_dir, train_set, test_set, reconstructions, samples,
                 nearest_training):
    """The report folder: report.json, report.html and its pictures, renamed into place whole."""
    asked = None if runs.asked is None else runs.asked[:]
    with staged_folder(out, overwrite) as folder:
        pictures = []
        if runs.tokenizer is not None:
            tokenizer_dir = runs.tokenizer.run_dir
            if plot_curves(folder / "tokenizer_curves.png", read_metrics(Path(tokenizer_dir) / METRICS_FILE),
                           TOKENIZER_PANELS, "tokenizer training"):
                pictures.append(("tokenizer_curves.png", "Tokenizer training curves (metrics.jsonl)"))
            if prior_dir is not None and plot_curves(folder / "prior_curves.png",
                                                     read_metrics(Path(prior_dir) / METRICS_FILE),
                                                     PRIOR_PANELS, "prior training"):
                pictures.append(("prior_curves.png", "Prior training curves (metrics.jsonl)"))
            histograms = _usage_histograms(tokenizer_dir)
            if histograms is not None:
                plot_usage(folder / "codebook_usage.png", histograms, "codebook usage, test split")
                pictures.append(("codebook_usage.png", "How often each code appears in the test split's tokens"))
        if reconstructions is not None:
            shown = min(16, len(reconstructions))
            plot_mosaic(folder / "reconstructions.png",
                        [test_set.images[:shown].float() / 255, reconstructions[:shown]], ["test", "reconstruction"],
                        "test images and their reconstructions")
            pictures.append(("reconstructions.png", "Test images (top) and their reconstructions (bottom)"))
        if samples is not None:
            made = "samples from the prior" if runs.generator is not None else "the images scored"
            if asked is not None:
                rows = [(samples[asked == c][:10], name) for c, name in enumerate(test_set.class_names)
                        if (asked == c).any()]
            else:
                per_row = min(10, max(1, math.ceil(math.sqrt(len(samples)))))
                rows = [(as_floats(samples[start:start + per_row]), "")
                        for start in range(0, min(len(samples), 80), per_row)]
            plot_mosaic(folder / "samples.png", [row for row, _ in rows], [label for _, label in rows],
                        made + (", one row per class asked for" if asked is not None else ""))
            pictures.append(("samples.png", "Samples, decoded by the tokenizer" if runs.generator is not None
                             else "The images scored"))
        if nearest_training is not None:
            plot_mosaic(folder / "nearest_training.png", *_nearest_training_rows(samples, train_set, *nearest_training),
                        "samples and their nearest training images (reference classifier's features)")
            pictures.append(("nearest_training.png", "Copies? The samples nearest to a training image, then the "
                             "first samples, each above its nearest training image"))
        report["pictures"] = [name for name, _ in pictures]
        write_json(folder / "report.json", report)
        write_html(folder / "report.html", report, pictures)


def _nearest_training_rows(samples, train_set, distances, indices, per_row=10):
    """(rows, labels) of plot_mosaic: the samples nearest to a training image and the first samples, each row of
    samples above a row of their nearest training images."""
    closest = distances.argsort()[:per_row]
    first = torch.arange(min(per_row, len(samples)))
    rows, labels = [], []
    for picked, name in ((closest, "nearest samples"), (first, "first samples")):
        rows += [as_floats(samples[picked]), as_floats(train_set.images[indices[picked]])]
        labels += [name, "their nearest\ntraining images"]
    return rows, labels
