"""Language grouping strategies of the Mixture of Languages paper (Section 3.4), plus grouping by a measured
interference matrix. Every strategy returns a `Grouping`: group name -> codes, in the form MoLConfig reads.

Clustering and solving are scipy's: UPGMA is `linkage(method="average")`, cuts are `cut_tree`, and the optimal
balanced partitions are mixed-integer programs solved by `milp` (HiGHS) with a time limit and a reported gap.
"""

import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.cluster.hierarchy import cut_tree, linkage
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix
from scipy.spatial.distance import squareform

from .languages import PAPER_GROUPS, language


@dataclass
class Grouping:
    strategy: str
    language_groups: dict
    codes: list
    distance: np.ndarray | None = None  # the (languages x languages) distance the groups were built from
    tree: np.ndarray | None = None  # the UPGMA linkage, for clustering strategies
    notes: dict = field(default_factory=dict)


def group_names(k):
    """group_1..group_k, zero-padded so that sorted order (MoLConfig's weight order) is numeric order."""
    width = len(str(k))
    return [f"group_{i + 1:0{width}d}" for i in range(k)]


def balanced_sizes(n, k):
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def check_k(codes, k, balanced=False):
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"--num-groups must be a positive integer, got {k!r}.")
    if k > len(codes):
        raise ValueError(f"--num-groups {k} is larger than the number of languages ({len(codes)}): each group needs one.")
    if balanced and k > 1 and len(codes) < 2 * k and len(codes) % k:
        raise ValueError(f"{len(codes)} languages cannot be balanced into {k} groups of near-equal size of 2 or more.")


def labels_to_groups(codes, labels):
    """Cluster labels -> named groups, numbered by the position of each group's first language."""
    order = list(dict.fromkeys(labels))
    names = group_names(len(order))
    return {names[order.index(label)]: [c for c, l in zip(codes, labels) if l == label] for label in order}


# ---- knowledge-based strategies ----------------------------------------------------------------------------------
# A creole is grouped with the family of the language that gave it its vocabulary (the papers put Tok Pisin with the
# Germanic languages in Table 8), when that family is among the languages grouped.
CREOLE_LEXIFIERS = {"tpi_Latn": "eng_Latn", "hat_Latn": "fra_Latn", "kea_Latn": "por_Latn", "pap_Latn": "por_Latn"}


def group_attribute(code, attribute, codes):
    """The value of the table column a language is grouped by; a creole takes its lexifier's family."""
    row = language(code)
    if attribute == "family" and row.superfamily == "Creole" and code in CREOLE_LEXIFIERS:
        lexifier_family = language(CREOLE_LEXIFIERS[code]).family
        if any(language(other).family == lexifier_family for other in codes if other != code):
            return lexifier_family
    return getattr(row, attribute)

def by_attribute(codes, attribute, k=None):
    """Group by a column of the language table (`family` or `script`), then merge or split to reach k groups.

    Merging: the smallest group joins the smallest other group of the same superfamily (for families) or the
    smallest other group, until k remain. Splitting: the largest group is cut in two halves, in table order.
    Names say what happened: `Italic+Celtic`, `Balto-Slavic (1)`.
    """
    groups = {}
    for code in codes:
        groups.setdefault(group_attribute(code, attribute, codes), []).append(code)
    if k is not None:
        check_k(codes, k)
        while len(groups) > k:
            name = min(groups, key=lambda g: (len(groups[g]), g))
            others = [g for g in groups if g != name]
            superfamily = {language(c).superfamily for c in groups[name]}
            related = [g for g in others if attribute == "family" and {language(c).superfamily for c in groups[g]} & superfamily]
            target = min(related or others, key=lambda g: (len(groups[g]), g))
            groups[f"{target}+{name}"] = groups.pop(target) + groups.pop(name)
        while len(groups) < k:
            name = max(groups, key=lambda g: (len(groups[g]), g))
            members = groups.pop(name)
            half = (len(members) + 1) // 2
            groups[f"{name} (1)"], groups[f"{name} (2)"] = members[:half], members[half:]
    return Grouping(attribute if attribute != "family" else "linguistic", dict(sorted(groups.items())), list(codes))


def paper(codes, preset, k=None):
    """The papers' own groups: Table 8 for mol-30, Table 9 for mol-90."""
    if preset not in PAPER_GROUPS:
        raise ValueError(f"--strategy paper needs --languages {sorted(PAPER_GROUPS)} (the papers grouped only those).")
    groups = PAPER_GROUPS[preset]
    if k is not None and k != len(groups):
        raise ValueError(f"The paper's {preset} grouping has {len(groups)} groups, not --num-groups {k}.")
    return Grouping("paper", {f"group_{name}": list(members) for name, members in groups.items()}, list(codes))


def random_groups(codes, k, seed=0):
    check_k(codes, k)
    shuffled = list(codes)
    random.Random(seed).shuffle(shuffled)
    groups, start = {}, 0
    for name, size in zip(group_names(k), balanced_sizes(len(codes), k)):
        groups[name] = sorted(shuffled[start : start + size], key=codes.index)
        start += size
    return Grouping("random", groups, list(codes), notes={"seed": seed})


# ---- clustering ---------------------------------------------------------------------------------------------------
def upgma(distance):
    """UPGMA (average linkage) over a symmetric distance matrix."""
    return linkage(squareform(distance, checks=False), method="average")


def cut_dendrogram(tree, k):
    return [int(label) for label in cut_tree(tree, n_clusters=k).ravel()]


def rebalance(labels, distance, k):
    """Move languages from over-full to under-full clusters until sizes are as equal as possible; each move takes
    the language whose distance to the receiving cluster, less its distance to its own, is smallest."""
    labels = list(labels)
    members = lambda c: [i for i, l in enumerate(labels) if l == c]  # noqa: E731
    clusters = sorted(set(labels), key=lambda c: -len(members(c)))
    targets = dict(zip(clusters, balanced_sizes(len(labels), k)))
    while True:
        over = [c for c in clusters if len(members(c)) > targets[c]]
        under = [c for c in clusters if len(members(c)) < targets[c]]
        if not over or not under:
            return labels
        source, sink = over[0], under[0]
        own, other = members(source), members(sink)

        def cost(i):
            stay = np.mean([distance[i][j] for j in own if j != i]) if len(own) > 1 else 0.0
            return np.mean([distance[i][j] for j in other]) - stay if other else -stay

        labels[min(own, key=cost)] = sink


class _Program:
    """Linear constraints collected row by row, then solved by scipy's milp."""

    def __init__(self, num_variables):
        self.num, self.rows, self.lower, self.upper = num_variables, [], [], []

    def add(self, coefficients, low, high):
        self.rows.append(coefficients)
        self.lower.append(low)
        self.upper.append(high)

    def solve(self, cost, integrality, bounds, time_limit, what):
        matrix = lil_matrix((len(self.rows), self.num))
        for r, coefficients in enumerate(self.rows):
            for column, value in coefficients.items():
                matrix[r, column] = value
        result = milp(cost, constraints=LinearConstraint(matrix.tocsr(), self.lower, self.upper),
                      integrality=integrality, bounds=bounds, options={"time_limit": time_limit})
        if result.x is None:
            raise RuntimeError(f"{what} found no solution within {time_limit}s ({result.message}).")
        report = {"solver": "scipy.optimize.milp (HiGHS)", "status": result.message, "objective": float(result.fun),
                  "mip_gap": float(getattr(result, "mip_gap", 0.0) or 0.0), "time_limit_s": time_limit}
        return result.x, report


def optimal_partition(distance, k, time_limit=60.0):
    """Near-equal groups minimising the sum of within-group distances, solved exactly by HiGHS through scipy's milp.

    Clique-partitioning formulation: y_ij = 1 when languages i < j share a group; triangle inequalities make
    "shares a group" transitive; degree bounds fix sizes to floor(n/k) or ceil(n/k); r_i = 1 marks the first
    language of each group, and exactly k are marked. Returns (labels, report) with the solver's status and gap.
    """
    n = len(distance)
    lo, hi = n // k, -(-n // k)
    pairs = list(itertools.combinations(range(n), 2))
    index = {pair: p for p, pair in enumerate(pairs)}
    y = lambda i, j: index[(min(i, j), max(i, j))]  # noqa: E731
    program = _Program(len(pairs) + n)  # y variables, then r variables
    for i, j, l in itertools.combinations(range(n), 3):
        for a, b, c in ((i, j, l), (j, l, i), (l, i, j)):
            program.add({y(a, b): 1, y(b, c): 1, y(a, c): -1}, -np.inf, 1)
    for i in range(n):
        program.add({y(i, j): 1 for j in range(n) if j != i}, lo - 1, hi - 1)
        # r_i = 1 exactly when no earlier language shares i's group.
        program.add({len(pairs) + i: 1, **{y(j, i): 1 for j in range(i)}}, 1, np.inf)
        for j in range(i):
            program.add({len(pairs) + i: 1, y(j, i): 1}, -np.inf, 1)
    program.add({len(pairs) + i: 1 for i in range(n)}, k, k)
    cost = np.array([distance[i][j] for i, j in pairs] + [0.0] * n)
    x, report = program.solve(cost, np.ones(program.num), Bounds(0, 1), time_limit, "The optimal grouping")
    together = {pair for pair in pairs if x[index[pair]] > 0.5}
    labels = list(range(n))
    for i, j in sorted(together):
        labels[j] = labels[i] if labels[j] == j else labels[j]
    return labels, report


def cluster(strategy, codes, distance, k, balance="dendrogram", time_limit=60.0):
    """UPGMA tree plus groups: `none` (the plain cut), `dendrogram` (cut, then rebalance), `optimal` (milp)."""
    check_k(codes, k, balanced=balance != "none")
    tree = upgma(distance)
    notes = {"balance": balance}
    if balance == "optimal":
        labels, notes["solver"] = optimal_partition(distance, k, time_limit)
    elif balance in ("dendrogram", "none"):
        labels = cut_dendrogram(tree, k)
        if balance == "dendrogram":
            labels = rebalance(labels, distance, k)
    else:
        raise ValueError(f"Unknown --balance {balance!r}: use none, dendrogram or optimal.")
    return Grouping(strategy, labels_to_groups(codes, labels), list(codes), distance, tree, notes)


# ---- distances ----------------------------------------------------------------------------------------------------
def token_overlap_distance(codes, texts, tokenizer):
    """1 - Jaccard overlap of the token sets that `tokenizer` makes of each language's side of a parallel set."""
    vocab = [set(itertools.chain.from_iterable(tokenizer(texts[c], add_special_tokens=False)["input_ids"])) for c in codes]
    n = len(codes)
    distance = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        distance[i, j] = distance[j, i] = 1 - len(vocab[i] & vocab[j]) / max(1, len(vocab[i] | vocab[j]))
    return distance


POOLINGS = ("auto", "mean", "first")
# Encoders whose cards prescribe a pooling that their folders do not declare (no sentence-transformers config):
# MEXMA's sentence embedding is its first token (the paper's Section 3.4 encoder); SONAR-style encoders mean-pool.
CARD_POOLING = {"facebook/MEXMA": "first"}


def parse_encoder_spec(spec):
    """'NAME' or 'NAME:POOLING' (POOLING one of auto, mean, first) -> (name, pooling)."""
    name, _, pooling = spec.rpartition(":")
    name, pooling = (name, pooling) if name and pooling in POOLINGS else (spec, "auto")
    check_not_sonar(name)  # before any look-up of the name on the Hub
    return name, pooling


def encoder_pooling(name, pooling="auto"):
    """The pooling an encoder's card prescribes: a sentence-transformers `1_Pooling/config.json` beside it (CLS ->
    first, mean -> mean), else the known cards (CARD_POOLING), else mean; an explicit choice wins."""
    check_not_sonar(name)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is unknown: use one of {list(POOLINGS)}.")
    if pooling != "auto":
        return pooling
    config = None
    local = Path(name) / "1_Pooling" / "config.json"
    if local.is_file():
        config = json.loads(local.read_text(encoding="utf-8"))
    elif not Path(name).exists():
        try:
            from huggingface_hub import hf_hub_download

            config = json.loads(Path(hf_hub_download(name, "1_Pooling/config.json")).read_text(encoding="utf-8"))
        except Exception:  # no sentence-transformers config on the Hub (or offline): fall back to the card table
            config = None
    if config:
        if config.get("pooling_mode_cls_token") or config.get("pooling_mode") == "cls":
            return "first"
        if config.get("pooling_mode_mean_tokens") or config.get("pooling_mode") == "mean":
            return "mean"
    return CARD_POOLING.get(name, "mean")


def embed(texts, tokenizer, model, batch_size=32, pooling="mean"):
    """L2-normalised sentence embeddings: the mean of the real tokens' outputs, or the first token's."""
    import torch

    vectors = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            if pooling == "first":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1)
            vectors.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(vectors)


# SONAR (the Interference Matrix paper's Section 4 encoder) is a fairseq2 model: the `sonar-space` package cannot
# be installed beside this project's torch, transformers and huggingface_hub (measured with pip on 2026-12-03).
SONAR_NAMES = ("sonar", "text_sonar_basic_encoder", "facebook/sonar", "facebook/sonar_text_encoder")
SONAR_UNAVAILABLE = (
    "SONAR's text encoder needs the sonar-space package (fairseq2), which cannot be installed beside this project "
    "(measured with pip, 2026-12-03): sonar-space 0.5.0 needs fairseq2 >= 0.5.2, whose newest release (0.8.1) pins "
    "fairseq2n 0.8.1 (built for torch 2.9.1 exactly), transformers ~= 4.57 and huggingface_hub ~= 0.32, against the "
    "project's torch 2.13, transformers 5 and huggingface_hub 2; older sonar-space releases pin torch 2.5.1 / 2.6.0. "
    "Compute SONAR similarities in a separate environment, or use a transformers port of its encoder (a Hub folder "
    "AutoModel loads, mean pooling) as --similarity-encoder NAME:mean."
)


def check_not_sonar(name):
    if isinstance(name, str) and name.strip().lower() in SONAR_NAMES:
        raise ValueError(f"The encoder {name!r}: {SONAR_UNAVAILABLE}")


def load_encoder(name):
    from transformers import AutoModel, AutoTokenizer

    check_not_sonar(name)
    try:
        return AutoTokenizer.from_pretrained(name), AutoModel.from_pretrained(name).eval()
    except Exception as error:
        raise ValueError(f"Cannot load the encoder {name!r} (a Hub id or a local folder with a tokenizer): {error}") from error


def embedding_distance(codes, texts, encoder, pooling="mean"):
    """1 - mean cosine similarity of translation pairs (embeddings of aligned sentences, pooled as `pooling`)."""
    tokenizer, model = load_encoder(encoder) if isinstance(encoder, str) else encoder
    sizes = {len(texts[c]) for c in codes}
    if len(sizes) != 1:
        raise ValueError("The embedding strategy needs a parallel set: every language must have the same sentences.")
    vectors = [embed(texts[c], tokenizer, model, pooling=pooling) for c in codes]
    n = len(codes)
    distance = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        distance[i, j] = distance[j, i] = 1 - float((vectors[i] * vectors[j]).sum(-1).mean())
    return distance


# ---- data and interference ----------------------------------------------------------------------------------------
def balanced_data(codes, counts, k, time_limit=30.0):
    """k groups whose training data (sentences) are as equal as possible: minimise the largest group's total."""
    check_k(codes, k)
    missing = [c for c in codes if c not in counts]
    if missing:
        raise ValueError(f"--counts has no sentence count for {missing}.")
    n, sizes = len(codes), np.array([float(counts[c]) for c in codes])
    # Variables: x[i, g] (language i in group g), then t (the largest total). Language i may only use groups <= i.
    program = _Program(n * k + 1)
    for i in range(n):
        program.add({i * k + g: 1 for g in range(k)}, 1, 1)
    for g in range(k):
        program.add({**{i * k + g: sizes[i] for i in range(n)}, n * k: -1}, -np.inf, 0)
        program.add({i * k + g: 1 for i in range(n)}, 1, np.inf)
    high = np.ones(program.num)
    high[-1] = np.inf
    for i in range(n):
        high[i * k + i + 1 : i * k + k] = 0
    cost = np.zeros(program.num)
    cost[-1] = 1
    x, solver = program.solve(cost, np.r_[np.ones(n * k), 0], Bounds(0, high), time_limit, "balanced-data")
    labels = [int(np.argmax(x[i * k : (i + 1) * k])) for i in range(n)]
    notes = {"solver": solver}
    return Grouping("balanced-data", labels_to_groups(codes, labels), list(codes), notes=notes)


def interference_groups(codes, matrix, k, time_limit=60.0):
    """Near-equal groups with the least measured interference inside them. I[a][b] < 0 when b hurts a; the matrix
    is asymmetric, so a pair costs -(I[a][b] + I[b][a]), both directions."""
    check_k(codes, k, balanced=True)
    cost = -(matrix + matrix.T)
    np.fill_diagonal(cost, 0.0)
    labels, report = optimal_partition(cost, k, time_limit)
    return Grouping("interference", labels_to_groups(codes, labels), list(codes), cost, notes={"solver": report})


# ---- swaps (Table 1 / Table 14) -----------------------------------------------------------------------------------
def parse_swap(text):
    """'spa_Latn:deu_Latn' (or a pair) -> (code, code), in the table's FLORES codes."""
    if isinstance(text, (list, tuple)) and len(text) == 2:
        pair = list(text)
    elif isinstance(text, str) and text.count(":") == 1:
        pair = [part.strip() for part in text.split(":")]
    else:
        raise ValueError(f"A swap is two language codes joined by ':', e.g. 'spa_Latn:deu_Latn'; got {text!r}.")
    try:
        a, b = (language(code).code for code in pair)
    except (KeyError, ValueError) as error:
        raise ValueError(f"Swap {text!r}: {error}") from None
    if a == b:
        raise ValueError(f"Swap {text!r} names {a} twice: a swap exchanges two languages of different groups.")
    return a, b


def swap_languages(language_groups, swaps):
    """The groups with each swap's two languages exchanged, in order (each keeps the other's position). Every code
    must be in a group, and the two of a swap in different groups (a swap within a group changes nothing)."""
    groups = {name: list(members) for name, members in language_groups.items()}
    for swap in swaps:
        a, b = parse_swap(swap)
        where = {code: name for name, members in groups.items() for code in members}
        missing = [code for code in (a, b) if code not in where]
        if missing:
            raise ValueError(f"Swap {a}:{b}: {missing} in no group; the groups hold {sorted(where)}.")
        if where[a] == where[b]:
            raise ValueError(f"Swap {a}:{b}: both are in group {where[a]!r}; swap languages of two different groups.")
        first, second = groups[where[a]], groups[where[b]]
        first[first.index(a)], second[second.index(b)] = b, a
    return groups


# ---- report -------------------------------------------------------------------------------------------------------
def within_group_pairs(grouping):
    position = {c: i for i, c in enumerate(grouping.codes)}
    for members in grouping.language_groups.values():
        for a, b in itertools.permutations(members, 2):
            yield position[a], position[b]


def report(grouping, counts=None, matrix=None):
    """Sizes, data balance (with counts), mean within-group distance (with a distance) and the predicted mean
    within-group interference (with an interference matrix over the same codes)."""
    out = {"num_groups": len(grouping.language_groups),
           "sizes": {name: len(members) for name, members in grouping.language_groups.items()}, **grouping.notes}
    if counts:
        totals = {name: int(sum(counts[c] for c in members)) for name, members in grouping.language_groups.items()}
        out["sentences"] = totals
        out["data_balance_max_over_min"] = max(totals.values()) / max(1, min(totals.values()))
    pairs = list(within_group_pairs(grouping))
    if grouping.distance is not None and pairs:
        out["mean_within_group_distance"] = float(np.mean([grouping.distance[i][j] for i, j in pairs]))
    if matrix is not None and pairs:
        out["predicted_within_group_interference"] = float(np.mean([matrix[i][j] for i, j in pairs]))
    return out


def to_json(grouping, report_dict):
    return json.dumps({"strategy": grouping.strategy, "language_groups": grouping.language_groups,
                       "report": report_dict}, indent=2, ensure_ascii=False)


# ---- inputs and plots ---------------------------------------------------------------------------------------------
def read_parallel_set(path, codes, split="all"):
    """code -> texts of an n-way parallel jsonl (`lang`, `id`, `text`, optional `split`), aligned by id."""
    by_language = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if split == "all" or row.get("split", split) == split:
                by_language.setdefault(row["lang"], {})[row["id"]] = row["text"]
    missing = [c for c in codes if c not in by_language]
    if missing:
        raise ValueError(f"The parallel set {path} has no {split} text for {missing}; it covers {sorted(by_language)}.")
    shared = sorted(set.intersection(*(set(by_language[c]) for c in codes)))
    if not shared:
        raise ValueError(f"The languages share no aligned sentence in {path}.")
    return {c: [by_language[c][i] for i in shared] for c in codes}


def plot_dendrogram(grouping, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    figure, axis = plt.subplots(figsize=(max(6, 0.3 * len(grouping.codes)), 4))
    dendrogram(grouping.tree, labels=grouping.codes, leaf_rotation=90, ax=axis)
    axis.set_title(f"{grouping.strategy}: UPGMA over {len(grouping.codes)} languages")
    axis.set_ylabel("distance")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
