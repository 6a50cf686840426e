"""The prepared GPU run: the whole pipeline measured in one go, for a GPU machine lent for a few minutes.

    python -m bench.gpu --out DIR --fashion-mnist-dir .data/fashion-mnist            # on the GPU machine
    python -m bench.gpu --out DIR --dry-run                                          # here: tiny, on the CPU

Measures, each stage in a process of its own launched as the README shows (`accelerate launch -m ...`), wall
seconds included start-up:
1. the default pipeline with --mixed-precision bf16: fit_tokenizer, fit_prior, sample --num-samples 10000 (one
   batch of 10,000 grids, cached), evaluate (10,000 samples); training images/s and grids/s, peak GPU memory of
   each stage (torch.cuda.max_memory_allocated, through bench.peak_memory), test MSE, codes used, reconstruction
   and sample Frechet distances;
2. the same in float32 (--mixed-precision no);
3. sampling throughput, naive and cached, at batch 1, 64, 1024 and 10,000 on 7x7 and 16x16 (bench.sampling);
4. a larger prior (wider, deeper, trained longer) on the bf16 tokenizer, with its sample FD.
DIR/figures.json is rewritten after every stage (a run cut short keeps what it measured), and DIR gets the sample
mosaics and the reports' sample pictures. --dry-run shrinks every model, epoch count and sample count so that the
whole script runs on a CPU in a minute or two: it checks the plumbing, not the figures.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAUNCH = ["-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision",
          "no", "--dynamo_backend", "no"]  # (our --mixed-precision flag decides; accelerate's own stays off)
LARGER_PRIOR = ["--hidden-channels", "192", "--num-layers", "15", "--epochs", "20", "--batch-size", "256"]
# The dry run: models and data passes small enough for a CPU.
TINY_TOKENIZER = ["--hidden-channels", "16", "--residual-channels", "8", "--latent-dim", "8", "--codebook-size", "32",
                  "--num-residual-blocks", "1", "--batch-size", "32", "--warmup-steps", "2", "--epochs", "1"]
TINY_PRIOR = ["--embed-dim", "8", "--hidden-channels", "8", "--num-layers", "3", "--batch-size", "32",
              "--warmup-steps", "2", "--epochs", "1"]
TINY_CLASSIFIER = ["--width", "8", "--feature-dim", "16", "--classifier-epochs", "1", "--classifier-batch-size", "32"]


class Stages:
    """Runs each stage in its own process and keeps the figures in OUT/figures.json, rewritten after each one."""

    def __init__(self, out, env):
        self.out, self.env, self.figures = Path(out), env, {}
        self.out.mkdir(parents=True, exist_ok=True)

    def save(self):
        (self.out / "figures.json").write_text(json.dumps(self.figures, indent=2))

    def run(self, name, module, *args, launched=True):
        """Run `module args` (under accelerate launch, with its peak memory recorded); returns wall seconds."""
        peak_file = self.out / f".peak-{name}.json"
        command = [sys.executable, *LAUNCH, "-m", "bench.peak_memory", peak_file, module, *args] if launched \
            else [sys.executable, "-m", module, *args]
        started = time.perf_counter()
        result = subprocess.run([str(c) for c in command], cwd=REPO, env=self.env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        (self.out / f"{name}.log").write_text(result.stdout + result.stderr[-20000:])
        if result.returncode != 0:
            self.figures.setdefault("failed", {})[name] = result.stderr[-2000:]
            self.save()
            raise SystemExit(f"{name} failed: see {self.out / f'{name}.log'}")
        entry = {"wall_seconds": seconds}
        if peak_file.exists():
            entry.update(json.loads(peak_file.read_text()))
            peak_file.unlink()
        self.figures.setdefault("stages", {})[name] = entry
        self.save()
        return seconds


def pipeline(stages, root, precision, args, dry_run):
    """The default pipeline at one precision; its figures under figures["pipeline_<precision>"]."""
    tokenizer_flags = TINY_TOKENIZER if dry_run else []
    prior_flags = TINY_PRIOR if dry_run else []
    n = 50 if dry_run else 10000
    evaluate_flags = TINY_CLASSIFIER if dry_run else []
    data = ["--fashion-mnist-dir", args.fashion_mnist_dir]
    tokenizer, prior = root / "tokenizer" / "t", root / "prior" / "p"
    stages.run(f"fit_tokenizer_{precision}", "pipelines.fit_tokenizer", *tokenizer_flags, *data, "--mixed-precision",
               precision, "--output-root", root, "--run-name", "t")
    stages.run(f"fit_prior_{precision}", "pipelines.fit_prior", *prior_flags, "--tokenizer", tokenizer,
               "--mixed-precision", precision, "--output-root", root, "--run-name", "p")
    stages.run(f"sample_{precision}", "pipelines.sample", "--prior", prior, "--num-samples", n, "--batch-size", n,
               "--mixed-precision", precision, "--out", root / "samples")
    stages.run(f"evaluate_{precision}", "pipelines.evaluate", "--prior", prior, "--n-samples", n, "--batch-size",
               min(n, 2000), *evaluate_flags, "--output-root", root, "--out", root / "report")
    shutil.copy(root / "samples" / "grid.png", stages.out / f"samples_{precision}.png")
    shutil.copy(root / "report" / "samples.png", stages.out / f"report_samples_{precision}.png")
    tokenizer_results = json.loads((tokenizer / "results.json").read_text())
    prior_results = json.loads((prior / "results.json").read_text())
    sampled = json.loads((root / "samples" / "sample.json").read_text())
    report = json.loads((root / "report" / "report.json").read_text())["figures"]
    seconds = stages.figures["stages"]
    stages.figures[f"pipeline_{precision}"] = {
        "fits_and_sample_wall_seconds": sum(seconds[f"{stage}_{precision}"]["wall_seconds"]
                                            for stage in ("fit_tokenizer", "fit_prior", "sample")),
        "tokenizer_train_images_per_s": tokenizer_results["train_images_per_s"],
        "tokenizer_train_seconds": tokenizer_results["train_seconds_this_session"],
        "prior_train_grids_per_s": prior_results["train_grids_per_s"],
        "prior_train_seconds": prior_results["train_seconds_this_session"],
        "sample_seconds": sampled["seconds"]["sample"], "sample_grids_per_s": sampled["grids_per_s"],
        "test_mse": tokenizer_results["test_mse"], "test_codes_used": tokenizer_results["test_codes_used"],
        "test_bits_per_token": prior_results["test_bits_per_token"],
        "fd_reconstructions_vs_test": report["fd_reconstructions_vs_test"],
        "fd_samples_vs_test": report["fd_samples_vs_test"],
        "classifier_accuracy_on_samples": report["classifier_accuracy_on_samples"]}
    stages.save()
    return tokenizer, prior


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where figures.json, the logs and the mosaics go")
    parser.add_argument("--work", default=None, help="where the runs go (default: OUT/runs)")
    parser.add_argument("--fashion-mnist-dir", default=os.environ.get("FASHION_MNIST_DIR",
                                                                      "/usr/share/datasets/fashion-mnist"),
                        help="the Fashion-MNIST .gz files (on the GPU machine: a carried copy)")
    parser.add_argument("--dry-run", action="store_true", help="tiny settings, to check the script on a CPU")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: bf16, no, sampling, larger")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    stages = Stages(out, env)
    import torch  # (after the argument check: seconds to import)

    stages.figures["machine"] = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    started = time.perf_counter()
    bf16_prior = None
    for precision in ("bf16", "no"):
        if precision not in skip:
            _, prior = pipeline(stages, work / precision, precision, args, args.dry_run)
            bf16_prior = bf16_prior or prior
    if "sampling" not in skip:
        speeds = out / "sampling.json"
        batches = "1,64" if args.dry_run else "1,64,1024,10000"
        stages.run("sampling", "bench.sampling", "--device", "cuda" if torch.cuda.is_available() else "cpu",
                   "--batches", batches, "--budget", "1" if args.dry_run else "20", "--json", speeds,
                   *(["--prior", bf16_prior] if bf16_prior else []), launched=False)
        stages.figures["sampling"] = json.loads(speeds.read_text())
        stages.save()
    if "larger" not in skip and bf16_prior is not None:
        root = work / "bf16"
        flags = TINY_PRIOR if args.dry_run else LARGER_PRIOR
        stages.run("fit_prior_larger", "pipelines.fit_prior", *flags, "--tokenizer", root / "tokenizer" / "t",
                   "--mixed-precision", "bf16", "--output-root", root, "--run-name", "larger")
        n = 50 if args.dry_run else 10000
        stages.run("evaluate_larger", "pipelines.evaluate", "--prior", root / "prior" / "larger", "--n-samples", n,
                   "--batch-size", min(n, 2000), *(TINY_CLASSIFIER if args.dry_run else []), "--output-root", root,
                   "--out", root / "report-larger")
        report = json.loads((root / "report-larger" / "report.json").read_text())["figures"]
        results = json.loads((root / "prior" / "larger" / "results.json").read_text())
        shutil.copy(root / "report-larger" / "samples.png", out / "report_samples_larger.png")
        stages.figures["larger_prior"] = {"flags": flags, "parameters": results["parameters"],
                                          "train_seconds": results["train_seconds_this_session"],
                                          "test_bits_per_token": results["test_bits_per_token"],
                                          "fd_samples_vs_test": report["fd_samples_vs_test"],
                                          "fd_reconstructions_vs_test": report["fd_reconstructions_vs_test"]}
    stages.figures["total_wall_seconds"] = time.perf_counter() - started
    stages.save()
    print(json.dumps(stages.figures, indent=2))


if __name__ == "__main__":
    main()
