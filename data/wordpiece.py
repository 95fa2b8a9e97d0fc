"""
bert-base-uncased's WordPiece tokenizer, which the paper's LM1B runs use, built offline from its
vocab.txt with the `tokenizers` package (an optional extra: pip install tokenizers).
"""

import unicodedata
from pathlib import Path

from data.common import PrepareError, import_optional

BERT_VOCAB_URL = "https://huggingface.co/bert-base-uncased/resolve/main/vocab.txt"


BERT_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def tokenizer(vocab):
    """The WordPiece tokenizer of a vocab.txt (a path), or of the list of its tokens in id order
    (as a checkpoint carries it)."""
    if vocab is None:
        raise PrepareError(
            f"the bert-base-uncased tokenizer needs its vocab.txt: fetch {BERT_VOCAB_URL} "
            "and give its path"
        )
    if isinstance(vocab, (str, Path)):
        vocab = read_vocab(vocab)
    return WordPiece(vocab)


def read_vocab(path):
    """The tokens of a WordPiece vocab.txt in id order, one a line, read as transformers'
    load_vocab reads it (only the newline is stripped)."""
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
    except FileNotFoundError:
        raise PrepareError(f"{path}: no such file (give bert-base-uncased's vocab.txt)") from None
    except UnicodeDecodeError:
        raise PrepareError(
            f"{path} is not UTF-8 text: give bert-base-uncased's vocab.txt"
        ) from None
    except OSError as e:
        raise PrepareError(f"{path}: cannot read it ({e.strerror})") from None
    for token in BERT_SPECIAL:
        if token not in tokens:
            raise PrepareError(f"{path} has no {token}: give bert-base-uncased's vocab.txt")
    if len(set(tokens)) < len(tokens):
        repeated = next(t for i, t in enumerate(tokens) if t in tokens[:i])
        raise PrepareError(f"{path} lists {repeated!r} twice: give bert-base-uncased's vocab.txt")
    return tokens


def without_unassigned(text):
    """text without the code points Unicode leaves unassigned (category Cn, in this Python's
    Unicode): BertTokenizer's _clean_text drops them, the `tokenizers` package keeps them."""
    if text.isascii():
        return text
    return "".join(c for c in text if unicodedata.category(c) != "Cn")


# transformers' clean_up_tokenization, which BertTokenizer.decode applies by default
BERT_DECODE_SPACES = [
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
]


class WordPiece:
    """bert-base-uncased's tokenizer, behind the part of tiktoken's Encoding the scripts use.

    The authors load transformers.BertTokenizer.from_pretrained('bert-base-uncased')
    (dataloader.py, get_tokenizer). This is that tokenizer built with the `tokenizers` package from
    its vocab.txt: control characters dropped, spaces around CJK characters, lower case, accents
    stripped, words split at whitespace and punctuation, then greedy longest-match WordPiece with
    ## continuations, and [UNK] for a word it cannot spell or one over 100 characters.

    encode_ordinary reads "[CLS]" written in a text as characters; encode_batch(texts,
    allowed_special="all") reads the five special tokens as tokens, as BertTokenizer does. decode
    is BertTokenizer.decode: tokens joined by spaces, ## pieces glued on, the space before
    . , ? ! n't 's ... dropped, and special tokens kept as their text (LM1B's windows begin and end
    with "[CLS]"); an id outside the vocabulary reads as "[UNK]". eot_token is [CLS], the EOS of
    the authors' LM1B wrapping (tokenizer.encode(tokenizer.eos_token)[0])."""

    def __init__(self, vocab):
        tokenizers = import_optional("tokenizers", "the bert-base-uncased tokenizer")
        self.name = "bert-base-uncased"
        self.vocab = list(vocab)
        self.n_vocab = len(self.vocab)
        ids = {token: i for i, token in enumerate(self.vocab)}
        self.eot_token = ids["[CLS]"]
        self.special_tokens_set = set(BERT_SPECIAL)
        self.plain = self.pipeline(tokenizers, ids)
        self.with_special = self.pipeline(tokenizers, ids)
        self.with_special.add_special_tokens(list(BERT_SPECIAL))

    @staticmethod
    def pipeline(tokenizers, ids):
        """bert-base-uncased's tokenizer.json, as a tokenizers.Tokenizer: normalizer, pre-tokenizer
        and WordPiece model (no post-processor: no [CLS] ... [SEP] is added)."""
        model = tokenizers.models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100)
        pipeline = tokenizers.Tokenizer(model)
        pipeline.normalizer = tokenizers.normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
        )
        pipeline.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
        return pipeline

    def encode_ordinary(self, text):
        return self.encode_ordinary_batch([text])[0]

    def encode_ordinary_batch(self, texts):
        return self.encode_batch(texts)

    def encode_batch(self, texts, allowed_special=frozenset()):
        """The ids of each text; special tokens are read only with allowed_special="all"."""
        pipeline = self.plain
        if allowed_special == "all":
            pipeline = self.with_special
        elif allowed_special:
            raise ValueError('WordPiece.encode_batch takes allowed_special="all" or nothing')
        cleaned = [without_unassigned(text) for text in texts]
        return [e.ids for e in pipeline.encode_batch(cleaned, add_special_tokens=False)]

    def decode(self, ids):
        tokens = []
        for i in ids:
            if 0 <= i < self.n_vocab:
                tokens.append(self.vocab[i])
            else:
                tokens.append("[UNK]")
        text = " ".join(tokens).replace(" ##", "").strip()
        for spaced, tight in BERT_DECODE_SPACES:
            text = text.replace(spaced, tight)
        return text
