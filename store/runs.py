"""Run directories: atomic writes, staged folders, weights as safetensors beside a JSON config, finding runs.

A run lives in checkpoints/<stage>/<run-name>/. Every file is written to a temporary name in the same folder and
renamed into place, so a killed process leaves either the old complete file or the new complete file (and perhaps
a temporary .NAME.<host>-<pid>-XXXX.tmp, which no reader looks at, and which the next writer in that folder removes
once its process is gone). The run directory itself appears the same way, already holding its config.json, so any
run directory can be resumed. A command's output is locked while it works (output_lock): a second writer of the
same output is refused before it starts.
"""

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
import typing
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: outputs are not locked there
    fcntl = None

from safetensors import SafetensorError
from safetensors.torch import load_file, save
from tqdm import tqdm

# The files of a run folder. The weights, and the exponential moving average of them that a run keeping one writes
# beside them:
MODEL_WEIGHTS = "model.safetensors"
AVERAGED_WEIGHTS = "model_ema.safetensors"
CONFIG_FILE = "config.json"  # the resolved config: every knob of the run, what a resumed run and loading read
RESULTS_FILE = "results.json"  # the figures it finished with, and the SHA-256 of its weights files
METRICS_FILE = "metrics.jsonl"  # a line per log window and evaluation: the training curves
STATE_FILE = "training_state.safetensors"  # weights, optimizer and random state at the last checkpoint
MAPS_FOLDER, META_FILE = "maps", "meta.json"  # a tokenizer run's index maps, described by their meta.json
# What a run shares (exported, uploaded, or carried by a prior run as its tokenizer), beside the weights it is used
# with: the maps' meta.json carries the codes' usage histograms, the maps themselves stay behind.
SHARED_FILES = (CONFIG_FILE, RESULTS_FILE, METRICS_FILE, f"{MAPS_FOLDER}/{META_FILE}")
# What stays behind: training state and maps (for resuming and for training a prior), tracker logs, pictures, and
# hidden files (staging, locks).
LOCAL_FILES = (STATE_FILE, f"{MAPS_FOLDER}/*.npy", "trackers/*", "*.png", ".*")
# The copy of its tokenizer run that a prior run carries (RUN/tokenizer/): a prior run is a whole generator.
TOKENIZER_COPY = "tokenizer"
# results.json's record of the SHA-256 of each weights file the run finished with: a file that differs is refused.
WEIGHTS_HASHES = "weights_sha256"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory):
    """Make a rename in `directory` durable (the file's own fsync does not cover its directory entry)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A staging file or folder: .NAME.<host>-<pid>-<random>.tmp, so that whoever finds it can tell whether its owner
# still runs (the host reduced to letters, digits and _, as owner_tag writes it).
STAGING_NAME = re.compile(r"\..+\.(?P<host>\w+)-(?P<pid>\d+)-[^.]*\.tmp")


def note(message):
    """One line on stderr, on a line of its own even while a progress bar is drawn."""
    tqdm.write(f"note: {message}", file=sys.stderr)


def owner_tag():
    """This process, as the names of its staging files carry it: <host>-<pid>."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', socket.gethostname())}-{os.getpid()}"


def process_alive(pid):
    """Whether the process of this id runs on this machine (another user's process counts as running)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _staging_path(path):
    """A new staging name beside path, .NAME.<host>-<pid>-<random>.tmp, not made yet: a writer makes it inside the
    block that removes it, so that a Ctrl-C landing just after the entry is made (tempfile's mkstemp and mkdtemp
    return its name only a few steps later) still finds it to remove."""
    return Path(path).parent / f".{Path(path).name}.{owner_tag()}-{secrets.token_hex(4)}.tmp"


def remove_orphans(folder):
    """Remove the staging files and folders in folder that processes of this machine left when they were killed
    (their process is gone); one line on stderr says what went. A live process's staging, and another machine's
    (whose processes cannot be asked), stay. Returns the paths removed."""
    host, removed, size = owner_tag().rsplit("-", 1)[0], [], 0
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(".tmp")]
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = STAGING_NAME.fullmatch(entry.name)
        if match is None or match["host"] != host or process_alive(match["pid"]):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                size += sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
                shutil.rmtree(path)
            else:
                size += entry.stat(follow_symlinks=False).st_size
                path.unlink()
        except FileNotFoundError:  # another writer removed it first
            continue
        removed.append(path)
    if removed:
        note(f"removed {len(removed)} staging {'entry' if len(removed) == 1 else 'entries'} ({size:,} bytes) in "
             f"{folder} that killed processes left: {', '.join(p.name for p in removed[:3])}"
             f"{' ...' if len(removed) > 3 else ''}")
    return removed


# A write refused for want of room: a full disk, a full quota, or a file over the process's file-size limit.
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class NoRoomError(OSError):
    """A write that found no room (NO_ROOM), said in one line: the path, the bytes it needed where known, the bytes
    free there, and what to do. Writers above add what the user can do next (with_advice)."""

    def __init__(self, code, message):
        super().__init__(code, message)
        self.message = message

    def __str__(self):
        return self.message

    def with_advice(self, advice):
        return NoRoomError(self.errno, f"{self.message}; {advice}")


def nearest_existing(path):
    """path, or the nearest of its parents that exists: where a path yet to be made would be made."""
    return next(p for p in (Path(path), *Path(path).parents) if p.exists())


def no_room(code, path, needed=None, left="nothing of it was written"):
    """The NoRoomError of an errno in NO_ROOM met while writing path."""
    stats = os.statvfs(nearest_existing(path))
    needs = f"{needed:,} bytes, " if needed else ""
    if code == errno.EFBIG:
        cause, advice = "over this process's file-size limit", "raise the limit (ulimit -f), or write elsewhere"
    else:
        cause, advice = "no space left", "free some space, or write elsewhere"
    return NoRoomError(code, f"no room to write {path} ({needs}{stats.f_bavail * stats.f_frsize:,} bytes free there: "
                             f"{cause}): {left}; {advice}")


@contextlib.contextmanager
def atomic_path(path, size=None):
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`. A write that finds no
    room is a NoRoomError naming path and size (the bytes it writes, where the caller knows them); the file at path,
    if any, stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent)
    tmp = str(_staging_path(path))
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        yield tmp
        # The staging file is made 0600 (and a writer may have replaced the file); the finished file gets the mode an
        # ordinary open() would give it.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except OSError as error:
        if error.errno not in NO_ROOM or isinstance(error, NoRoomError):
            raise
        raise no_room(error.errno, path, size, left=f"{path.name} was left as it was") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temporaries(run_dir):
    """Delete the temporary files that writers killed mid-write left in a run directory (and its sub-folders)."""
    for path in Path(run_dir).rglob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)


def write_text(path, text):
    data = text.encode()
    with atomic_path(path, len(data)) as tmp:
        Path(tmp).write_bytes(data)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path):
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not valid JSON") from None


def check_run_dir(run_dir, advice=""):
    """A one-line ValueError when run_dir is not a folder: missing (with advice), or a file."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir} is a file, not a run directory")
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist{advice}")


def check_resumable(run_dir):
    """A one-line ValueError, with advice, when the run directory to resume does not exist."""
    check_run_dir(run_dir, ", so there is nothing to resume (a run killed while starting leaves none: start it again)")


def save_tensors(path, tensors, metadata=None):
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # Not save_file: it writes through a temporary file of its own (.tmpXXXXXX), which a kill would leave behind.
    data = save(tensors, metadata=metadata)
    with atomic_path(path, len(data)) as tmp:
        Path(tmp).write_bytes(data)


def save_run_weights(run_dir, weights, averaged=None):
    """A finished run's weights (a state dict), and the average of them it kept, if any, beside them."""
    save_tensors(Path(run_dir) / MODEL_WEIGHTS, weights)
    if averaged is not None:
        save_tensors(Path(run_dir) / AVERAGED_WEIGHTS, averaged)


def load_tensors(path):
    """Read a safetensors file (never a pickle); a missing, truncated or foreign file is a one-line ValueError."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"weights file {path} is missing")
    try:
        with ctrl_c_deferred():
            return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"weights file {path} is not a readable safetensors file ({error})") from None


@contextlib.contextmanager
def ctrl_c_deferred():
    """Ctrl-C held back while the block runs and acted on as soon as it ends (by the SIGINT handler that was there:
    Python's raises KeyboardInterrupt): for a library call that turns an interrupt into an error of its own (torch
    reports a safetensors read interrupted by Ctrl-C as "could not determine the shape of object type ...").
    Python handles signals in the main thread only; elsewhere, or where SIGINT is ignored, the block runs as it
    is."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):
        yield
        return
    caught = []
    held = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, held)
        if caught:
            signal.raise_signal(signal.SIGINT)


def weights_file(run_dir, weights=None):
    """The weights file a run is used with (sampled, encoded, evaluated): its averaged weights when it kept them,
    else the raw ones; weights names a file to force one."""
    if weights is not None:
        return weights
    return AVERAGED_WEIGHTS if (Path(run_dir) / AVERAGED_WEIGHTS).exists() else MODEL_WEIGHTS


def path_from(folder, path):
    """How a file in folder records a path it read: relative to folder, so that what ships names no folder of the
    machine it was made on and a run moved together with its inputs still finds them (absolute only where no
    relative path exists, as across Windows drives)."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    except ValueError:
        return str(Path(path).resolve())


def recorded_path(folder, recorded):
    """The path that a file in folder recorded with path_from (an absolute one, from older runs, as it is)."""
    return Path(folder) / recorded


def tokenizer_run_of(folder):
    """A tokenizer run's folder as it is, or the copy of its tokenizer that a prior run's folder carries."""
    carried = Path(folder) / TOKENIZER_COPY
    return carried if (carried / CONFIG_FILE).is_file() else Path(folder)


def weights_hashes(run_dir):
    """{weights file name: its SHA-256} of the weights files a run directory holds, for its results.json."""
    return {name: file_sha256(Path(run_dir) / name) for name in (MODEL_WEIGHTS, AVERAGED_WEIGHTS)
            if (Path(run_dir) / name).is_file()}


def check_weights_hash(run_dir, weights):
    """The SHA-256 of a run's weights file; a one-line ValueError when its results.json recorded another (a file
    changed or swapped since the run finished, or a download that went wrong). Runs that recorded none pass."""
    digest = file_sha256(Path(run_dir) / weights)
    results = Path(run_dir) / RESULTS_FILE
    recorded = (read_json(results).get(WEIGHTS_HASHES) or {}).get(weights) if results.is_file() else None
    if recorded is not None and recorded != digest:
        raise ValueError(f"{Path(run_dir) / weights} is not the weights file its run finished with (SHA-256 "
                         f"{digest[:12]}..., results.json records {recorded[:12]}...)")
    return digest


def read_model_files(run_dir, weights=MODEL_WEIGHTS):
    """(config dict, state dict) of a run directory: config.json and its weights file, checked against the hash
    results.json recorded."""
    check_run_dir(run_dir)
    config, state = read_json(Path(run_dir) / CONFIG_FILE), load_tensors(Path(run_dir) / weights)
    check_weights_hash(run_dir, weights)
    return config, state


def load_run_model(run_dir, build, weights=MODEL_WEIGHTS):
    """(config.json as a dict, the model in eval mode) of a run directory: build(config dict) -> an nn.Module, into
    which the weights file is loaded strictly."""
    config, state = read_model_files(run_dir, weights)
    model = build(config)
    load_state_strict(model, state, Path(run_dir) / weights)
    return config, model.eval()


def config_from_dict(cls, values, source, kind):
    """cls(**values), with fields that are dataclasses built from their nested dicts the same way, and keys a class
    lists in FORMER_NAMES read under their new names; a missing or unknown key is one ValueError naming source
    (e.g. "RUN/config.json is not a prior run config (...)")."""
    try:
        if not isinstance(values, dict):
            raise TypeError(f"expected a JSON object, found {type(values).__name__}")
        hints = typing.get_type_hints(cls)
        # Fields renamed since older config.json files were written: {former name: name now}.
        former_names = getattr(cls, "FORMER_NAMES", {})
        built = {}
        for name, value in values.items():
            name = former_names.get(name, name)
            # A field typed as a dataclass, or as one or None (X | None), is built from its nested dict.
            nested = [t for t in (hints.get(name), *typing.get_args(hints.get(name))) if dataclasses.is_dataclass(t)]
            if nested and isinstance(value, dict):
                value = config_from_dict(nested[0], value, source, kind)
            built[name] = value
        return cls(**built)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{source} is not a {kind} config ({error})") from None


class RunConfig:
    """The base of a stage's run config (a dataclass of everything its config.json holds): one load(run_dir) that
    gives the one-line error for a missing, unreadable or foreign config, and to_dict() for writing it."""
    kind = "run"  # what the error calls it: "... is not a <kind> config"

    @classmethod
    def load(cls, run_dir):
        check_run_dir(run_dir)
        path = Path(run_dir) / CONFIG_FILE
        return config_from_dict(cls, read_json(path), path, cls.kind)

    def to_dict(self):
        return dataclasses.asdict(self)


def load_state_strict(model, state, path):
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise ValueError(f"weights in {path} do not fit the model in its config.json ({first[-1].strip()})") from None


def refuse_existing(path, overwrite=False, exists="pass `overwrite`, or another `out`"):
    """A one-line ValueError (with the advice `exists`) when path exists and is not to be overwritten."""
    if Path(path).exists() and not overwrite:
        raise ValueError(f"{path} exists already: {exists}")


def check_output_folder(path, overwrite=False, inputs=()):
    """Before any work: a one-line ValueError when the output folder path is, lies inside or holds one of the
    inputs (what the command reads: overwrite or not, a command never replaces or deletes its own input), is a
    file, exists (unless overwrite), or lies where nothing could be written."""
    out = Path(path).resolve()
    for source in inputs:
        if source is None:
            continue
        read = Path(source).resolve()
        if out == read or read in out.parents or out in read.parents:
            relation = "is" if out == read else "lies inside" if read in out.parents else "holds"
            raise ValueError(f"`out` {path} {relation} {source}, which is read: choose another `out`")
    if Path(path).exists() and not Path(path).is_dir():
        raise ValueError(f"`out` {path} is a file, not a folder: choose another `out`")
    refuse_existing(path, overwrite)
    check_can_write_in(Path(path).parent)


def check_disk_space(folder, needed, files, what, advice):
    """A one-line ValueError when `files` new files holding `needed` bytes in all (of `what`) cannot fit in the
    file system of folder (made if need be): its free bytes (each file takes at least one block) or free inodes."""
    existing = nearest_existing(folder)
    stats = os.statvfs(existing)
    free, free_files = stats.f_bavail * stats.f_frsize, stats.f_favail
    needed = max(needed, files * stats.f_frsize)
    if needed > free or (stats.f_files and files > free_files):
        raise ValueError(f"{what} need at least {needed:,} bytes in {files:,} files in {existing}, where "
                         f"{free:,} bytes and {free_files:,} files are free: {advice}")


@contextlib.contextmanager
def staged_folder(path, overwrite=False, exists="pass `overwrite`, or another `out`"):
    """Yield an empty temporary folder beside path; when the block succeeds it takes an ordinary folder's mode and
    is renamed onto path, so path is never seen half-written. An existing path is refused (with the advice
    `exists`) before and after the block, unless overwrite, when it is replaced."""
    path = Path(path)
    refuse_existing(path, overwrite, exists)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent)
    staging = _staging_path(path)
    try:
        os.mkdir(staging)  # 0o777 less the umask, as for any folder
        yield staging
        refuse_existing(path, overwrite, exists)
        if path.exists():
            shutil.rmtree(path)
        os.rename(staging, path)
        _fsync_directory(path.parent)
    except OSError as error:  # a file of the folder, or the folder itself, found no room
        if error.errno not in NO_ROOM:
            raise
        raise no_room(error.errno, path, left=f"nothing of {path.name} was written") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging)


class OutputBusyError(ValueError):
    """Another process holds the lock of the output asked for (output_lock)."""


def lock_file(path):
    """The lock of an output path (output_lock): a hidden .NAME.lock beside it, never inside what it names."""
    return Path(path).parent / f".{Path(path).name}.lock"


@contextlib.contextmanager
def output_lock(path, hold=True):
    """Hold the lock of the output path while the block runs (hold=False: a process of a group that does not write,
    the block runs unlocked). A second process asking for the same path, while the first holds it, gets a one-line
    ValueError naming the holder before it does any work. The lock is the kernel's (flock), so it is released on
    every exit, a kill included; the file a killed holder leaves is taken over, with a note on stderr, by the next
    writer. On systems without flock (Windows) the block runs unlocked."""
    if not hold or fcntl is None:
        yield
        return
    lock = lock_file(path)
    check_can_write_in(lock.parent)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, as open() does
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputBusyError(f"{path} is being written by {holder}: wait for it to end, or write elsewhere") \
                from None
        # The holder before us may have removed the file between our open and our flock: lock the file at the path.
        try:
            here = os.stat(lock)
        except FileNotFoundError:
            here = None
        if here is not None and os.path.samestat(here, os.fstat(fd)):
            break
        os.close(fd)
    try:
        left = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if left:
            note(f"{path} was locked by {left}, which ended without releasing it: taken over")
        holder = (f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))[:200]})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def create_run_dir(run_dir, config, copies=None):
    """Make run_dir with config.json inside, atomically: a run killed while starting leaves no directory behind
    (rerun the same command), and every run directory there is holds the config that resuming it needs.

    copies: {path inside the run: a file to copy there}, for files the run carries from elsewhere (a file that does
    not exist is left out)."""
    with staged_folder(run_dir, exists="pass `resume` to continue it, or another name") as staging:
        for inside, source in (copies or {}).items():
            if Path(source).is_file():
                (staging / inside).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, staging / inside)
        write_json(staging / CONFIG_FILE, config)


def new_run_dir(root, stage, name=None):
    """A fresh directory under root/stage: the given name (which must be new), or a timestamp."""
    parent = Path(root) / stage
    check_can_write_in(parent)
    if name:
        if (parent / name).exists():
            raise ValueError(f"run {parent / name} exists already: pass `resume` to continue it, or another name")
        return parent / name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir, suffix = parent / stamp, 1
    while run_dir.exists():
        suffix += 1
        run_dir = parent / f"{stamp}-{suffix}"
    return run_dir


def check_can_write_in(path):
    """A one-line ValueError, before any work is done, when nothing could be written in the folder path (made if
    need be): the nearest existing path on its way is a file, or a folder this process may not write into."""
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise ValueError(f"cannot write in {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write in {path}: {existing} is not writable")


def newest_run(root, stage, must_have=MODEL_WEIGHTS):
    """The most recently modified complete run under root/stage."""
    parent = Path(root) / stage
    runs = [d for d in parent.iterdir() if (d / must_have).exists()] if parent.is_dir() else []
    if not runs:
        raise ValueError(f"no finished {stage} run under {parent}: train one first")
    return max(runs, key=lambda d: (d / must_have).stat().st_mtime)


def write_metrics(path, records):
    """Rewrite the metrics log whole (it is small), so a kill never leaves half a line."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_metrics(path):
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
