"""The MLM training engine of train_mlm.py and of every run of the interference sweep.

Distribution: FSDP2 (`fully_shard` over every MoLLayer, then the root) on a 1-D mesh, or HSDP on a 2-D
(replicate, shard) mesh, with bf16 compute and fp32 gradient reduction. It is applied here with torch's own
`fully_shard` rather than through accelerate's FSDP plugin because that plugin silently falls back to DDP on CPU
(FACTS.md), and one code path for CPU and GPU is what the CPU tests can vouch for. Accelerate still launches the
processes, places tensors, runs the trackers and ends the run.

Checkpoints (model and optimizer through torch.distributed.checkpoint, scheduler, sampler cursors, RNG) are written
into `step-N.partial/` and renamed to `step-N/` only when complete; resuming picks the newest complete one.
"""

import contextlib
import copy
import functools
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from mol_toolkit import languages as language_table
from model_cards import template_path
from mol_toolkit import mlm_data


CHECKPOINT = re.compile(r"^step-(\d+)$")
MODEL_CARD = template_path("model_card.md")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


# -- what the run trains on


def resolve_languages_and_groups(config):
    """The model's languages and its language groups ({} for a dense model)."""
    codes = language_table.resolve_languages(config.languages)
    layers = config.group_layers
    if layers == "dense" or layers == []:
        return codes, {}
    groups = config.language_groups
    if groups == "paper":
        preset = config.languages if isinstance(config.languages, str) else None
        if preset not in language_table.PAPER_GROUPS:
            raise ValueError(f"language_groups='paper' needs languages to be a preset with the paper's groups "
                             f"{sorted(language_table.PAPER_GROUPS)}, got {config.languages!r}; give the groups "
                             "(a mapping or a groups.json from group_languages.py), 'per-language' or 'single'.")
        groups = language_table.PAPER_GROUPS[preset]
    elif groups == "per-language":
        groups = {code: [code] for code in codes}
    elif groups == "single":
        groups = {"all": list(codes)}
    elif isinstance(groups, str):
        path = Path(groups)
        if not path.is_file():
            raise ValueError(f"language_groups {groups!r} is neither paper, per-language, single nor a groups.json file.")
        groups = json.loads(path.read_text())["language_groups"]
    if not isinstance(groups, dict):
        raise ValueError(f"language_groups must be a mapping group -> codes, got {groups!r}.")
    return codes, {str(name): [language_table.language(c).code for c in members] for name, members in groups.items()}


def per_language_sources(spec, codes, role, overrides=None):
    """language -> source spec: one spec for all ('{lang}' filled in) or a mapping language -> spec."""
    is_mapping_by_language = isinstance(spec, dict) and spec and not set(spec) & set(mlm_data.SOURCE_KEYS)
    by_language = dict(spec) if is_mapping_by_language else {}
    by_language.update(overrides or {})
    stray = sorted(set(by_language) - set(codes))
    if stray:
        raise ValueError(f"{role} names languages {stray} that are not among the model's languages {codes}: add them "
                         "to `languages` or remove their data.")
    sources = {}
    for code in codes:
        chosen = by_language.get(code, None if is_mapping_by_language else spec)
        if chosen is None:
            raise ValueError(f"{role} has no source for {code}: every language of the model needs {role}.")
        sources[code] = mlm_data.resolve_source(chosen, code, role)
    return sources


def load_tokenizer(config):
    return _tokenizer(os.path.expanduser(config.tokenizer))


@functools.lru_cache(maxsize=4)
def _tokenizer(name):
    """One load per process: the sweep's many runs share it (tokenizers are not modified by a run)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as error:
        raise ValueError(f"The tokenizer {name!r} cannot be loaded: {error}") from error


def model_config(config, tokenizer, codes, groups):
    from configuration_mol import MoLConfig

    vocab_size = config.vocab_size or len(tokenizer)
    if len(tokenizer) > vocab_size:
        raise ValueError(f"The tokenizer {config.tokenizer!r} has {len(tokenizer)} tokens but vocab_size={vocab_size}: "
                         f"its ids would not fit the embeddings; set vocab_size >= {len(tokenizer)} or null.")
    for name in ("mask_token_id", "pad_token_id"):
        if getattr(tokenizer, name) is None:
            raise ValueError(f"The tokenizer {config.tokenizer!r} has no {name.replace('_id', '')}: MLM needs one.")
    return MoLConfig(
        vocab_size=vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        hidden_dropout_prob=config.hidden_dropout_prob, attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_length + tokenizer.pad_token_id + 1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        languages=codes, language_groups=groups, group_layers=config.group_layers if groups else "dense",
        grouped_gemm_backend=config.grouped_gemm_backend, attn_implementation=config.attn_implementation,
        sparse_prediction=True,  # training only needs the masked positions' logits; the exported bundle turns it off
    )


class RunData:
    """The tokenized training and devtest sentences of every language, and the masking spec."""

    def __init__(self, config, tokenizer, codes):
        train_sources = per_language_sources(config.train_data, codes, "train_data", config.train_data_overrides)
        devtest_sources = per_language_sources(config.devtest_data, codes, "devtest_data")
        supplementary = config.supplementary_data
        self.codes = codes
        self.train, self.devtest = [], []
        for code in codes:
            extra = mlm_data.resolve_source(supplementary, code, "supplementary_data") if supplementary else None
            self.train.append(mlm_data.tokenized_language(
                code, "train", [train_sources[code], extra], tokenizer, config.max_length, config.cache_dir,
                config.max_sentences, config.min_sentences, config.deduplicate))
            self.devtest.append(mlm_data.tokenized_language(
                code, "devtest", [devtest_sources[code], None], tokenizer, config.max_length, config.cache_dir,
                config.eval_sentences, None, False)["input_ids"][:])  # small: held as lists
        self.masking = mlm_data.MaskingSpec(
            mask_token_id=tokenizer.mask_token_id, pad_token_id=tokenizer.pad_token_id, vocab_size=len(tokenizer),
            special_token_ids=tuple(sorted(set(tokenizer.all_special_ids) - {tokenizer.pad_token_id})),
            probability=config.mlm_probability)

    def sizes(self):
        return [len(sentences) for sentences in self.train]

    def train_sequences(self, pairs):
        """Token ids of (language, index) pairs, in order: one Arrow read per language, not one per sentence."""
        by_language = {}
        for position, (lang, index) in enumerate(pairs):
            by_language.setdefault(lang, []).append((position, index))
        sequences = [None] * len(pairs)
        for lang, wanted in by_language.items():
            rows = self.train[lang][[index for _, index in wanted]]["input_ids"]
            for (position, _), ids in zip(wanted, rows):
                sequences[position] = ids
        return sequences


# -- the run


class MLMTrainer:
    """One MLM run: build, shard, train with checkpoints and evaluation, export. `independent=True` runs this
    process's own model with no collective at all (the sweep's many small runs, one per process)."""

    def __init__(self, config, independent=False, show_progress=True):
        from accelerate import Accelerator

        self.config = config
        self.independent = independent
        self.show_progress = show_progress
        self.output_dir = Path(config.output_dir)
        trackers = [] if independent else list(config.trackers)
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=trackers or None,
                                       project_dir=str(self.output_dir))
        self.world_size = 1 if independent else self.accelerator.num_processes
        self.rank = 0 if independent else self.accelerator.process_index
        self.is_main = independent or self.accelerator.is_main_process
        self.device = self.accelerator.device
        self.strategy = self._strategy()

        # Everything that can be wrong with the input fails here, before any data is tokenized or anything written.
        self.codes, self.groups = resolve_languages_and_groups(config)
        self.tokenizer = load_tokenizer(config)
        self.model_config = model_config(config, self.tokenizer, self.codes, self.groups)
        with self._main_process_first():
            self.data = RunData(config, self.tokenizer, self.codes)
        self.group_of_language = self.model_config.language_to_group()
        self.compute_seconds = 0.0  # training steps and evaluation forwards: what is not overhead
        self._eval_batches = None

    # -- setup

    def _strategy(self):
        strategy = self.config.strategy
        if strategy == "auto":
            return "fsdp" if self.world_size > 1 else "none"
        if strategy == "none" and self.world_size > 1:
            raise ValueError(f"strategy='none' with {self.world_size} processes would train {self.world_size} "
                             "separate models: use fsdp or hsdp, or launch one process.")
        if strategy in ("fsdp", "hsdp") and not dist.is_initialized():
            raise ValueError(f"strategy={strategy!r} needs a distributed launch (accelerate launch with several "
                             "processes); use strategy none or auto for a single process.")
        return strategy

    def _main_process_first(self):
        return contextlib.nullcontext() if self.independent else self.accelerator.main_process_first()

    def _barrier(self):
        if not self.independent and dist.is_initialized():
            dist.barrier()

    def _mesh(self):
        from torch.distributed.device_mesh import init_device_mesh

        device_type = self.device.type
        if self.strategy == "fsdp":
            return init_device_mesh(device_type, (self.world_size,), mesh_dim_names=("shard",))
        shard = int(self.config.shard_group_size or os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        if shard < 1 or self.world_size % shard:
            raise ValueError(f"shard_group_size={shard} does not divide the {self.world_size} processes of this run.")
        return init_device_mesh(device_type, (self.world_size // shard, shard), mesh_dim_names=("replicate", "shard"))

    def build_model(self):
        from modeling_mol import MoLForMaskedLM

        torch.manual_seed(self.config.seed)
        model = MoLForMaskedLM(self.model_config).to(self.device)
        bf16 = self.config.mixed_precision == "bf16"
        if self.strategy in ("fsdp", "hsdp"):
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                          reduce_dtype=torch.float32 if bf16 else None)
            mesh = self._mesh()
            for layer in model.mol.encoder.layer:
                fully_shard(layer, mesh=mesh, mp_policy=policy)
            fully_shard(model, mesh=mesh, mp_policy=policy)
            self.autocast = contextlib.nullcontext
        else:
            self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if bf16 else \
                contextlib.nullcontext
        return model

    def build_optimizer(self, model):
        from transformers import get_cosine_schedule_with_warmup

        config = self.config
        decay, no_decay = [], []
        for name, parameter in model.named_parameters():
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(parameter)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.peak_learning_rate, betas=tuple(config.adam_betas), eps=config.adam_epsilon)
        scheduler = get_cosine_schedule_with_warmup(optimizer, min(config.warmup_steps, config.max_steps),
                                                    config.max_steps)
        return optimizer, scheduler

    def sharding_report(self, model):
        """Per parameter: whether it is a DTensor, its placements and the local share of its elements."""
        from torch.distributed.tensor import DTensor

        report = {}
        for name, parameter in model.named_parameters():
            if isinstance(parameter, DTensor):
                report[name] = {"dtensor": True, "placements": [str(p) for p in parameter.placements],
                                "local_numel": parameter.to_local().numel(), "numel": parameter.numel()}
            else:
                report[name] = {"dtensor": False, "local_numel": parameter.numel(), "numel": parameter.numel()}
        return report

    # -- checkpoints

    def checkpoints(self):
        folder = self.output_dir / "checkpoints"
        found = [(int(m.group(1)), p) for p in folder.glob("step-*") if (m := CHECKPOINT.match(p.name))]
        return [p for _, p in sorted(found)]

    def _checkpoint_states(self, model, optimizer):
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        return {"model": model_state, "optimizer": optimizer_state}

    def run_identity(self):
        """What a checkpoint must share with the run that resumes it."""
        return {"model": {k: v for k, v in self.model_config.to_dict().items()
                          if k not in ("transformers_version", "attn_implementation", "grouped_gemm_backend")},
                "sentences_per_device": self.config.sentences_per_device, "world_size": self.world_size,
                "seed": self.config.seed}

    def save_checkpoint(self, step, model, optimizer, scheduler, sampler):
        import torch.distributed.checkpoint as dcp

        final = self.output_dir / "checkpoints" / f"step-{step:07d}"
        partial = final.with_name(final.name + ".partial")
        if self.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        self._barrier()
        dcp.save(self._checkpoint_states(model, optimizer), checkpoint_id=str(partial / "state"),
                 no_dist=self.independent or not dist.is_initialized())
        torch.save({"cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   partial / f"rng-{self.rank}.pt")
        if self.is_main:
            (partial / "trainer_state.json").write_text(json.dumps({
                "step": step, "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(),
                "identity": self.run_identity()}, default=str))
        self._barrier()
        if self.is_main:
            partial.rename(final)
            for old in self.checkpoints()[: -max(1, self.config.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        return final

    def resolve_resume(self):
        resume = self.config.resume
        if not resume:
            return None
        if resume == "latest":
            found = self.checkpoints()
            return found[-1] if found else None  # nothing to resume yet: start from scratch
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise ValueError(f"resume={resume!r} is not a checkpoint folder (no trainer_state.json); use 'latest' "
                             f"or one of {[str(p) for p in self.checkpoints()]}.")
        return path

    def load_checkpoint(self, path, model, optimizer, scheduler, sampler):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = json.loads((path / "trainer_state.json").read_text())
        expected = json.loads(json.dumps(self.run_identity(), default=str))
        if state["identity"] != expected:
            changed = sorted(k for k in expected if state["identity"].get(k) != expected[k])
            raise ValueError(f"The checkpoint {path} comes from a different run configuration (differs in {changed}): "
                             "resume with the configuration it was trained with, or start a new output_dir.")
        states = self._checkpoint_states(model, optimizer)
        dcp.load(states, checkpoint_id=str(path / "state"), no_dist=self.independent or not dist.is_initialized())
        set_state_dict(model, optimizer, model_state_dict=states["model"], optim_state_dict=states["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        rng = torch.load(path / f"rng-{self.rank}.pt", weights_only=False)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return state["step"]

    # -- steps

    def _all_reduce(self, values):
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if not self.independent and dist.is_initialized():
            dist.all_reduce(tensor)
        return tensor.tolist()

    def train_batch(self, sampler, step):
        pairs = sampler.next_batch(step, self.rank)
        sequences = self.data.train_sequences(pairs)
        batch = mlm_data.mlm_batch(sequences, [lang for lang, _ in pairs], self.data.masking,
                                   mlm_data.step_generator(self.config.seed, step, self.rank))
        return {k: v.to(self.device) for k, v in batch.items()}

    def evaluate(self, model):
        """MLM loss per devtest language: the sum of token losses over all ranks' batches / the masked tokens."""
        losses = {}
        model.eval()
        with torch.no_grad():
            for code, batches in zip(self.codes, self.eval_batches()):
                # Every rank runs the same number of forwards (FSDP gathers weights collectively); the padding
                # batches count for nothing.
                rounds = math.ceil(len(batches) / self.world_size)
                total = count = 0.0
                for round_index in range(rounds):
                    index = round_index * self.world_size + self.rank
                    batch = batches[min(index, len(batches) - 1)]
                    compute_started = time.perf_counter()
                    with self.autocast():
                        loss = model(**{k: v.to(self.device) for k, v in batch.items()}).loss.float()
                    self.compute_seconds += time.perf_counter() - compute_started
                    if index < len(batches):
                        masked = (batch["labels"] != -100).sum().item()
                        total += loss.item() * masked
                        count += masked
                total, count = self._all_reduce([total, count])
                losses[code] = total / count
        model.train()
        return losses

    def eval_batches(self):
        """Every language's masked devtest batches, built once: each evaluation of the run reuses them."""
        if self._eval_batches is None:
            size = self.config.sentences_per_device
            self._eval_batches = [mlm_data.eval_batches(code, lang_id, devtest, self.data.masking, size)
                                  for lang_id, (code, devtest) in enumerate(zip(self.codes, self.data.devtest))]
        return self._eval_batches

    # -- the loop

    def train(self):
        config = self.config
        model = self.build_model()
        optimizer, scheduler = self.build_optimizer(model)
        sampler = mlm_data.LanguageBatchSampler(
            self.data.sizes(), mlm_data.language_probabilities(self.data.sizes(), config.sampling,
                                                               config.sampling_temperature),
            config.sentences_per_device, self.world_size, config.seed, self.group_of_language)
        start = 0
        resume_from = self.resolve_resume()
        if resume_from is not None:
            start = self.load_checkpoint(resume_from, model, optimizer, scheduler, sampler)
        metrics_path = self.output_dir / "metrics.jsonl"
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            forget_metrics_after(metrics_path, start)
        if not self.independent:
            self.accelerator.init_trackers(config.run_name or "mol-mlm", config=_tracker_config(config))
        self._write_json(f"sharding-rank{self.rank}.json", self.sharding_report(model), every_rank=True)
        last_checkpoint = resume_from
        started, tokens_seen = time.perf_counter(), 0
        progress = self._progress(start)
        model.train()
        for step in range(start, config.max_steps):
            batch = self.train_batch(sampler, step)
            compute_started = time.perf_counter()
            with self.autocast():
                loss = model(**batch).loss
            loss.backward()
            grad_norm = self._clip(model)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize()  # the loss is read next anyway; this only makes the timing honest
            self.compute_seconds += time.perf_counter() - compute_started
            local_tokens = int(batch["attention_mask"].sum())
            mean_loss, tokens = self._all_reduce([loss.item() / self.world_size, local_tokens])
            if not math.isfinite(mean_loss):
                raise TrainingDiverged(
                    f"The training loss became {mean_loss} at step {step + 1}: stopping. The last good checkpoint is "
                    f"{last_checkpoint or 'none (no checkpoint was written yet)'}; lower learning_rate "
                    f"({config.peak_learning_rate}) or check the data.")
            tokens_seen += tokens
            done = step + 1
            throughput = tokens_seen / max(time.perf_counter() - started, 1e-9)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{throughput:,.0f}")
            if done % max(1, config.log_every) == 0 or done == config.max_steps:
                self._log(metrics_path, done, {"train/loss": mean_loss, "train/lr": scheduler.get_last_lr()[0],
                                               "train/grad_norm": grad_norm, "train/tokens_per_s": throughput})
            if config.eval_every and done % config.eval_every == 0 and done != config.max_steps:
                self._log(metrics_path, done, {f"devtest/{k}": v for k, v in self.evaluate(model).items()})
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                last_checkpoint = self.save_checkpoint(done, model, optimizer, scheduler, sampler)
        if progress is not None:
            progress.close()
        devtest = self.evaluate(model)
        self._log(metrics_path, config.max_steps, {f"devtest/{k}": v for k, v in devtest.items()})
        saved_last_step = config.checkpoint_every and config.max_steps % config.checkpoint_every == 0
        if config.checkpoint_at_end and not saved_last_step and start < config.max_steps:
            self.save_checkpoint(config.max_steps, model, optimizer, scheduler, sampler)
        result = {"languages": self.codes, "language_groups": self.groups, "steps": config.max_steps,
                  "devtest_loss": devtest, "wall_time_s": time.perf_counter() - started, "seed": config.seed,
                  "compute_s": self.compute_seconds, "resumed_from_step": start}
        if config.export or config.push_to_hub:
            result["export_dir"] = str(self.export(model, devtest))
        self._write_json("results.json", result)
        if not self.independent:
            self.accelerator.end_training()
        return result

    def _clip(self, model):
        if not self.config.max_grad_norm:
            return None
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return float(norm)

    def _progress(self, start):
        if not (self.is_main and self.show_progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.config.max_steps, initial=start, desc="MLM", unit="step", dynamic_ncols=True)

    def _log(self, path, step, values):
        if not self.independent:
            self.accelerator.log(values, step=step)
        if self.is_main:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, **values}) + "\n")

    def _write_json(self, name, value, every_rank=False):
        if self.is_main or every_rank:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output_dir / name, json.dumps(value, indent=2, default=str))

    # -- outputs

    def full_state_dict(self, model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if self.strategy in ("fsdp", "hsdp"):
            return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def export(self, model, devtest):
        """The flat remote-code bundle with tokenizer and model card in output_dir/model (pushed when asked)."""
        from modeling_mol import MoLForMaskedLM

        state = self.full_state_dict(model)
        target = self.output_dir / "model"
        if self.is_main:
            plain = MoLForMaskedLM(copy.deepcopy(self.model_config))
            plain.load_state_dict(state)
            plain.config.sparse_prediction = False  # users get transformers-shaped logits
            shutil.rmtree(target, ignore_errors=True)
            plain.save_pretrained(target, tokenizer=self.tokenizer)
            (target / "README.md").write_text(render_model_card(self.config, self.model_config, devtest,
                                                                self.data.sizes()), encoding="utf-8")
            if self.config.push_to_hub:
                push_folder(target, self.config.push_to_hub)
        self._barrier()
        return target


def forget_metrics_after(path, step):
    """Drop the metrics a killed run logged after the checkpoint it resumes from: they are logged again."""
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def atomic_write_text(path, text):
    partial = Path(f"{path}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _tracker_config(config):
    """TensorBoard's hparams take scalars only."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in config.to_dict().items()}


def push_folder(folder, repo_id):
    """Upload a bundle as a Hub model repo (upload_folder keeps our card; push_to_hub would write its own)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message="Upload MoL checkpoint from train_mlm.py")


def render_model_card(config, mol_config, devtest, train_sizes):
    """The bundle's README.md: huggingface_hub's ModelCard from model_cards/model_card.md, with the metadata the Hub
    reads (license, languages, library, pipeline, tags, datasets) and the UDHR attribution when trained on it."""
    from huggingface_hub import ModelCard, ModelCardData

    sources = [config.train_data, config.devtest_data, config.supplementary_data,
               *(config.train_data_overrides or {}).values()]
    hub_datasets = sorted({source["dataset"] for source in sources if isinstance(source, dict) and source.get("dataset")})
    udhr = any("udhr" in json.dumps(source) for source in sources if source is not None)
    card_data = ModelCardData(
        license=config.license,
        language=sorted({code.split("_")[0] for code in mol_config.languages}),  # ISO 639-3, as FLORES codes begin
        library_name="transformers",
        pipeline_tag="fill-mask",
        tags=["mol", "mixture-of-languages", "multilingual", "custom_code", "masked-language-modeling"],
        datasets=hub_datasets or None,
    )
    values = {
        "run_name": config.run_name or "mol-mlm", "groups": mol_config.language_groups,
        "num_languages": len(mol_config.languages), "num_groups": mol_config.num_groups,
        "group_layout": mol_config.group_layout, "group_layers": mol_config.group_layers or "none",
        "hidden_size": mol_config.hidden_size, "num_hidden_layers": mol_config.num_hidden_layers,
        "intermediate_size": mol_config.intermediate_size, "vocab_size": mol_config.vocab_size,
        "losses": [{"code": code, "sentences": size, "loss": f"{devtest[code]:.4f}"}
                   for code, size in zip(mol_config.languages, train_sizes)],
        "train_data": json.dumps(config.train_data), "devtest_data": json.dumps(config.devtest_data),
        "max_steps": config.max_steps, "learning_rate": config.peak_learning_rate,
        "warmup_steps": config.warmup_steps, "sentences_per_device": config.sentences_per_device,
        "max_length": config.max_length,
        "sampling": f"{config.sampling} (T={config.sampling_temperature})" if config.sampling == "temperature"
        else config.sampling, "mlm_probability": config.mlm_probability, "mixed_precision": config.mixed_precision,
        "first_language": mol_config.languages[0], "repo_id": config.push_to_hub or "path/to/this/folder",
        "udhr_notice": udhr, "license": config.license,
    }
    return str(ModelCard.from_template(card_data, template_path=str(MODEL_CARD), **values))
