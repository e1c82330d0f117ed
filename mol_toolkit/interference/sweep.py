"""The interference sweep (Interference Matrix paper, Section 3.1): one small MLM model per language and per
unordered pair of languages, each evaluated on the devtest set of each of its languages.

- Every language is tokenized once, before the first run, into the shared cache; every run reads that cache.
- A run writes its result rows in one file, atomically (`results/<run>.json`), the moment it ends; a rerun skips
  the runs that have one. A run killed mid-training resumes from its own last checkpoint. So a sweep killed at any
  moment and started again loses nothing and does nothing twice.
- `--shard i/N` takes every N-th job starting at i; under `accelerate launch` each process then takes every
  W-th job of that. A cluster job array passes its task index as i (see the README).
"""

import hashlib
import itertools
import json
import shutil
import time
from pathlib import Path
from typing import NamedTuple

from mol_toolkit import languages as language_table
from mol_toolkit.training import mlm_data
from mol_toolkit.training.mlm_data import RunData
from mol_toolkit.training.trainer import MLMTrainer, load_tokenizer
from configs import sweep_preset_path
from mol_toolkit.run_config import load_run_config, load_sweep_config
from mol_toolkit.training.metrics import atomic_write_text
from mol_toolkit.training.parallelism import ProcessContext


# Keys that do not change a run's result, left out of the sweep's fingerprint.
NOT_SETTINGS = {"languages", "seed", "output_dir", "overwrite", "threads", "cache_dir", "resume", "trackers", "run_name", "log_every", "export",
                "push_to_hub", "checkpoint_every", "checkpoint_at_end", "keep_checkpoints", "grouped_gemm_backend",
                "attn_implementation"}


def jobs_for(languages):
    """Monolingual runs, then every unordered pair, in the order of `languages`; each a tuple of codes."""
    return [(code,) for code in languages] + list(itertools.combinations(languages, 2))


class Run(NamedTuple):
    """One model of the sweep: its languages, and its seed in a sweep of several seeds (None: the only seed)."""

    languages: tuple
    seed: object = None


def run_id(job):
    if isinstance(job, Run):
        return "+".join(job.languages) + ("" if job.seed is None else f"@seed{job.seed}")
    return "+".join(job)


def parse_shard(text):
    """'i/N' -> (i, N) with 0 <= i < N."""
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r} is not of the form i/N (e.g. 0/4).") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: i must be in 0..N-1 and N at least 1.")
    return index, count


def select_jobs(jobs, shard=(0, 1), process=(0, 1)):
    """This shard's jobs (every N-th from i), then this process's part of them (every W-th from its rank)."""
    return jobs[shard[0]::shard[1]][process[0]::process[1]]


class Sweep:
    """One sweep over `languages` with the settings of a sweep config (a preset of configs/interference/ or a YAML
    path), in `output_dir`."""

    def __init__(self, preset="tiny", languages=None, output_dir=None, overrides=None):
        path = sweep_preset_path(preset)
        overrides = dict(overrides or {})
        if languages is not None:
            overrides["languages"] = languages
        values, sweep_values = load_sweep_config(path, overrides)
        self.seeds = sweep_values["seeds"]
        self.languages = language_table.resolve_languages(values["languages"])
        if len(self.languages) < 2:
            raise ValueError(f"An interference sweep needs at least 2 languages, got {self.languages}.")
        self.preset = path.stem
        self.output_dir = Path(output_dir or f"runs/interference-{self.preset}")
        values.setdefault("cache_dir", str(self.output_dir / "tokenized"))
        self.values = values
        self.base = load_run_config(None, {**values, "languages": self.languages,
                                           "output_dir": str(self.output_dir / "runs")})
        self.settings = {k: v for k, v in self.base.to_dict().items() if k not in NOT_SETTINGS}
        self.settings["preset"] = self.preset
        self.settings["seeds"] = self.seeds
        self.fingerprint = hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        several = len(self.seeds) > 1
        self.jobs = [Run(tuple(job), seed if several else None) for seed in self.seeds for job in jobs_for(self.languages)]

    # -- where things live

    @property
    def results_dir(self):
        return self.output_dir / "results"

    def result_path(self, job):
        return self.results_dir / f"{run_id(job)}.json"

    def run_dir(self, job):
        return self.output_dir / "runs" / run_id(job)

    # -- checks before any work

    def check_output_dir(self, subset=False):
        """The output folder belongs to this sweep's languages and settings: results of other settings are never
        mixed in, and its matrices are never replaced by another sweep's. `subset`: analysing some of its languages."""
        settings_file = self.output_dir / "sweep.json"
        if settings_file.exists() and not settings_file.is_file():
            raise ValueError(f"{settings_file} is not a file: is --output-dir {self.output_dir} a sweep folder?")
        if settings_file.is_file():
            recorded = json.loads(settings_file.read_text())
            theirs = recorded.get("languages", [])
            same = set(self.languages) <= set(theirs) if subset else list(self.languages) == list(theirs)
            if not same:
                raise ValueError(f"{self.output_dir} holds the sweep of the languages {theirs}, not {self.languages}: "
                                 "use another --output-dir, or the languages it was made with.")
            if recorded["fingerprint"] != self.fingerprint:
                changed = sorted(k for k in set(recorded["settings"]) | set(self.settings)
                                 if recorded["settings"].get(k) != self.settings.get(k))
                raise ValueError(f"{self.output_dir} holds results of a different configuration (differs in "
                                 f"{changed}): use another --output-dir, or the settings it was made with.")
        for path in sorted(self.results_dir.glob("*.json")) if self.results_dir.is_dir() else []:
            if json.loads(path.read_text()).get("fingerprint") != self.fingerprint:
                raise ValueError(f"The results file {path} comes from a different configuration than this sweep "
                                 f"(fingerprint {self.fingerprint}): remove it or use another --output-dir.")

    def prepare(self, is_main=True):
        """Check every language's data and tokenize it once into the shared cache (before any run starts)."""
        if is_main:
            self.check_output_dir()
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output_dir / "sweep.json", json.dumps(
                {"fingerprint": self.fingerprint, "settings": self.settings, "languages": self.languages},
                indent=2, default=str))
        started = time.perf_counter()
        before = len(mlm_data.TOKENIZATIONS)
        RunData(self.base, load_tokenizer(self.base), self.languages)
        return {"prepare_s": time.perf_counter() - started, "tokenized": mlm_data.TOKENIZATIONS[before:]}

    # -- runs

    def pending(self, jobs):
        return [job for job in jobs if not self.result_path(job).is_file()]

    def run_job(self, job, shard_label="", device=None, on_step=None):
        """Train one model alone in this process (resuming its own checkpoint if a kill interrupted it) and write
        its result rows."""
        codes = list(job.languages) if isinstance(job, Run) else list(job)
        values = {**self.values, "languages": codes, "output_dir": str(self.run_dir(job))}
        if isinstance(job, Run) and job.seed is not None:
            values["seed"] = job.seed
        config = load_run_config(None, values)
        result = MLMTrainer(config, context=ProcessContext.local(device), show_progress=False, on_step=on_step).train()
        rows = [{"languages": sorted(codes), "eval_language": code, "loss": result["devtest_loss"][code],
                 "run": run_id(job), "steps": result["steps"], "seed": result["seed"],
                 "wall_time_s": result["wall_time_s"], "compute_s": result["compute_s"],
                 "resumed_from_step": result["resumed_from_step"], "shard": shard_label,
                 "settings": {"fingerprint": self.fingerprint, **self.settings}}
                for code in codes]
        self.results_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.result_path(job), json.dumps({"fingerprint": self.fingerprint, "rows": rows},
                                                            indent=1, default=str))
        shutil.rmtree(self.run_dir(job), ignore_errors=True)  # its checkpoints are not needed once the rows exist
        return rows

    def run(self, jobs, shard_label="", show_progress=True, device=None):
        """Run `jobs` that have no results yet, with a progress bar over runs that also shows the running run's
        step, loss and tokens/s; returns timing figures."""
        todo = self.pending(jobs)
        done_before = len(jobs) - len(todo)
        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(jobs), initial=done_before, desc="interference sweep", unit="run",
                            dynamic_ncols=True)
        wall = compute = 0.0
        for position, job in enumerate(todo):
            on_step = None
            if progress is not None:
                progress.set_postfix(done=done_before + position, running=run_id(job), left=len(todo) - position)

                def on_step(step, loss, tokens_per_s, job=job, shown=[0.0]):
                    now = time.monotonic()
                    if now - shown[0] >= 0.5 or step == self.base.max_steps:  # at most two redraws a second
                        shown[0] = now
                        known = {} if loss is None else {"loss": f"{loss:.3f}", "tok_s": f"{tokens_per_s:,.0f}"}
                        progress.set_postfix(running=run_id(job), step=f"{step}/{self.base.max_steps}", **known)
            started = time.perf_counter()
            rows = self.run_job(job, shard_label, device, on_step)
            wall += time.perf_counter() - started
            compute += rows[0]["compute_s"]
            if progress is not None:
                progress.update(1)
        if progress is not None:
            progress.set_postfix(done=len(jobs), running="-", left=0)
            progress.close()
        return {"runs": len(todo), "skipped": done_before, "runs_s": wall, "compute_s": compute}

    # -- results

    def result_rows(self):
        rows = []
        for job in self.jobs:
            path = self.result_path(job)
            if path.is_file():
                rows += json.loads(path.read_text())["rows"]
        return rows

    def missing_runs(self):
        return [run_id(job) for job in self.jobs if not self.result_path(job).is_file()]
