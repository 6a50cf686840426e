"""Sampling speed: grids/s of the naive and the cached sampler at batch 1, 64 and 1024, on 7x7 and 16x16 grids.

    python -m bench.sampling [--prior checkpoints/prior/RUN] [--threads 2]

7x7 uses the trained prior if given (weights do not change the work); 16x16 uses the same architecture with
fresh weights. The naive sampler runs the whole network once per position, so where a full naive run would take
minutes its time is taken as positions x the measured time of one full forward pass at that batch size (marked
"extrapolated"); the script also checks that estimate against a real naive run at 7x7, batch 64.
"""

import argparse
import dataclasses
import time

import torch

import prior
from prior.model import Prior, PriorConfig


def seconds(fn, repeats=1):
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def naive_estimate(model, batch):
    h, w = model.config.grid_height, model.config.grid_width
    tokens = torch.zeros(batch, h, w, dtype=torch.long)
    with torch.no_grad():
        return h * w * seconds(lambda: model(tokens), repeats=3)


def run(model, label, budget_s=60):
    rows = []
    h, w = model.config.grid_height, model.config.grid_width
    for batch in (1, 64, 1024):
        cached = seconds(lambda: prior.generate(model, batch, generator=torch.Generator().manual_seed(0)))
        estimate = naive_estimate(model, batch)
        if estimate <= budget_s:
            naive = seconds(lambda: prior.generate(model, batch, sampler="naive",
                                                   generator=torch.Generator().manual_seed(0)))
            how = "measured"
        else:
            naive, how = estimate, "extrapolated"
        rows.append((label, f"{h}x{w}", batch, batch / naive, how, batch / cached, naive / cached, estimate))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", default=None, help="a trained prior run for the 7x7 rows (default: fresh weights)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2, the CI machine's cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.prior:
        model, _ = prior.load(args.prior)
    else:
        model = Prior(PriorConfig()).eval()
    big = Prior(dataclasses.replace(model.config, grid_height=16, grid_width=16)).eval()
    print(f"arch {model.config.arch}, {model.num_parameters():,} parameters, torch threads {args.threads}")
    print("| arch | grid | batch | naive grids/s | naive | cached grids/s | cached speed-up |")
    print("|---|---|---|---|---|---|---|")
    for m in (model, big):
        for arch, grid, batch, naive, how, cached, speedup, estimate in run(m, m.config.arch):
            print(f"| {arch} | {grid} | {batch} | {naive:.2f} | {how} | {cached:.1f} | {speedup:.1f}x |")
            if how == "measured":
                print(f"|  |  |  | (forward-pass estimate {batch / estimate:.2f}) |  |  |  |")


if __name__ == "__main__":
    main()
