"""The resumable state of a run: weights, buffers, optimizers, random state and the weight average, in one
safetensors file written atomically, read back exactly."""

import copy
import json
import sys

import torch

from store.runs import load_tensors, save_tensors


class WeightAverage:
    """An exponential moving average of a model's weights (floating-point parameters and buffers; other buffers
    are copied). The decay warms up as min(decay, (1 + t) / (10 + t)) after t updates, as TensorFlow's
    ExponentialMovingAverage with num_updates does, so the random initial weights are forgotten within the first
    few dozen steps rather than the first 1 / (1 - decay)."""

    def __init__(self, model, decay):
        self.decay, self.updates = decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model):
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                self.state[key].lerp_(value.detach(), 1 - decay)
            else:
                self.state[key].copy_(value)
        self.updates += 1

    def model_like(self, model):
        """A copy of model holding the averaged weights (for evaluation; model itself is untouched)."""
        averaged = copy.deepcopy(model)
        averaged.load_state_dict(self.state)
        return averaged


def _optimizer_key(i):
    """The name of optimizer i in the training state: "optimizer" for the first (as runs with one have always
    written it), "optimizer1", ... for the others."""
    return "optimizer" if i == 0 else f"optimizer{i}"


def _state_tensors(model, optimizers):
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = {}
    for i, optimizer in enumerate(optimizers):
        key = _optimizer_key(i)
        opt_state = optimizer.state_dict()
        scalars = {}
        for param_id, state in opt_state["state"].items():
            for name, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"{key}.{param_id}.{name}"] = value
                else:
                    scalars[f"{param_id}.{name}"] = value
        suffix = key[len("optimizer"):]
        meta[f"param_groups{suffix}"], meta[f"optimizer_scalars{suffix}"] = opt_state["param_groups"], scalars
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return tensors, meta


def save_training_state(path, model, optimizers, step, scaler=None, log_window=None, average=None):
    """optimizers: one per parameter group of the model (most runs have one). log_window: the figures of the steps
    since the last metrics line, so a resumed run logs the same averages. average: the WeightAverage, if kept."""
    tensors, meta = _state_tensors(model, optimizers)
    if average is not None:
        tensors.update({f"average.{k}": v for k, v in average.state.items()})
        meta["average_updates"] = average.updates
    meta["step"] = step
    meta["log_window"] = log_window or {}
    # On some CPUs (oneDNN's convolution weight gradients on AVX2) the sums depend on the thread count: a resume
    # at another count is told so.
    meta["threads"] = torch.get_num_threads()
    meta["scaler"] = scaler.state_dict() if scaler is not None else None
    save_tensors(path, tensors, metadata={"training": json.dumps(meta)})


def load_training_state(path, model, optimizers, scaler=None, average=None):
    """Restore what save_training_state wrote; returns (the step to continue from, the log window, the CPU thread
    count it was saved at, None for states saved before it was recorded)."""
    from safetensors import safe_open

    tensors = load_tensors(path)
    with safe_open(path, framework="pt") as f:
        meta = json.loads(f.metadata()["training"])
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    if average is not None:
        saved = {k[len("average."):]: v for k, v in tensors.items() if k.startswith("average.")}
        if saved:
            average.state = saved
            average.updates = meta["average_updates"]
        else:  # a run that kept no average before: it starts from the weights it resumes with
            average.__init__(model, average.decay)
    for i, optimizer in enumerate(optimizers):
        key = _optimizer_key(i)
        suffix = key[len("optimizer"):]
        state = {}
        for name, value in tensors.items():
            if name.startswith(f"{key}."):
                _, param_id, entry = name.split(".", 2)
                state.setdefault(int(param_id), {})[entry] = value
        for name, value in meta[f"optimizer_scalars{suffix}"].items():
            param_id, entry = name.split(".", 1)
            state.setdefault(int(param_id), {})[entry] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta[f"param_groups{suffix}"]})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda_states:
        torch.cuda.set_rng_state_all(cuda_states)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return meta["step"], meta.get("log_window", {}), meta.get("threads")


def warn_of_other_threads(saved_threads, accelerator):
    """One line on stderr when a run resumes on the CPU at another thread count than its checkpoint was made at:
    oneDNN's convolution weight gradients sum in a thread-dependent order on some CPUs (AVX2 without AVX512), so
    the resumed run's weights may then differ in the last bits from an uninterrupted run's, and drift from there."""
    threads = torch.get_num_threads()
    if saved_threads is None or saved_threads == threads or accelerator.device.type != "cpu":
        return
    if accelerator.is_main_process:
        sys.stderr.write(f"note: this run was checkpointed at {saved_threads} CPU thread(s) and resumes at {threads}: "
                         f"for weights bit-identical to an uninterrupted run, resume with "
                         f"OMP_NUM_THREADS={saved_threads}\n")
