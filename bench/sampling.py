"""Sampling speed: grids/s of the naive and the cached sampler at batch 1, 64 and 1024, on 7x7 and 16x16 grids.

    python -m bench.sampling [--prior checkpoints/prior/RUN] [--threads 2]
    python -m bench.sampling --device cuda --batches 1,64,1024,10000 --json speeds.json   # on a GPU

7x7 uses the trained prior if given (weights do not change the work); 16x16 uses the same architecture with
fresh weights. The naive sampler runs the whole network once per position, so where a full naive run would take
minutes its time is taken as positions x the measured time of one full forward pass at that batch size (marked
"extrapolated"); the script also checks that estimate against a real naive run at 7x7, batch 64.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import prior
from prior.model import Prior, PriorConfig


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def seconds(fn, repeats=1, device="cpu"):
    fn()  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def naive_estimate(model, batch, device="cpu"):
    h, w = model.config.grid_height, model.config.grid_width
    tokens = torch.zeros(batch, h, w, dtype=torch.long, device=device)
    with torch.no_grad():
        return h * w * seconds(lambda: model(tokens), repeats=3, device=device)


def run(model, label, budget_s=60, batches=(1, 64, 1024), device="cpu"):
    rows = []
    h, w = model.config.grid_height, model.config.grid_width
    model = model.to(device)

    def draw(batch, sampler):
        return prior.generate(model, batch, sampler=sampler, generator=torch.Generator(device).manual_seed(0))

    for batch in batches:
        cached = seconds(lambda: draw(batch, "cached"), device=device)
        estimate = naive_estimate(model, batch, device)
        if estimate <= budget_s:
            naive = seconds(lambda: draw(batch, "naive"), device=device)
            how = "measured"
        else:
            naive, how = estimate, "extrapolated"
        rows.append((label, f"{h}x{w}", batch, batch / naive, how, batch / cached, naive / cached, estimate))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", default=None, help="a trained prior run for the 7x7 rows (default: fresh weights)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2, the CI machine's cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batches", default="1,64,1024", help="comma-separated batch sizes (default: 1,64,1024)")
    parser.add_argument("--budget", type=float, default=60,
                        help="seconds a naive run may take before it is extrapolated instead (default: 60)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.prior:
        model = Prior.load(args.prior)
    else:
        model = Prior(PriorConfig()).eval()
    big = Prior(dataclasses.replace(model.config, grid_height=16, grid_width=16)).eval()
    print(f"arch {model.config.arch}, {model.num_parameters():,} parameters, torch threads {args.threads}")
    print("| arch | grid | batch | naive grids/s | naive | cached grids/s | cached speed-up |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for m in (model, big):
        rows += run(m, m.config.arch, args.budget, [int(b) for b in args.batches.split(",")], args.device)
    if args.json:
        keys = ("arch", "grid", "batch", "naive_grids_per_s", "naive", "cached_grids_per_s", "speedup",
                "naive_forward_estimate_s")
        Path(args.json).write_text(json.dumps([dict(zip(keys, row)) for row in rows], indent=2))
    for arch, grid, batch, naive, how, cached, speedup, estimate in rows:
        print(f"| {arch} | {grid} | {batch} | {naive:.2f} | {how} | {cached:.1f} | {speedup:.1f}x |")
        if how == "measured":
            print(f"|  |  |  | (forward-pass estimate {batch / estimate:.2f}) |  |  |  |")


if __name__ == "__main__":
    main()
