"""Files and folders: written whole or not at all, read with their size and shape checked, and one run per folder.

Everything the pipeline writes that another run, a user or the Hub upload reads (configs,
checkpoints, exports, metrics, cards, statistics, the data cache, downloads) goes through `staged`:
it is written under a temporary sibling name, unique to the process, and moved into place only when
complete. A kill, a full disk or an exception leaves the previous version (or nothing), never half a
file. Temporary names start with "." and end with ".tmp", so listings of checkpoints and the Hub
upload skip them. Every JSON file is read through `read_json`, which bounds its size and depth.
"""

import errno
import fcntl
import glob
import json
import os
import shutil
import socket
import time
import warnings
from contextlib import contextmanager, suppress
from fnmatch import fnmatch
from pathlib import Path

from safetensors import SafetensorError

from .errors import PipelineError


MAX_JSON_BYTES = 16 * 2**20  # the largest JSON file the pipeline writes is an optimizer's param groups
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)  # a full disk, a quota, a file size limit, read-only


def write_failure(error: BaseException):
    """Why a write failed, when `error` or what raised it is a full disk, a quota, a file size limit or a read-only
    file system (safetensors' Rust writer reports these as text: "... (os error 28)"); else None."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in FULL:
            return error.strerror
        if isinstance(error, SafetensorError) and "os error" in str(error):
            return str(error).split("I/O error: ")[-1]
        error = error.__cause__ or error.__context__
    return None


def staging_name(path: Path) -> Path:
    """The temporary sibling that `staged` writes `path` under: unique to this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove(path: Path) -> None:
    """Remove a file, a link or a folder tree, if it exists (a link is removed, never what it points to)."""
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
    for left in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a killed process: removed
        pid = left.name[len(path.name) + 2 : -len(".tmp")]
        if left == staging or (pid.isdigit() and not _alive(int(pid))):
            remove(left)
    if folder:
        staging.mkdir()
    try:
        yield staging
        if folder and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # a folder cannot be renamed onto a non-empty one
        os.replace(staging, path)
    except BaseException:
        remove(staging)
        raise


FILE, ANYTHING = "file", "anything"  # layout entries: a regular file; a folder whose contents are all the writer's


def foreign_entries(folder: Path, layout: dict) -> list[str]:
    """The entries of `folder`, hidden ones included, that `layout` does not name, as paths relative to it. `layout`
    maps name patterns (fnmatch) to FILE, ANYTHING, or the layout of a folder's own entries; staging names (".*.tmp")
    are every writer's. A link is always foreign: nothing is ever read or removed through it."""
    foreign = []
    for path in sorted(Path(folder).iterdir()):
        rule = next((rule for pattern, rule in layout.items() if fnmatch(path.name, pattern)), None)
        if fnmatch(path.name, ".*.tmp") and not path.is_symlink():
            continue
        if isinstance(rule, dict) and path.is_dir() and not path.is_symlink():
            foreign += [f"{path.name}/{name}" for name in foreign_entries(path, rule)]
        elif path.is_symlink() or rule is None or isinstance(rule, dict) or (rule == FILE and not path.is_file()):
            kind = " (a symbolic link)" if path.is_symlink() else "/" if path.is_dir() else ""
            foreign.append(path.name + kind)
    return foreign


def refuse_foreign(folder: Path, layout: dict, owner: str, advice: str) -> None:
    """Raise PipelineError naming (the first five of) the entries of `folder` that `layout` does not name, if any."""
    foreign = foreign_entries(folder, layout) if Path(folder).is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise PipelineError(f"output_dir: {folder} holds files that are not {owner} ({shown}); {advice}")


def check_writable(folder: Path) -> Path:
    """`folder` can be made and written: its nearest existing ancestor (or itself) is a folder that takes a file
    (checked by writing one there and removing it). Nothing is made, so runs started together into one new folder do
    not race here (FolderLock decides between them). Returns that ancestor."""
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        raise PipelineError(f"output_dir: {existing} exists and is not a folder")
    probe = existing / f".write-test.{os.getpid()}.tmp"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PipelineError(f"output_dir: cannot write to {folder} ({error.strerror or error})") from None
    return existing


def claim_folder(folder: Path, layout: dict, *, overwrite: bool, resuming: bool) -> list[str]:
    """A run writes only into an empty folder or one that holds nothing but a run's files (`layout`, hidden files
    included); anything else is refused, naming it, whatever the flags. A new run over an earlier one (its export,
    samples, metrics, checkpoints) needs `overwrite`, which removes exactly that run's files first, so that no grid,
    metric or weights of the earlier run are ever shown as the new one's. Returns the names it removed."""
    refuse_foreign(folder, layout, "a run's of this pipeline", "choose an empty or new --output_dir, or move them "
                   "out (--overwrite_output_dir removes only a run's own files)")  # fmt: skip
    earlier = [path for path in sorted(folder.iterdir()) if path.name != ".lock" and not path.name.endswith(".tmp")]
    if resuming or not earlier:
        return []
    names = [path.name for path in earlier]
    if not overwrite:
        raise PipelineError(
            f"output_dir: {folder} holds an earlier run ({', '.join(names)}); pass --resume_from_checkpoint latest to "
            "continue it, --overwrite_output_dir to replace it, or choose another --output_dir"
        )
    for path in earlier:
        remove(path)
    return names


def write_text(path, text: str) -> None:
    with staged(path) as partial:
        partial.write_text(text, encoding="utf-8")


def write_json(path, value) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def read_json(path, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from `path`, or PipelineError("<path>: <what is wrong>"): missing, larger than `max_bytes`,
    not UTF-8, not JSON (numbers too long included), nested too deeply, or not an object."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: missing")
    size = path.stat().st_size
    if size > max_bytes:
        raise PipelineError(f"{path}: {size:,} bytes, more than the {max_bytes:,} such a file may hold")
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as reason:  # JSONDecodeError, and integers past Python's digit limit
        raise PipelineError(f"{path}: not valid JSON ({reason})") from None
    except RecursionError:
        raise PipelineError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise PipelineError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


class FolderLock:
    """`<folder>/.lock` while a run, a resume or an export works in `folder`: an OS lock (flock) on it, which the
    kernel releases when its process ends however it ends, so there is no stale lock and no takeover race. Another
    one is refused, naming the holder (pid, host, since when) that the file holds. The lock file starts with ".", so
    uploads and listings skip it."""

    def __init__(self, folder):
        self.path = Path(folder) / ".lock"
        self.descriptor, self.created = None, False

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def __enter__(self):
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self.descriptor is None:
            descriptor = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                holder = self._holder()
                raise PipelineError(
                    f"output_dir: {self.path.parent} is in use by process {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} since {holder.get('since', '?')} ({self.path}); wait for it to "
                    "finish or choose another --output_dir"
                ) from None
            try:  # the file may have been removed by a holder releasing it meanwhile: lock the current one
                current = os.stat(self.path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                current = False
            if current:
                self.descriptor = descriptor
            else:
                os.close(descriptor)
        left = self._holder()
        if left or os.fstat(self.descriptor).st_size:
            warnings.warn(
                f"{self.path}: left by process {left.get('pid', '?')} since {left.get('since', '?')}, which no "
                "longer holds it; taking it over"
            )
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(self.descriptor, 0)
        os.write(
            self.descriptor, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode()
        )
        return self

    def __exit__(self, *exc):
        if self.descriptor is not None:
            self.path.unlink(missing_ok=True)  # while still held: a waiter then locks a new file
            os.close(self.descriptor)
            self.descriptor = None
            if self.created and not any(self.path.parent.iterdir()):  # a run that stopped before writing anything
                with suppress(OSError):  # another run has just made it its own
                    self.path.parent.rmdir()


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
