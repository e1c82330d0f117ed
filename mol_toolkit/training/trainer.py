"""The MLM training loop of train_mlm.py and of every run of the interference sweep: what a run trains on (its
languages, groups, tokenizer, data) and the loop that composes the training components of `mol_toolkit.training`
(parallelism, run folder, checkpoint manager, metrics, export). The loop knows nothing about sweeps.
"""

import functools
import json
import math
import os
import time
from pathlib import Path

import torch

from mol_toolkit import languages as language_table
from mol_toolkit import text_sources
from mol_toolkit.files import atomic_write_text
from mol_toolkit.text_sources import per_language_sources
from mol_toolkit.training import mlm_data
from mol_toolkit.training.checkpointing import CheckpointManager
from mol_toolkit.training.expert_load import step_metrics
from mol_toolkit.training.export import check_hub_access, export_bundle, plain_model, render_model_card
from mol_toolkit.training.metrics import MetricsLog
from mol_toolkit.training.parallelism import ProcessContext, choose_threads, resolve_strategy
from mol_toolkit.training.run_folder import RunFolder, check_writable_folder
from mol_toolkit.training.strategies import STRATEGIES


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


# -- what the run trains on


def resolve_languages_and_groups(config):
    """The model's languages and its language groups ({} for a dense model)."""
    codes = language_table.resolve_languages(config.languages)
    layers = config.group_layers
    if layers == "dense" or layers == [] or config.routing != "language":  # a MoE learns its routing
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
    groups = {str(name): [language_table.language(c).code for c in members] for name, members in groups.items()}
    if config.language_swaps:
        from mol_toolkit.grouping import swap_languages

        groups = swap_languages(groups, config.language_swaps)
    return codes, groups


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


# XLM-R's special token ids: what the model is built with when no tokenizer is read (a dry run of a paper preset).
XLMR_SPECIAL_IDS = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}


def model_config(config, tokenizer, codes, groups):
    """The MoLConfig of the run. `tokenizer` None (a dry run) takes XLM-R's special ids and needs vocab_size."""
    from configuration_mol import MoLConfig

    if tokenizer is None:
        if config.vocab_size is None:
            raise ValueError("vocab_size is null, so the tokenizer must be read for its size: set vocab_size to run "
                             "without the tokenizer.")
        vocab_size, special = config.vocab_size, XLMR_SPECIAL_IDS
    else:
        vocab_size = config.vocab_size or len(tokenizer)
        if len(tokenizer) > vocab_size:
            raise ValueError(f"The tokenizer {config.tokenizer!r} has {len(tokenizer)} tokens but vocab_size={vocab_size}: "
                             f"its ids would not fit the embeddings; set vocab_size >= {len(tokenizer)} or null.")
        for name in ("mask_token_id", "pad_token_id"):
            if getattr(tokenizer, name) is None:
                raise ValueError(f"The tokenizer {config.tokenizer!r} has no {name.replace('_id', '')}: MLM needs one.")
        special = {name: getattr(tokenizer, name) for name in XLMR_SPECIAL_IDS}
    return MoLConfig(
        vocab_size=vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        hidden_dropout_prob=config.hidden_dropout_prob, attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_length + special["pad_token_id"] + 1, **special,
        languages=codes, language_groups=groups,
        group_layers=config.group_layers if groups or config.routing != "language" else "dense",
        routing=config.routing, num_experts=config.num_experts, router_noise_std=config.router_noise_std,
        router_aux_loss_coef=config.router_aux_loss_coef,
        grouped_gemm_backend=config.grouped_gemm_backend, attn_implementation=config.attn_implementation,
        sparse_prediction=True,  # training only needs the masked positions' logits; the exported bundle turns it off
    )


def parameter_counts(model):
    """(total, active): every parameter once, and those one sentence uses (one copy of each group block's weights)."""
    from modeling_mol.modeling_mol import MoLGroupedLayerNorm, MoLGroupedLinear

    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for module in model.modules():
        if isinstance(module, (MoLGroupedLinear, MoLGroupedLayerNorm)) and module.num_groups > 1:
            inactive += sum(p.numel() for p in module.parameters(recurse=False)) * (module.num_groups - 1) // module.num_groups
    return total, total - inactive


def dry_run(config, world_size=1):
    """What the run would be, without running it: a dict of the model's size, the data and the batch. Reads the
    tokenizer only when vocab_size is null, and no data."""
    import torch

    from modeling_mol import MoLForMaskedLM

    codes, groups = resolve_languages_and_groups(config)
    tokenizer = load_tokenizer(config) if config.vocab_size is None else None
    mol_config = model_config(config, tokenizer, codes, groups)
    with torch.device("meta"):
        model = MoLForMaskedLM(mol_config)
    total, active = parameter_counts(model)
    per_device, accumulation = batch_plan(config, world_size)
    train = per_language_sources(config.train_data, codes, "train_data", config.train_data_overrides)
    devtest = per_language_sources(config.devtest_data, codes, "devtest_data")
    global_batch = per_device * world_size * accumulation
    return {
        "languages": codes, "language_groups": groups, "group_layers": mol_config.group_layers,
        "routing": mol_config.routing, "num_experts": mol_config.num_experts,
        "parameters": total, "active_parameters": active, "world_size": world_size,
        "sentences_per_device": per_device, "gradient_accumulation_steps": accumulation,
        "global_batch": global_batch, "global_batch_pinned": config.sentences_per_device == "auto",
        "max_steps": config.max_steps, "sampling": config.sampling,
        "epochs": dry_run_epochs(config, codes, train, global_batch),
        "train_data": {code: text_sources.describe_source(train[code], config.max_sentences) for code in codes},
        "devtest_data": {code: text_sources.describe_source(devtest[code], config.eval_sentences) for code in codes},
    }


def dry_run_epochs(config, codes, train_sources, global_batch):
    """Epochs per language the steps give, where the sentence counts are known without reading the data (the
    counts.json that prepare-data writes beside the training files); else how they follow once the data is read."""
    from mol_toolkit.training.data_preparation import COUNTS

    counts, read = {}, {}  # each counts.json read once, however many languages share it
    for code in codes:
        path = train_sources[code].get("path")
        counts_file = Path(os.path.expanduser(path)).parent / COUNTS if path else None
        if counts_file is not None and counts_file not in read:
            read[counts_file] = json.loads(counts_file.read_text(encoding="utf-8")) if counts_file.is_file() else {}
        if counts_file is not None and code in read[counts_file]:
            counts[code] = read[counts_file][code]
    if set(counts) != set(codes):
        rule = ("the same for every language: steps x global batch / all sentences" if config.sampling == "proportional"
                else "steps x global batch x p_l / n_l")
        return {"known": False, "rule": f"unknown until the data is read ({config.sampling} sampling: {rule})"}
    sizes = [counts[code] for code in codes]
    probabilities = mlm_data.language_probabilities(sizes, config.sampling, config.sampling_temperature)
    return {"known": True, "per_language": {code: float(config.max_steps * global_batch * p / max(1, n))
                                            for code, p, n in zip(codes, probabilities, sizes)}}


# -- the run


class MLMTrainer:
    """One MLM run, composed of the training components: the process context and the model's layout over it
    (`training.parallelism`), the run folder (`training.run_folder`), the checkpoint manager
    (`training.checkpointing`), the metrics (`training.metrics`) and the export (`training.export`).

    `context` defaults to every process accelerate launched; a caller that trains its own model alone (the sweep)
    passes `ProcessContext.local()`. `on_step(step, loss, tokens_per_s)` sees every optimizer step, with the
    newest loss and throughput read to the host (at log and checkpoint steps; None before the first)."""

    def __init__(self, config, context=None, show_progress=True, on_step=None):
        self.config = config
        self.output_dir = Path(config.output_dir)
        # Paths first: nothing is read, tokenized or written for a run that could not save its results.
        check_writable_folder(config.output_dir, "output_dir")
        check_writable_folder(config.cache_dir, "cache_dir")
        self.accelerator = None
        if context is None:
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=list(config.trackers) or None,
                                           project_dir=str(self.output_dir))
            context = ProcessContext.from_accelerator(self.accelerator)
        self.context = context
        self.is_main = context.is_main
        self.device = context.device
        strategy_class = STRATEGIES[resolve_strategy(config.strategy, context)]
        # fp16: dynamic loss scaling keeps small gradients from underflowing (fp32 weights, fp16 compute).
        self.scaler = torch.amp.GradScaler(context.device.type) if config.mixed_precision == "fp16" else None
        self.sentences_per_device, self.accumulation = batch_plan(config, context.world_size)
        self.show_progress = show_progress
        self.threads, why = choose_threads(config.threads, context)
        torch.set_num_threads(self.threads)
        if self.is_main and show_progress:
            print(f"torch intra-op threads: {self.threads} ({why}).")

        # Everything that can be wrong with the input fails here, before any data is tokenized or anything written.
        self.codes, self.groups = resolve_languages_and_groups(config)
        self.tokenizer = load_tokenizer(config)
        self.model_config = model_config(config, self.tokenizer, self.codes, self.groups)
        strategy_class.check(config, self.model_config, context)
        if config.push_to_hub and self.is_main:
            check_hub_access(config.push_to_hub)
        self.checkpoints = CheckpointManager(self.output_dir, context, config.keep_checkpoints)
        # An explicit checkpoint must exist and be complete (verified once, here); 'latest' is resolved under the lock.
        explicit = config.resume and config.resume != "latest"
        self.resume_from = self.checkpoints.resolve(config.resume) if explicit else None
        self.folder = RunFolder(self.output_dir, config.to_dict(), is_main=self.is_main)
        self.folder.check(config.resume, config.overwrite)  # read-only: refuse before the data work
        with context.main_process_first():
            if context.is_main:
                mlm_data.remove_dead_partials(config.cache_dir)  # a killed run's half-written tokenizations
            self.data = mlm_data.RunData(config, self.tokenizer, self.codes)
        self.data_amounts = self.data.amounts(config)
        mlm_data.check_data_amounts(config, self.data_amounts)  # before anything is written
        global_batch, sentences = self.sentences_per_device * context.world_size * self.accumulation, sum(self.data.sizes())
        self.epochs = config.max_steps * global_batch / max(1, sentences)
        if self.is_main and show_progress:
            print(f"{config.max_steps} steps x {global_batch} sentences = {self.epochs:.2f} epochs of the "
                  f"{sentences:,} training sentences ({config.sampling} sampling).")
        # Only now is anything written into the run folder: the lock first, then the checks again under it.
        self.folder.acquire(config.resume, config.overwrite)
        self.checkpoints.remove_leftovers()
        self.metrics = MetricsLog(self.output_dir, context, self.accelerator, config.trackers, show_progress, on_step)
        self.group_of_language = self.model_config.language_to_group()
        self.strategy = strategy_class(self)
        # MoE runs log their routers: the auxiliary loss and every expert's share of the tokens per routed block
        # and per language (metrics.jsonl and the trackers).
        self.metrics_hook = step_metrics(self.model_config, context)
        self.compute_seconds = 0.0  # training steps and evaluation forwards: what is not overhead
        self._eval_batches = None

    # -- setup

    def build_model(self):
        from modeling_mol import MoLForMaskedLM

        model, self.autocast = self.strategy.build_model(MoLForMaskedLM, self.model_config)
        return model

    def build_optimizer(self, model):
        from transformers import get_cosine_schedule_with_warmup

        config = self.config
        decay, no_decay = [], []
        for name, parameter in model.named_parameters():
            (no_decay if excluded_from_weight_decay(name) else decay).append(parameter)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.peak_learning_rate, betas=tuple(config.adam_betas), eps=config.adam_epsilon,
            **self.strategy.optimizer_options())
        scheduler = get_cosine_schedule_with_warmup(optimizer, min(config.warmup_steps, config.max_steps),
                                                    config.max_steps)
        return optimizer, scheduler

    def build_sampler(self):
        """Micro-batch slots: world size x accumulation steps per optimizer step, so one process accumulating k
        micro-batches draws what k processes draw in one step."""
        config = self.config
        sizes = self.data.sizes()
        return mlm_data.LanguageBatchSampler(
            sizes, mlm_data.language_probabilities(sizes, config.sampling, config.sampling_temperature),
            self.sentences_per_device, self.context.world_size * self.accumulation, config.seed,
            self.group_of_language)

    def sharding_report(self, model):
        """Per parameter: whether it is a DTensor, its placements and the local share of its elements."""
        from torch.distributed.tensor import DTensor

        report = {}
        for name, parameter in model.named_parameters():
            if isinstance(parameter, DTensor):
                report[name] = {"dtensor": True, "placements": [str(p) for p in parameter.placements],
                                "local_numel": parameter.to_local().numel(), "numel": parameter.numel(),
                                "shape": list(parameter.shape), "local_shape": list(parameter.to_local().shape),
                                "mesh_ranks": parameter.device_mesh.mesh.flatten().tolist()}
            else:
                report[name] = {"dtensor": False, "local_numel": parameter.numel(), "numel": parameter.numel()}
        return report

    # -- checkpoints

    def run_identity(self):
        """What a checkpoint must share with the run that resumes it."""
        return {"model": {k: v for k, v in self.model_config.to_dict().items()
                          if k not in ("transformers_version", "attn_implementation", "grouped_gemm_backend")},
                "sentences_per_device": self.sentences_per_device, "world_size": self.context.world_size,
                "gradient_accumulation_steps": self.accumulation, "seed": self.config.seed,
                **self.strategy.identity()}

    def _states(self, model, optimizer):
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(model, optimizer)
        states = {"model": model_state, "optimizer": optimizer_state}
        return states, self.strategy.checkpoint_states(states, model)

    def save_checkpoint(self, step, model, optimizer, scheduler, sampler):
        # The metrics hook's state (a MoE's expert counts since the last log) goes with it, so that a resumed run
        # logs the same shares.
        return self.checkpoints.save(step, self._states(model, optimizer)[1], {
            "step": step, "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(),
            "identity": self.run_identity(), "expert_load": self.metrics_hook.state(),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None})

    def load_checkpoint(self, path, model, optimizer, scheduler, sampler):
        from torch.distributed.checkpoint.state_dict import set_state_dict

        recorded = CheckpointManager.trainer_state(path)
        expected = json.loads(json.dumps(self.run_identity(), default=str))
        # The layout may change (group_parallel <-> fsdp/hsdp, other group ranks): the checkpoint reshards.
        recorded_identity = {k: v for k, v in recorded["identity"].items() if k != "group_parallel"}
        expected = {k: v for k, v in expected.items() if k != "group_parallel"}
        if recorded_identity != expected:
            changed = sorted(k for k in expected if recorded_identity.get(k) != expected[k])
            raise ValueError(f"The checkpoint {path} comes from a different run configuration (differs in {changed}): "
                             "resume with the configuration it was trained with, or start a new output_dir.")
        states, stored = self._states(model, optimizer)
        self.checkpoints.load(path, stored)  # group_parallel: into views of `states`' tensors
        set_state_dict(model, optimizer, model_state_dict=states["model"], optim_state_dict=states["optimizer"])
        scheduler.load_state_dict(recorded["scheduler"])
        sampler.load_state_dict(recorded["sampler"])
        if self.scaler is not None and recorded.get("grad_scaler") is not None:
            self.scaler.load_state_dict(recorded["grad_scaler"])
        self.metrics_hook.restore(recorded.get("expert_load"), self.is_main)
        return recorded["step"]

    # -- steps

    def train_step(self, model, optimizer, scheduler, sampler, step):
        """One optimizer step over the strategy's micro-batches: (a float64 device vector, the logged loss then the
        metrics hook's terms, each such that its sum over the ranks is the global batch's mean; this process's real
        tokens; the gradient norm before clipping, on the device, or None). Nothing is read to the host here: the
        loop reads the pending steps at log and checkpoint steps (`read_steps`)."""
        strategy, hook = self.strategy, self.metrics_hook
        logged, tokens = None, 0
        for batch, batch_tokens, extra in strategy.micro_batches(sampler, step):
            started = time.perf_counter()
            with self.autocast():
                output = model(**batch, output_router_logits=hook.wants_router_logits)
            loss, value = strategy.micro_loss(output, batch, extra)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            self.compute_seconds += time.perf_counter() - started
            terms = hook.add(output, batch)
            self.term_names = list(terms)
            values = torch.stack([value, *terms.values()])
            logged = values if logged is None else logged + values
            tokens += batch_tokens
        started = time.perf_counter()
        strategy.finish_gradients(model)
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)  # clip the true gradients
        grad_norm = strategy.clip(model, self.config.max_grad_norm) if self.config.max_grad_norm else None
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skipped when a gradient overflowed; the scale then backs off
            self.scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # only makes the timing honest; nothing is read to the host
        self.compute_seconds += time.perf_counter() - started
        return logged / strategy.logged_divisor(), tokens, grad_norm

    def read_steps(self, pending, last_checkpoint):
        """The pending steps' values summed over the ranks in one reduction and read to the host: per step (step,
        mean loss, {term: mean}, global tokens, gradient norm). A non-finite loss stops the run, naming its step."""
        logged = torch.stack([values for _, values, _, _ in pending])
        tokens = torch.tensor([t for _, _, t, _ in pending], dtype=torch.float64, device=logged.device)
        flat = self.context.reduce(torch.cat([logged.flatten(), tokens]))
        width = logged.shape[1]
        rows = []
        for i, (step, _, _, norm) in enumerate(pending):
            loss, *terms = flat[i * width:(i + 1) * width]
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"The training loss became {loss} at step {step}: stopping. The last good checkpoint is "
                    f"{last_checkpoint or 'none (no checkpoint was written yet)'}; lower learning_rate "
                    f"({self.config.peak_learning_rate}) or check the data.")
            rows.append((step, loss, dict(zip(self.term_names, terms)), flat[len(pending) * width + i],
                         None if norm is None else float(norm)))
        return rows

    def evaluate(self, model):
        """MLM loss per devtest language (the strategy decides which rank runs which batches)."""
        model.eval()
        with torch.no_grad():
            losses = self.strategy.evaluate(model)
        model.train()
        return losses

    def eval_loss(self, model, batch):
        """The mean masked-token loss of one devtest batch (its compute time counted)."""
        compute_started = time.perf_counter()
        with self.autocast():
            loss = masked_lm_loss(model(**{k: v.to(self.device) for k, v in batch.items()}), batch["labels"])
        self.compute_seconds += time.perf_counter() - compute_started
        return loss

    def eval_batches(self):
        """Every language's masked devtest batches, built once: each evaluation of the run reuses them."""
        if self._eval_batches is None:
            size = self.sentences_per_device
            self._eval_batches = [mlm_data.eval_batches(code, lang_id, devtest, self.data.masking, size)
                                  for lang_id, (code, devtest) in enumerate(zip(self.codes, self.data.devtest))]
        return self._eval_batches

    # -- the loop

    def train(self):
        try:
            return self._train()
        finally:
            self.metrics.close()
            self.folder.release()
            if self.accelerator is not None:
                self.accelerator.end_training()

    def _train(self):
        config = self.config
        model = self.build_model()
        optimizer, scheduler = self.build_optimizer(model)
        sampler = self.build_sampler()
        start = 0
        resume_from = self.resume_from or self.checkpoints.resolve(config.resume)
        if resume_from is not None:
            start = self.load_checkpoint(resume_from, model, optimizer, scheduler, sampler)
        self.metrics.start(config.run_name or "mol-mlm", config, start, config.max_steps)
        self._write_json(f"sharding-rank{self.context.rank}.json", self.sharding_report(model), every_rank=True)
        last_checkpoint = resume_from
        started, tokens_seen = time.perf_counter(), 0
        pending, shown = [], (None, None)  # steps not read to the host yet; the newest (loss, tokens/s) read
        model.train()
        for step in range(start, config.max_steps):
            done = step + 1
            pending.append((done, *self.train_step(model, optimizer, scheduler, sampler, step)))
            log_now = done % max(1, config.log_every) == 0 or done == config.max_steps
            checkpoint_now = config.checkpoint_every and done % config.checkpoint_every == 0
            if log_now or checkpoint_now:  # a checkpoint is never written after a non-finite loss
                rows = self.read_steps(pending, last_checkpoint)
                pending = []
                tokens_seen += sum(row[3] for row in rows)
                _, loss, terms, _, grad_norm = rows[-1]
                shown = (loss, tokens_seen / max(time.perf_counter() - started, 1e-9))
            self.metrics.step(done, *shown)
            if log_now:
                self.metrics.log(done, {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0],
                                        "train/grad_norm": grad_norm, "train/tokens_per_s": shown[1],
                                        **self.metrics_hook.values(terms)},
                                 details=self.metrics_hook.details())
            if config.eval_every and done % config.eval_every == 0 and done != config.max_steps:
                self.metrics.log(done, {f"devtest/{k}": v for k, v in self.evaluate(model).items()})
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                last_checkpoint = self.save_checkpoint(done, model, optimizer, scheduler, sampler)
        self.metrics.close()
        devtest = self.evaluate(model)
        self.metrics.log(config.max_steps, {f"devtest/{k}": v for k, v in devtest.items()})
        saved_last_step = config.checkpoint_every and config.max_steps % config.checkpoint_every == 0
        if config.checkpoint_at_end and not saved_last_step and start < config.max_steps:
            self.save_checkpoint(config.max_steps, model, optimizer, scheduler, sampler)
        result = {"languages": self.codes, "language_groups": self.groups, "steps": config.max_steps,
                  "devtest_loss": devtest, "wall_time_s": time.perf_counter() - started, "seed": config.seed,
                  "compute_s": self.compute_seconds, "resumed_from_step": start,
                  "gradient_accumulation_steps": self.accumulation, "sentences_per_device": self.sentences_per_device,
                  "global_batch": self.sentences_per_device * self.context.world_size * self.accumulation,
                  "epochs": self.epochs, "data": self.data_amounts}
        if config.export or config.push_to_hub:
            export_dir, language_id = self.export(model, devtest)
            result["export_dir"] = str(export_dir)
            if language_id is not None:
                result["language_identifier"] = {k: language_id[k] for k in ("accuracy", "sentences", "per_language")}
        self._write_json("results.json", result)
        return result

    def _write_json(self, name, value, every_rank=False):
        if self.is_main or every_rank:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output_dir / name, json.dumps(value, indent=2, default=str))

    # -- outputs

    def export(self, model, devtest):
        """The flat remote-code bundle with tokenizer and model card in output_dir/model (pushed when asked), with
        its language identifier fitted; returns (folder, the identifier's scores or None)."""
        state = self.strategy.full_state_dict(model)
        target, scores = self.output_dir / "model", None
        if self.is_main:
            plain = plain_model(state, self.model_config)
            scores = self.fit_language_identifier(plain)
            card = render_model_card(self.config, plain.config, devtest, self.data.sizes(), scores,
                                     batch={"sentences_per_device": self.sentences_per_device,
                                            "world_size": self.context.world_size, "accumulation": self.accumulation})
            export_bundle(plain, self.tokenizer, target, card, self.config.push_to_hub)
        self.context.barrier()
        return target, scores

    def fit_language_identifier(self, plain):
        """The exported model's identifier, fitted on a seeded sample of the sentences this run tokenized (no
        further pass over the data) and scored on the devtest sentences; None when off or for one language."""
        from mol_toolkit.training import language_identification as lid

        config = self.config
        if not config.language_identifier or len(self.codes) < 2:
            return None
        count = config.language_identifier_sentences
        train = {}
        for i, code in enumerate(self.codes):
            rows = self.data.train[i]  # an Arrow dataset: only the sampled rows are read
            train[code] = rows[lid.sample_indices(len(rows), count, config.seed + i)]["input_ids"]
        fitted_on = f"{count} training sentences per language (at most) of this run's training data"
        lid.fit_language_identifier(plain, train, lid.special_token_ids(self.tokenizer), fitted_on=fitted_on)
        scores = lid.score_language_identifier(plain, dict(zip(self.codes, self.data.devtest)))
        if self.show_progress:
            print(f"language identifier: devtest accuracy {scores['accuracy']:.3f} over {scores['sentences']} "
                  "sentences.")
        return {**scores, "fitted_on": fitted_on}


def masked_lm_loss(output, labels):
    """The MLM loss alone: a MoE's `loss` also holds its weighted auxiliary loss, so its MLM loss is recomputed from
    the logits of the masked positions (sparse prediction: in the order of labels[labels != -100])."""
    if output.aux_loss is None:
        return output.loss.float()
    targets = labels.to(output.logits.device)
    targets = targets[targets != -100] if output.logits.dim() == 2 else targets.reshape(-1)
    return torch.nn.functional.cross_entropy(output.logits.float().reshape(-1, output.logits.shape[-1]), targets)


def excluded_from_weight_decay(name):
    """The stated rule: no weight decay on biases and LayerNorms (every block's, the embeddings' and the MLM head's
    `lm_head.layer_norm`)."""
    lowered = name.lower()
    return name.endswith("bias") or "layernorm" in lowered or "layer_norm" in lowered


def valid_world_sizes(global_batch, around, count=8):
    """The process counts nearest `around` that split `global_batch` evenly."""
    divisors = [n for n in range(1, min(global_batch, 16 * max(around, 64)) + 1) if global_batch % n == 0]
    return sorted(sorted(divisors, key=lambda n: (abs(n - around), n))[:count])


def batch_plan(config, world_size):
    """(sentences per device in one micro-batch, micro-batches per optimizer step). With sentences_per_device
    'auto' (the paper presets) the global batch is pinned: each device takes global_batch_size / processes
    sentences per step, in the fewest micro-batches of at most max_sentences_per_device."""
    if config.sentences_per_device != "auto":
        return config.sentences_per_device, accumulation_steps(config, world_size)
    total = config.global_batch_size
    if total % world_size:
        raise ValueError(
            f"global_batch_size={total} cannot be split evenly over {world_size} processes: the process counts near "
            f"it that can are {valid_world_sizes(total, world_size)} (every divisor of {total} can)."
        )
    per_device = total // world_size
    accumulation = next(a for a in range(1, per_device + 1)
                        if per_device % a == 0 and per_device // a <= config.max_sentences_per_device)
    return per_device // accumulation, accumulation


def accumulation_steps(config, world_size):
    """Micro-batches per optimizer step: the config's, or what its global_batch_size gives for this world size."""
    if config.sentences_per_device == "auto":
        return batch_plan(config, world_size)[1]
    if config.global_batch_size is None:
        return config.gradient_accumulation_steps
    per_step = config.sentences_per_device * world_size
    if config.global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size={config.global_batch_size} is not a multiple of sentences_per_device x processes = "
            f"{config.sentences_per_device} x {world_size} = {per_step}: choose a global batch that is, or other "
            "sentences_per_device."
        )
    return config.global_batch_size // per_step
