"""What --features inception costs on this machine: Inception-v3 features per image, FID and KID of 10,000 x 2,048.

    python -m bench.inception_speed [--weights PATH] [--images 200] [--batch-size 50]

Without --weights, a file of the same architecture with random weights is built (random_inception_weights): the
time is the same, the values mean nothing. Prints one line per figure, with the CPU's bf16 flags.
"""

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from bench.steps import cpu_flags
from evaluation.inception import INCEPTION_WEIGHTS_NAME, fid, inception_features, kid, load_inception


def random_inception_weights(path, seed=0):
    """Write torch-fidelity's Inception-v3 state dict with random weights to path, as the real file is written
    (torch.save of the state dict): He-initialised convolutions, so the features neither vanish nor blow up over its
    depth. For tests and timings on machines that cannot download the real weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # The constructor loads the real weights: here it is given nothing to load.
    with mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None):
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(model.state_dict(), path)
    return Path(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="the Inception weights (default: random, built here)")
    parser.add_argument("--images", type=int, default=200, help="28x28 grey images to time (default: 200)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per batch (default: 50, evaluate's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        weights = args.weights or random_inception_weights(Path(folder) / INCEPTION_WEIGHTS_NAME)
        extractor = load_inception(weights)
    images = torch.randint(0, 256, (args.images, 1, 28, 28), dtype=torch.uint8)
    inception_features(extractor, images[:10], 10)  # warm-up
    started = time.perf_counter()
    inception_features(extractor, images, args.batch_size)
    seconds = time.perf_counter() - started
    print(f"CPU bf16 flags: {cpu_flags()}; {torch.get_num_threads()} threads")
    print(f"Inception features: {args.images} images in {seconds:.1f} s, {seconds / args.images:.3f} s per image")
    first, second = torch.randn(10000, 2048), torch.randn(10000, 2048)
    for name, function in (("FID", fid), ("KID", kid)):
        started = time.perf_counter()
        function(first, second)
        print(f"{name} of 10,000 x 2,048 features: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
