"""Starting a run or resuming one, across the processes of `accelerate launch` / `torchrun`: a new run's folder is
decided by the main process and made whole with its config.json; a killed run's folder is cleaned of what its
writers left. Every process leaves with the same run folder."""

from accelerate.utils import broadcast_object_list

from store.runs import create_run_dir, new_run_dir, remove_stale_temporaries


def decided_by_main(accelerator, decide):
    """decide() on the main process only, its answer handed to every process (e.g. a new run's directory)."""
    answer = [decide() if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(answer)
    return answer[0]


def open_run_dir(accelerator, stage, config, *, resume_dir=None, output_root=None, run_name=None, copies=None):
    """The run folder to train in: resume_dir, cleaned of the temporary files a killed writer left, or a new
    OUTPUT_ROOT/<stage>/<run_name or a timestamp> made whole with config.json (config: a dict) and copies
    ({path inside: file}, as store.runs.create_run_dir); config may also be a function of the new folder, for a
    config that records paths relative to it."""
    run_dir = resume_dir if resume_dir is not None else decided_by_main(
        accelerator, lambda: new_run_dir(output_root, stage, run_name))
    if accelerator.is_main_process:
        if resume_dir is not None:
            remove_stale_temporaries(run_dir)
        else:
            create_run_dir(run_dir, config(run_dir) if callable(config) else config, copies=copies)
    accelerator.wait_for_everyone()
    return run_dir
