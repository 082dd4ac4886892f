"""Files and folders written whole or not at all.

Everything the pipeline writes that another run, a user or the Hub upload reads (configs,
checkpoints, exports, metrics, cards, statistics, downloads) goes through `staged`: it is
written under a temporary sibling name and moved into place only when complete. A kill, a full
disk or an exception leaves the previous version (or nothing), never half a file. Temporary
names start with "." and end with ".tmp", so listings of checkpoints and the Hub upload skip them.
"""

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def staging_name(path: Path) -> Path:
    """The temporary sibling that `staged` writes `path` under."""
    return path.with_name(f".{path.name}.tmp")


def remove(path: Path) -> None:
    """Remove a file or a folder tree, if it exists."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


@contextmanager
def staged(path, folder: bool = False):
    """Yield a temporary path to write `path` into (a new empty folder if `folder`); on success move it
    onto `path` (replacing what was there), on any error remove it and re-raise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_name(path)
    remove(staging)
    if folder:
        staging.mkdir()
    try:
        yield staging
        if folder and path.is_dir():
            shutil.rmtree(path)  # a folder cannot be renamed onto a non-empty one
        os.replace(staging, path)
    except BaseException:
        remove(staging)
        raise


def write_text(path, text: str) -> None:
    with staged(path) as partial:
        partial.write_text(text, encoding="utf-8")


def write_json(path, value) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")
