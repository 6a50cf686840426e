"""Encode speed and peak memory of `python -m pipelines.encode` on folders of growing size, 28x28 and 64x64.

    python -m bench.encode [--sizes 10000,30000] [--root checkpoints/bench-memory]
        [--tokenizer-28 checkpoints/bench-adversarial/tokenizer/plain-28]
        [--tokenizer-64 checkpoints/bench-adversarial/tokenizer/plain-64]

The folders are bench.memory's (Fashion-MNIST test images cycled through, in 10 class sub-folders; the 64x64 ones
resized with PIL), made once under --root. Each encode runs in a fresh process under /usr/bin/time -v with the
environment of bench.memory (OMP_NUM_THREADS=1 and a fixed glibc mmap threshold, so that peaks repeat), writing
flat sequences too. Prints a markdown table: images/s as the command reports it (the encoding alone, reading and
resizing the files included) and for the whole process, and its peak resident memory.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.memory import REPO, make_folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,30000", help="comma-separated folder sizes N")
    parser.add_argument("--root", default="checkpoints/bench-memory", help="where the folders are kept")
    parser.add_argument("--tokenizer-28", default="checkpoints/bench-adversarial/tokenizer/plain-28",
                        help="a tokenizer run for 28x28 images (the default configuration)")
    parser.add_argument("--tokenizer-64", default="checkpoints/bench-adversarial/tokenizer/plain-64",
                        help="a tokenizer run for 64x64 images (--image-size 64 --downsample 8)")
    parser.add_argument("--threads", default="1", help="OMP_NUM_THREADS of the encode process (default: 1)")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    env = {**os.environ, "OMP_NUM_THREADS": args.threads, "MALLOC_MMAP_THRESHOLD_": "131072"}
    rows = []
    for size, tokenizer in ((28, args.tokenizer_28), (64, args.tokenizer_64)):
        for n in sorted(int(n) for n in args.sizes.split(",")):
            folder = root / (f"images-{n}" if size == 28 else f"images-{n}-{size}px")
            make_folder(folder, n, size)
            out = root / "encoded" / f"{size}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            result = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "pipelines.encode", "--tokenizer",
                                     tokenizer, "--images", folder, "--out", out, "--sequences"], cwd=REPO, env=env,
                                    capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if result.returncode != 0:
                raise SystemExit(f"encode failed:\n{result.stderr[-3000:]}")
            rate = float(re.search(r"([\d.]+) images/s", result.stdout).group(1))
            peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1)) / 1024
            rows.append((size, n, rate, n / seconds, seconds, peak))
            print(rows[-1], flush=True)
    print("| images | N | encode images/s (command) | images/s (whole process) | process s | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for size, n, rate, whole, seconds, peak in rows:
        print(f"| {size}x{size} | {n:,} | {rate:.0f} | {whole:.0f} | {seconds:.1f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
