"""Metrics: `metrics.jsonl` (one line per logged step, written by the main process), the accelerate trackers
(TensorBoard by default) when the run has them, and the step progress bar."""

import json
from pathlib import Path

from mol_toolkit.files import atomic_write_text


class MetricsLog:
    def __init__(self, run_dir, context, accelerator=None, trackers=(), show_progress=True, on_step=None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.context = context
        self.accelerator = accelerator if trackers else None
        self.show_progress = show_progress and context.is_main
        self.on_step = on_step  # a caller's view of each step (the sweep's progress bar)
        self.progress = None

    def start(self, run_name, config, first_step, total_steps):
        """Forget what a killed run logged after the step it resumes from (it is logged again), start trackers."""
        if self.context.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            forget_metrics_after(self.path, first_step)
        if self.accelerator is not None:
            self.accelerator.init_trackers(run_name, config=tracker_config(config))
        if self.show_progress:
            from tqdm.auto import tqdm

            self.progress = tqdm(total=total_steps, initial=first_step, desc="MLM", unit="step", dynamic_ncols=True)

    def step(self, step, loss, tokens_per_s):
        """One step done; `loss` and `tokens_per_s` are the newest read to the host (None before the first log)."""
        if self.progress is not None:
            self.progress.update(1)
            if loss is not None:
                self.progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
        if self.on_step is not None:
            self.on_step(step, loss, tokens_per_s)

    def log(self, step, values, details=None):
        """`values` (scalars) go to the trackers and metrics.jsonl; `details` (nested values) to metrics.jsonl only."""
        if self.accelerator is not None:
            self.accelerator.log(values, step=step)
        if self.context.is_main:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, **values, **(details or {})}) + "\n")

    def close(self):
        if self.progress is not None:
            self.progress.close()
            self.progress = None


def forget_metrics_after(path, step):
    """Drop the metrics a killed run logged after the checkpoint it resumes from: they are logged again."""
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def tracker_config(config):
    """TensorBoard's hparams take scalars only."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in config.to_dict().items()}


class StepMetrics:
    """What a run logs beside its loss, as a hook of the training loop: the default logs nothing more. A hook's
    `add` returns device scalars (float64) summed over the micro-batches like the loss, read to the host at log
    steps only; `values` turns their global means into tracker scalars; `state` / `restore` travel with a checkpoint
    so that a resumed run logs what the uninterrupted one would."""

    wants_router_logits = False

    def add(self, output, batch):
        return {}

    def values(self, means):
        return dict(means)

    def details(self):
        return {}

    def state(self):
        return None

    def restore(self, state, is_main):
        pass
