"""Run folders by name: a folder on this machine, or a Hugging Face Hub repository holding one (a run folder is
complete and portable, so sharing a run is uploading its folder).

A Hub repository is fetched with huggingface_hub.snapshot_download into the Hugging Face cache (HF_HUB_CACHE) and
read from there; with HF_HUB_OFFLINE=1, or no network, a repository already in the cache is used as it is. Only
what loading, sampling and evaluating read is fetched: never a training state or a run's index maps.
"""

import re
from pathlib import Path

from store.runs import LOCAL_FILES, check_run_dir

# A Hub repository id: "owner/name" (letters, digits, "-", "_", "."), optionally "@revision".
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# What a shared run needs beyond its config and weights; the rest of a run folder (its own, or its tokenizer's
# copy's) stays behind.
NOT_FETCHED = [*LOCAL_FILES, *(f"*/{pattern}" for pattern in LOCAL_FILES)]


def is_hub_id(name):
    return HUB_ID.match(str(name)) is not None


def run_folder(name):
    """The local folder of a run named by a path, or by a Hub repository id ("owner/name[@revision]") when no such
    path exists here; one-line ValueErrors for a missing folder, an unknown repository or one not cached offline."""
    path = Path(name)
    if path.exists() or not is_hub_id(name):
        check_run_dir(path)
        return path
    repo_id, _, revision = str(name).partition("@")
    # Imported here: a command that reads local runs only does not pay for the Hub client.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, ignore_patterns=NOT_FETCHED))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        raise ValueError(f"{name} is not a folder here, and the Hugging Face Hub repository {repo_id} is not in the "
                         f"cache while offline or unreachable ({type(error).__name__})") from None
    except HfHubHTTPError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{name} is not a folder here, and the Hugging Face Hub could not give it ({first})") \
            from None
