"""
The authors' wrapping of the paper's datasets (dataloader.py's get_dataset and _group_texts, in
GitHub s-sahoo/Eso-LMs at 92e7982), which every recipe of a paper dataset shares.

Each document is detokenized and tokenized, followed by EOS where the protocol says so; the tokens
of each batch of 1,000 documents are concatenated and cut into windows of L, the remainder of the
batch dropped; where the protocol says so, each window is BOS + L - 2 tokens + EOS. train.bin and
val.bin hold whole windows; meta.json's "windows" says how they were made.
"""

import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data import common
from data.common import PrepareError
from data.writing import download, finish, token_dtype

GROUP_DOCS = 1000  # datasets.Dataset.map's default batch_size: the documents _group_texts sees


@dataclass(frozen=True)
class Protocol:
    """How the authors' get_dataset prepares one dataset for the paper's runs (configs/data/*.yaml
    and the flags of scripts/esolm/*.sh)."""

    tokenizer: str  # gpt2, or bert-base-uncased (data=lm1b-wrap)
    block_size: int  # L, model.length in the scripts
    edges: bool  # BOS and EOS at both ends of every window (insert_*_special=True)
    doc_eos: bool  # EOS after every document (insert_*_eos=True)
    train_split: str | None  # None: an evaluation set, val.bin only
    val_split: str  # the split val.bin is made from ('test' for lm1b and ag_news)
    detokenizer: Callable | None = None


def zero_shot(val_split, detokenizer):
    """A zero-shot evaluation set of the paper's Table 5 (eval_zero_shot.sh:
    data.insert_valid_eos=False, +data.insert_valid_special=True, model.length=1024, the gpt2
    tokenizer of the OpenWebText models)."""
    return Protocol(
        tokenizer="gpt2",
        block_size=1024,
        edges=True,
        doc_eos=False,
        train_split=None,
        val_split=val_split,
        detokenizer=detokenizer,
    )


def add_arguments(parser, raw_dir_help):
    """The flags every paper recipe takes."""
    parser.add_argument("--raw_dir", help=raw_dir_help)
    parser.add_argument("--block_size", type=int, help="window length L (default: the paper's)")
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help="cut each split into N contiguous shards before grouping in batches of 1,000 "
        "documents (default 1); the authors ran map with num_proc = their machine's CPU count",
    )


def raw_dir(args):
    """The local copy that --raw_dir names (None: download), which must exist."""
    if args.raw_dir is None:
        return None
    path = Path(args.raw_dir)
    if not path.exists():
        raise PrepareError(f"--raw_dir={path}: no such file or folder")
    return path


def check_arguments(protocol, args):
    """One line for a window length or a shard count that cannot work."""
    smallest = 2
    if protocol.edges:
        smallest = 3
    if args.block_size is not None and args.block_size < smallest:
        raise PrepareError(f"--block_size must be at least {smallest} here, got {args.block_size}")
    if args.shards < 1:
        raise PrepareError(f"--shards must be at least 1, got {args.shards}")


def wrap(out, protocol, enc, train_texts, val_texts, meta, args, val_tail=None):
    """Prepare out/ from the texts of a paper dataset by its protocol: each text detokenized,
    then written as whole windows (write_windowed); returns the metadata. meta: the keys that
    describe the source (at least "source")."""
    layout = {
        "block_size": args.block_size or protocol.block_size,
        "bos": None,
        "eos": None,
        "doc_eos": None,
        "group_docs": GROUP_DOCS,
        "shards": args.shards,
    }
    if protocol.edges:
        layout["bos"] = enc.eot_token
        layout["eos"] = enc.eot_token
    if protocol.doc_eos:
        layout["doc_eos"] = enc.eot_token
    meta = {
        "train_split": protocol.train_split,
        "val_split": protocol.val_split,
        "eval_only": protocol.train_split is None,
        "detokenizer": None,
        **meta,
    }
    detokenize = protocol.detokenizer
    if detokenize is not None:
        meta["detokenizer"] = detokenize.__name__
        train_texts = map(detokenize, train_texts)
        if val_texts is not None:
            val_texts = map(detokenize, val_texts)
    return write_windowed(out, enc, layout, train_texts, val_texts, val_tail, meta)


def paper_tokenizer(protocol, vocab_path, download_dir):
    """The tokenizer a paper dataset is made with: gpt2, or bert-base-uncased from the vocab.txt
    at vocab_path (else the one downloaded before into download_dir, else downloaded now)."""
    if protocol.tokenizer == "gpt2":
        return common.get_tokenizer("gpt2")
    from data import wordpiece

    if vocab_path in (None, "bert-base-uncased"):
        instead = "pass its path as --tokenizer=PATH/vocab.txt"
        vocab_path = download(wordpiece.BERT_VOCAB_URL, download_dir / "vocab.txt", instead)
    return common.get_tokenizer("bert-base-uncased", vocab_path)


def tokenize_documents(docs, enc, doc_eos, stream, start):
    """Append the tokens of each document to the file `stream`, doc_eos after each unless None;
    returns where each document ends, in tokens from the stream's start (the first begins at
    `start`). Special tokens written in a text are read as those tokens, as the authors' Hugging
    Face tokenizers read them."""
    dtype = token_dtype(enc)
    ends = []
    docs = iter(tqdm(docs, unit="doc", leave=False, disable=None))
    while batch := list(itertools.islice(docs, 1024)):
        encoded = enc.encode_batch(batch, allowed_special="all")
        if doc_eos is not None:
            for ids in encoded:
                ids.append(doc_eos)
        lengths = [len(ids) for ids in encoded]
        flat = itertools.chain.from_iterable(encoded)
        stream.write(np.fromiter(flat, dtype=dtype, count=sum(lengths)).tobytes())
        ends.append(start + np.cumsum(lengths))
        start = int(ends[-1][-1])
    if not ends:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(ends)


def map_batches(first, last, shards):
    """(first, last) of each batch of documents the authors' _group_texts is called on, for the
    documents first .. last - 1 of a split. Dataset.map(batched=True, num_proc=shards) lowers
    num_proc to the number of rows, cuts the rows into that many contiguous shards
    (Dataset.shard(contiguous=True) in datasets/arrow_dataset.py: sizes that differ by at most
    one, the larger first), and maps each shard in batches of 1,000 rows, its last one shorter."""
    n = last - first
    shards = min(shards, n)
    if shards == 0:
        return
    size, larger = divmod(n, shards)
    bounds = [first + i * size + min(i, larger) for i in range(shards + 1)]
    for lo, hi in zip(bounds, bounds[1:]):
        for batch in range(lo, hi, GROUP_DOCS):
            yield batch, min(batch + GROUP_DOCS, hi)


def write_windows(stream, ends, first, last, layout, out, dtype):
    """Write the windows of documents first .. last - 1 of the token stream to `out` from its
    start, as the authors' _group_texts cuts each batch: the batch's tokens concatenated, cut into
    chunks of block_size (block_size - 2 with BOS and EOS, which then go around each chunk), the
    remainder of the batch dropped. Returns the number of tokens written. `out` may be `stream`
    itself when there are no BOS/EOS: a batch's windows are never longer than its tokens, so
    they land at or before the place they were read from."""
    itemsize = np.dtype(dtype).itemsize
    chunk = layout["block_size"]
    if layout["bos"] is not None:
        chunk -= 2
    written = 0
    for lo, hi in map_batches(first, last, layout["shards"]):
        start = 0
        if lo > 0:
            start = int(ends[lo - 1])
        tokens = np.empty(int(ends[hi - 1]) - start, dtype=dtype)
        stream.seek(start * itemsize)
        if stream.readinto(tokens) != tokens.nbytes:
            raise PrepareError(f"{stream.name} ended early: is the disk full?")
        n = len(tokens) // chunk
        rows = tokens[: n * chunk].reshape(n, chunk)
        if layout["bos"] is not None:
            bos = np.full((n, 1), layout["bos"], dtype=dtype)
            eos = np.full((n, 1), layout["eos"], dtype=dtype)
            rows = np.concatenate([bos, rows, eos], axis=1)
        out.seek(written * itemsize)
        out.write(rows.tobytes())
        written += rows.size
    return written


def write_windowed(out, enc, layout, train_texts, val_texts, val_tail, meta):
    """Tokenize a paper dataset into out/{train,val}.bin of whole windows and write meta.json
    (meta: the keys that describe the source); returns the metadata.

    train_texts and then val_texts (None: none) are tokenized into one temporary stream, each
    split a range of documents of it; with val_tail, the last val_tail documents of train_texts
    are the validation set (OpenWebText's train[-100000:]). Each range is then cut into windows
    (write_windows): val.bin from its range, train.bin in place in the stream when the windows
    add no BOS/EOS (OpenWebText: no second copy on disk), or into a file of its own."""
    dtype = token_dtype(enc)
    itemsize = np.dtype(dtype).itemsize
    stream_path = out / ".tokens.tmp"
    tmp = {"train": out / ".train.bin.tmp", "val": out / ".val.bin.tmp"}
    try:
        out.mkdir(parents=True, exist_ok=True)
        stream = open(stream_path, "w+b")
    except OSError as e:
        raise PrepareError(
            f"cannot write to {out} ({e.strerror}): check its permissions or free space"
        ) from None
    try:
        with stream:
            ends = tokenize_documents(train_texts, enc, layout["doc_eos"], stream, 0)
            n_train = len(ends)
            if val_tail is not None:
                n_train = len(ends) - val_tail
                if n_train <= 0:
                    raise PrepareError(
                        f"{meta['source']} gave {len(ends)} documents, not more than "
                        f"--val_docs={val_tail}: lower --val_docs"
                    )
            if val_texts is not None:
                start = 0
                if len(ends):
                    start = int(ends[-1])
                val_ends = tokenize_documents(val_texts, enc, layout["doc_eos"], stream, start)
                ends = np.concatenate([ends, val_ends])
            with open(tmp["val"], "wb") as val_file:
                val_tokens = write_windows(
                    stream, ends, n_train, len(ends), layout, val_file, dtype
                )
                os.fsync(val_file.fileno())
            if layout["bos"] is None:
                train_tokens = write_windows(stream, ends, 0, n_train, layout, stream, dtype)
                stream.truncate(train_tokens * itemsize)
                stream.flush()
                os.fsync(stream.fileno())
                stream_path.replace(tmp["train"])
            else:
                with open(tmp["train"], "wb") as train_file:
                    train_tokens = write_windows(
                        stream, ends, 0, n_train, layout, train_file, dtype
                    )
                    os.fsync(train_file.fileno())
        L = layout["block_size"]
        if val_tokens == 0:
            raise PrepareError(
                f"{meta['source']} is too short: its {len(ends) - n_train} validation documents "
                f"fill no window of {L} tokens"
            )
        if meta["train_split"] is not None and train_tokens == 0:
            raise PrepareError(
                f"{meta['source']} is too short: its {n_train} training documents fill no window "
                f"of {L} tokens"
            )
        meta = {
            "tokenizer": enc.name,
            "vocab_size": enc.n_vocab,
            "dtype": np.dtype(dtype).name,
            "eos": enc.eot_token,
            "windows": layout,
            "train_tokens": train_tokens,
            "val_tokens": val_tokens,
            "documents": len(ends),
            "train_documents": n_train,
            "val_documents": len(ends) - n_train,
            **meta,
            "python": sys.version.split()[0],
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        moves = {split: (path, f"{split}.bin") for split, path in tmp.items()}
        if enc.name == "bert-base-uncased":  # its vocabulary travels with the data
            (out / ".vocab.txt.tmp").write_text("\n".join(enc.vocab) + "\n", encoding="utf-8")
            moves["vocab"] = (out / ".vocab.txt.tmp", "vocab.txt")
            meta["vocab_file"] = "vocab.txt"
        finish(out, moves, meta)
        return meta
    finally:
        for path in [stream_path, out / ".vocab.txt.tmp", *tmp.values()]:
            path.unlink(missing_ok=True)
