"""Shared fixtures: tiny MoL configs, a tiny tokenizer trained on the shipped UDHR sample, the loopback Hub.

huggingface_hub reads HF_ENDPOINT and HF_HOME when it is imported, so they are set here, before any test module
imports it: every test talks to the loopback Hub (never the real one) with a fresh cache.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch


sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer, free_port  # noqa: E402


HUB_PORT = free_port()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="mol-hf-home-")
os.environ["HF_TOKEN"] = "hf_mol_loopback_token"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

# One intra-op thread for the in-process tests: on the 2 shared cores of CI, torch's default thread count is many
# times slower when the machine is busy (multi-process tests start their own processes with OMP_NUM_THREADS=1).
torch.set_num_threads(1)

PROJECT = Path(__file__).resolve().parent.parent
UDHR = PROJECT / "data" / "udhr" / "udhr46_articles.jsonl"  # the shipped sample (see data/udhr/NOTICE.md)

LANGUAGES = ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab"]
LANGUAGE_GROUPS = {
    "germanic": ["eng_Latn", "deu_Latn"],
    "romance": ["fra_Latn", "spa_Latn"],
    "other": ["rus_Cyrl", "arb_Arab"],
}


def tiny_config_kwargs(**overrides):
    """transformers' tester sizes: hidden 32, 2 layers, vocab 99 (a MoL needs hidden a multiple of 16 bytes for
    grouped_mm: 32 fp32 values are 128 bytes)."""
    kwargs = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        languages=LANGUAGES,
        language_groups=LANGUAGE_GROUPS,
        group_layers="all",
    )
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def tiny_config():
    from configuration_mol import MoLConfig

    return MoLConfig(**tiny_config_kwargs())


def read_udhr():
    """language code -> list of article texts (every split, in article order), from the shipped UDHR sample."""
    texts = {}
    with open(UDHR, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            texts.setdefault(row["lang"], []).append(row["text"])
    return texts


@pytest.fixture(scope="session")
def udhr_texts():
    return read_udhr()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, udhr_texts):
    """A small Unigram tokenizer with XLM-R's special tokens, trained on the UDHR sample, saved to a folder."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=600, special_tokens=specials, unk_token="<unk>")
    tokenizer.train_from_iterator((t for code in LANGUAGES for t in udhr_texts[code]), trainer=trainer)
    tokenizer.add_special_tokens(["<mask>"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    wrapped = XLMRobertaTokenizerFast(tokenizer_object=tokenizer, model_max_length=62)
    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    wrapped.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hub():
    """The loopback Hub every test process talks to (HF_ENDPOINT points at it)."""
    with HubServer(HUB_PORT) as server:
        yield server
