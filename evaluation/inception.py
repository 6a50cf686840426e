"""The standard protocol: FID and KID in the features of the Inception network the papers use, through torch-fidelity.

torch-fidelity (Obukhov et al.) is the PyTorch port whose Inception-v3, image resizing and FID match the original
TensorFlow code of Heusel et al. 2017 (its tests compare them), and torchmetrics' own FID is built on its network;
calling it directly costs no dependency beyond those we have (numpy, pillow, torchvision, tqdm). Images go in as
it expects: uint8, three channels (grey repeated), any size (it resizes to 299x299 itself, as TensorFlow did).

Its weights (weights-inception-2015-12-05-6726825d.pth, about 96 MB, converted from TensorFlow's) are read from a
path the user gives, else from torch's hub cache, where they are downloaded once when the machine is online. They are
read with torch.load(weights_only=True): no code in a weights file runs.
"""

import importlib.util
import io
from pathlib import Path
from urllib.error import URLError

import torch
from tqdm.auto import tqdm

from store.pictures import as_uint8

INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_NAME}"
INCEPTION_FEATURES = "2048"  # the pool3 features of FID and KID
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torch-fidelity's defaults (Binkowski et al. 2018)


def cached_weights_path():
    """Where the weights are looked for (and downloaded to) when no path is given: torch's hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_NAME


def check_installed():
    """A one-line ValueError where torch-fidelity, the optional extra that Inception features need, is missing."""
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ValueError("Inception features need torch-fidelity, which is not installed: pip install "
                         "'vqprior[inception]' (or torch-fidelity)")


def inception_weights(path=None, progress=True):
    """The weights file: path when given (it must exist), else the cached copy, downloaded there when missing."""
    if path is not None:
        if not Path(path).is_file():
            raise ValueError(f"Inception weights file {path} does not exist")
        return Path(path)
    cached = cached_weights_path()
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        # A temporary file renamed into place; the SHA-256 checked against the prefix in the name.
        torch.hub.download_url_to_file(INCEPTION_WEIGHTS_URL, str(cached), hash_prefix="6726825d", progress=progress)
    except (URLError, OSError, RuntimeError) as error:
        raise ValueError(f"the Inception weights {INCEPTION_WEIGHTS_NAME} are not on this machine and could not be "
                         f"downloaded ({str(error).splitlines()[0] if str(error) else type(error).__name__}): put "
                         f"the file from {INCEPTION_WEIGHTS_URL} in {cached.parent}/ or give its path with "
                         "`inception_weights`") from None
    return cached


def load_inception(weights_path, device="cpu"):
    """torch-fidelity's Inception-v3 feature extractor with the weights of weights_path, in eval mode on device."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle that needs more than tensors, a truncated file, not a torch file at all
        raise ValueError(f"cannot read Inception weights {weights_path} ({str(error).splitlines()[0]})") from None
    # torch-fidelity reads the weights from a path with the full unpickler: it gets the tensors, re-saved in memory.
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    try:
        extractor = FeatureExtractorInceptionV3("inception-v3-compat", [INCEPTION_FEATURES],
                                                feature_extractor_weights_path=buffer)
    except RuntimeError as error:  # load_state_dict: missing or unexpected keys, other shapes
        raise ValueError(f"{weights_path} does not hold Inception-v3 weights for torch-fidelity "
                         f"({str(error).splitlines()[0]})") from None
    return extractor.to(device)


def as_inception_input(images):
    """uint8 (b, 3, H, W): uint8 images as they are, [0, 1] floats rounded as a PNG stores them, grey repeated."""
    if images.dtype != torch.uint8:
        images = as_uint8(images.float())
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


@torch.no_grad()
def inception_features(extractor, images, batch_size=50, desc=None):
    """Pool3 features (n, 2048) float32 on the CPU of images (n, c, H, W), uint8 or [0, 1] float."""
    device = next(extractor.parameters()).device
    features = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, dynamic_ncols=True,
                      disable=desc is None):
        batch = as_inception_input(images[start:start + batch_size]).to(device)
        features.append(extractor(batch)[0].float().cpu())
    if not features:
        raise ValueError("no images to take Inception features of")
    return torch.cat(features)


def fid(features_a, features_b):
    """torch-fidelity's Frechet Inception Distance between two sets of features; a float."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    return fid_statistics_to_metric(fid_features_to_statistics(features_a), fid_features_to_statistics(features_b),
                                    verbose=False)[KEY_METRIC_FID]


def kid(features_generated, features_real):
    """torch-fidelity's Kernel Inception Distance (mean, std over subsets), subsets as large as both sets allow."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(KID_SUBSET_SIZE, len(features_generated), len(features_real))
    result = kid_features_to_metric(features_generated, features_real, kid_subsets=KID_SUBSETS,
                                    kid_subset_size=size, verbose=False)
    return result[KEY_METRIC_KID_MEAN], result[KEY_METRIC_KID_STD]
