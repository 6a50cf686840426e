"""A peer prior for bench.peers: Hugging Face `transformers`' GPT-2 on a tokenizer run's index maps, for a fixed
number of training seconds.

    python -m bench.peer_gpt --tokenizer RUN --seconds 864 --out DIR [--layers 4 --width 128 ...]

The prior family of taming-transformers and LlamaGen: each grid is one sequence in raster order after a class token
(one per class, and a "no label" token the label is replaced by a --label-dropout fraction of the time, as
`pipelines.fit_prior` drops labels), sampled with classifier-free guidance as `pipelines.sample` guides (its
--guidance-scale, --guidance-schedule and --guidance-from, the same defaults).
The same data, batch, optimizer (AdamW, 200 warm-up steps, a cosine decay to 5% of the peak), gradient clipping,
weight average and precision choice as the default prior; only the schedule runs on the clock: the cosine decay is
a function of the training seconds spent out of --seconds, so that the run ends on time whatever its speed.

Writes DIR/curve.json (test bits per token at --evaluations points, against training seconds), DIR/results.json
and DIR/samples-seed<S>.npz (tokens (n, h, w), labels (n,)) for every --seeds; evaluation and sampling are not
counted in the training seconds.
"""

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from bench.clock import set_learning_rate
from prior.fit import read_maps_for
from prior.generate import pick_tokens
from pipelines import cli
from prior.sampling import class_mix, resolve_sampling, schedule_values
from training.config import computes_in_bf16
from training.state import WeightAverage


def gpt(codebook_size, num_classes, positions, layers, width, heads):
    """A GPT-2 over codebook tokens and num_classes + 1 class tokens (the last: "no label"), no dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=codebook_size + num_classes + 1, n_positions=positions, n_embd=width,
                        n_layer=layers, n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def sequences(tokens, class_tokens):
    """The model's input: the class token, then the grid's tokens but the last (b, h * w)."""
    flat = rearrange(tokens, "b h w -> b (h w)")
    return torch.cat([class_tokens.unsqueeze(1), flat[:, :-1]], dim=1), flat


def mean_nats(model, tokens, class_tokens, codebook_size):
    inputs, targets = sequences(tokens, class_tokens)
    logits = model(input_ids=inputs).logits[..., :codebook_size]
    return F.cross_entropy(rearrange(logits.float(), "b n k -> (b n) k"), targets.flatten())


@torch.no_grad()
def test_bits(model, tokens, labels, codebook_size, autocast, batch_size=1000):
    model.eval()
    total = 0.0
    for start in range(0, len(tokens), batch_size):
        with autocast():
            nats = mean_nats(model, tokens[start:start + batch_size], codebook_size + labels[start:start + batch_size],
                             codebook_size)
        total += nats.item() * len(tokens[start:start + batch_size])
    model.train()
    return total / len(tokens) / math.log(2)


@torch.no_grad()
def sample(model, labels, grid, codebook_size, num_classes, guidance, seed, autocast, batch_size=500):
    """Token grids (n, h, w) for class ids labels (n,), guided as the settings guidance (guidance_scale,
    guidance_schedule, guidance_from) say, position by position, by inverse CDF of one uniform per position from a
    generator seeded with seed (as prior.generate draws them)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    positions = grid[0] * grid[1]
    scales = schedule_values(guidance["guidance_scale"], guidance["guidance_schedule"], positions,
                             guidance["guidance_from"])
    grids = []
    for start in tqdm(range(0, len(labels), batch_size), desc=f"sample seed {seed}", leave=False):
        asked = labels[start:start + batch_size]
        b = len(asked)
        uniforms = torch.rand(b, positions, generator=generator, dtype=torch.float64)
        inputs = torch.cat([codebook_size + asked, torch.full_like(asked, codebook_size + num_classes)]).unsqueeze(1)
        cache, written = None, []
        for position in range(positions):
            with autocast():
                out = model(input_ids=inputs, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :codebook_size].double()
            conditional, unconditional = logits[:b], logits[b:]
            guided = unconditional + scales[position].item() * (conditional - unconditional)
            token = pick_tokens(guided, uniforms[:, position], temperature=1.0, top_k=None, top_p=None)
            written.append(token)
            inputs = torch.cat([token, token]).unsqueeze(1)
        grids.append(rearrange(torch.stack(written, 1), "b (h w) -> b h w", h=grid[0]))
    return torch.cat(grids)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="the tokenizer run whose maps/ the prior learns")
    parser.add_argument("--out", required=True, help="folder for curve.json, results.json and the samples")
    parser.add_argument("--seconds", type=float, required=True, help="training seconds (evaluations not counted)")
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks (default: 4)")
    parser.add_argument("--width", type=int, default=128, help="embedding width (default: 128)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default: 4)")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak AdamW learning rate (default: 2e-3)")
    parser.add_argument("--batch-size", type=int, default=128, help="grids per step (default: 128)")
    parser.add_argument("--label-dropout", type=float, default=0.1, help="'no label' fraction (default: 0.1)")
    parser.add_argument("--weight-ema-decay", type=float, default=0.999,
                        help="decay of the weight average evaluated and sampled from (0: raw weights; default 0.999)")
    parser.add_argument("--mixed-precision", choices=("auto", "no", "bf16"), default="auto",
                        help="bf16 autocast; auto: where the CPU computes bf16 natively, as fit_prior does")
    parser.add_argument("--evaluations", type=int, default=7, help="test-bit points on the curve (default: 7)")
    parser.add_argument("--samples", type=int, default=10000, help="grids sampled per seed (default: 10000)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1], help="sampling seeds (default: 0 1)")
    cli.add_guidance_flags(parser)
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_maps, test_maps = read_maps_for(args.tokenizer)
    meta = train_maps.meta
    codebook_size, grid = meta.codebook_size, (meta.grid_height, meta.grid_width)
    num_classes = len(meta.class_names)
    train_tokens = torch.from_numpy(np.asarray(train_maps.maps).astype(np.int64))
    train_labels = torch.from_numpy(np.asarray(train_maps.labels).astype(np.int64))
    test_tokens = torch.from_numpy(np.asarray(test_maps.maps).astype(np.int64))
    test_labels = torch.from_numpy(np.asarray(test_maps.labels).astype(np.int64))
    bf16 = args.mixed_precision == "bf16" or (args.mixed_precision == "auto" and computes_in_bf16())

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    torch.manual_seed(args.seed)
    model = gpt(codebook_size, num_classes, grid[0] * grid[1], args.layers, args.width, args.heads)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"GPT-2: {parameters:,} parameters, {args.layers} layers of width {args.width}, "
          f"{'bf16' if bf16 else 'float32'}, {args.seconds:.0f} training seconds")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    average = WeightAverage(model, args.weight_ema_decay) if args.weight_ema_decay else None
    generator = torch.Generator().manual_seed(args.seed)

    def evaluated():
        return test_bits(average.model_like(model) if average else model, test_tokens, test_labels, codebook_size,
                         autocast)

    curve, trained, step, next_point = [], 0.0, 0, args.seconds / args.evaluations
    bar = tqdm(total=round(args.seconds), desc="fit GPT-2", unit="s")
    model.train()
    while trained < args.seconds:
        order = torch.randperm(len(train_tokens), generator=generator)
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            started = time.perf_counter()
            batch = order[start:start + args.batch_size]
            labels = train_labels[batch]
            dropped = torch.rand(labels.shape, generator=generator) < args.label_dropout
            labels = torch.where(dropped, torch.full_like(labels, num_classes), labels)
            set_learning_rate(optimizer, args.learning_rate, step, trained, args.seconds)
            with autocast():
                loss = mean_nats(model, train_tokens[batch], codebook_size + labels, codebook_size)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if average is not None:
                average.update(model)
            step += 1
            spent = time.perf_counter() - started
            trained += spent
            bar.update(round(trained) - bar.n)
            if trained >= next_point or trained >= args.seconds:
                curve.append({"seconds": trained, "step": step, "epoch": step * args.batch_size / len(order),
                              "test_bits_per_token": evaluated(), "train_bits_per_token": loss.item() / math.log(2)})
                bar.set_postfix(test_bits=f"{curve[-1]['test_bits_per_token']:.4f}")
                next_point += args.seconds / args.evaluations
                (out / "curve.json").write_text(json.dumps(curve, indent=1))
            if trained >= args.seconds:
                break
    bar.close()

    final = average.model_like(model) if average else model
    results = {"peer": "transformers GPT2LMHeadModel", "parameters": parameters, "layers": args.layers,
               "width": args.width, "heads": args.heads, "learning_rate": args.learning_rate,
               "precision": "bf16" if bf16 else "float32", "train_seconds": trained, "steps": step,
               "train_grids_per_s": step * args.batch_size / trained,
               "test_bits_per_token": curve[-1]["test_bits_per_token"],
               "test_bits_per_token_raw_weights": test_bits(model, test_tokens, test_labels, codebook_size, autocast)}
    class_counts = np.bincount(train_labels.numpy(), minlength=num_classes)
    labels = class_mix(args.samples, class_counts)[:]
    guidance = {name: value for name, value in resolve_sampling(labels, **cli.sampling_settings(args)).record().items()
                if name.startswith("guidance_")}
    results["sampling"] = guidance
    for seed in args.seeds:
        started = time.perf_counter()
        grids = sample(final, labels, grid, codebook_size, num_classes, guidance, seed, autocast)
        results[f"sample_seconds_seed{seed}"] = time.perf_counter() - started
        np.savez(out / f"samples-seed{seed}.npz", tokens=grids.numpy().astype(np.uint16), labels=labels.numpy())
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
