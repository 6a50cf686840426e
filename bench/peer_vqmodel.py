"""A peer tokenizer for bench.peers: `diffusers`' VQModel (the VQGAN family's autoencoder: group-normed ResNet
blocks, a mid-block with self-attention, a codebook learnt by its loss) on Fashion-MNIST, for a fixed number of
training seconds.

    python -m bench.peer_vqmodel --seconds 700 --out DIR [--channels 32 --latent-dim 32 ...]

Three encoder blocks, two of them downsampling, give the default tokenizer's 7x7 grid of --codebook-size codes
from 28x28 images. The losses are the default tokenizer's without its adversary: the squared pixel error plus the
quantizer's codebook and commitment terms (VQModel's own, beta 0.25); the same batch, AdamW peak and 200 warm-up
steps, with the cosine decay run on the clock as bench.peer_gpt runs it. Writes DIR/results.json (test MSE,
codes used, perplexity, training seconds and images/s) and DIR/reconstructions.npz (the test split's
reconstructions, float16 in [0, 1]) for bench.peers to measure the Frechet distance of.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bench.clock import set_learning_rate
from store.images import DataConfig, load_images
from tokenizer.quantizers import usage_stats


def vq_model(channels, latent_dim, codebook_size, image_channels=1):
    from diffusers import VQModel

    groups = math.gcd(16, channels)  # group norm: 16 groups where the width allows
    return VQModel(in_channels=image_channels, out_channels=image_channels,
                   down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                   block_out_channels=(channels,) * 3, layers_per_block=1, latent_channels=latent_dim,
                   num_vq_embeddings=codebook_size, vq_embed_dim=latent_dim, norm_num_groups=groups)


def as_unit(images):
    return images.float() / 255


@torch.no_grad()
def test_figures(model, images, codebook_size, batch_size=500):
    """(test MSE in [0, 1] units, codes used, perplexity, reconstructions (n, c, h, w) float16 in [0, 1])."""
    model.eval()
    squared, counts, reconstructions = 0.0, torch.zeros(codebook_size, dtype=torch.long), []
    for start in range(0, len(images), batch_size):
        x = as_unit(images[start:start + batch_size])
        latents = model.encode(x * 2 - 1).latents
        quantized, _, (_, _, indices) = model.quantize(latents)
        decoded = ((model.decode(quantized, force_not_quantize=True).sample + 1) / 2).clamp(0, 1)
        squared += F.mse_loss(decoded, x, reduction="sum").item()
        counts += torch.bincount(indices.flatten(), minlength=codebook_size)
        reconstructions.append(decoded.half())
    model.train()
    usage = usage_stats(counts)
    return squared / images.numel(), usage["codes_used"], usage["perplexity"], torch.cat(reconstructions)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results.json and reconstructions.npz")
    parser.add_argument("--seconds", type=float, required=True, help="training seconds (evaluation not counted)")
    parser.add_argument("--fashion-mnist-dir", default="/usr/share/datasets/fashion-mnist",
                        help="the Fashion-MNIST files (default: Debian's)")
    parser.add_argument("--channels", type=int, default=32, help="channels of every block (default: 32)")
    parser.add_argument("--latent-dim", type=int, default=32, help="code vector width (default: 32)")
    parser.add_argument("--codebook-size", type=int, default=512, help="codes (default: 512)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="peak AdamW learning rate (default: 3e-3)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (default: 128)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = DataConfig(fashion_mnist_dir=args.fashion_mnist_dir)
    train_images, test_images = load_images(data, "train").images, load_images(data, "test").images
    torch.manual_seed(args.seed)
    model = vq_model(args.channels, args.latent_dim, args.codebook_size, train_images.shape[1])
    parameters = sum(p.numel() for p in model.parameters())
    print(f"VQModel: {parameters:,} parameters, {args.seconds:.0f} training seconds")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    trained, step = 0.0, 0
    bar = tqdm(total=round(args.seconds), desc="fit VQModel", unit="s")
    model.train()
    while trained < args.seconds:
        order = torch.randperm(len(train_images), generator=generator)
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            started = time.perf_counter()
            set_learning_rate(optimizer, args.learning_rate, step, trained, args.seconds)
            x = as_unit(train_images[order[start:start + args.batch_size]])
            output = model(x * 2 - 1)
            mse = F.mse_loss((output.sample + 1) / 2, x)
            loss = mse + output.commit_loss.mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            trained += time.perf_counter() - started
            bar.update(round(trained) - bar.n)
            if step % 50 == 0:
                bar.set_postfix(mse=f"{mse.item():.5f}")
            if trained >= args.seconds:
                break
    bar.close()
    mse, codes_used, perplexity, reconstructions = test_figures(model, test_images, args.codebook_size)
    results = {"peer": "diffusers VQModel", "parameters": parameters, "channels": args.channels,
               "latent_dim": args.latent_dim, "codebook_size": args.codebook_size,
               "grid": list(model.encode(as_unit(test_images[:1]) * 2 - 1).latents.shape[2:]),
               "learning_rate": args.learning_rate, "train_seconds": trained, "steps": step,
               "train_images_per_s": step * args.batch_size / trained, "test_mse": mse,
               "test_codes_used": codes_used, "test_perplexity": perplexity}
    np.savez(out / "reconstructions.npz", images=reconstructions.numpy())
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
