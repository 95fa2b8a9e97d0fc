"""
Where the datasets live, their tokenizers, and reading a prepared one back: what train.py,
sample.py and every dataset recipe share. Writing a dataset is data/writing.py's.

A prepared dataset is a folder data/NAME (or $ESO_DATA_DIR/NAME) of three files:
  train.bin, val.bin  the token ids of each split, one after another (uint16, or uint32 for
                      vocabularies past 65,536)
  meta.json           the tokenizer, the vocabulary size, the token counts, where the text came
                      from and, for the paper's datasets, how it was cut into windows ("windows")
meta.json is written last: its presence means the dataset is whole.
"""

import hashlib
import importlib
import json
import os
import re
from pathlib import Path

import numpy as np
import tiktoken

GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"


class PrepareError(Exception):
    """A user error about data: printed as one line, exit status 2."""


def import_optional(package, purpose):
    """The module `package`, or a one-line PrepareError that says how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise PrepareError(
            f"{purpose} needs the `{package}` package: pip install {package}"
        ) from None


# ----------------------------------------------------------------------------- where data lives


def data_root():
    """The folder that holds the datasets: $ESO_DATA_DIR, or data/ (the folder of this file)."""
    root = os.environ.get("ESO_DATA_DIR")
    if root:
        return Path(root).expanduser()
    return Path(__file__).resolve().parent


def dataset_dir(name, data_dir=None):
    """data/NAME in data_dir (default: data_root()), refusing names that would write elsewhere."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise PrepareError(
            f"dataset name {name!r} must be letters, digits, '_', '-' or '.', without '..' or '/'"
        )
    folder = Path(data_dir or data_root()) / name
    if folder.is_symlink():
        raise PrepareError(f"{folder} is a symbolic link; refusing to write through it")
    return folder


def is_prepared(name, data_dir=None):
    """Whether data/NAME is a whole dataset (its meta.json, written last, is there)."""
    return (dataset_dir(name, data_dir) / "meta.json").exists()


# ----------------------------------------------------------------------------- tokenizers


def get_tokenizer(name, vocab=None):
    """A tokenizer with tiktoken's interface: "bytes" (each UTF-8 byte is its own id; offline),
    "gpt2" (BPE, 50257 ids) or "bert-base-uncased" (WordPiece; vocab: its vocab.txt, or the list
    of its tokens in id order, as a checkpoint may carry them)."""
    if name == "bytes":
        return tiktoken.Encoding(
            name="bytes",
            pat_str=r"[\s\S]{1,256}",
            mergeable_ranks={bytes([i]): i for i in range(256)},
            special_tokens={},
        )
    if name == "bert-base-uncased":  # LM1B's, read only where it is used
        from data import wordpiece

        return wordpiece.tokenizer(vocab)
    if name != "gpt2":
        raise PrepareError(f"unknown tokenizer {name!r}: use bytes, gpt2 or bert-base-uncased")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # offline: say what failed and how to fix it
        files = ("vocab.bpe", "encoder.json")
        cached = [hashlib.sha1((GPT2_URL + f).encode()).hexdigest() for f in files]
        raise PrepareError(
            f"tiktoken could not load the GPT-2 encoding ({type(e).__name__}; offline?): save "
            f"{GPT2_URL}{{vocab.bpe,encoder.json}} as {cached[0]} and {cached[1]} in a folder "
            "and set TIKTOKEN_CACHE_DIR to it (to prepare data, --tokenizer bytes needs no files)"
        ) from None


def dataset_tokenizer(name, data_dir=None):
    """The tokenizer data/NAME was made with (a WordPiece one reads the vocab.txt in the folder)."""
    folder = dataset_dir(name, data_dir)
    meta = read_meta(folder, name)
    vocab = None
    if "vocab_file" in meta:
        vocab = folder / meta["vocab_file"]
    return get_tokenizer(meta["tokenizer"], vocab)


# ----------------------------------------------------------------------------- reading it back


def read_meta(folder, name):
    if not (folder / "meta.json").exists():
        raise PrepareError(
            f"dataset {name!r} was never prepared (no {folder / 'meta.json'}): run python "
            f"data/prepare.py --dataset {name}, or --input FILE ... --name {name}"
        )
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise PrepareError(
            f"data/{name} is damaged ({e}): prepare it again with --overwrite"
        ) from None


def read_tokens(path, dtype):
    """A split's tokens, memory-mapped (an empty split: an empty array)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def load_dataset(name, block_size=0, require_train=False, data_dir=None):
    """(train, val, meta): the token arrays of data/NAME (memory-mapped) and its metadata.

    block_size: the sequence length the caller reads (0: any); a windowed dataset takes only its
    own window length. require_train: refuse an evaluation set (its train.bin is empty and
    meta["eval_only"] is true); without it, such a set loads for evaluation."""
    folder = dataset_dir(name, data_dir)
    meta = read_meta(folder, name)
    try:
        dtype = np.dtype(meta["dtype"])
        splits = [read_tokens(folder / f"{split}.bin", dtype) for split in ("train", "val")]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrepareError(
            f"data/{name} is damaged ({e}): prepare it again with --overwrite"
        ) from None
    if require_train and meta.get("eval_only"):
        raise PrepareError(
            f"data/{name} is an evaluation set (val.bin from its {meta['val_split']} split, no "
            f"train.bin): score a model on it with python -m paper.likelihood --dataset={name}"
        )
    if "windows" not in meta:
        for split, tokens in zip(("train", "val"), splits):
            if len(tokens) <= block_size:
                raise PrepareError(
                    f"data/{name}/{split}.bin holds {len(tokens)} tokens, fewer than one training "
                    f"sequence (block_size {block_size}): lower --block_size or prepare more text"
                )
        return *splits, meta
    L = meta["windows"]["block_size"]
    if block_size and block_size != L:
        raise PrepareError(
            f"data/{name} is wrapped into windows of {L} tokens: use --block_size={L}, or "
            f"prepare it again with --block_size={block_size}"
        )
    for split, tokens in zip(("train", "val"), splits):
        if len(tokens) % L:
            raise PrepareError(
                f"data/{name}/{split}.bin is not whole windows of {L} tokens: prepare it again "
                "with --overwrite"
            )
        if len(tokens) == 0 and (split == "val" or require_train):
            raise PrepareError(f"data/{name}/{split}.bin is empty: prepare it again")
    return *splits, meta
