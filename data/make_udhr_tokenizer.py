"""Rebuild data/udhr-tokenizer/: a small Unigram tokenizer with XLM-R's special tokens and ids (<s>=0, <pad>=1,
</s>=2, <unk>=3, <mask> last), trained on the train split of the shipped UDHR sample (all 46 languages).

The tiny configs and the interference sweep's tiny preset use it; the paper runs use XLM-R's own tokenizer.
Run: python data/make_udhr_tokenizer.py  (seconds; deterministic for a given `tokenizers` version)
"""

import json
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import XLMRobertaTokenizerFast


HERE = Path(__file__).resolve().parent
VOCAB_SIZE = 4000


def train_texts():
    with open(HERE / "udhr" / "udhr46_articles.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["split"] == "train":
                yield row["text"]


def main():
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>")
    tokenizer.train_from_iterator(train_texts(), trainer=trainer)
    tokenizer.add_special_tokens(["<mask>"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    wrapped = XLMRobertaTokenizerFast(tokenizer_object=tokenizer, model_max_length=512)
    wrapped.save_pretrained(HERE / "udhr-tokenizer")
    print(f"wrote {HERE / 'udhr-tokenizer'} ({len(wrapped)} tokens)")


if __name__ == "__main__":
    main()
