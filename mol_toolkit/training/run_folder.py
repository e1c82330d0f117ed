"""The run folder: one run per folder, never two at once, never silently replaced.

- Paths are checked before any work: the output and cache folders must be folders we can write.
- A lock (the `filelock` library, `run.lock`) is held by the run's main process for the whole run; a second run
  into the folder refuses and names the holder (`run.lock.json`: pid, host, start time).
- `run_config.json` records the settings the folder's run was started with. A fresh start into a folder that
  holds a run refuses unless `resume` (then every setting but those in `MAY_CHANGE_ON_RESUME` must be the same, and
  the ones that differ are listed) or `overwrite` (the old run is deleted first).
"""

import json
import os
import shutil
import socket
import time
from pathlib import Path


LOCK = "run.lock"
HOLDER = "run.lock.json"
RECORD = "run_config.json"
# Settings that may change when a run is resumed: how long it runs, how it reports, where it lives and caches (a
# folder may be moved), how it computes (kernels, threads); never what it trains or on what.
MAY_CHANGE_ON_RESUME = frozenset({
    "max_steps", "resume", "overwrite", "trackers", "log_every", "eval_every", "eval_sentences", "checkpoint_every",
    "checkpoint_at_end", "keep_checkpoints", "export", "push_to_hub", "license", "run_name", "threads",
    "grouped_gemm_backend", "attn_implementation", "cache_dir", "output_dir", "strategy", "shard_group_size",
    "group_ranks",
})


class RunFolderError(ValueError):
    """The folder cannot take this run; the message says why and what to do."""


def check_writable_folder(path, key):
    """`path` is (or can be created as) a folder this process can write; else an error naming the key and path."""
    path = Path(os.path.expanduser(str(path)))
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise RunFolderError(f"{key}={str(path)!r}: {str(existing)!r} is a file, not a folder; choose another {key}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(f"{key}={str(path)!r}: {str(existing)!r} is not writable by this user; choose another "
                             f"{key}.")
    return path


def _has_run(folder):
    return any((folder / name).exists() for name in (RECORD, "metrics.jsonl", "checkpoints", "results.json"))


def steps_done(folder):
    """The most steps a run in `folder` has trained: its results.json's, or its newest checkpoint's; None if none."""
    import re

    found = []
    results = folder / "results.json"
    if results.is_file():
        try:
            found.append(int(json.loads(results.read_text(encoding="utf-8"))["steps"]))
        except (ValueError, KeyError, TypeError):
            pass
    for entry in (folder / "checkpoints").glob("step-*") if (folder / "checkpoints").is_dir() else []:
        match = re.fullmatch(r"step-(\d+)", entry.name)
        if match:
            found.append(int(match.group(1)))
    return max(found) if found else None


class RunFolder:
    """The main process's hold on `folder` for one run (other ranks only read)."""

    def __init__(self, folder, settings, is_main=True):
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.is_main = is_main
        self._lock = None

    def acquire(self, resume, overwrite):
        """Take the folder for this run: lock it, then check what it holds against `resume` / `overwrite`."""
        if not self.is_main:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = self._take_lock()
        try:
            (self.folder / HOLDER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                          "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
            self._check_contents(resume, overwrite)
            (self.folder / RECORD).write_text(json.dumps(self.settings, indent=2, sort_keys=True))
        except BaseException:
            self.release()
            raise

    def check(self, resume, overwrite):
        """The checks of `acquire` without taking or writing anything (a live holder, what the folder holds)."""
        if not self.is_main or not self.folder.is_dir():
            return
        if (self.folder / LOCK).exists():
            self._take_lock().release()
        if not overwrite:
            self._check_contents(resume, overwrite)

    def _take_lock(self):
        """The folder's lock, held; a live holder is an error that names it."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.folder / LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RunFolderError(f"Another run is using {self.folder}: {self._holder()}. Wait for it to finish, or "
                                 "choose another output_dir.") from None
        return lock

    def _holder(self):
        try:
            holder = json.loads((self.folder / HOLDER).read_text())
            return f"process {holder['pid']} on {holder['host']}, started {holder['started']}"
        except (OSError, ValueError, KeyError):
            return "a process that holds its lock"

    def _check_contents(self, resume, overwrite):
        if not _has_run(self.folder):
            return
        if overwrite:
            for entry in self.folder.iterdir():
                if entry.name not in (LOCK, HOLDER):
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            return
        if not resume:
            raise RunFolderError(
                f"{self.folder} already holds a run: continue it with --resume, start it afresh with --overwrite "
                "(deleting it), or choose another output_dir."
            )
        done, wanted = steps_done(self.folder), self.settings.get("max_steps")
        if done is not None and isinstance(wanted, int) and wanted < done:
            raise RunFolderError(
                f"{self.folder} holds a run trained to step {done}; resuming it with max_steps={wanted} cannot undo "
                f"steps (nothing was changed): give max_steps >= {done} to continue it, or train the shorter run in "
                "another output_dir."
            )
        record = self.folder / RECORD
        if not record.is_file():
            return  # a run from before run_config.json existed: the checkpoint's own identity check still applies
        recorded = json.loads(record.read_text())
        changed = sorted(key for key in set(recorded) | set(self.settings)
                         if key not in MAY_CHANGE_ON_RESUME and recorded.get(key) != self.settings.get(key))
        if changed:
            details = "; ".join(f"{key}: {recorded.get(key)!r} -> {self.settings.get(key)!r}" for key in changed)
            raise RunFolderError(
                f"Cannot resume the run in {self.folder} with other settings ({details}). Only "
                f"{sorted(MAY_CHANGE_ON_RESUME - {'resume', 'overwrite'})} may change on resume: use the settings "
                "of run_config.json, --overwrite to start afresh, or another output_dir."
            )

    def release(self):
        if self._lock is not None:
            try:
                (self.folder / HOLDER).unlink(missing_ok=True)
            finally:
                self._lock.release()
                self._lock = None
