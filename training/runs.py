"""Starting a run or resuming one, across the processes of `accelerate launch` / `torchrun`: a new run's folder is
decided by the main process and made whole with its config.json; a killed run's folder is cleaned of what its
writers left. Every process works in the same run folder, which the main process holds locked meanwhile."""

import contextlib
import time
from pathlib import Path

from accelerate.utils import broadcast_object_list

from store.runs import (RESULTS_FILE, WEIGHTS_HASHES, NoRoomError, OutputBusyError, create_run_dir, new_run_dir,
                        output_lock, remove_stale_temporaries, weights_hashes, write_json)


def decided_by_main(accelerator, decide):
    """decide() on the main process only, its answer handed to every process (e.g. a new run's directory)."""
    answer = [decide() if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(answer)
    return answer[0]


@contextlib.contextmanager
def open_run_dir(accelerator, stage, config, *, resume_dir=None, output_root=None, run_name=None, copies=None):
    """with open_run_dir(...) as run_dir: the run folder to train in, locked by the main process while the block
    runs (a second process training the same run is refused before it starts): resume_dir, cleaned of the temporary
    files a killed writer left, or a new OUTPUT_ROOT/<stage>/<run_name or a timestamp> made whole with config.json
    (config: a dict) and copies ({path inside: file}, as store.runs.create_run_dir); config may also be a function
    of the new folder, for a config that records paths relative to it. A write in the block that finds no room says
    that the run can be resumed."""
    with contextlib.ExitStack() as held:
        main = accelerator.is_main_process
        if resume_dir is not None:
            held.enter_context(output_lock(resume_dir, main))
            if main:
                remove_stale_temporaries(resume_dir)
            run_dir = resume_dir
        else:
            run_dir = decided_by_main(accelerator, lambda: _claim_new_run(held, output_root, stage, run_name))
            if main:
                create_run_dir(run_dir, config(run_dir) if callable(config) else config, copies=copies)
        accelerator.wait_for_everyone()
        try:
            yield run_dir
        except NoRoomError as error:
            raise error.with_advice(f"the run is kept: once there is room, resume {run_dir} from its last "
                                    "checkpoint") from None


def _claim_new_run(held, output_root, stage, run_name):
    """A new run's folder, its lock entered into held: processes started in the same second take a timestamp each."""
    while True:
        run_dir = new_run_dir(output_root, stage, run_name)
        try:
            held.enter_context(output_lock(run_dir))
        except OutputBusyError:
            if run_name:
                raise
            time.sleep(0.05)  # another process is making this one: the next name is free once it exists
            continue
        if not run_dir.exists():
            return run_dir
        held.close()  # made and released by another process in between


def finish_run(run_dir, results):
    """Write the run's results.json, last: results (a dict), and the SHA-256 of each weights file the run finished
    with, which loading checks (a file changed since is refused)."""
    write_json(Path(run_dir) / RESULTS_FILE, {**results, WEIGHTS_HASHES: weights_hashes(run_dir)})
