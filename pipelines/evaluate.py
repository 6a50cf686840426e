"""Evaluate a tokenizer, a prior and its samples offline, in the features of a classifier trained on the data set.

    python -m pipelines.evaluate                                        # the newest prior run and its tokenizer
    python -m pipelines.evaluate --prior checkpoints/prior/RUN --n-samples 2000
    python -m pipelines.evaluate --tokenizer checkpoints/tokenizer/RUN  # the tokenizer alone, no samples

Figures: Frechet distances (train vs test, the floor; reconstructions vs test; samples vs test), reconstruction
MSE and PSNR, the classifier's accuracy on test images, on reconstructions and (class-conditional priors) on
samples against the class asked for, and the prior's test bits per token. The output folder holds report.json,
report.html and the pictures it shows; it is built in a temporary folder and renamed into place.

As a library: report = evaluate(prior_dir="checkpoints/prior/RUN", n_samples=2000)  # the dict of report.json
"""

import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from evaluation.classifier import ClassifierConfig
from evaluation.frechet import feature_statistics, frechet_distance
from evaluation.reference import DERIVED_FROM_DATA, ClassifierTrainConfig, load_or_train_classifier, predict
from evaluation.report import plot_curves, plot_mosaic, plot_usage, write_html
from pipelines import cli
from pipelines.data import DataConfig, load_images
from pipelines.runs import check_can_write_in, newest_run, read_json, read_metrics, write_json
from pipelines.sample import add_sampling_flags, load_pair, write_outputs
from pipelines.train import TrainConfig, make_accelerator
from prior.generate import check_args
from prior.sampling import resolve_labels, sample_tokens, settings_for
from tokenizer import Tokenizer

TOKENIZER_PANELS = [("loss", "step", [("loss", "train")], True), ("MSE", "step", [("mse", "train")], True),
                    ("perplexity", "step", [("perplexity", "train")], False),
                    ("codes used", "step", [("codes_used", "train")], False)]
PRIOR_PANELS = [("loss (nats per token)", "step", [("loss", "train")], False),
                ("bits per token", "epoch", [("bits_per_token", "train"), ("test_bits_per_token", "test")], False)]


def build_parser():
    parser = cli.ArgumentParser(
        prog="python -m pipelines.evaluate",
        description="Evaluate a tokenizer, a prior and its samples with a reference classifier's features; "
                    "write report.json and report.html.")
    p = parser.add_argument
    p("--prior", metavar="RUN_DIR", default=None,
      help="prior run to evaluate (default: the newest under OUTPUT_ROOT/prior, unless --tokenizer alone is given)")
    p("--tokenizer", metavar="RUN_DIR", default=None,
      help="tokenizer run to evaluate (default: the one the prior was trained for); alone, without --prior, "
           "only the tokenizer is evaluated")
    p("--output-root", default="checkpoints",
      help="where runs are found, reference classifiers kept (OUTPUT_ROOT/classifiers) and reports written "
           "(default: checkpoints)")
    p("--out", default=None, help="output folder (default: a new OUTPUT_ROOT/evaluations/<time>)")
    p("--overwrite", action="store_true", help="replace --out if it exists already (default: refuse)")
    p("--n-samples", type=int, default=10000,
      help="grids to sample from the prior, drawn as `python -m pipelines.sample` draws them: a class-conditional "
           "prior's classes in the mix of the training split unless --label says otherwise (default: 10000)")
    p("--batch-size", type=int, default=500,
      help="grids sampled at once, and images per batch through the tokenizer and classifier (default: 500)")
    p("--seed", type=int, default=0, help="sampling seed; the same seed on the same device gives the same report "
                                          "(default: 0)")
    add_sampling_flags(parser)
    p("--threads", type=int, default=0,
      help="CPU threads for torch (default: 0, torch's own choice); on a CPU shared with other jobs, 1 avoids "
           "threads waiting on each other (10x faster classifier training measured on 2 busy cores)")
    cli.add_config_flags(parser, ClassifierConfig, "reference classifier (used only when one is first trained for "
                                                   "the data set)", skip=DERIVED_FROM_DATA)
    group = cli.add_config_flags(parser, ClassifierTrainConfig, "reference classifier training")
    group.description = "OUTPUT_ROOT/classifiers/<data set> is reused when it exists; delete it to retrain"
    return parser


def _figures_of_results(path, keys):
    """The named figures of a run's results.json, None for those it lacks (or when it is missing)."""
    results = read_json(path) if Path(path).exists() else {}
    return {name: results.get(key) for name, key in keys.items()}


def _usage_histograms(tokenizer_dir):
    """The test split's usage histogram as a list of levels (one level unless residual), or None if not dumped."""
    meta_path = Path(tokenizer_dir) / "maps" / "meta.json"
    if not meta_path.exists():
        return None
    histogram = read_json(meta_path).get("splits", {}).get("test", {}).get("usage_histogram")
    if not histogram:
        return None
    return histogram if isinstance(histogram[0], list) else [histogram]


def _reconstruct(tokenizer, images, batch_size, progress):
    """Reconstructions (n, c, H, W) float of uint8 images, and the summed squared error in [0, 1] units."""
    reconstructions, squared_error = [], 0.0
    for start in tqdm(range(0, len(images), batch_size), desc="reconstruct test", leave=False, dynamic_ncols=True,
                      disable=not progress):
        batch = images[start:start + batch_size].to(tokenizer.device).float() / 255
        decoded = tokenizer.decode(tokenizer.encode(batch)).float()
        squared_error += F.mse_loss(decoded, batch, reduction="sum").item()
        reconstructions.append(decoded.cpu())
    return torch.cat(reconstructions), squared_error


def _sample(model, tokenizer, n, batch_size, seed, device, progress, labels, settings):
    """Images (n, c, H, W) float on the CPU, sampled with labels (n,) or None."""
    def open_progress(total):
        return tqdm(total=total, desc="sample", unit="pos", leave=False, dynamic_ncols=True, disable=not progress)

    tokens = sample_tokens(model, n, batch_size, seed, device, open_progress, labels=labels, **settings)
    # Tokens are opaque here: (n, h, w) or (n, h, w, depth), handed to the tokenizer as they are.
    return torch.cat([tokenizer.decode(tokens[start:start + batch_size]).float().cpu()
                      for start in range(0, len(tokens), batch_size)])


def evaluate(prior_dir=None, tokenizer_dir=None, *, output_root="checkpoints", out=None, overwrite=False,
             n_samples=10000, batch_size=500, seed=0, label=None, temperature=None, top_k=None, top_p=None,
             guidance_scale=None, classifier_config=None, classifier_train=None, device="cpu", progress=True,
             prior_weights=None):
    """Evaluate a prior run and its tokenizer (or, with tokenizer_dir alone, the tokenizer); returns the report.

    With neither run given, the newest prior under output_root is evaluated. The reference classifier is read
    from (or trained once into) output_root/classifiers/<data set>. With out, the report folder (report.json,
    report.html, pictures) is written there, refusing an existing folder unless overwrite. Samples are drawn as
    `python -m pipelines.sample` draws them (prior.sampling): label None is the training mix of classes for a
    conditional prior, and settings left None take SamplingConfig's defaults. prior_weights names the prior's
    weights file to evaluate (default: its averaged weights when kept, as sample uses).
    """
    started_all = time.perf_counter()
    seconds = {}
    if batch_size < 1:
        raise ValueError(f"--batch-size must be positive, not {batch_size}")
    if out is not None and Path(out).exists() and not overwrite:
        raise ValueError(f"{out} exists already: pass --overwrite or another --out")
    if out is not None:
        check_can_write_in(Path(out).parent)
    if prior_dir is None and tokenizer_dir is None:
        prior_dir = newest_run(output_root, "prior")

    started = time.perf_counter()
    model = prior_config = asked = settings = None
    if prior_dir is not None:
        prior_dir = Path(prior_dir)
        model, tokenizer, prior_config = load_pair(prior_dir, device, prior_weights)
        if tokenizer_dir is not None and Path(tokenizer_dir).resolve() != tokenizer.run_dir.resolve():
            raise ValueError(f"prior {prior_dir} was trained for tokenizer {tokenizer.run_dir}, not {tokenizer_dir}")
        # Every sampling argument is checked now, before minutes of work: its error is the only output.
        asked = resolve_labels(label, n_samples, prior_config)
        settings = settings_for(asked, temperature=temperature, top_k=top_k, top_p=top_p,
                                guidance_scale=guidance_scale)
        check_args(model, n_samples, labels=asked, **settings)
    else:
        tokenizer = Tokenizer.load(tokenizer_dir, device=device)
    tokenizer_config_path = tokenizer.run_dir / "config.json"
    try:
        data_config = DataConfig(**read_json(tokenizer_config_path)["data"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{tokenizer_config_path} does not say which data set it was trained on ({error})") from None
    seconds["load_runs"] = time.perf_counter() - started

    started = time.perf_counter()
    train_set, test_set = load_images(data_config, "train"), load_images(data_config, "test")
    expected = (tokenizer.config.image_channels, tokenizer.config.image_size, tokenizer.config.image_size)
    if tuple(test_set.images.shape[1:]) != expected:
        raise ValueError(f"{data_config.dataset} images are {tuple(test_set.images.shape[1:])}, the tokenizer in "
                         f"{tokenizer.run_dir} takes {expected}")
    num_classes = model.config.num_classes if model is not None else 0
    if num_classes and list(prior_config.get("class_names") or []) != list(test_set.class_names):
        raise ValueError(f"the classes of prior {prior_dir} are not those of {data_config.dataset}: "
                         "its samples' classes cannot be checked")
    seconds["load_data"] = time.perf_counter() - started

    started = time.perf_counter()
    reference = load_or_train_classifier(data_config, output_root, train_set=train_set, test_set=test_set,
                                         model_config=classifier_config, train_config=classifier_train,
                                         device=device, progress=progress)
    classifier = reference.model
    seconds["classifier"] = time.perf_counter() - started

    def features_of(images, desc):
        return predict(classifier, images, batch_size, desc if progress else None)

    started = time.perf_counter()
    train_features, _ = features_of(train_set.images, "features train")
    test_features, test_predicted = features_of(test_set.images, "features test")
    test_stats = feature_statistics(test_features)
    figures = {"classifier_test_accuracy": (test_predicted == test_set.labels).float().mean().item(),
               "fd_train_vs_test": frechet_distance(feature_statistics(train_features), test_stats)}
    seconds["features_real"] = time.perf_counter() - started

    started = time.perf_counter()
    reconstructions, squared_error = _reconstruct(tokenizer, test_set.images, batch_size, progress)
    mse = squared_error / test_set.images.numel()
    recon_features, recon_predicted = features_of(reconstructions, "features reconstructions")
    figures.update({"fd_reconstructions_vs_test": frechet_distance(feature_statistics(recon_features), test_stats),
                    "reconstruction_mse": mse, "reconstruction_psnr": 10 * math.log10(1 / max(mse, 1e-12)),
                    "classifier_accuracy_on_reconstructions":
                        (recon_predicted == test_set.labels).float().mean().item()})
    seconds["reconstructions"] = time.perf_counter() - started

    samples, per_class = None, None
    figures.update(fd_samples_vs_test=None, fd_samples_over_reconstructions=None, classifier_accuracy_on_samples=None)
    if model is not None:
        started = time.perf_counter()
        samples = _sample(model, tokenizer, n_samples, batch_size, seed, device, progress, asked, settings)
        seconds["sample_and_decode"] = time.perf_counter() - started
        started = time.perf_counter()
        sample_features, sample_predicted = features_of(samples, "features samples")
        if len(samples) >= 2:
            figures["fd_samples_vs_test"] = frechet_distance(feature_statistics(sample_features), test_stats)
            figures["fd_samples_over_reconstructions"] = (figures["fd_samples_vs_test"]
                                                          / max(figures["fd_reconstructions_vs_test"], 1e-12))
        if asked is not None:
            hits = (sample_predicted == asked).float()
            figures["classifier_accuracy_on_samples"] = hits.mean().item()
            per_class = {name: hits[asked == c].mean().item() if (asked == c).any() else None
                         for c, name in enumerate(test_set.class_names)}
        seconds["features_samples"] = time.perf_counter() - started

    figures.update(_figures_of_results(prior_dir / "results.json", {
        "prior_test_bits_per_token": "test_bits_per_token", "prior_test_bits_per_image": "test_bits_per_image"})
                   if prior_dir is not None else {"prior_test_bits_per_token": None, "prior_test_bits_per_image": None})
    figures.update(_figures_of_results(tokenizer.run_dir / "results.json", {
        "codebook_perplexity_test": "test_perplexity", "codes_used_test": "test_codes_used"}))
    seconds["total"] = time.perf_counter() - started_all

    report = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": {"tokenizer": str(tokenizer.run_dir.resolve()), "tokenizer_weights_sha256": tokenizer.weights_sha256,
                 "prior": None if prior_dir is None else str(prior_dir.resolve()),
                 "prior_weights": None if model is None else model.weights_file},
        "dataset": dataclasses.asdict(data_config),
        "classifier": reference.describe(),
        "settings": {"n_samples": n_samples if model is not None else 0, "batch_size": batch_size, "seed": seed,
                     **(settings or {}), "label": label,
                     "sampled_class_counts": None if asked is None else torch.bincount(
                         asked, minlength=num_classes).tolist(),
                     "device": str(device), "threads": torch.get_num_threads()},
        "counts": {"train": len(train_set), "test": len(test_set), "samples": 0 if samples is None else len(samples)},
        "figures": figures,
        "per_class_sample_accuracy": per_class,
        "seconds": seconds,
    }
    if out is not None:
        write_report(out, overwrite, report, tokenizer.run_dir, prior_dir, test_set, reconstructions, samples, asked)
    return report


def write_report(out, overwrite, report, tokenizer_dir, prior_dir, test_set, reconstructions, samples, asked):
    """The report folder: report.json, report.html and its pictures, renamed into place whole."""
    def write(folder):
        pictures = []
        if plot_curves(folder / "tokenizer_curves.png", read_metrics(Path(tokenizer_dir) / "metrics.jsonl"),
                       TOKENIZER_PANELS, "tokenizer training"):
            pictures.append(("tokenizer_curves.png", "Tokenizer training curves (metrics.jsonl)"))
        if prior_dir is not None and plot_curves(folder / "prior_curves.png",
                                                 read_metrics(Path(prior_dir) / "metrics.jsonl"),
                                                 PRIOR_PANELS, "prior training"):
            pictures.append(("prior_curves.png", "Prior training curves (metrics.jsonl)"))
        histograms = _usage_histograms(tokenizer_dir)
        if histograms is not None:
            plot_usage(folder / "codebook_usage.png", histograms, "codebook usage, test split")
            pictures.append(("codebook_usage.png", "How often each code appears in the test split's tokens"))
        shown = min(16, len(reconstructions))
        plot_mosaic(folder / "reconstructions.png",
                    [test_set.images[:shown].float() / 255, reconstructions[:shown]], ["test", "reconstruction"],
                    "test images and their reconstructions")
        pictures.append(("reconstructions.png", "Test images (top) and their reconstructions (bottom)"))
        if samples is not None:
            if asked is not None:
                rows = [(samples[asked == c][:10], name) for c, name in enumerate(test_set.class_names)
                        if (asked == c).any()]
            else:
                per_row = min(10, max(1, math.ceil(math.sqrt(len(samples)))))
                rows = [(samples[start:start + per_row], "") for start in range(0, min(len(samples), 80), per_row)]
            plot_mosaic(folder / "samples.png", [row for row, _ in rows], [label for _, label in rows],
                        "samples from the prior" + (", one row per class asked for" if asked is not None else ""))
            pictures.append(("samples.png", "Samples, decoded by the tokenizer"))
        report["pictures"] = [name for name, _ in pictures]
        write_json(folder / "report.json", report)
        write_html(folder / "report.html", report, pictures)

    write_outputs(out, overwrite, write)


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    if args.threads < 0:
        raise ValueError(f"--threads must be 0 (torch's choice) or positive, not {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    # Only width and feature_dim count: the image shape and class count are replaced by the data's.
    classifier_config = cli.config_from_args(ClassifierConfig, args)
    classifier_train = cli.config_from_args(ClassifierTrainConfig, args)
    device = make_accelerator(TrainConfig()).device
    out = Path(args.out) if args.out else Path(args.output_root) / "evaluations" / time.strftime("%Y%m%d-%H%M%S")
    report = evaluate(args.prior, args.tokenizer, output_root=args.output_root, out=out, overwrite=args.overwrite,
                      n_samples=args.n_samples, batch_size=args.batch_size, seed=args.seed, label=args.label,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      guidance_scale=args.guidance_scale, classifier_config=classifier_config,
                      classifier_train=classifier_train, device=device)
    f = report["figures"]
    samples = (f"samples {f['fd_samples_vs_test']:.3g} ({f['fd_samples_over_reconstructions']:.2f}x the "
               "reconstructions)" if f["fd_samples_vs_test"] is not None else "no samples")
    bits = f["prior_test_bits_per_token"]
    print(f"Frechet distance to test: train {f['fd_train_vs_test']:.3g} (floor), reconstructions "
          f"{f['fd_reconstructions_vs_test']:.3g}, {samples}; PSNR {f['reconstruction_psnr']:.2f} dB"
          + (f"; {bits:.3f} bits/token" if bits is not None else "") + f" -> {out / 'report.html'}")


if __name__ == "__main__":
    cli.run(main)
