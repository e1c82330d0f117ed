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

from mol_toolkit import languages as language_table
from mol_toolkit import mlm_data
from mol_toolkit.mlm_training import MLMTrainer, RunData, load_tokenizer
from mol_toolkit.run_config import load_run_config
from mol_toolkit.training.metrics import atomic_write_text
from mol_toolkit.training.parallelism import ProcessContext


UDHR_SAMPLE = "data/udhr/udhr46_articles.jsonl"
_UDHR = {"path": UDHR_SAMPLE, "language_field": "lang", "split_field": "split"}

PRESETS = {
    # Section 3.1: 2-layer encoders (widths are not given; XLM-R base's here), the XLM-R tokenizer, 1M NLLB
    # sentences per language, 10k steps, lr 1e-5 with 2.5k warmup steps then cosine, AdamW, MLM 15%, max length 256,
    # FLORES-200 devtest. The batch size is not given either: 256 sentences.
    "paper": {
        "languages": "interference-83", "tokenizer": "FacebookAI/xlm-roberta-base", "vocab_size": 250002,
        "hidden_size": 768, "num_hidden_layers": 2, "num_attention_heads": 12, "intermediate_size": 3072,
        "train_data": "data/nllb/{lang}.jsonl", "max_sentences": 1_000_000, "min_sentences": None,
        "devtest_data": {"dataset": "openlanguagedata/flores_plus", "name": "{lang}", "split": "devtest"},
        "max_length": 256, "sampling": "proportional", "sentences_per_device": 256, "learning_rate": "interference",
        "warmup_steps": 2500, "max_steps": 10_000, "mixed_precision": "bf16", "checkpoint_every": 1000,
    },
    # The shipped UDHR sample, five languages of four scripts, 2-block models of width 64: the whole sweep (15 runs)
    # takes about 3 minutes on 2 CPU cores.
    "tiny": {
        "languages": ["eng_Latn", "fra_Latn", "rus_Cyrl", "arb_Arab", "hin_Deva"], "tokenizer": "data/udhr-tokenizer",
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "train_data": {**_UDHR, "split": "train"}, "devtest_data": {**_UDHR, "split": "devtest"},
        "max_sentences": None, "min_sentences": None, "max_length": 128, "sampling": "proportional",
        "sentences_per_device": 16, "learning_rate": 1e-3, "warmup_steps": 20, "max_steps": 250,
        "mixed_precision": "no", "checkpoint_every": 100,
    },
}
# What every run of a sweep shares, whatever the preset: dense 2-layer models, no trackers or exports per run.
RUN_DEFAULTS = {"group_layers": "dense", "strategy": "none", "trackers": [], "export": False, "eval_every": 0,
                "log_every": 10, "keep_checkpoints": 1, "resume": "latest", "checkpoint_at_end": False}
# Keys that do not change a run's result, left out of the sweep's fingerprint.
NOT_SETTINGS = {"languages", "output_dir", "cache_dir", "resume", "trackers", "run_name", "log_every", "export",
                "push_to_hub", "checkpoint_every", "checkpoint_at_end", "keep_checkpoints", "grouped_gemm_backend",
                "attn_implementation"}


def jobs_for(languages):
    """Monolingual runs, then every unordered pair, in the order of `languages`; each a tuple of codes."""
    return [(code,) for code in languages] + list(itertools.combinations(languages, 2))


def run_id(job):
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
    """One sweep over `languages` with a preset's settings, in `output_dir`."""

    def __init__(self, preset="tiny", languages=None, output_dir=None, overrides=None):
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}: use one of {sorted(PRESETS)}.")
        values = {**PRESETS[preset], **RUN_DEFAULTS, **(overrides or {})}
        if languages is not None:
            values["languages"] = languages
        self.languages = language_table.resolve_languages(values["languages"])
        if len(self.languages) < 2:
            raise ValueError(f"An interference sweep needs at least 2 languages, got {self.languages}.")
        self.preset = preset
        self.output_dir = Path(output_dir or f"runs/interference-{preset}")
        values.setdefault("cache_dir", str(self.output_dir / "tokenized"))
        self.values = values
        self.base = load_run_config(None, {**values, "languages": self.languages,
                                           "output_dir": str(self.output_dir / "runs")})
        self.settings = {k: v for k, v in self.base.to_dict().items() if k not in NOT_SETTINGS}
        self.settings["preset"] = preset
        self.fingerprint = hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.jobs = jobs_for(self.languages)

    # -- where things live

    @property
    def results_dir(self):
        return self.output_dir / "results"

    def result_path(self, job):
        return self.results_dir / f"{run_id(job)}.json"

    def run_dir(self, job):
        return self.output_dir / "runs" / run_id(job)

    # -- checks before any work

    def check_output_dir(self):
        """The output folder belongs to this sweep's settings: results of other settings are never mixed in."""
        settings_file = self.output_dir / "sweep.json"
        if settings_file.is_file():
            recorded = json.loads(settings_file.read_text())
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
        config = load_run_config(None, {**self.values, "languages": list(job), "output_dir": str(self.run_dir(job))})
        result = MLMTrainer(config, context=ProcessContext.local(device), show_progress=False, on_step=on_step).train()
        rows = [{"languages": sorted(job), "eval_language": code, "loss": result["devtest_loss"][code],
                 "run": run_id(job), "steps": result["steps"], "seed": result["seed"],
                 "wall_time_s": result["wall_time_s"], "compute_s": result["compute_s"],
                 "resumed_from_step": result["resumed_from_step"], "shard": shard_label,
                 "settings": {"fingerprint": self.fingerprint, **self.settings}}
                for code in job]
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

                def on_step(step, loss, tokens_per_s, job=job):
                    progress.set_postfix(running=run_id(job), step=f"{step}/{self.base.max_steps}",
                                         loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
                    progress.refresh()
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
