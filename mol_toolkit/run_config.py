"""The run configuration of train_mlm.py (and of every run of the interference sweep): one flat set of keys, read
from a YAML file and overridden by command-line flags of the same names. Every key is documented here once; the
command line's --help is generated from these docs, so the two never drift apart.
"""

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


def _key(default, help, section, **kwargs):
    return field(default=default, metadata={"help": help, "section": section, **kwargs})


def _list_key(default, help, section):
    return field(default_factory=lambda: list(default), metadata={"help": help, "section": section})


# The paper's learning rates: 4e-5 for Mixture of Languages pretraining, 1e-5 for the interference runs.
LEARNING_RATE_PRESETS = {"mol": 4e-5, "interference": 1e-5}
SAMPLING = ("proportional", "temperature")
STRATEGIES = ("auto", "none", "fsdp", "hsdp")
MIXED_PRECISION = ("no", "bf16")


@dataclass
class RunConfig:
    # -- model
    languages: object = _key(None, "Languages of the model: a preset (mol-30, mol-90, interference-83), a list of "
                             "FLORES codes, or a comma-separated string.", "model")
    language_groups: object = _key("paper", "Groups: 'paper' (the paper's groups for a mol-30/mol-90 run), "
                                   "'per-language' (the language-specific topline), 'single' (one group), a mapping "
                                   "group -> codes, or a groups.json written by group_languages.py.", "model")
    group_layers: object = _key("dense", "Group-specific blocks: stacked, interleaved, lid / lid:a-b-c, dense, all, "
                                "or a list of block indices.", "model")
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
    max_sentences: object = _key(25_000_000, "At most this many sentences per language (null: no cap).", "data")
    min_sentences: object = _key(5_000_000, "Languages under this are topped up from supplementary_data.", "data")
    deduplicate: bool = _key(True, "Drop exact repeats of a sentence within a language.", "data")
    max_length: int = _key(256, "Tokens per sentence, special tokens included (longer ones are truncated).", "data")
    sampling: str = _key("temperature", "Language sampling: proportional or temperature.", "data")
    sampling_temperature: float = _key(3.0, "T in p_l ~ n_l^(1/T) for temperature sampling.", "data")
    sentences_per_device: int = _key(1200, "Sentences per batch on each device (the paper: 1200).", "data")
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
    mixed_precision: str = _key("bf16", "bf16 (compute in bf16, reduce in fp32) or no.", "optimisation")
    seed: int = _key(0, "Seed of initialisation, sampling and masking.", "optimisation")

    # -- distribution
    strategy: str = _key("auto", "auto (FSDP2 when several processes, else none), none, fsdp (FSDP2 fully_shard "
                         "over MoLLayer) or hsdp (shard within a node, replicate across nodes).", "distribution")
    shard_group_size: object = _key(None, "HSDP: processes per shard group (null: processes per node).",
                                    "distribution")

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
    export: bool = _key(True, "Export the remote-code bundle with tokenizer and card at the end.", "run")
    push_to_hub: object = _key(None, "Upload the exported bundle to this Hub model repo.", "run")
    license: str = _key("apache-2.0", "Licence of the exported weights, as the Hub's `license` metadata (the model "
                        "code is always the project's Apache-2.0).", "run")
    run_name: object = _key(None, "Name shown in the model card and trackers (default: the config file's name).",
                            "run")

    @property
    def peak_learning_rate(self):
        return float(LEARNING_RATE_PRESETS.get(self.learning_rate, self.learning_rate))

    def validate(self):
        """Check what can be checked without data or tokenizer; errors name the value and what is valid."""
        _one_of("sampling", self.sampling, SAMPLING)
        _one_of("strategy", self.strategy, STRATEGIES)
        _one_of("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if isinstance(self.learning_rate, str) and self.learning_rate not in LEARNING_RATE_PRESETS:
            try:
                float(self.learning_rate)
            except ValueError:
                raise ValueError(f"learning_rate {self.learning_rate!r} is neither a number nor a preset "
                                 f"{sorted(LEARNING_RATE_PRESETS)}.") from None
        for name in ("max_steps", "sentences_per_device", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}.")
        if not isinstance(self.license, str) or not self.license.strip():
            raise ValueError(f"license must be a licence id such as 'apache-2.0' or 'mit', got {self.license!r}.")
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability!r}.")
        if self.languages is None:
            raise ValueError("languages is not set: give a preset (mol-30, mol-90, interference-83) or a list of codes.")
        if self.train_data is None and not self.train_data_overrides:
            raise ValueError("train_data is not set: give a source for the training text (see --help).")
        if self.devtest_data is None:
            raise ValueError("devtest_data is not set: give a source for the per-language devtest text.")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)


def _one_of(name, value, valid):
    if value not in valid:
        raise ValueError(f"{name} {value!r} is not valid: use one of {list(valid)}.")


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
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"The run config {path} must be a mapping of keys to values, got {type(values).__name__}.")
    base = values.pop("base", None)
    if base is None:
        return values
    return {**_read_config_file(path.parent / base, (*seen, path.resolve())), **values}


def _parse_value(text):
    """Command-line values are YAML scalars or flow collections: 1e-4, null, [eng_Latn, fra_Latn], {a: 1}."""
    import yaml

    return yaml.safe_load(text)


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
