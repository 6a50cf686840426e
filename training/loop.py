"""The one training loop both stages use: accelerate places the work; the loop draws the batches, takes the steps,
checkpoints and evaluates, with the state it resumes from in training.state and what it reports in training.metrics.

Resume is exact on CPU: the data order is a pure function of (seed, epoch), the learning rate a pure function of
the step, and the training state (weights, buffers, optimizer, random state) is one safetensors file written
atomically. A resumed run therefore takes the same steps on the same batches as an uninterrupted one.
"""

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from store.runs import STATE_FILE
from training.config import MAX_SEED, learning_rate_at
from training.metrics import MetricsLog
from training.state import WeightAverage, load_training_state, save_training_state, warn_of_other_threads


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


def check_one_batch(size, config):
    """The refusal train() gives for a split smaller than one batch, given before a run directory is made."""
    if size < config.batch_size:
        raise ValueError(f"the training split has {size} items, fewer than one batch of {config.batch_size}: "
                         "lower `batch_size`")


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
                         f"{config.batch_size} per process: lower `batch_size`")
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
