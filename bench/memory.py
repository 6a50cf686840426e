"""Peak memory against data size: dump the index maps of image folders of growing N, then fit a prior on them.

    python -m bench.memory [--sizes 10000,30000,100000] [--root checkpoints/bench-memory]

Makes folders of N 28x28 grey PNGs (Fashion-MNIST test images, repeated and cycled through; made once and kept
under --root), trains one small tokenizer on the smallest, then for each N runs, each in a fresh process under
/usr/bin/time -v, `python -m pipelines.fit_tokenizer --dump-only` on a copy of that run pointed at the folder, and
`python -m pipelines.fit_prior` for one epoch on the maps it wrote. Prints a markdown table of peak resident
memory and seconds.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from store.images import DataConfig, load_images
from store.runs import MODEL_WEIGHTS

REPO = Path(__file__).resolve().parent.parent
SMALL_TOKENIZER = ["--hidden-channels", "32", "--residual-channels", "16", "--latent-dim", "32",
                   "--codebook-size", "128", "--epochs", "1", "--batch-size", "128"]
SMALL_PRIOR = ["--embed-dim", "16", "--hidden-channels", "32", "--num-layers", "4", "--epochs", "1",
               "--batch-size", "256"]


def make_folder(folder, n, size=28):
    """n PNGs (size x size, Fashion-MNIST's 28x28 resized) in 10 class sub-folders; reused when it already holds n
    images."""
    if folder.exists() and sum(1 for _ in folder.rglob("*.png")) == n:
        return
    shutil.rmtree(folder, ignore_errors=True)
    source = load_images(DataConfig(), "test")
    images, labels = source.images[:, 0].numpy(), source.labels.numpy()
    for i in range(n):
        k = i % len(images)
        target = folder / f"class{labels[k]}"
        target.mkdir(parents=True, exist_ok=True)
        # A one-pixel shift per cycle keeps repeated images from being byte-identical files.
        image = Image.fromarray(np.roll(images[k], i // len(images), axis=1))
        image = image if size == 28 else image.resize((size, size), Image.BILINEAR)
        image.save(target / f"{i:06d}.png")


def measured(args, env):
    """Run `python -m args` under /usr/bin/time -v; returns (peak RSS in MiB, wall seconds)."""
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", *map(str, args)], cwd=REPO, env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return peak_kib / 1024, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,30000,100000", help="comma-separated folder sizes N")
    parser.add_argument("--root", default="checkpoints/bench-memory", help="where folders and runs are kept")
    parser.add_argument("--skip-prior", action="store_true", help="measure the dumps only")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.sizes.split(","))
    root = Path(args.root).resolve()
    # glibc raises its mmap threshold as large blocks are freed, after which freed memory stays in the heap: the
    # same dump then peaked at either ~715 or ~1145 MiB by chance. A fixed threshold makes the peak repeatable.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    for n in sizes:
        make_folder(root / f"images-{n}", n)

    base = root / "runs" / "tokenizer" / "base"
    if not (base / MODEL_WEIGHTS).exists():
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pipelines.fit_tokenizer", *SMALL_TOKENIZER, "--dataset",
                        f"folder:{root / f'images-{sizes[0]}'}", "--output-root", root / "runs", "--run-name",
                        "base"], cwd=REPO, env=env, check=True)
    rows = []
    for n in sizes:
        run = root / "runs" / "tokenizer" / f"n{n}"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        for name in (MODEL_WEIGHTS, "config.json"):
            shutil.copy(base / name, run / name)
        config = json.loads((run / "config.json").read_text())
        config["data"]["dataset"] = f"folder:{root / f'images-{n}'}"
        (run / "config.json").write_text(json.dumps(config, indent=2))
        dump_mib, dump_s = measured(["pipelines.fit_tokenizer", "--dump-only", run], env)
        row = {"n": n, "dump_peak_mib": dump_mib, "dump_seconds": dump_s}
        if not args.skip_prior:
            prior_run = root / "runs" / "prior" / f"n{n}"
            shutil.rmtree(prior_run, ignore_errors=True)
            row["prior_peak_mib"], row["prior_seconds"] = measured(
                ["pipelines.fit_prior", *SMALL_PRIOR, "--tokenizer", run, "--output-root", root / "runs",
                 "--run-name", f"n{n}"], env)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| N images | dump peak RSS (MiB) | dump s | prior peak RSS (MiB) | prior s |")
    print("|---|---|---|---|---|")
    for row in rows:
        prior = (f"{row['prior_peak_mib']:.0f} | {row['prior_seconds']:.0f}" if "prior_peak_mib" in row else "- | -")
        print(f"| {row['n']:,} | {row['dump_peak_mib']:.0f} | {row['dump_seconds']:.0f} | {prior} |")


if __name__ == "__main__":
    main()
