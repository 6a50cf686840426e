"""The one training loop both stages use: accelerate places the work, this file adds resume, progress and metrics.

Resume is exact on CPU: the data order is a pure function of (seed, epoch), the learning rate a pure function of
the step, and the training state (weights, buffers, optimizer, random state) is one safetensors file written
atomically. A resumed run therefore takes the same steps on the same batches as an uninterrupted one.
"""

import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from store.runs import METRICS_FILE, STATE_FILE, load_tensors, read_metrics, save_tensors, write_metrics

# torch's generators take seeds of 64 bits; seeds derived from one (per epoch, per batch) wrap around at 2**64.
MAX_SEED = 2**64 - 1
TRACKER_DIR = "trackers"  # RUN/trackers/<stage>/: where trackers that keep files (TensorBoard) write them
# accelerate's tracker names (accelerate.utils.LoggerType); make_accelerator checks the chosen one's package.
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class TrainConfig:
    epochs: int = field(default=15, metadata={"help": "passes over the training split"})
    batch_size: int = field(default=128, metadata={"help": "images (or grids) per step, per process"})
    learning_rate: float = field(default=2e-3, metadata={"help": "peak learning rate of AdamW"})
    warmup_steps: int = field(default=200, metadata={"help": "steps of linear warm-up before the cosine decay"})
    min_lr_ratio: float = field(default=0.05, metadata={"help": "the cosine decay ends at this fraction of the peak"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0: no clipping)"})
    seed: int = field(default=0, metadata={"help": "seed for weights, data order and restarts"})
    mixed_precision: str = field(default="no", metadata={
        "help": "no, fp16 or bf16 (through accelerate); auto: bf16 where the hardware computes in it (a GPU that "
                "supports it, a CPU with AVX512-BF16 or AMX), else no. The run's config.json keeps the choice made",
        "choices": ["no", "fp16", "bf16", "auto"]})
    log_every: int = field(default=50, metadata={"help": "steps between metrics lines"})
    checkpoint_every: int = field(default=500, metadata={"help": "steps between resumable checkpoints"})
    log_with: str = field(default="none", metadata={
        "help": "also send the metrics to this tracker of accelerate's (tensorboard: event files in RUN/trackers/; "
                "wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio: their own places), beside "
                "metrics.jsonl; the tracker's package must be installed (none: metrics.jsonl only)",
        "choices": ["none", *TRACKERS]})
    weight_ema_decay: float = field(default=0.0, metadata={
        "help": "also keep an exponential moving average of the weights with this decay per step, saved beside "
                "the raw weights as model_ema.safetensors and used from then on (evaluation, sampling, encoding) "
                "(0: none)"})
    # Fields renamed since older config.json files were written: {former name: name now}.
    FORMER_NAMES = {"ema_decay": "weight_ema_decay"}

    def __post_init__(self):
        for name in ("epochs", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be positive, not {self.learning_rate}")
        check_seed(self.seed, "--seed")
        if not 0 <= self.weight_ema_decay < 1:
            raise ValueError(f"--weight-ema-decay must lie in [0, 1), not {self.weight_ema_decay}")
        if self.log_with not in ("none", *TRACKERS):
            raise ValueError(f"--log-with must be none or one of {', '.join(TRACKERS)}, not {self.log_with!r}")
        if self.mixed_precision == "auto":
            self.mixed_precision = "bf16" if computes_in_bf16() else "no"


def check_seed(seed, name="seed"):
    """A one-line ValueError for a seed torch's generators cannot take."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer from 0 to 2**64 - 1, not {seed!r}")


def computes_in_bf16():
    """Whether bf16 runs natively here; emulated bf16 on an older CPU would be slower than float32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


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


class EpochPermutation(Sampler):
    """A shuffle that depends only on (seed, epoch): every process and every resumed run sees the same order."""

    def __init__(self, size, seed):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) % (MAX_SEED + 1))
        return iter(torch.randperm(self.size, generator=generator).tolist())


def make_accelerator(config):
    if config.log_with != "none":  # accelerate itself would only warn and drop a tracker it cannot import
        from accelerate.tracking import get_available_trackers

        if config.log_with not in [str(tracker) for tracker in get_available_trackers()]:
            raise ValueError(f"--log-with {config.log_with} needs its package: pip install {config.log_with}")
    # Without a GPU, accelerate only forms a process group (gloo) under torchrun when told it runs on the CPU.
    # The gated prior's last block has a horizontal output (h_out) that nothing reads, so its weights never get a
    # gradient; DDP must be told, or it stops at the second step waiting for them.
    # accelerate keeps one mixed-precision setting per process and refuses another: a second run in the same
    # process (a test, a notebook, a library caller) clears it first. The process group (PartialState) is kept.
    if AcceleratorState._shared_state.get("_mixed_precision", config.mixed_precision) != config.mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available(),
                       log_with=None if config.log_with == "none" else [config.log_with],
                       # accelerate wants a logging folder now; the run folder is decided later, and start_trackers
                       # points the trackers at it before they open.
                       project_dir=None if config.log_with == "none" else ".",
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def start_trackers(accelerator, config, run_dir, project):
    """Open the tracker config.log_with names (accelerate's), writing under run_dir/trackers/project."""
    if config.log_with == "none":
        return
    accelerator.project_configuration.set_directories(run_dir)
    accelerator.project_configuration.logging_dir = str(Path(run_dir) / TRACKER_DIR)
    accelerator.init_trackers(project, config=dataclasses.asdict(config))


def check_one_batch(size, config):
    """The refusal train() gives for a split smaller than one batch, given before a run directory is made."""
    if size < config.batch_size:
        raise ValueError(f"the training split has {size} items, fewer than one batch of {config.batch_size}: "
                         "lower --batch-size")


def learning_rate_at(step, total_steps, config):
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.learning_rate * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


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


def train(model, dataset, step_fn, config, run_dir, accelerator, resume=False, description="train",
          evaluate=None):
    """Fit model on dataset; step_fn(model, batch, step) -> (loss, {name: float}). Returns (the unwrapped model, the
    metrics records, the averaged weights as a state dict or None when config.weight_ema_decay is 0).

    evaluate(model) -> {name: float}, if given, runs at the end of every epoch (in eval mode, without
    gradients), on the averaged weights when they are kept; its figures go on the progress bar and into the
    metrics as "test_<name>".

    Metrics are averaged over each log window (keys ending in 'restarts' are summed) and written to
    run_dir/metrics.jsonl, and to the tracker of config.log_with if any; the training state goes to
    run_dir/training_state.safetensors every checkpoint_every steps and at the end.
    """
    state_path = Path(run_dir) / STATE_FILE
    model, optimizers, loader, average, step, window = _prepared(model, dataset, config, accelerator,
                                                                 state_path if resume else None)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"the training split has {len(dataset)} items, fewer than one batch of "
                         f"{config.batch_size} per process: lower --batch-size")
    total_steps = config.epochs * steps_per_epoch
    log = MetricsLog(run_dir, config, accelerator, steps_per_epoch, total_steps, step, window, resume, description)
    model.train()
    try:  # the progress bar is closed on every exit: an error is said on a line of its own
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            loader.set_epoch(epoch)
            for batch in accelerator.skip_first_batches(loader, offset) if offset else loader:
                for optimizer in optimizers:
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate_at(step, total_steps, config)
                loss, logs = step_fn(model, batch, step)
                update(model, loss, optimizers, config, accelerator)
                if average is not None:
                    average.update(accelerator.unwrap_model(model))
                step += 1
                log.add_step(step, logs)
                if evaluate is not None and step % steps_per_epoch == 0:
                    log.add_evaluation(step, *evaluated(model, average, evaluate, accelerator))
                if step % config.checkpoint_every == 0 or step == total_steps:
                    if accelerator.is_main_process:
                        save_training_state(state_path, accelerator.unwrap_model(model), optimizers, step,
                                            accelerator.scaler, log_window=log.window, average=average)
                    accelerator.wait_for_everyone()
                if step >= total_steps:
                    break
    finally:
        log.close()
    model = accelerator.unwrap_model(model)
    model.eval()
    return model, log.records, None if average is None else average.state


def _prepared(model, dataset, config, accelerator, state_path=None):
    """(model, optimizers, loader, weight average or None, step, log window) placed by accelerate, resumed from the
    training state at state_path when it exists."""
    sampler = EpochPermutation(len(dataset), config.seed)
    # A loader without a generator of its own takes a seed from the global RNG at every iterator it makes
    # (one more on resume, through skip_first_batches), which would shift the label-dropout draws.
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                        generator=torch.Generator().manual_seed(config.seed))
    optimizers = make_optimizers(model, config)
    step, window = 0, {}
    average = WeightAverage(model, config.weight_ema_decay) if config.weight_ema_decay else None
    if state_path is not None and state_path.exists():
        step, window, threads = load_training_state(state_path, model, optimizers, accelerator.scaler, average)
        warn_of_other_threads(threads, accelerator)
    model, *optimizers, loader = accelerator.prepare(model, *optimizers, loader)
    return model, optimizers, loader, average, step, window


def make_optimizers(model, config):
    """One AdamW per parameter group: a model with parts that learn from losses of their own (a tokenizer and its
    discriminator) says so with optimizer_groups() -> [(parameters, AdamW options), ...]; the others have one."""
    groups = model.optimizer_groups() if hasattr(model, "optimizer_groups") else [(model.parameters(), {})]
    return [torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, **options)
            for params, options in groups]


def update(model, loss, optimizers, config, accelerator):
    """One optimizer step of every optimizer from loss, each network's gradient norm clipped on its own."""
    accelerator.backward(loss)
    if config.grad_clip > 0 and len(optimizers) == 1:
        accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
    elif config.grad_clip > 0:
        accelerator.unscale_gradients()  # once for all: a second unscale of an fp16 optimizer is an error
        for optimizer in optimizers:
            torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]],
                                           config.grad_clip)
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def evaluated(model, average, evaluate, accelerator):
    """({"test_<name>": value} of evaluate() on the model, or on its averaged weights when kept, in eval mode and
    without gradients; the seconds it took)."""
    started = time.perf_counter()
    model.eval()
    weights = accelerator.unwrap_model(model)
    if average is not None:
        weights = average.model_like(weights)
    with torch.no_grad():
        results = {f"test_{k}": v for k, v in evaluate(weights).items()}
    model.train()
    return results, time.perf_counter() - started


class MetricsLog:
    """What a run reports as it trains: each log window's figures (averaged per step, keys ending in "restarts"
    summed) and each evaluation, as records in RUN/metrics.jsonl (rewritten whole after each), in the tracker of
    config.log_with, and on the progress bar. A resumed run keeps the records up to its checkpoint and the window
    the checkpoint saved, so that it logs what an uninterrupted run logs."""

    def __init__(self, run_dir, config, accelerator, steps_per_epoch, total_steps, step, window, resume,
                 description):
        self.path, self.config, self.accelerator = Path(run_dir) / METRICS_FILE, config, accelerator
        self.steps_per_epoch, self.total_steps, self.window = steps_per_epoch, total_steps, window
        # Lines past the checkpoint belong to steps that will be taken again.
        self.records = [m for m in read_metrics(self.path) if m.get("step", 0) <= step] if resume else []
        start_trackers(accelerator, config, run_dir, description.removeprefix("fit ").replace(" ", "-"))
        self.bar = tqdm(total=total_steps, initial=step, desc=description, dynamic_ncols=True,
                        disable=not accelerator.is_main_process)
        # The window's figures may start before a resume; items/s counts only the steps timed in this process.
        self.window_start, self.timed_steps, self.shown = time.perf_counter(), 0, {}

    def add_step(self, step, logs):
        self.timed_steps += 1
        for key, value in logs.items():
            self.window.setdefault(key, []).append(value)
        self.bar.update(1)
        if step % self.config.log_every == 0 or step == self.total_steps:
            elapsed = time.perf_counter() - self.window_start
            record = {"step": step, "epoch": step / self.steps_per_epoch,
                      "lr": learning_rate_at(step - 1, self.total_steps, self.config),
                      "items_per_s": self.timed_steps * self.config.batch_size
                      * self.accelerator.num_processes / max(elapsed, 1e-9)}
            for key, values in self.window.items():
                record[key] = sum(values) if key.endswith("restarts") else sum(values) / len(values)
            self._add({k: v for k, v in record.items() if k != "step"}, record, step,
                      {k: f"{record[k]:.4g}" for k in self.window if not k.endswith("restarts")})
            self.window, self.window_start, self.timed_steps = {}, time.perf_counter(), 0

    def add_evaluation(self, step, results, seconds):
        self._add(results, {"step": step, "epoch": step / self.steps_per_epoch, **results}, step,
                  {k: f"{v:.4g}" for k, v in results.items()})
        self.window_start += seconds  # items/s counts training only

    def _add(self, tracked, record, step, shown):
        self.records.append(record)
        self.accelerator.log(tracked, step=step)
        self.shown.update(shown)
        self.bar.set_postfix(self.shown)
        if self.accelerator.is_main_process:
            write_metrics(self.path, self.records)

    def close(self):
        self.bar.close()
        for tracker in self.accelerator.trackers:  # (accelerator.end_training would also end the process group)
            tracker.finish()


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


def mean_items_per_s(metrics):
    """The mean training rate over a run's metrics lines (None before the first)."""
    rates = [m["items_per_s"] for m in metrics if "items_per_s" in m]
    return sum(rates) / len(rates) if rates else None
