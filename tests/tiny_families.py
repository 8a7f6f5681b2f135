"""Tiny random models of every family the engine trains, saved by transformers itself.

Each directory holds a config.json and a tokenizer: the shipped models/tiny-bert WordPiece
vocabulary (251 tokens) for most, and for RoBERTa a byte-level BPE trained on the tiny news
headlines in a second (its own <s> </s> <pad>=1, no token type ids: what RoBERTa really has).
Building all of them takes well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers

REPO = Path(__file__).resolve().parent.parent
WORDPIECE = REPO / "models" / "tiny-bert"
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
# tiny-bert's special tokens: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4
IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)


def configs(vocab: int = 251, bpe_vocab: int = 400) -> dict[str, transformers.PretrainedConfig]:
    return {
        "bert": transformers.BertConfig(vocab_size=vocab, max_position_embeddings=128, **SMALL),
        "roberta": transformers.RobertaConfig(vocab_size=bpe_vocab, max_position_embeddings=132,
                                              pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                              type_vocab_size=1, **SMALL),
        "distilbert": transformers.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2,
                                                    n_heads=2, hidden_dim=64,
                                                    max_position_embeddings=128, pad_token_id=0),
        "albert": transformers.AlbertConfig(vocab_size=vocab, embedding_size=16,
                                            max_position_embeddings=128, **SMALL, **IDS),
        "electra": transformers.ElectraConfig(vocab_size=vocab, embedding_size=16,
                                              max_position_embeddings=128, **SMALL),
        # DeBERTa-v3's shape: relative attention, no absolute positions, no token types
        "deberta-v2": transformers.DebertaV2Config(
            vocab_size=vocab, max_position_embeddings=128, relative_attention=True,
            position_buckets=32, pos_att_type=["p2c", "c2p"], position_biased_input=False,
            type_vocab_size=0, pooler_hidden_size=32, **SMALL, pad_token_id=0),
        # ModernBERT: alternating global and sliding-window (local_attention 8) layers
        "modernbert": transformers.ModernBertConfig(
            vocab_size=vocab, max_position_embeddings=128, local_attention=8,
            global_attn_every_n_layers=2, cls_token_id=2, sep_token_id=3, **SMALL, **IDS),
    }


def _bpe_tokenizer(out: Path, size: int) -> None:
    from tokenizers import ByteLevelBPETokenizer, processors

    lines = (REPO / "data" / "tiny_news" / "train.jsonl").read_text().splitlines()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([json.loads(line)["text"] for line in lines], vocab_size=size,
                            min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    transformers.RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
    ).save_pretrained(out)


def build(root: Path) -> dict[str, Path]:
    """model_type -> a directory with config.json and a tokenizer."""
    out = {}
    wordpiece = transformers.AutoTokenizer.from_pretrained(WORDPIECE)
    for model_type, config in configs().items():
        path = root / model_type
        config.save_pretrained(path)
        if model_type == "roberta":
            _bpe_tokenizer(path, config.vocab_size)
        else:
            wordpiece.save_pretrained(path)
        out[model_type] = path
    return out
