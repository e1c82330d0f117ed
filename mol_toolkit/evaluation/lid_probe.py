"""The LID probe of the Mixture of Languages paper (Section 3.5, Figure 3): which blocks should be group-specific.

A frozen (dense) encoder reads the probe sentences once; every layer output (the embeddings, then each block) is
mean-pooled over real tokens, and one linear language-identification classifier per layer output is fitted on one
split (FLORES-200 dev in the paper) and scored on another (devtest). The blocks whose output identifies the language
at or above the threshold (92.3% in the paper) are made group-specific: in a 24-block model the paper finds blocks
0-5 and 15-23, the 6-9-9 layout.

Layer outputs and blocks: output 0 is the embeddings; output i (1..L) is the output of block i - 1. So block b is
group-specific when `accuracy[b + 1] >= threshold`.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mol_toolkit.text_sources import flores_plus_source, udhr_sources


PAPER_THRESHOLD = 0.923
CLASSIFIER_CHOICE = ("the project's choice: standardised features, multinomial logistic regression (the paper names "
                     "no classifier)")
PRESETS = {
    # Section 3.5's study: the 30 languages of Table 8 on the 30-language dense baseline (configs/dense30.yaml),
    # scored on FLORES-200 devtest, 92.3%.
    "paper": {"threshold": PAPER_THRESHOLD, "train_data": flores_plus_source("dev"),
              "test_data": flores_plus_source("devtest"), "languages": "mol-30",
              "choices": {
                  "languages": "the paper's: the 30 languages of Table 8",
                  "model": "the paper's: the 30-language dense baseline (train it with configs/dense30.yaml)",
                  "test_data": "the paper's: FLORES-200 (devtest)",
                  "threshold": "the paper's: 92.3%",
                  "train_data": "the project's choice: FLORES-200 dev (the paper does not say what the probe is "
                                "fitted on)",
                  "classifier": CLASSIFIER_CHOICE,
              }},
    # The shipped sample, offline: UDHR articles 1-24 to fit, 25-30 to score.
    "udhr": {"threshold": PAPER_THRESHOLD, "train_data": udhr_sources("train"), "test_data": udhr_sources("devtest"),
             "languages": None,
             "choices": {
                 "languages": "the project's choice: the model's languages (or six of the UDHR sample)",
                 "model": "the model given",
                 "test_data": "the project's choice: the UDHR sample's devtest split (articles 25-30)",
                 "threshold": "the paper's: 92.3%",
                 "train_data": "the project's choice: the UDHR sample's train split (articles 1-24)",
                 "classifier": CLASSIFIER_CHOICE,
             }},
}


def check_threshold(threshold):
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"--threshold must be a number in (0, 1] (an accuracy; the paper's is {PAPER_THRESHOLD}), "
                         f"got {threshold!r}.")
    return float(threshold)


def probe_classifier():
    """The linear LID classifier of every layer: standardised features, multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def accuracy_per_layer(train_features, train_labels, test_features, test_labels):
    """One classifier per layer output: its accuracy on the test split, the embeddings first."""
    return [float(probe_classifier().fit(train_features[i], train_labels).score(test_features[i], test_labels))
            for i in range(train_features.shape[0])]


def choose_group_layers(accuracy, threshold):
    """(group_layers, layout): block b is group-specific when its output (accuracy[b + 1]) is at or above the
    threshold; the layout is 'lid:a-b-c' when those blocks are one prefix and one suffix, else None."""
    from configuration_mol.configuration_mol import layout_name

    blocks = len(accuracy) - 1
    group_layers = [b for b in range(blocks) if accuracy[b + 1] >= threshold]
    return group_layers, layout_name(group_layers, blocks)


@dataclass
class ProbeResult:
    languages: list
    accuracy: list
    threshold: float
    group_layers: list
    layout: object
    seconds: dict
    preset: str = "udhr"
    choices: dict = None

    def to_dict(self):
        return {"preset": self.preset, "languages": self.languages, "accuracy": self.accuracy,
                "threshold": self.threshold, "group_layers": self.group_layers, "layout": self.layout,
                "seconds": self.seconds, "choices": self.choices}


def run_probe(encoder, codes, train_texts, test_texts):
    """Embed both splits (one forward pass per batch for all layers) and fit one classifier per layer output."""
    started = time.perf_counter()
    features, labels = {}, {}
    for split, texts in (("train", train_texts), ("test", test_texts)):
        flat = [(code, text) for code in codes for text in texts[code]]
        languages = [code for code, _ in flat]
        features[split] = encoder.encode_layers([text for _, text in flat],
                                                languages if encoder.routes else None)
        labels[split] = np.array(languages)
    forward = time.perf_counter() - started
    accuracy = accuracy_per_layer(features["train"], labels["train"], features["test"], labels["test"])
    seconds = {"forward": forward, "classifiers": time.perf_counter() - started - forward,
               "sentences": int(len(labels["train"]) + len(labels["test"]))}
    return accuracy, seconds


def plot_accuracy(result, path):
    """Figure 3: LID accuracy per layer output with the threshold line and the chosen blocks marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.5))
    outputs = list(range(len(result.accuracy)))
    axis.plot(outputs, [100 * a for a in result.accuracy], marker="o", label="LID accuracy")
    axis.axhline(100 * result.threshold, color="tab:red", linestyle="--", label=f"threshold {100 * result.threshold:.1f}%")
    for block in result.group_layers:
        axis.axvspan(block + 0.5, block + 1.5, color="tab:orange", alpha=0.15, linewidth=0)
    axis.set_xticks(outputs, ["emb"] + [str(i) for i in outputs[1:]])
    axis.set_xlabel("layer output (emb = embeddings; i = output of block i-1)")
    axis.set_ylabel("accuracy (%)")
    axis.set_title(f"LID probe, {len(result.languages)} languages (shaded: group-specific blocks)")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_outputs(result, output_dir, num_hidden_layers, base_config=None):
    """lid_probe.json, lid_probe.png and lid_probe.yaml (the layout as train_mlm.py --config reads it)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lid_probe.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    plot_accuracy(result, out / "lid_probe.png")
    lines = [f"# From evaluate_mol.py lid-probe: blocks whose output identifies the language at >= "
             f"{100 * result.threshold:.1f}% (layout {result.layout or 'not a prefix + suffix'})."]
    if base_config is not None:
        lines.append(f"base: {json.dumps(str(Path(base_config).resolve()))}")
    lines.append(f"num_hidden_layers: {num_hidden_layers}")
    lines.append(f"group_layers: {json.dumps(result.group_layers) if result.group_layers else 'dense'}")
    (out / "lid_probe.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
