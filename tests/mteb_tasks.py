"""Small mteb tasks on the shipped UDHR sample, with several language subsets (and a cross-lingual STS subset):
real mteb task classes (AbsTaskClassification, AbsTaskPairClassification, AbsTaskSTS) whose `load_data` fills
`self.dataset` from data/udhr instead of the Hub."""

from conftest import read_udhr
from datasets import Dataset
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.pair_classification import AbsTaskPairClassification
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata


FLORES_OF = {"en": "eng_Latn", "fr": "fra_Latn", "de": "deu_Latn", "ru": "rus_Cyrl", "ja": "jpn_Jpan"}
udhr_articles = read_udhr


def metadata(name, task_type, eval_langs, main_score):
    return TaskMetadata(
        name=name, type=task_type, main_score=main_score, eval_langs=eval_langs,
        description=f"A small {task_type} task on the UDHR sample shipped with MoL, for offline tests.",
        reference="https://github.com/embeddings-benchmark/mteb", dataset={"path": "NA", "revision": "NA"},
        category="t2t" if task_type != "Classification" else "t2c", eval_splits=["test"],
        date=("2022-12-22", "2022-12-22"), dialect=[], domains=["Legal"], task_subtypes=[], license="cc-by-4.0",
        annotations_creators="derived", modalities=["text"], sample_creation="found", bibtex_citation="",
    )


def halves(text):
    words = text.split()
    return " ".join(words[: len(words) // 2]) or text, " ".join(words[len(words) // 2:]) or text


class UDHRClassification(AbsTaskClassification):
    """Is this the first or the second half of an article? (label = article index parity)."""

    metadata = metadata("UDHRClassification", "Classification",
                        {"en": ["eng-Latn"], "fr": ["fra-Latn"], "de": ["deu-Latn"], "ja": ["jpn-Jpan"]}, "accuracy")
    samples_per_label = 16
    n_experiments = 2

    def load_data(self, num_proc=None, **kwargs):
        articles = udhr_articles()
        self.dataset = {}
        for subset in self.hf_subsets:
            texts = articles[FLORES_OF[subset]]
            rows = [(part, i % 2) for i, text in enumerate(texts) for part in halves(text)]
            train, test = rows[: len(rows) // 2], rows[len(rows) // 2:]
            self.dataset[subset] = {
                split: Dataset.from_dict({"text": [t for t, _ in part], "label": [y for _, y in part]})
                for split, part in (("train", train), ("test", test))
            }
        self.data_loaded = True


class UDHRJapaneseClassification(UDHRClassification):
    """The same task in Japanese only: a language the tiny test models do not know."""

    metadata = metadata("UDHRJapaneseClassification", "Classification", {"ja": ["jpn-Jpan"]}, "accuracy")


class UDHRPairClassification(AbsTaskPairClassification):
    """Are two half-articles from the same article?"""

    metadata = metadata("UDHRPairClassification", "PairClassification",
                        {"en": ["eng-Latn"], "fr": ["fra-Latn"], "ru": ["rus-Cyrl"]}, "max_ap")

    def load_data(self, num_proc=None, **kwargs):
        articles = udhr_articles()
        self.dataset = {}
        for subset in self.hf_subsets:
            parts = [halves(text) for text in articles[FLORES_OF[subset]]]
            first = [a for a, _ in parts] * 2
            second = [b for _, b in parts] + [b for _, b in parts[1:] + parts[:1]]
            labels = [1] * len(parts) + [0] * len(parts)
            self.dataset[subset] = {"test": Dataset.from_dict({"sentence1": first, "sentence2": second, "labels": labels})}
        self.data_loaded = True


class UDHRSTS(AbsTaskSTS):
    """How similar are two half-articles? 5 for halves of the same article, less the further apart they are;
    `en-fr` is cross-lingual: English first, French second."""

    metadata = metadata("UDHRSTS", "STS", {"en-en": ["eng-Latn"], "en-fr": ["eng-Latn", "fra-Latn"],
                                           "de-de": ["deu-Latn"]}, "cosine_spearman")
    min_score, max_score = 0, 5

    def load_data(self, num_proc=None, **kwargs):
        articles = udhr_articles()
        self.dataset = {}
        for subset in self.hf_subsets:
            left, right = (articles[FLORES_OF[code]] for code in subset.split("-"))
            count = min(len(left), len(right))
            pairs = [(i, (i + shift) % count) for i in range(count) for shift in (0, 1, 3)]
            # First half against second half: never two identical texts, whose cosine of 1 would be float noise.
            self.dataset[subset] = {"test": Dataset.from_dict({
                "sentence1": [halves(left[i])[0] for i, _ in pairs],
                "sentence2": [halves(right[j])[1] for _, j in pairs],
                "score": [5.0 - min(abs(i - j), 5) for i, j in pairs],
            })}
        self.data_loaded = True


def tiny_tasks():
    return [UDHRClassification(), UDHRPairClassification(), UDHRSTS()]
