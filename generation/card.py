"""A run's model card: README.md in the Hugging Face model-card form (a YAML header for the Hub's search, then the
text), written from the run's own files and the reports of `python -m pipelines.evaluate` on it.

The card says what the run is (its configs), how it was made (its seconds; with provenance, the commands, commit
and machine), and the figures measured on it, one column per evaluation (per sampling seed), so that a reader sees
the spread between seeds beside each figure.
"""

import json
from pathlib import Path

from prior import PriorRun
from prior.sampling import describe_settings
from store.figures import FIGURES, format_figure
from store.runs import CONFIG_FILE, RESULTS_FILE, TOKENIZER_COPY, WEIGHTS_HASHES, file_sha256, read_json, weights_file
from tokenizer.run import TokenizerRun

LIBRARY = "vqprior"
# The Hub's id of a data set this project reads by name (a folder of the user's own has none).
HUB_DATASETS = {"fashion-mnist": "zalando-datasets/fashion_mnist", "mnist": "ylecun/mnist",
                "cifar10": "uoft-cs/cifar10"}
def _runs(run_dir):
    """(the PriorRun or None, its folder or None, the TokenizerRun, its folder) of a prior run folder (carrying its
    tokenizer) or a tokenizer run folder."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / CONFIG_FILE)
    if "tokenizer" in config and "model" in config and "label_dropout" in config:
        return PriorRun.load(run_dir), run_dir, TokenizerRun.load(run_dir / TOKENIZER_COPY), run_dir / TOKENIZER_COPY
    return None, None, TokenizerRun.load(run_dir), run_dir  # a one-line error for a folder that is neither


def _results(folder):
    """A run's results.json without the weights' hashes (the files list them), or {} when it has none."""
    results = read_json(folder / RESULTS_FILE) if folder is not None and (folder / RESULTS_FILE).is_file() \
        else {}
    return {k: v for k, v in results.items() if k != WEIGHTS_HASHES}


def _figure_rows(reports):
    """Markdown table rows: one per figure the reports hold, one column per report."""
    rows = []
    for figure in (figure for figure in FIGURES if figure.on_card):
        values = [report["figures"].get(figure.key) for report in reports]
        if any(v is not None for v in values):
            rows.append(f"| {figure.name} | " + " | ".join("-" if v is None else format_figure(figure, v)
                                                           for v in values) + " |")
    return rows


def _yaml_header(data_set, license_name, reports, kind):
    tags = ["vq-vae", "image-tokenizer"] + (["pixelcnn", "autoregressive", "image-generation"] if kind == "prior"
                                            else [])
    lines = ["---", f"library_name: {LIBRARY}", f"license: {license_name}"]
    if data_set in HUB_DATASETS:
        lines += ["datasets:", f"- {HUB_DATASETS[data_set]}"]
    pipeline = "unconditional-image-generation" if kind == "prior" else "image-feature-extraction"
    lines += [f"pipeline_tag: {pipeline}", "tags:", *(f"- {tag}" for tag in tags)]
    if reports:
        lines += ["metrics:", "- frechet-distance", "- mse"]
    return lines + ["---"]


def model_card(run_dir, reports=(), provenance=None, license_name="mit", name=None):
    """The text of the README.md of a run folder (a prior run, carrying its tokenizer, or a tokenizer run).

    reports: report.json dicts of `python -m pipelines.evaluate` on this run (one per sampling seed, say);
    provenance: a dict with any of "commands" (list of str), "commit", "machine", "seconds" ({step: s}), "notes";
    name: how users load it (a Hub id or a folder), for the usage lines."""
    prior_run, prior_dir, tokenizer_run, tokenizer_dir = _runs(run_dir)
    kind = "tokenizer" if prior_run is None else "prior"
    tokenizer_sha256 = file_sha256(tokenizer_dir / weights_file(tokenizer_dir))
    for report in reports:  # a report of another run would put its figures on this card
        if report.get("runs", {}).get("tokenizer_weights_sha256") != tokenizer_sha256:
            raise ValueError(f"an evaluation given is of other tokenizer weights than {tokenizer_dir}'s: evaluate "
                             f"{run_dir} itself")
    tokenizer_results, prior_results = _results(tokenizer_dir), _results(prior_dir)
    data_set = tokenizer_run.data.dataset
    lines = _yaml_header(data_set, license_name, reports, kind)
    title = f"{LIBRARY} {'generator' if kind == 'prior' else 'tokenizer'}: {data_set}"
    lines += ["", f"# {title}", ""]
    lines += _use_section(prior_run, tokenizer_run, tokenizer_results, prior_results, name or str(run_dir))
    if (Path(run_dir) / "samples.png").is_file():
        lines += ["![samples](samples.png)", ""]
    lines += _figures_section(reports, tokenizer_results, prior_results)
    lines += _making_section(provenance or {}, kind)
    return "\n".join(lines).rstrip() + "\n"


def _use_section(prior_run, tokenizer_run, tokenizer_results, prior_results, name):
    """What the run is, and the lines that load it (name: a Hub id or a folder)."""
    data_set, model = tokenizer_run.data.dataset, tokenizer_run.model
    tokenizer_text = (f"a VQ-VAE tokenizer ({model.quantizer}, {model.codebook_size} codes, {model.image_size}x"
                      f"{model.image_size} images to {model.grid_size}x{model.grid_size} grids, "
                      f"{tokenizer_results.get('parameters', '?'):,} parameters)"
                      if isinstance(tokenizer_results.get("parameters"), int) else "a VQ-VAE tokenizer")
    if prior_run is None:
        return [f"A tokenizer trained on {data_set}: {tokenizer_text}.", "",
                "## Use", "", "```bash",
                f"python -m pipelines.encode --tokenizer {name} --images my_images/ --out tokens/", "```", "",
                "```python", "from tokenizer import Tokenizer", "",
                f'tokenizer = Tokenizer.from_pretrained("{name}")',
                "tokens = tokenizer.encode(images)  # images (b, c, H, W) in [0, 1] -> (b, h, w) ints",
                "images = tokenizer.decode(tokens)", "```", ""]
    conditional = "class-conditional (classifier-free guidance)" if prior_run.model.num_classes else \
        "unconditional"
    parameters = prior_results.get("parameters")
    return [f"An image generator trained on {data_set}: {tokenizer_text}, and a {conditional} "
            f"{prior_run.model.arch} prior over its token grids"
            + (f" ({parameters:,} parameters)" if isinstance(parameters, int) else "")
            + ". Images are sampled token by token (cached sampling) and decoded.", "",
            "## Use", "", "```bash", f"python -m pipelines.sample --prior {name} --n 64",
            f"python -m pipelines.encode --tokenizer {name} --images my_images/ --out tokens/", "```", "",
            "```python", "from generation import ImageGenerator", "",
            f'generator = ImageGenerator.from_pretrained("{name}")',
            "images, tokens = generator.sample(16, label=3, seed=0)  # images (16, c, H, W) in [0, 1]",
            "```", ""]


def _figures_section(reports, tokenizer_results, prior_results):
    """The evaluations' figures, a column per report, and the results the runs recorded."""
    lines = ["## Figures", ""]
    if reports:
        seeds = [f"seed {report['settings'].get('seed')}" for report in reports]
        settings = reports[0]["settings"]
        lines += [f"Measured by `python -m pipelines.evaluate` ({settings.get('n_samples')} samples per seed, "
                  f"{describe_settings(settings)}; "
                  "Frechet distances in the features of a small reference classifier trained on the data set, "
                  "not Inception: comparable within this project only).", "",
                  "| figure | " + " | ".join(seeds) + " |", "|---|" + "---|" * len(reports), *_figure_rows(reports), ""]
    else:
        lines += ["No evaluation given to the card (`python -m pipelines.card RUN --evaluation REPORT_DIR`).", ""]
    return lines + ["Results the runs recorded:", "", "```json",
                    json.dumps({"tokenizer": tokenizer_results, **({"prior": prior_results} if prior_results else {})},
                               indent=1),
                    "```", ""]


def _making_section(provenance, kind):
    """How the run was made (provenance's commands, commit, machine, seconds, notes) and what its files are."""
    lines = ["## How it was made", ""]
    if provenance.get("commands"):
        lines += ["```bash", *provenance["commands"], "```", ""]
    for key, label in (("commit", "commit"), ("machine", "machine")):
        if provenance.get(key):
            lines.append(f"- {label}: {provenance[key]}")
    for step, seconds in (provenance.get("seconds") or {}).items():
        lines.append(f"- {step}: {seconds:.0f} s")
    if provenance.get("notes"):
        lines += ["", provenance["notes"]]
    lines += ["", "Every flag the runs resolved is in `config.json`"
              + (" (the prior's) and `tokenizer/config.json`." if kind == "prior" else "."), ""]
    return lines + ["## Files", "", "Weights in safetensors beside a JSON config; `results.json` records each "
                    "weights file's SHA-256, and the prior's config the SHA-256 of the tokenizer weights it was "
                    "trained with: a file that differs is refused when loaded.", ""]

