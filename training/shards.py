"""Work shared across the processes of `accelerate launch` / `torchrun`: batch k of a job is computed by process
k % num_processes, and every batch's result reaches the main process in the original order, so that it writes the
same files, byte for byte, as one process would. Under one process this is a plain loop over the batches.
"""

import math

from accelerate.utils import gather_object


def batches_in_order(accelerator, count, batch_size, work):
    """Yield (start, result) for each batch [start, min(start + batch_size, count)) of range(count), in order.

    work(start, stop) -> result computes one batch; its result should hold CPU tensors or numpy arrays (it is
    pickled to the other processes through the process group). Every process must iterate the whole generator
    (each round of batches is one collective exchange); every process receives every result, so that all of them
    can go on with the same data, e.g. a sampler's decoded images. accelerator None: one process. A ValueError or
    OSError of one process's batch is raised on every process (a bad argument or an unreadable file is one line,
    not a hang); the first one in batch order wins.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, not {batch_size}")
    processes, rank = (1, 0) if accelerator is None else (accelerator.num_processes, accelerator.process_index)
    batches = math.ceil(count / batch_size)
    for first in range(0, batches, processes):
        mine = first + rank
        result = failure = None
        if mine < batches:
            start = mine * batch_size
            try:
                result = work(start, min(start + batch_size, count))
            except (ValueError, OSError) as error:
                if processes == 1:
                    raise
                # Raised on every process, not only here: the others would wait for this one's share forever.
                failure = (type(error).__name__, str(error))
        results = gather_object([(result, failure)]) if processes > 1 else [(result, failure)]
        for name, message in (f for _, f in results if f is not None):
            raise (OSError if name != "ValueError" else ValueError)(message)
        for k, (batch_result, _) in enumerate(results[:batches - first], start=first):
            yield k * batch_size, batch_result
