"""Runs: a folder of images, manifest and bank that a ``sparke generate`` fills, resumes and evaluates.

- ``config``: what defines a run (prompts, ``RunConfig``, its plan of batches and seeds);
- ``folder``: the run folder's files (settings, manifest, images, bank), plain file I/O;
- ``model``: the device, dtype and pipeline of a run;
- ``session``: a run being made: open, reconcile, restore and roll back its folder and bank;
- ``batch``: one batch (the pipeline call, its images and bank rows, its commit), for both drivers;
- ``generation``: one process makes the batches of a run and commits them (and names all of the above);
- ``distributed``: the same across processes with one shared bank;
- ``launch``: ``generate``, which picks one of the two;
- ``lock``: one writer per run folder (``DIR/.sparke.lock``);
- ``repair``: ``sparke repair``, a manifest rebuilt from the images and the run's settings;
- ``evaluation``: the diversity and fidelity metrics of a finished run.
"""

from .config import (
    PromptEntry,
    RunConfig,
    RunError,
    WorkItem,
    check_required,
    config_differences,
    image_seed,
    plan,
    read_prompts,
    unresolved_keys,
)
from .folder import (
    BANK_FILE,
    IMAGES_DIR,
    LOCK_FILE,
    MANIFEST_FILE,
    RUN_FILE,
    RunFolder,
    atomic_write,
    file_sha256,
    file_stamp,
    image_file,
    repair_command,
)
from .launch import generate
from .lock import RunLock
from .repair import repair

__all__ = [
    "BANK_FILE",
    "IMAGES_DIR",
    "LOCK_FILE",
    "MANIFEST_FILE",
    "RUN_FILE",
    "PromptEntry",
    "RunConfig",
    "RunError",
    "RunFolder",
    "RunLock",
    "WorkItem",
    "atomic_write",
    "check_required",
    "config_differences",
    "unresolved_keys",
    "file_sha256",
    "file_stamp",
    "generate",
    "image_file",
    "image_seed",
    "plan",
    "read_prompts",
    "repair",
    "repair_command",
]
