"""Faults as users and their machines deal them, for every command that writes: SIGKILL at a random moment, Ctrl-C,
two writers of one output, a disk that fills up. Each leaves the complete output or nothing, says what happened in
one line, and the next command (or `--resume`) finishes the work. (Kills during training: test_random_kills.py.)"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY_CLASSIFIER_FLAGS, TINY_PRIOR, TINY_TOKENIZER, assert_same_weights, run_module
from store.index_maps import read_index_maps
from store.runs import lock_file, output_lock, owner_tag, remove_orphans

ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
HOST = owner_tag().rsplit("-", 1)[0]

pytestmark = pytest.mark.usefixtures("one_thread")


def start(module, args, log):
    """`python -m module args` started, its stderr to the file log (a pipe would fill with progress bars). Ctrl-C
    reaches it as at a terminal even where the tests run in the background (a shell's background jobs inherit
    SIGINT ignored, and Python then keeps it ignored)."""
    with open(log, "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, **ENV},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def staging(out):
    """The staging folders of out that lie beside it (store.runs.staged_folder's names)."""
    return sorted(Path(out).parent.glob(f".{Path(out).name}.*.tmp"))


def wait_for(condition, process, seconds=180):
    deadline = time.time() + seconds
    while not condition() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)


def lock_holder(out):
    """The holder's line in out's lock file, which output_lock writes once it holds the lock ('' before that: the
    file is made before the lock is taken)."""
    try:
        return lock_file(out).read_text().strip()
    except FileNotFoundError:
        return ""


@pytest.fixture
def living_process():
    """A process that lives while the test runs: staging it owns must survive every other command."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def gone_pid():
    """The id of a process that has ended."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


# ------------------------------------------------------------------------------------------ staging, locks (units)


def test_orphans_of_gone_processes_go_and_those_of_live_ones_stay(tmp_path, living_process, gone_pid, capsys):
    dead_folder = tmp_path / f".out.{HOST}-{gone_pid}-abc123.tmp"
    dead_file = tmp_path / f".model.safetensors.{HOST}-{gone_pid}-k2j3x9.tmp"
    live_folder = tmp_path / f".out.{HOST}-{living_process.pid}-def456.tmp"
    other_host = tmp_path / f".out.elsewhere_{HOST}-{gone_pid}-ghi789.tmp"  # its process cannot be asked
    for folder in (dead_folder, live_folder, other_host):
        folder.mkdir()
        (folder / "0.png").write_bytes(b"x" * 100)
    dead_file.write_bytes(b"y" * 10)
    (tmp_path / ".notes.tmp").write_text("not a staging name")  # someone else's file: not ours to judge

    assert sorted(remove_orphans(tmp_path)) == sorted([dead_folder, dead_file])
    assert live_folder.exists() and other_host.exists() and (tmp_path / ".notes.tmp").exists()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"note: removed 2 staging entries (110 bytes) in {tmp_path}"), err
    assert remove_orphans(tmp_path) == [] and capsys.readouterr().err == ""


HOLD = "import sys, time; from store.runs import output_lock\nwith output_lock(sys.argv[1]): time.sleep(600)"


def test_a_lock_refuses_a_second_writer_naming_the_first_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO)
    try:
        wait_for(lambda: lock_holder(out), holder)
        with pytest.raises(ValueError) as refused:
            with output_lock(out):
                raise AssertionError("the block of a refused lock ran")
        message = str(refused.value)
        assert "\n" not in message and f"process {holder.pid} on" in message and "wait for it" in message
    finally:
        holder.kill()
        holder.wait()
    assert lock_file(out).exists()  # a killed holder cannot remove it; the kernel released its lock
    with output_lock(out):
        assert f"process {os.getpid()} " in lock_file(out).read_text()
    err = capsys.readouterr().err
    assert f"was locked by process {holder.pid}" in err and "taken over" in err
    assert not lock_file(out).exists(), "released on leaving the block"
    with pytest.raises(RuntimeError), output_lock(out):
        raise RuntimeError("a failure inside")
    assert not lock_file(out).exists(), "released on an error too"


# ---------------------------------------------------------------------------------- every command that writes


def outputs(command, prior_run, tmp_path):
    """(module, args, out, check(out)) of a command writing a folder, sized to take a few seconds."""
    tokenizer = prior_run.parent.parent / "tokenizer" / "tiny"  # the conftest fixtures' runs
    out = tmp_path / "outputs" / command
    if command == "sample":
        return ("pipelines.sample", ["--prior", prior_run, "--n", 300, "--batch-size", 4, "--out", out], out,
                lambda o: len(list((o / "images").iterdir())) == 300 and (o / "sample.json").is_file())
    if command == "encode":
        return ("pipelines.encode", ["--tokenizer", tokenizer, "--images", "fashion-mnist", "--batch-size", 1,
                                     "--out", out], out,
                lambda o: len(read_index_maps(o, "train").maps) == 256 and (o / "meta.json").is_file())
    if command == "decode":
        return ("pipelines.decode", ["--tokenizer", tokenizer, "--tokens", tokenizer / "maps", "--split", "train",
                                     "--batch-size", 1, "--out", out], out,
                lambda o: len(list((o / "images").iterdir())) == 256 and (o / "decode.json").is_file())
    return ("pipelines.evaluate", ["--prior", prior_run, "--n-samples", 40, "--batch-size", 8, "--output-root",
                                   tmp_path / "classifiers", *TINY_CLASSIFIER_FLAGS, "--out", out], out,
            lambda o: (o / "report.json").is_file() and (o / "report.html").is_file())


COMMANDS = ["sample", "encode", "decode", "evaluate"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_writer_killed_at_a_random_moment_leaves_nothing_that_the_next_run_does_not_clear(
        command, prior_run, tmp_path, living_process):
    module, args, out, complete = outputs(command, prior_run, tmp_path)
    out.parent.mkdir(parents=True)
    live = out.parent / f".{out.name}.{HOST}-{living_process.pid}-abcdefgh.tmp"  # a live command's staging
    live.mkdir()
    (live / "half.png").write_bytes(b"x")
    rng, orphans = random.Random(f"kill {command}"), []
    for attempt in range(6):
        process = start(module, args, tmp_path / "killed.log")
        wait_for(lambda: [p for p in staging(out) if p != live], process)
        time.sleep(rng.uniform(0, 0.3))  # somewhere in the writing
        process.kill()
        status = process.wait()
        if status == 0 or out.exists():  # it finished writing first (the kill, if any, landed while it exited): a
            assert complete(out)        # complete output, as promised; again, to land a kill while it writes
            shutil.rmtree(out)
            continue
        assert status == -signal.SIGKILL, "a killed command left a visible output"
        orphans = [p for p in staging(out) if p != live]
        if orphans:
            break
    assert orphans, "no kill landed while the output was being written"

    result = run_module(module, *args, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert complete(out)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert any(f"note: removed {len(orphans)} staging" in line for line in notes), notes
    assert any("taken over" in line for line in notes), notes  # the lock the killed command held
    assert staging(out) == [live] and (live / "half.png").exists(), "another live command's staging was touched"
    assert not lock_file(out).exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_second_writer_of_one_out_is_refused_before_any_work_and_ctrl_c_leaves_nothing(
        command, prior_run, tmp_path):
    module, args, out, _ = outputs(command, prior_run, tmp_path)
    first = start(module, args, tmp_path / "first.log")
    try:
        wait_for(lambda: lock_holder(out), first)  # the lock taken, its holder written
        first.send_signal(signal.SIGSTOP)  # held at work while the second one starts
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
        second = run_module(module, *args, env=ENV)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"is being written by process {first.pid} on" in lines[0], lines
        first.send_signal(signal.SIGINT)  # Ctrl-C, handled as it goes on
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=120) == 130
        assert (tmp_path / "first.log").read_text().strip().splitlines()[-1] == "interrupted"
    finally:
        first.kill()
        first.wait()
    assert not out.exists() and not staging(out) and not lock_file(out).exists()


# --------------------------------------------------------------------------------------------- full disks


def test_a_sample_that_finds_no_room_writes_nothing_and_says_so_in_one_line(prior_run, tmp_path):
    out = tmp_path / "samples"
    # A file-size limit below the tokens file's size (64 grids of 7x7 bytes): the kernel refuses that write.
    limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))"
    result = subprocess.run([sys.executable, "-c", f"{limit}\nimport runpy, sys\nsys.argv[0] = 'sample'\n"
                             "runpy.run_module('pipelines.sample', run_name='__main__')",
                             "--prior", str(prior_run), "--n", "64", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, env={**os.environ, **ENV}, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no room to write {out} (") and "file-size limit" in last, last
    assert "nothing of samples was written" in last and "Traceback" not in result.stderr
    assert not out.exists() and not staging(out) and not lock_file(out).exists()


def fill_disk_after(module, args, file_name):
    """Run `python -m module args` with a file-size limit of 1 kB set once the file file_name has been written
    (store.runs.save_tensors) for the first time: every write after it that is larger is refused by the kernel."""
    program = (
        "import resource, runpy, sys\n"
        "import store.runs, training.state\n"
        "save = store.runs.save_tensors\n"
        "def save_then_fill(path, *args, **kwargs):\n"
        "    save(path, *args, **kwargs)\n"
        f"    if str(path).endswith({file_name!r}):\n"
        "        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "store.runs.save_tensors = training.state.save_tensors = save_then_fill\n"
        f"sys.argv[0] = {module!r}\n"
        f"runpy.run_module({module!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", program, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=300)


def test_a_training_run_that_finds_no_room_says_where_and_resumes_once_there_is_room(tokenizer_run, tmp_path):
    from pipelines import fit_prior

    flags = [*TINY_PRIOR, "--epochs", "2", "--checkpoint-every", "2", "--tokenizer", tokenizer_run,
             "--output-root", tmp_path / "runs"]
    result = fill_disk_after("pipelines.fit_prior", [*flags, "--run-name", "full"], "training_state.safetensors")
    run = tmp_path / "runs" / "prior" / "full"
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no room to write {run}/"), last
    assert f"resume {run} from its last checkpoint" in last and "file-size limit" in last, last
    assert not list(run.glob(".*.tmp")) and (run / "training_state.safetensors").is_file()
    assert not (run / "model.safetensors").exists()

    fit_prior.main(["--resume", run])  # room again
    fit_prior.main([*flags, "--run-name", "whole"])
    assert_same_weights(run / "model.safetensors", tmp_path / "runs" / "prior" / "whole" / "model.safetensors")


# --------------------------------------------------------------------------------------------- sources


def test_a_read_only_run_samples_into_a_writable_out_and_one_flipped_byte_is_refused(prior_run, tmp_path):
    source = tmp_path / "generator"
    shutil.copytree(prior_run, source)
    paths = [source, *source.rglob("*")]
    for path in paths:
        path.chmod(path.stat().st_mode & ~0o222)
    snapshot = lambda: {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in [source, *source.rglob("*")]}
    before = snapshot()
    try:
        result = run_module("pipelines.sample", "--prior", source, "--n", 4, "--out", tmp_path / "samples", env=ENV)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(list((tmp_path / "samples" / "images").iterdir())) == 4 and snapshot() == before

        weights = source / "tokenizer" / "model.safetensors"
        weights.chmod(0o644)
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0x01  # one bit of the last weight
        weights.write_bytes(bytes(data))
        result = run_module("pipelines.sample", "--prior", source, "--n", 4, "--out", tmp_path / "refused", env=ENV)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
        assert "is not the weights file its run finished with" in lines[0]
        assert not (tmp_path / "refused").exists() and not staging(tmp_path / "refused")
    finally:
        for path in paths:
            path.chmod(path.stat().st_mode | 0o200)


def test_a_tokenizer_whose_maps_find_no_room_resumes_to_the_maps_of_an_unbroken_run(fashion_dir, tmp_path):
    from pipelines import fit_tokenizer

    flags = [*TINY_TOKENIZER, "--epochs", "2", "--output-root", tmp_path / "runs"]
    result = fill_disk_after("pipelines.fit_tokenizer", [*flags, "--run-name", "full"], "model.safetensors")
    run = tmp_path / "runs" / "tokenizer" / "full"
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no room to write {run / 'maps'}/"), last
    assert f"resume {run} from its last checkpoint" in last, last
    assert not (run / "maps" / "meta.json").exists() and not list(run.rglob(".*.tmp"))

    fit_tokenizer.main(["--resume", run])  # room again
    fit_tokenizer.main([*flags, "--run-name", "whole"])
    whole = tmp_path / "runs" / "tokenizer" / "whole"
    assert_same_weights(run / "model.safetensors", whole / "model.safetensors")
    for split in ("train", "test"):
        assert (read_index_maps(run / "maps", split).maps == read_index_maps(whole / "maps", split).maps).all()


@pytest.mark.parametrize("stage", ["tokenizer", "prior"])
def test_ctrl_c_in_a_fit_is_one_line_and_status_130_and_the_run_resumes(stage, tokenizer_run, tmp_path):
    from pipelines import fit_prior, fit_tokenizer

    # Epochs enough that the Ctrl-C, sent once the first checkpoint is seen, lands in the run on a busy machine too.
    flags = [*TINY_TOKENIZER, "--epochs", "12"] if stage == "tokenizer" else \
        [*TINY_PRIOR, "--epochs", "12", "--tokenizer", tokenizer_run]
    flags += ["--checkpoint-every", "2", "--output-root", tmp_path / "fits", "--run-name", "stopped"]
    run = tmp_path / "fits" / stage / "stopped"
    process = start(f"pipelines.fit_{stage}", flags, tmp_path / "fit.log")
    try:
        wait_for(lambda: (run / "training_state.safetensors").exists(), process)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130, (tmp_path / "fit.log").read_text()[-3000:]
    finally:
        process.kill()
        process.wait()
    assert (tmp_path / "fit.log").read_text().strip().splitlines()[-1] == "interrupted"
    assert not lock_file(run).exists() and not list(run.rglob(".*.tmp"))
    (fit_tokenizer if stage == "tokenizer" else fit_prior).main(["--resume", run])
    assert (run / "results.json").is_file()
