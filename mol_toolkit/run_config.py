"""The run configuration of train_mlm.py (and of every run of the interference sweep): one flat set of keys, read
from a YAML file and overridden by command-line flags of the same names. Every key is documented here once; the
command line's --help is generated from these docs, so the two never drift apart.
"""

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from configuration_mol.configuration_mol import GROUPED_GEMM_BACKENDS


def _key(default, help, section, **kwargs):
    return field(default=default, metadata={"help": help, "section": section, **kwargs})


def _list_key(default, help, section):
    return field(default_factory=lambda: list(default), metadata={"help": help, "section": section})


# The paper's learning rates: 4e-5 for Mixture of Languages pretraining, 1e-5 for the interference runs.
LEARNING_RATE_PRESETS = {"mol": 4e-5, "interference": 1e-5}
SAMPLING = ("proportional", "temperature")
STRATEGIES = ("auto", "none", "fsdp", "hsdp", "group_parallel")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class RunConfig:
    # -- model
    languages: object = _key(None, "Languages of the model: a preset (mol-30, mol-90, interference-83), a list of "
                             "FLORES codes, or a comma-separated string.", "model")
    language_groups: object = _key("paper", "Groups: 'paper' (the paper's groups for a mol-30/mol-90 run), "
                                   "'per-language' (the language-specific topline), 'single' (one group), a mapping "
                                   "group -> codes, or a groups.json written by group_languages.py.", "model")
    language_swaps: list = _list_key([], "Swaps applied to language_groups, each two codes of different groups "
                                     "joined by ':' (the paper's Table 1 / Table 14: e.g. [spa_Latn:deu_Latn]).",
                                     "model")
    group_layers: object = _key("dense", "Group-specific blocks: stacked, interleaved, lid / lid:a-b-c (the first a "
                                "blocks, b shared, the last c: counted from the input side; also written "
                                "first=a,shared=b,last=c), dense, all, or a list of block indices.", "model")
    routing: str = _key("language", "language (MoL: each sentence through its language group's copy of the "
                        "group_layers blocks), or the paper's MoE baselines (Section 5): token or sentence (a "
                        "learned top-1 gate per routed block; language_groups are then not used).", "model")
    num_experts: object = _key(None, "MoE: experts per routed block (>= 2; the paper's baseline: as many as MoL's "
                               "groups).", "model")
    router_noise_std: object = _key(None, "MoE: std of the Gaussian noise on the gate logits in training (null: "
                                    "1.0, the project's choice; the paper gives no value).", "model")
    router_aux_loss_coef: object = _key(None, "MoE: weight of the GShard load-balancing loss added to the MLM loss "
                                        "(null: 0.01, the project's choice; the paper gives no value).", "model")
    vocab_size: object = _key(None, "Vocabulary size; null takes the tokenizer's size.", "model")
    hidden_size: int = _key(1024, "Hidden size (XLM-R large: 1024).", "model")
    num_hidden_layers: int = _key(24, "Number of blocks (XLM-R large: 24).", "model")
    num_attention_heads: int = _key(16, "Attention heads.", "model")
    intermediate_size: int = _key(4096, "Feed-forward size.", "model")
    hidden_dropout_prob: float = _key(0.1, "Dropout on hidden states.", "model")
    attention_probs_dropout_prob: float = _key(0.1, "Dropout on attention probabilities.", "model")
    attn_implementation: object = _key(None, "Attention implementation (null: the model's choice per device).",
                                       "model")
    grouped_gemm_backend: str = _key("auto", "auto, hub_kernel, grouped_mm or loop.", "model")
    tokenizer: str = _key("data/udhr-tokenizer", "Tokenizer folder or Hub id (XLM-R's for the paper runs).", "model")

    # -- data
    train_data: object = _key(None, "Training source for every language; '{lang}' in any value is replaced by the "
                              "language code. A path (.jsonl/.json/.txt/.parquet, globs allowed) or a mapping with "
                              "path or dataset (Hub id), name, split, text_field, language_field, split_field, "
                              "streaming.", "data")
    train_data_overrides: dict = _key(None, "Per-language sources that replace train_data for those languages.",
                                      "data")
    supplementary_data: object = _key(None, "Source that tops up languages under min_sentences (the paper: NLLB's "
                                      "synthetic data).", "data")
    devtest_data: object = _key(None, "Devtest source per language (FLORES-200 devtest in the paper), same form "
                                "as train_data.", "data")
    train_corpus: object = _key(None, "prepare-data: where the training text comes from (a Hub dataset or local "
                                "files, the same form as train_data; 'pairs: [[lang1, text1], [lang2, text2]]' reads "
                                "bitext rows such as NLLB's); written into the train_data files.", "data")
    supplementary_corpus: object = _key(None, "prepare-data: the source that tops up languages under min_sentences "
                                        "(NLLB's synthetic data in the paper).", "data")
    devtest_corpus: object = _key(None, "prepare-data: the devtest text (FLORES+ in the paper presets; '{flores_plus}' "
                                  "is a code's FLORES+ name); written into the devtest_data files.", "data")
    max_sentences: object = _key(25_000_000, "At most this many sentences per language (null: no cap).", "data")
    min_sentences: object = _key(5_000_000, "The floor: languages under it are topped up from supplementary_data; a "
                                 "language still under it is an error before training unless "
                                 "allow_below_min_sentences (null: no floor).", "data")
    allow_below_min_sentences: bool = _key(False, "Train languages that stay under min_sentences after any top-up "
                                           "(the run is then not the paper's; results.json and the card say so).",
                                           "data")
    equal_sentences: bool = _key(False, "Every language must have exactly max_sentences sentences (the Interference "
                                 "Matrix paper's equal data: 1M per language in its Section 3.1, 20M in Section 5); "
                                 "a language with fewer is an error before training (false allows unequal amounts).",
                                 "data")
    deduplicate: bool = _key(True, "Drop exact repeats of a sentence within a language (neither paper says it "
                             "deduplicates: the project's choice).", "data")
    max_length: int = _key(256, "Tokens per sentence, special tokens included (longer ones are truncated).", "data")
    sampling: str = _key("proportional", "Language sampling: proportional (the papers': every sentence equally "
                         "likely) or temperature (the project's alternative, XLM-R's).", "data")
    sampling_temperature: float = _key(3.0, "T in p_l ~ n_l^(1/T) for temperature sampling.", "data")
    sentences_per_device: object = _key(1200, "Sentences per batch on each device (the paper: 1200), or auto: "
                                        "global_batch_size / processes per step, in the fewest micro-batches of at "
                                        "most max_sentences_per_device (the paper presets: the global batch is "
                                        "pinned on any number of processes).", "data")
    max_sentences_per_device: int = _key(1200, "With sentences_per_device auto: the most sentences one device takes "
                                         "in one micro-batch (the paper: 1200 per A100 80GB).", "data")
    mlm_probability: float = _key(0.15, "Share of tokens selected for MLM (80% <mask>, 10% random, 10% kept).", "data")
    cache_dir: str = _key("~/.cache/mol/tokenized", "Where each language's tokenized data is cached and reused "
                          "across runs.", "data")
    eval_sentences: object = _key(None, "At most this many devtest sentences per language (null: all).", "data")

    # -- optimisation
    learning_rate: object = _key("mol", "Peak learning rate, or a preset: mol (4e-5) or interference (1e-5).",
                                 "optimisation")
    warmup_steps: int = _key(2500, "Linear warmup steps, then cosine decay to 0.", "optimisation")
    max_steps: int = _key(26000, "Training steps (the paper: 26k for 30 languages, 17k for 90).", "optimisation")
    weight_decay: float = _key(0.01, "AdamW weight decay (not on biases and LayerNorms).", "optimisation")
    adam_betas: list = _list_key([0.9, 0.98], "AdamW betas.", "optimisation")
    adam_epsilon: float = _key(1e-6, "AdamW epsilon.", "optimisation")
    max_grad_norm: float = _key(1.0, "Gradient clipping norm (0 disables).", "optimisation")
    mixed_precision: str = _key("bf16", "bf16 (compute in bf16, reduce in fp32: Mixture of Languages Section 3.1, "
                                "Interference Matrix Section 5), fp16 (compute in fp16, fp32 weights, dynamic loss "
                                "scaling: the Interference Matrix paper's Section 3.1 runs, 'fp32/fp16' in its Section "
                                "5; single-process runs, strategy none) or no.", "optimisation")
    gradient_accumulation_steps: int = _key(1, "Micro-batches per optimizer step: the global batch is "
                                            "sentences_per_device x processes x this.", "optimisation")
    global_batch_size: object = _key(None, "Sentences per optimizer step over all processes; when set, "
                                     "gradient_accumulation_steps follows from it and the world size (it must "
                                     "divide evenly). The paper: 1200 x 32 GPUs = 38400.", "optimisation")
    seed: int = _key(0, "Seed of initialisation, sampling and masking.", "optimisation")

    # -- distribution
    strategy: str = _key("auto", "auto (FSDP2 when several processes, else none), none, fsdp (FSDP2 fully_shard "
                         "over MoLLayer), hsdp (shard within a node, replicate across nodes) or group_parallel (each "
                         "rank holds only its language group's copies of the group blocks).", "distribution")
    shard_group_size: object = _key(None, "HSDP: processes per shard group (null: processes per node).",
                                    "distribution")
    group_ranks: object = _key(None, "group_parallel: ranks per language group (group name -> count; null: in "
                               "proportion to each group's share of the sampling probabilities).", "distribution")

    # -- run
    output_dir: str = _key("runs/mlm", "Run folder: checkpoints, logs, metrics.jsonl, the exported model.", "run")
    checkpoint_every: int = _key(1000, "Save a checkpoint every N steps (0: only at the end).", "run")
    checkpoint_at_end: bool = _key(True, "Also save a checkpoint after the last step (the sweep's runs, whose "
                                   "results are written at once, skip it).", "run")
    keep_checkpoints: int = _key(2, "Checkpoints kept on disk (the newest).", "run")
    eval_every: int = _key(1000, "Evaluate devtest MLM loss every N steps (0: only at the end).", "run")
    log_every: int = _key(10, "Log the training loss every N steps.", "run")
    trackers: list = _list_key(["tensorboard"], "accelerate trackers (tensorboard, wandb, ...; [] for none).", "run")
    resume: object = _key(None, "Resume: 'latest' (the newest checkpoint in output_dir) or a checkpoint folder.",
                          "run")
    overwrite: bool = _key(False, "Start afresh in an output_dir that holds an earlier run, deleting it (without "
                           "this, or resume, such a folder is refused).", "run")
    threads: object = _key(None, "torch intra-op threads per process (null: accelerate's choice under accelerate "
                           "launch, else the cores divided by the local processes).", "run")
    export: bool = _key(True, "Export the remote-code bundle with tokenizer and card at the end.", "run")
    language_identifier: bool = _key(True, "Fit the exported model's language identifier (languages='auto') on a "
                                     "sample of the tokenized training sentences, scored on devtest.", "run")
    language_identifier_sentences: int = _key(200, "Training sentences per language the identifier is fitted on.",
                                              "run")
    push_to_hub: object = _key(None, "Upload the exported bundle to this Hub model repo.", "run")
    license: str = _key("apache-2.0", "Licence of the exported weights, as the Hub's `license` metadata (the model "
                        "code is always the project's Apache-2.0).", "run")
    run_name: object = _key(None, "Name shown in the model card and trackers (default: the config file's name).",
                            "run")

    @property
    def peak_learning_rate(self):
        return float(LEARNING_RATE_PRESETS.get(self.learning_rate, self.learning_rate))

    def validate(self):
        """Check what can be checked without data or tokenizer: every key's type and range (from YAML and the
        command line alike), then the keys that depend on each other. Errors name the key, the value and what is
        valid."""
        for name, check in CHECKS.items():
            check(name, getattr(self, name))
        if self.min_sentences is not None and self.max_sentences is not None and self.min_sentences > self.max_sentences:
            raise ValueError(f"min_sentences={self.min_sentences} exceeds max_sentences={self.max_sentences}.")
        if self.resume is not None and self.overwrite:
            raise ValueError(f"resume={self.resume!r} and overwrite=true contradict each other: --resume continues "
                             "the run in output_dir, --overwrite deletes it; give one of them.")
        if self.sentences_per_device == "auto" and self.global_batch_size is None:
            raise ValueError("sentences_per_device=auto follows from global_batch_size, which is not set: set "
                             "global_batch_size (the paper: 38400 for 30 languages, 153600 for 90) or an integer "
                             "sentences_per_device.")
        if self.mixed_precision == "fp16" and self.strategy in ("fsdp", "hsdp", "group_parallel"):
            raise ValueError(f"mixed_precision=fp16 is the Interference Matrix paper's single-model runs' precision "
                             f"(strategy none, with loss scaling); strategy={self.strategy!r} shards the model: use "
                             "bf16 (as the papers' FSDP2 runs) or strategy none.")
        if self.equal_sentences and self.max_sentences is None:
            raise ValueError("equal_sentences=true needs max_sentences, the amount every language must have (the "
                             "Interference Matrix paper: 1000000).")
        if self.languages is None:
            raise ValueError("languages is not set: give a preset (mol-30, mol-90, interference-83) or a list of codes.")
        if self.train_data is None and not self.train_data_overrides:
            raise ValueError("train_data is not set: give a source for the training text (see --help).")
        if self.devtest_data is None:
            raise ValueError("devtest_data is not set: give a source for the per-language devtest text.")
        if self.language_swaps and (self.group_layers in ("dense", []) or self.routing != "language"):
            raise ValueError(f"language_swaps {self.language_swaps} exchange languages between language groups, and "
                             "this run has none (a dense model or a MoE): remove them, or give group_layers.")
        moe_keys = {k: getattr(self, k) for k in ("num_experts", "router_noise_std", "router_aux_loss_coef")}
        if self.routing == "language" and any(v is not None for v in moe_keys.values()):
            given = {k: v for k, v in moe_keys.items() if v is not None}
            raise ValueError(f"{given} are options of the MoE baselines (routing: token or sentence); this run routes "
                             "by language (routing: language): remove them, or set routing.")
        if self.routing != "language" and self.num_experts is None:
            raise ValueError(f"routing={self.routing!r} needs num_experts (>= 2; the paper's baseline: as many as "
                             "MoL's groups, 5 for mol-30).")
        if self.routing != "language" and self.group_layers in ("dense", []):
            raise ValueError(f"routing={self.routing!r} routes the group_layers blocks, and group_layers="
                             f"{self.group_layers!r} has none: give e.g. group_layers: stacked (the paper's 6-12-6).")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)


# -- the type and range of every key ------------------------------------------------------------------------------


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low=None, high=None, optional=False):
    def check(name, value):
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low) or \
                (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise ValueError(f"{name} must be an integer {bounds}{' or null' if optional else ''}, got {value!r}.")
    return check


def real(low=None, high=None, low_open=False, high_open=False, optional=False):
    def check(name, value):
        if value is None and optional:
            return
        below = low is not None and (value <= low if low_open else value < low) if _number(value) else True
        above = high is not None and (value >= high if high_open else value > high) if _number(value) else True
        if not _number(value) or below or above or value != value:
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            bounds = f"in {left}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}{right}"
            raise ValueError(f"{name} must be a number {bounds}{' or null' if optional else ''}, got {value!r}.")
    return check


def boolean(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}.")


def text(optional=False):
    def check(name, value):
        if value is None and optional:
            return
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string{' or null' if optional else ''}, got {value!r}.")
    return check


def one_of(valid, optional=False):
    def check(name, value):
        if value is None and optional:
            return
        if isinstance(value, bool) or value not in valid:
            raise ValueError(f"{name} {value!r} is not valid: use one of {list(valid)}.")
    return check


def kinds(*types, optional=False, what):
    def check(name, value):
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{name} must be {what}, got {value!r}.")
    return check


def learning_rate(name, value):
    if isinstance(value, str):
        if value not in LEARNING_RATE_PRESETS:
            raise ValueError(f"learning_rate {value!r} is neither a number nor a preset {sorted(LEARNING_RATE_PRESETS)}.")
        return
    real(0, low_open=True)(name, value)


def betas(name, value):
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_number(b) and 0 <= b < 1 for b in value):
        raise ValueError(f"{name} must be two numbers in [0, 1), e.g. [0.9, 0.98], got {value!r}.")


def strings(name, value):
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name} must be a list of names (e.g. [tensorboard], or [] for none), got {value!r}.")


def swap_list(name, value):
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.count(":") == 1 for v in value):
        raise ValueError(f"{name} must be a list of swaps 'code:code', e.g. [spa_Latn:deu_Latn], got {value!r}.")


def hub_repo(name, value):
    if value is None:
        return
    if not isinstance(value, str) or value.count("/") != 1 or not all(value.split("/")):
        raise ValueError(f"{name} must be a Hub repo id of the form ORG/NAME, got {value!r}.")


_SOURCE = dict(optional=True, what="a path or a mapping (see --help)")
CHECKS = {
    "languages": kinds(str, list, tuple, optional=True, what="a preset name, a list of FLORES codes or a "
                       "comma-separated string"),
    "language_groups": kinds(str, dict, what="'paper', 'per-language', 'single', a mapping or a groups.json path"),
    "language_swaps": swap_list,
    "group_layers": kinds(str, list, what="a layout name or a list of block indices"),
    "routing": one_of(("language", "token", "sentence")),
    "num_experts": integer(2, optional=True),
    "router_noise_std": real(0, optional=True),
    "router_aux_loss_coef": real(0, optional=True),
    "vocab_size": integer(1, optional=True),
    "hidden_size": integer(1),
    "num_hidden_layers": integer(1),
    "num_attention_heads": integer(1),
    "intermediate_size": integer(1),
    "hidden_dropout_prob": real(0, 1, high_open=True),
    "attention_probs_dropout_prob": real(0, 1, high_open=True),
    "attn_implementation": text(optional=True),
    "grouped_gemm_backend": one_of(GROUPED_GEMM_BACKENDS),
    "tokenizer": text(),
    "train_data": kinds(str, dict, **_SOURCE),
    "train_data_overrides": kinds(dict, optional=True, what="a mapping language -> source"),
    "supplementary_data": kinds(str, dict, **_SOURCE),
    "devtest_data": kinds(str, dict, **_SOURCE),
    "train_corpus": kinds(str, dict, **_SOURCE),
    "supplementary_corpus": kinds(str, dict, **_SOURCE),
    "devtest_corpus": kinds(str, dict, **_SOURCE),
    "max_sentences": integer(1, optional=True),
    "min_sentences": integer(0, optional=True),
    "deduplicate": boolean,
    "max_length": integer(3),  # <s>, </s> and at least one token
    "sampling": one_of(SAMPLING),
    "sampling_temperature": real(0, low_open=True),
    "sentences_per_device": lambda name, value: None if value == "auto" else integer(1)(name, value),
    "max_sentences_per_device": integer(1),
    "allow_below_min_sentences": boolean,
    "equal_sentences": boolean,
    "mlm_probability": real(0, 1, low_open=True, high_open=True),
    "cache_dir": text(),
    "eval_sentences": integer(1, optional=True),
    "learning_rate": learning_rate,
    "warmup_steps": integer(0),
    "max_steps": integer(1),
    "weight_decay": real(0),
    "adam_betas": betas,
    "adam_epsilon": real(0, low_open=True),
    "max_grad_norm": real(0),
    "mixed_precision": one_of(MIXED_PRECISION),
    "gradient_accumulation_steps": integer(1),
    "global_batch_size": integer(1, optional=True),
    "seed": integer(0),
    "strategy": one_of(STRATEGIES),
    "shard_group_size": integer(1, optional=True),
    "group_ranks": kinds(dict, optional=True, what="a mapping group name -> number of ranks"),
    "output_dir": text(),
    "checkpoint_every": integer(0),
    "checkpoint_at_end": boolean,
    "keep_checkpoints": integer(1),
    "eval_every": integer(0),
    "log_every": integer(1),
    "trackers": strings,
    "resume": text(optional=True),
    "overwrite": boolean,
    "threads": integer(1, optional=True),
    "export": boolean,
    "language_identifier": boolean,
    "language_identifier_sentences": integer(1),
    "push_to_hub": hub_repo,
    "license": text(),
    "run_name": text(optional=True),
}


KEYS = {f.name: f for f in dataclasses.fields(RunConfig)}


def load_run_config(path=None, overrides=None):
    """The config file's keys, then `overrides` (key -> value), checked against the known keys."""
    values = {}
    if path is not None:
        values = _read_config_file(Path(path))
        values.setdefault("run_name", Path(path).stem)
    values.update(overrides or {})
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        import difflib

        hints = {k: difflib.get_close_matches(k, KEYS, n=1) for k in unknown}
        hint = "; ".join(f"{k!r} (did you mean {h[0]!r}?)" if h else repr(k) for k, h in hints.items())
        raise ValueError(f"Unknown config key {hint}. Valid keys: {', '.join(KEYS)} (see --help).")
    return RunConfig(**values).validate()


def _read_config_file(path, seen=()):
    """A YAML run config; `base: other.yaml` (relative to this file) is read first and overridden by this one."""
    import yaml

    if not path.is_file():
        raise ValueError(f"The run config {str(path)!r} does not exist.")
    if path.resolve() in seen:
        raise ValueError(f"The run config {path} is its own base (a cycle through {[str(p) for p in seen]}).")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"The run config {path} is not valid YAML{where}: {problem}.") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"The run config {path} is not UTF-8 text (byte {error.start}).") from None
    if not isinstance(values, dict):
        raise ValueError(f"The run config {path} must be a mapping of keys to values, got {type(values).__name__}.")
    base = values.pop("base", None)
    if base is None:
        return values
    return {**_read_config_file(path.parent / base, (*seen, path.resolve())), **values}


# The sweep's own keys, on top of the run config's (a sweep config is a run config that every run shares, plus these).
SWEEP_KEYS = {
    "seeds": ([0], "Seeds: every model of the sweep is trained once per seed; the loss matrix averages them."),
}
# Run keys a sweep decides for itself: each run trains alone, exports nothing and resumes its own checkpoint.
SWEEP_FIXED = {"strategy": "none", "export": False, "push_to_hub": None, "resume": "latest"}


def load_sweep_config(path, overrides=None):
    """(run values, sweep values) of a sweep config: the same loader, keys and checks as a run config, with the
    sweep keys on top. The run values are checked by building a RunConfig from them."""
    values = _read_config_file(Path(path))
    values.update(overrides or {})
    sweep = {key: values.pop(key, default) for key, (default, _) in SWEEP_KEYS.items()}
    seeds = sweep["seeds"]
    if not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds) or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers >= 0, e.g. [0, 1, 2], got {seeds!r}.")
    for key, fixed in SWEEP_FIXED.items():
        if key in values and values[key] != fixed:
            raise ValueError(f"A sweep sets {key}={fixed!r} for its runs (each trains alone in its process); "
                             f"{path} sets {key}={values[key]!r}: remove it.")
        values[key] = fixed
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ValueError(f"Unknown sweep config key {unknown[0]!r} in {path}. Valid keys: {', '.join(SWEEP_KEYS)} "
                         f"and the run keys {', '.join(KEYS)}.")
    return values, sweep


def _parse_value(text):
    """Command-line values are YAML scalars or flow collections: 1e-4, null, [eng_Latn, fra_Latn], {a: 1}."""
    import yaml

    return yaml.safe_load(text)


def config_key_help(sweep=False):
    """Every key and its documentation, for an --help epilog (the docs live once, on the keys)."""
    lines = []
    if sweep:
        lines.append("sweep config keys (the sweep's own, on top of the run keys):")
        lines += [f"  {name}: {doc} (default: {json.dumps(default)})" for name, (default, doc) in SWEEP_KEYS.items()]
        lines.append(f"run keys shared by every run of the sweep (fixed by the sweep: "
                     f"{', '.join(f'{k}={json.dumps(v)}' for k, v in SWEEP_FIXED.items())}):")
    for name, spec in KEYS.items():
        if sweep and name in SWEEP_FIXED:
            continue
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        lines.append(f"  {name}: {spec.metadata['help']} (default: {json.dumps(default)})")
    return "\n".join(lines).replace("%", "%%")


def add_config_arguments(parser):
    """One --flag per config key (dashes for underscores), documented by the key's help, grouped by section."""
    sections = {}
    for name, spec in KEYS.items():
        section = spec.metadata["section"]
        if section not in sections:
            sections[section] = parser.add_argument_group(f"{section} keys (override the config file)")
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        # A bare --resume means 'latest'.
        optional = {"nargs": "?", "const": "latest"} if name == "resume" else {}
        sections[section].add_argument(
            f"--{name.replace('_', '-')}", dest=name, type=_parse_value, default=argparse.SUPPRESS,
            metavar="VALUE", help=f"{spec.metadata['help']} (default: {json.dumps(default)})".replace("%", "%%"), **optional,
        )
    return parser
