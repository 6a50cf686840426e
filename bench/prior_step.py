"""The cost of one training step of the prior: training grids per second for architectures and step options.

    python -m bench.prior_step [--steps 30] [--batch-size 128] [--only gated,gated-bf16]

Random 7x7 grids of 512 codes with labels (the Fashion-MNIST default), forward + backward + AdamW, as
training.train runs them; a few warm-up steps are not timed. The figures say which step is cheapest per
grid; the quality each configuration reaches per minute is bench.sample_quality's job.
"""

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from prior.model import Prior, PriorConfig

GATED = {"arch": "gated", "hidden_channels": 64, "num_layers": 5}  # the default before the sample-quality work
PIXELCNN = {"arch": "pixelcnn", "hidden_channels": 112, "num_layers": 8}  # the default since
# (name, PriorConfig overrides, autocast dtype or None, compile)
CONFIGURATIONS = [
    ("gated", GATED, None, False),
    ("gated-bf16", GATED, torch.bfloat16, False),
    ("gated-compiled", GATED, None, True),
    ("pixelcnn-112x8", PIXELCNN, None, False),
    ("pixelcnn-112x8-bf16", PIXELCNN, torch.bfloat16, False),
    ("pixelsnail-112x8", {**PIXELCNN, "arch": "pixelsnail"}, None, False),
    ("pixelsnail-112x8-bf16", {**PIXELCNN, "arch": "pixelsnail"}, torch.bfloat16, False),
]


def grids_per_second(overrides, dtype, compiled, steps, batch_size):
    torch.manual_seed(0)
    model = Prior(PriorConfig(num_classes=10, **overrides))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compiled else model
    tokens = torch.randint(512, (batch_size, 7, 7))
    labels = torch.randint(10, (batch_size,))
    autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def step():
        with autocast:
            loss = F.cross_entropy(forward(tokens, labels).float(), tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):  # warm-up (and compilation)
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - started), model.num_parameters()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration (default: 30)")
    parser.add_argument("--batch-size", type=int, default=128, help="grids per step (default: 128)")
    parser.add_argument("--only", default=None, help="comma-separated configuration names (default: all)")
    args = parser.parse_args()
    chosen = set(args.only.split(",")) if args.only else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    print("| configuration | parameters | training grids/s |")
    print("|---|---|---|")
    for name, overrides, dtype, compiled in CONFIGURATIONS:
        if chosen is None or name in chosen:
            rate, parameters = grids_per_second(overrides, dtype, compiled, args.steps, args.batch_size)
            print(f"| {name} | {parameters:,} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
