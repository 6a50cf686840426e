"""Stage two: an autoregressive PixelCNN prior over token grids, and sampling from it."""

from pathlib import Path

from pipelines.runs import AVERAGED_WEIGHTS, load_state_strict, read_model_files
from prior.generate import generate
from prior.model import Prior, PriorConfig


def sample(model, n, **kwargs):
    """Sample n token grids; the same as generate(model, n, **kwargs)."""
    return generate(model, n, **kwargs)


def load(run_dir, device="cpu", weights=None):
    """(Prior in eval mode, the run's config.json as a dict) from a prior run directory: the averaged weights
    (model_ema.safetensors) when the run kept them, else the raw ones; weights names the file to force one."""
    run_dir = Path(run_dir)
    if weights is None:
        weights = AVERAGED_WEIGHTS if (run_dir / AVERAGED_WEIGHTS).exists() else "model.safetensors"
    config, state = read_model_files(run_dir, weights)
    try:
        model = Prior(PriorConfig(**config["model"]))
    except (KeyError, TypeError) as error:
        raise ValueError(f"{run_dir / 'config.json'} is not a prior config ({error})") from None
    load_state_strict(model, state, run_dir / weights)
    model.weights_file = weights  # which of the run's weight files this is, for reports
    return model.to(device).eval(), config


__all__ = ["Prior", "PriorConfig", "generate", "load", "sample"]
