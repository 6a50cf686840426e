"""Survive: SIGKILL both training commands at random moments, resume them, and end where an unbroken run ends.

Each command runs tiny on the CPU, first once without interruption (timed: its phases set the kill schedule, and its
weights are the ones to reach), then as a chain: start, SIGKILL after a delay drawn from a seeded RNG over what is
left of the run's lifetime (start-up included; shortened once a run ends before its delay), `--resume`, kill again,
... until enough kills hit a live, unfinished run; then it runs to the end. After every kill no file in the run
directory may be truncated or unreadable, and nothing but atomic_path's hidden `.NAME.XXXX.tmp` files (which no
reader's pattern matches) may lie beside the real ones; the finished run holds no temporary file at all.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import REPO, TINY_PRIOR, TINY_TOKENIZER, assert_same_weights
from store.index_maps import read_index_maps
from store.runs import file_sha256, lock_file

MIN_LIVE_KILLS = 5  # per command: kills that land while the process runs and its run directory is unfinished
MAX_CHAINS = 3  # a chain that finishes before enough kills hit (the timing is noisy) is followed by a fresh one
MAX_ATTEMPTS = 40
TRAIN_ITEMS, BATCH = 256, 32  # the fashion_dir fixture's training split, TINY_*'s batch size
# One thread: the same arithmetic in every process (the kills compare weights bit for bit), and two shared cores
# are not fought over by OpenMP. Unbuffered: a killed process's log shows how far it got.
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def is_temporary(path):
    """atomic_path's (and create_run_dir's) names: hidden and ending in .tmp."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def written_name(temporary):
    """The file a temporary was going to become: .model.safetensors.k2j3x9.tmp -> model.safetensors."""
    return temporary.name[1:].rsplit(".", 2)[0]


def checkpoint_step(run_dir):
    path = run_dir / "training_state.safetensors"
    if not path.exists():
        return None
    with safe_open(path, framework="pt") as f:
        return json.loads(f.metadata()["training"])["step"]


def check_files(run_dir):
    """Every file a reader could pick up in run_dir is whole and readable; returns the temporaries left beside them."""
    temporaries = []
    for folder, folders, files in os.walk(run_dir):
        for name in folders:
            assert not name.startswith("."), f"unexpected folder {folder}/{name}"
        for name in files:
            path = Path(folder) / name
            if is_temporary(path):
                assert not any(path.match(p) for p in ("*.safetensors", "*.json", "*.jsonl", "*.npy", "*.png"))
                temporaries.append(path)
            elif name.endswith(".safetensors"):
                load_file(path)
            elif name.endswith(".jsonl"):
                text = path.read_text()
                assert text.endswith("\n"), f"{path} ends in half a line"
                for line in text.splitlines():
                    json.loads(line)
            elif name.endswith(".json"):
                json.loads(path.read_text())
            elif name.endswith(".npy"):
                np.load(path, allow_pickle=False)
            elif name.endswith(".png"):
                with Image.open(path) as png:
                    png.load()
            else:
                raise AssertionError(f"unexpected file {path}")
    meta_path = run_dir / "maps" / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        assert (run_dir / "model.safetensors").exists(), "index maps written before the weights that made them"
        assert meta["weights_sha256"] == file_sha256(run_dir / "model.safetensors")
        for split, entry in meta["splits"].items():
            maps = read_index_maps(run_dir / "maps", split)  # checks the recorded SHA-256 of both files
            assert len(maps.maps) == len(maps.labels) == entry["count"]
            assert maps.maps.shape[1:] == (meta["grid_height"], meta["grid_width"])
    return temporaries


def check_stage_folder(stage_dir, names):
    """Beside the runs, at most the hidden temporary folder of a run killed while being created, and the lock file
    of a killed run (store.runs.output_lock's, which the next writer takes over)."""
    for path in stage_dir.iterdir() if stage_dir.exists() else []:
        assert path.name in names or is_temporary(path) or path == lock_file(stage_dir / path.name[1:-5]), \
            f"unexpected {path}"


def start(module, args, env, log_path):
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, **ENV, **env})


def timed_run(module, args, run_dir, env, log_path):
    """Run to the end; returns the seconds after the start at which config.json, model.safetensors and
    results.json appeared."""
    started = time.perf_counter()
    process, seen = start(module, args, env, log_path), {}
    while process.poll() is None:
        for name in ("config.json", "model.safetensors", "results.json"):
            if name not in seen and (run_dir / name).exists():
                seen[name] = time.perf_counter() - started
        time.sleep(0.005)
    assert process.returncode == 0, log_path.read_text()[-3000:]
    ended = time.perf_counter() - started
    return {name: seen.get(name, ended) for name in ("config.json", "model.safetensors", "results.json")}


def lifetime_left(times, run_dir, total_steps):
    """Expected seconds from a (re)start to results.json: start-up, the steps past the checkpoint, the rest."""
    if not run_dir.exists():
        return times["results.json"]
    start_up = times["config.json"]
    training = times["model.safetensors"] - start_up
    done = (checkpoint_step(run_dir) or 0) / total_steps
    return start_up + training * (1 - done) + times["results.json"] - times["model.safetensors"]


def pace_of(run_dir, started, predicted):
    """How a finished run's life (from its start, time.time(), to its results.json) compares with the prediction."""
    return ((run_dir / "results.json").stat().st_mtime - started) / predicted


def kill_resume_finish(module, flags, stage_dir, env, total_steps, seed, tmp_path):
    """The uninterrupted run, then chains of killed and resumed runs, each finished in the end.

    Returns (the uninterrupted run, the finished killed runs, one line per kill)."""
    whole = stage_dir / "whole"
    times = timed_run(module, [*flags, "--run-name", whole.name], whole, env, tmp_path / f"{whole.name}.log")
    rng = np.random.default_rng(seed)
    kills, finished, live = [], [], 0
    # Predicted lives are scaled by `pace`, which a run that ended before its delay ran out lowers to its own: the
    # timed run may have met a busier machine than the chains do, and a kill drawn past a run's end ends its chain.
    pace = 1.0
    for chain in range(MAX_CHAINS):
        run_dir = stage_dir / f"killed{chain}"
        names = {whole.name, *(d.name for d in finished), run_dir.name}
        while live < MIN_LIVE_KILLS and not (run_dir / "results.json").exists():
            assert len(kills) < MAX_ATTEMPTS, "\n".join(kills)
            args = ["--resume", run_dir] if run_dir.exists() else [*flags, "--run-name", run_dir.name]
            step_before = checkpoint_step(run_dir) if run_dir.exists() else None
            temporaries_before = set(check_files(run_dir)) if run_dir.exists() else set()
            predicted = lifetime_left(times, run_dir, total_steps)
            delay = rng.uniform(0, pace * predicted)
            log_path = tmp_path / f"{run_dir.name}-{len(kills)}.log"
            started, process = time.time(), start(module, args, env, log_path)
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
            output = log_path.read_text()
            if process.returncode != -signal.SIGKILL:  # it finished before its delay ran out
                assert process.returncode == 0, f"{' '.join(map(str, args))} failed:\n{output[-3000:]}"
                assert (run_dir / "results.json").exists()
                kills.append(f"{run_dir.name} {args[0]}: {delay:.2f} s, finished first")
                pace = min(pace, pace_of(run_dir, started, predicted))
                continue
            assert "Traceback" not in output and "\nerror:" not in output, output[-3000:]
            check_stage_folder(stage_dir, names)
            if not run_dir.exists():
                phase = "before its run directory existed"
            elif (run_dir / "results.json").exists():
                phase = "after it finished"
                pace = min(pace, pace_of(run_dir, started, predicted))
            else:
                live += 1
                step = checkpoint_step(run_dir)
                assert (step or 0) >= (step_before or 0), "the checkpoint went back"
                # Both commands print "<stage>: N parameters ..." when start-up is over and training begins.
                phase = "" if f"{stage_dir.name}: " in output else "in start-up, "
                phase += "no checkpoint yet" if step is None else f"checkpoint at step {step}/{total_steps}"
                if (run_dir / "model.safetensors").exists():
                    phase += ", model written"
                if (run_dir / "maps" / "meta.json").exists():
                    meta = json.loads((run_dir / "maps" / "meta.json").read_text())
                    phase += f", maps of {'+'.join(meta['splits'])} written"
            if run_dir.exists():
                cut = sorted(written_name(t) for t in set(check_files(run_dir)) - temporaries_before)
                phase += f", cut while writing {', '.join(cut)}" if cut else ""
            kills.append(f"{run_dir.name} {args[0]}: killed after {delay:.2f} s, {phase}")
        if not (run_dir / "results.json").exists():  # let it finish
            # What a writer killed mid-write leaves, whether or not a kill above happened to: the resume clears it.
            (run_dir / ".metrics.jsonl.k1ll3d.tmp").write_text('{"step": 1, "lo')
            process = start(module, ["--resume", run_dir], env, tmp_path / f"{run_dir.name}-finish.log")
            assert process.wait(timeout=300) == 0, (tmp_path / f"{run_dir.name}-finish.log").read_text()[-3000:]
        assert check_files(run_dir) == [], "a finished run still holds temporary files"
        assert not lock_file(run_dir).exists(), "a finished run is still locked"
        finished.append(run_dir)
        if live >= MIN_LIVE_KILLS:
            break
    print(f"\n{stage_dir.name}: {live} of {len(kills)} kills hit a live, unfinished run; the uninterrupted one took "
          f"{', '.join(f'{t:.1f} s to {name}' for name, t in times.items())}; pace {pace:.2f}", *kills, sep="\n  ")
    assert live >= MIN_LIVE_KILLS, f"only {live} kills hit a live, unfinished run:\n" + "\n".join(kills)
    return whole, finished, kills


def assert_same_metrics(run_a, run_b):
    """The same records at the same steps with the same values; only the measured speed may differ."""
    def records(run_dir):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "items_per_s"} for line in lines]

    assert records(run_a) == records(run_b)


def test_tokenizer_survives_random_kills(fashion_dir, tmp_path):
    epochs, checkpoint_every = 12, 1
    flags = [*TINY_TOKENIZER, "--epochs", epochs, "--checkpoint-every", checkpoint_every, "--dump-batch-size", 4,
             "--output-root", tmp_path / "runs"]
    whole, finished, _ = kill_resume_finish(
        "pipelines.fit_tokenizer", flags, tmp_path / "runs" / "tokenizer", {"FASHION_MNIST_DIR": str(fashion_dir)},
        epochs * (TRAIN_ITEMS // BATCH), seed=1, tmp_path=tmp_path)
    for run_dir in finished:
        assert_same_weights(run_dir / "model.safetensors", whole / "model.safetensors")
        assert_same_metrics(run_dir, whole)
        for name in ("train_maps.npy", "train_labels.npy", "test_maps.npy", "test_labels.npy"):
            assert file_sha256(run_dir / "maps" / name) == file_sha256(whole / "maps" / name), name


def test_prior_survives_random_kills(one_thread, tokenizer_run, tmp_path):
    epochs, checkpoint_every = 8, 1
    flags = [*TINY_PRIOR, "--epochs", epochs, "--checkpoint-every", checkpoint_every, "--tokenizer", tokenizer_run,
             "--condition", "class", "--label-dropout", "0.3", "--output-root", tmp_path / "runs"]
    whole, finished, _ = kill_resume_finish("pipelines.fit_prior", flags, tmp_path / "runs" / "prior", {},
                                            epochs * (TRAIN_ITEMS // BATCH), seed=0, tmp_path=tmp_path)
    for run_dir in finished:
        assert_same_weights(run_dir / "model.safetensors", whole / "model.safetensors")
        assert_same_metrics(run_dir, whole)


def test_a_run_killed_while_its_directory_is_made_leaves_none(tmp_path):
    """The directory appears whole, config.json inside, so the same command can simply be started again."""
    run_dir = tmp_path / "runs" / "tokenizer" / "early"
    code = ("import os, signal, sys; from store import runs; "
            "runs.write_text = lambda path, text: os.kill(os.getpid(), signal.SIGKILL); "
            "runs.create_run_dir(sys.argv[1], {'model': {}})")
    process = subprocess.run([sys.executable, "-c", code, str(run_dir)], cwd=REPO, capture_output=True, text=True)
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert not run_dir.exists()
    assert all(is_temporary(path) for path in run_dir.parent.iterdir())
    from store.runs import create_run_dir

    create_run_dir(run_dir, {"model": {}})  # the next writer there removes the staging of the killed one
    assert json.loads((run_dir / "config.json").read_text()) == {"model": {}}
    assert [path.name for path in run_dir.parent.iterdir()] == ["early"]
