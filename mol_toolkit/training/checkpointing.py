"""The checkpoint manager: save, verify, rotate and load a run's checkpoints.

A checkpoint is `checkpoints/step-NNNNNNN/`: the model and optimizer through torch.distributed.checkpoint (every
rank writes its shards), `rng-<rank>.pt`, `trainer_state.json` (step, scheduler, sampler cursors, the run's
identity), and `manifest.json` with every file's size and SHA-256, written last. It is written as
`step-N.partial/` and renamed only when complete, so a kill or a full disk never leaves a checkpoint that looks
complete. Loading verifies the manifest; resuming 'latest' skips a damaged newest checkpoint (and says so) for the
previous complete one. Leftover `.partial` folders of a killed run are removed on the next start.
"""

import hashlib
import json
import re
import shutil
from pathlib import Path

import torch
from torch.distributed.checkpoint.api import CheckpointException


CHECKPOINT = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the path and why."""


def _first_line(error):
    """The innermost OS error's message of a (wrapped) checkpoint failure."""
    for line in reversed(str(error).splitlines()):
        if "Error" in line:
            return line.strip()
    return type(error).__name__


def file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CheckpointManager:
    def __init__(self, run_dir, context, keep=2, log=print):
        self.folder = Path(run_dir) / "checkpoints"
        self.context = context
        self.keep = max(1, keep)
        self.log = log

    # -- what is on disk

    def all(self):
        """Every step-N folder, oldest first (complete or not)."""
        found = [(int(m.group(1)), p) for p in self.folder.glob("step-*") if (m := CHECKPOINT.match(p.name))]
        return [p for _, p in sorted(found)]

    def problem(self, path):
        """Why `path` is not a usable checkpoint, or None when its manifest checks out."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not (path / "trainer_state.json").is_file() or not manifest_path.is_file():
            return "it has no trainer_state.json or manifest.json (not a complete checkpoint)"
        try:
            manifest = json.loads(manifest_path.read_text())["files"]
        except (ValueError, KeyError) as error:
            return f"its manifest is unreadable ({error})"
        for name, expected in manifest.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != expected["size"]:
                return f"{name} has {file.stat().st_size} bytes, the manifest says {expected['size']} (truncated)"
            if file_digest(file) != expected["sha256"]:
                return f"{name} does not match its checksum (corrupt)"
        return None

    def remove_leftovers(self):
        """`.partial` folders a killed run left behind (main process only)."""
        if self.context.is_main and self.folder.is_dir():
            for leftover in self.folder.glob("*.partial"):
                shutil.rmtree(leftover, ignore_errors=True)

    def resolve(self, resume):
        """The checkpoint to resume from: None (start afresh), the newest usable one for 'latest', or a path."""
        if not resume:
            return None
        if resume == "latest":
            for path in reversed(self.all()):
                problem = self.problem(path)
                if problem is None:
                    return path
                self.log(f"Skipping the checkpoint {path}: {problem}; trying the one before.")
            return None  # nothing to resume yet: start from scratch
        path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(f"resume={resume!r} does not exist; use 'latest' or one of "
                                  f"{[str(p) for p in self.all()]}.")
        problem = self.problem(path)
        if problem is not None:
            raise CheckpointError(f"resume={resume!r} is not a usable checkpoint: {problem}.")
        return path

    # -- save and load

    def save(self, step, states, trainer_state):
        """Write checkpoint `step` from every rank; returns its folder."""
        import torch.distributed.checkpoint as dcp

        final = self.folder / f"step-{step:07d}"
        partial = final.with_name(final.name + ".partial")
        try:
            if self.context.is_main:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
            self.context.barrier()
            dcp.save(states, checkpoint_id=str(partial / "state"), no_dist=not self.context.collective)
            torch.save({"cpu": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                       partial / f"rng-{self.context.rank}.pt")
            self.context.barrier()
            if self.context.is_main:
                (partial / "trainer_state.json").write_text(json.dumps(trainer_state, default=str))
                files = sorted(p for p in partial.rglob("*") if p.is_file())
                manifest = {"step": step, "files": {str(p.relative_to(partial)): {
                    "size": p.stat().st_size, "sha256": file_digest(p)} for p in files}}
                (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))  # last: marks it complete
                partial.rename(final)
                for old in self.all()[: -self.keep]:
                    shutil.rmtree(old, ignore_errors=True)
        except (OSError, CheckpointException) as error:
            if self.context.is_main:
                shutil.rmtree(partial, ignore_errors=True)
            reason = getattr(error, "strerror", None) or _first_line(error)
            raise CheckpointError(f"Could not write the checkpoint {final} ({reason}): free space "
                                  f"under {self.folder} or lower keep_checkpoints; the previous checkpoints are "
                                  "untouched.") from error
        self.context.barrier()
        return final

    def load(self, path, states):
        """Fill `states` (as `save` took them) from checkpoint `path`, and restore this rank's RNG states."""
        import torch.distributed.checkpoint as dcp

        dcp.load(states, checkpoint_id=str(Path(path) / "state"), no_dist=not self.context.collective)
        rng = torch.load(Path(path) / f"rng-{self.context.rank}.pt", weights_only=False)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    @staticmethod
    def trainer_state(path):
        return json.loads((Path(path) / "trainer_state.json").read_text())
