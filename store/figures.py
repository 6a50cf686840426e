"""The figures an evaluation's report.json holds: for each, its key, its name, how to read it and how to print it.
The one table the evaluation's page (evaluation.report) and a model card (generation.card) print them from."""

from typing import NamedTuple


class Figure(NamedTuple):
    key: str  # in report.json's "figures"
    name: str
    reading: str  # how to read it ("" where the row above says it)
    spec: str  # its format() spec
    on_card: bool  # a model card lists it (when its evaluations hold it)


# The order of the page's table and of a card's.
FIGURES = [
    Figure("classifier_test_accuracy", "classifier accuracy, test split",
           "the reference classifier's own quality", ".1%", False),
    Figure("fd_train_vs_test", "Frechet distance, train vs test",
           "the floor: two real samples of the data set", ".3f", True),
    Figure("fd_reconstructions_vs_test", "Frechet distance, reconstructions vs test",
           "lower is better; floor above", ".3f", True),
    Figure("reconstruction_mse", "reconstruction MSE (test)", "pixels in [0, 1]", ".5f", True),
    Figure("reconstruction_psnr", "reconstruction PSNR (test, dB)", "higher is better", ".2f", True),
    Figure("classifier_accuracy_on_reconstructions", "classifier accuracy on reconstructions",
           "against the test labels; close to the test accuracy when class detail survives", ".1%", True),
    Figure("fd_samples_vs_test", "Frechet distance, samples vs test",
           "lower is better; the reconstructions' distance is about the best samples can reach", ".3f", True),
    Figure("fd_samples_over_reconstructions", "samples' distance / reconstructions' distance",
           "how far the prior is from what its tokenizer can draw; 1 is a perfect prior", ".2f", True),
    Figure("classifier_accuracy_on_samples", "classifier accuracy on samples",
           "against the label asked for (class-conditional priors)", ".1%", True),
    Figure("precision", "precision of samples (k = 3)",
           "fidelity: the share of samples inside the test images' manifold (Kynkaanniemi et al. 2019)", ".3f", True),
    Figure("recall", "recall of samples (k = 3)",
           "diversity: the share of test images inside the samples' manifold", ".3f", True),
    Figure("density", "density of samples (k = 3)",
           "fidelity: test images' balls holding a sample, on average, over k; 1 for real images (Naeem et al. "
           "2020)", ".3f", True),
    Figure("coverage", "coverage of samples (k = 3)",
           "diversity: the share of test images whose ball holds a sample", ".3f", True),
    Figure("reconstructions_precision", "precision, reconstructions vs test",
           "what the tokenizer allows: the test images decoded from their tokens", ".3f", False),
    Figure("reconstructions_recall", "recall, reconstructions vs test", "", ".3f", False),
    Figure("reconstructions_density", "density, reconstructions vs test", "", ".3f", False),
    Figure("reconstructions_coverage", "coverage, reconstructions vs test", "", ".3f", False),
    Figure("train_precision", "precision, train vs test",
           "the floor of the four: as many training images as samples", ".3f", False),
    Figure("train_recall", "recall, train vs test", "", ".3f", False),
    Figure("train_density", "density, train vs test", "", ".3f", False),
    Figure("train_coverage", "coverage, train vs test", "", ".3f", False),
    Figure("copies_samples", "samples nearer a training image than any test image is",
           "copies of the training set? compare with the next line", ".1%", True),
    Figure("copies_test", "test images nearer a training image than any other test image is",
           "the yardstick: what a generator of new images from the data's distribution scores", ".1%", True),
    Figure("inception_fid_train_vs_test", "FID (Inception-v3), train vs test",
           "the floor, as many training images as samples; the standard protocol (torch-fidelity)", ".3f", False),
    Figure("inception_fid_reconstructions_vs_test", "FID (Inception-v3), reconstructions vs test",
           "lower is better", ".3f", True),
    Figure("inception_fid_samples_vs_test", "FID (Inception-v3), samples vs test", "lower is better", ".3f", True),
    Figure("inception_kid_samples_vs_test", "KID (Inception-v3), samples vs test",
           "lower is better; unbiased", ".4f", False),
    Figure("inception_precision", "precision of samples, Inception-v3 features", "", ".3f", False),
    Figure("inception_recall", "recall of samples, Inception-v3 features", "", ".3f", False),
    Figure("inception_density", "density of samples, Inception-v3 features", "", ".3f", False),
    Figure("inception_coverage", "coverage of samples, Inception-v3 features", "", ".3f", False),
    Figure("prior_test_bits_per_token", "prior bits per token (test)",
           "from the prior run's results.json", ".4f", True),
    Figure("prior_test_bits_per_image", "prior bits per image (test)",
           "from the prior run's results.json", ".2f", False),
    Figure("codebook_perplexity_test", "codebook perplexity (test)", "of the test split's tokens", ".1f", False),
    Figure("codes_used_test", "codes used (test)", "fraction of the codebook the test split uses", ".1%", True),
]


def format_figure(figure, value):
    """A figure's value as its table prints it: by its spec, "n/a" where it was not measured."""
    if value is None or value != value:  # None, or NaN
        return "n/a"
    return format(value, figure.spec) if isinstance(value, (int, float)) else str(value)
