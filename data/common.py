"""
What every dataset recipe shares, and what train.py and sample.py read: where the datasets live,
the tokenizers, writing a dataset so that nothing half-written is left, and reading it back.

A prepared dataset is a folder data/NAME (or $ESO_DATA_DIR/NAME) of three files:
  train.bin, val.bin  the token ids of each split, one after another (uint16, or uint32 for
                      vocabularies past 65,536)
  meta.json           the tokenizer, the vocabulary size, the token counts, where the text came
                      from and, for the paper's datasets, how it was cut into windows ("windows")
meta.json is written last: its presence means the dataset is whole.
"""

import hashlib
import http.client
import importlib
import itertools
import json
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import tiktoken
from tqdm import tqdm

MIN_TOKENS = 2048  # a corpus shorter than this cannot fill a training batch and a validation set
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


def token_dtype(enc):
    return np.uint16 if enc.n_vocab <= 2**16 else np.uint32


# ----------------------------------------------------------------------------- writing a dataset


def write_dataset(docs, out, enc, source, val_fraction):
    """Tokenize local documents into out/{train,val}.bin and out/meta.json; returns the metadata.
    Documents follow one another, each followed by a separator (<|endoftext|> for gpt2, a blank
    line otherwise); document i goes to val when i = k - 1 mod k, k = round(1 / val_fraction)."""
    tmp = {split: out / f".{split}.bin.tmp" for split in ("train", "val")}
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = {split: open(path, "wb") for split, path in tmp.items()}
    except OSError as e:
        raise PrepareError(
            f"cannot write to {out} ({e.strerror}): check its permissions or free space"
        ) from None
    dtype = token_dtype(enc)
    every = max(2, round(1 / val_fraction))
    eos = None
    sep = list(b"\n\n")
    if enc.name == "gpt2":
        eos = enc.eot_token
        sep = [eos]
    counts = {"train": 0, "val": 0}
    n_docs = 0
    docs = iter(tqdm(docs, unit="doc", leave=False, disable=None))
    try:
        # tiktoken encodes a batch in parallel
        while chunk := list(itertools.islice(docs, 1024)):
            for ids in enc.encode_ordinary_batch(chunk):
                split = "train"
                if n_docs % every == every - 1:
                    split = "val"
                n_docs += 1
                counts[split] += len(ids) + len(sep)
                np.array(ids + sep, dtype=dtype).tofile(files[split])
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
        n_tokens = counts["train"] + counts["val"]
        if n_tokens < MIN_TOKENS or counts["val"] == 0:
            raise PrepareError(
                f"{source} is too short: {n_tokens} tokens in {n_docs} documents; prepare needs "
                f"{MIN_TOKENS} tokens in {every} or more paragraphs (give more text)"
            )
        meta = {
            "tokenizer": enc.name,
            "vocab_size": enc.n_vocab,
            "dtype": np.dtype(dtype).name,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "documents": n_docs,
            "source": source,
            "python": sys.version.split()[0],
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "eos": eos,
            "val_split": f"documents i with i % {every} == {every - 1}",
        }
        finish(out, {split: (path, f"{split}.bin") for split, path in tmp.items()}, meta)
        return meta
    finally:
        for split, path in tmp.items():
            files[split].close()
            path.unlink(missing_ok=True)


def finish(out, moves, meta):
    """Move the finished temporary files into place (moves: {key: (temporary path, final name)})
    and write meta.json last. The old meta.json goes first: an old dataset stops being whole
    before it is replaced, and meta.json's presence means the dataset is whole."""
    (out / "meta.json").unlink(missing_ok=True)
    for path, final in moves.values():
        path.replace(out / final)
    (out / ".meta.json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
    (out / ".meta.json.tmp").replace(out / "meta.json")


def download(url, dest, instead):
    """dest, downloaded from url unless it is there. The bytes go to dest.part first, so a file
    at dest is whole; a finished file is kept and not fetched again."""
    if dest.exists():
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url} to {dest}")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f)
        part.replace(dest)
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise PrepareError(
            f"could not download {url} ({getattr(e, 'reason', e)}; offline?): fetch it "
            f"elsewhere and save it as {dest}, or {instead}"
        ) from None
    finally:
        part.unlink(missing_ok=True)
    return dest


def archive_files(fileobj):
    """(name, file) for each regular file of a tar (any compression), in archive order: what the
    datasets library's dl_manager.iter_archive hands a loading script (ArchiveIterable._iter_tar,
    datasets/utils/file_utils.py). Links, folders and hidden files (a name starting with "." or
    "__") are skipped."""
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            hidden = os.path.basename(member.name).startswith((".", "__"))
            if member.isreg() and not hidden:
                yield member.name, tar.extractfile(member)


def prepare(name, build, overwrite=False, data_dir=None):
    """(out, metadata): the dataset data/NAME built by build(out), which writes it and returns its
    metadata. An existing dataset is replaced only with overwrite; after an error no folder made
    here is left behind (finished downloads are kept)."""
    out = dataset_dir(name, data_dir)
    existed = out.exists()
    if (out / "meta.json").exists() and not overwrite:
        raise PrepareError(
            f"{out} already holds a dataset: pass --overwrite to replace it, or pick another --name"
        )
    try:
        return out, build(out)
    except BaseException:
        if not existed:
            for folder in (out / "raw", out):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        raise


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


def summary(out, meta, seconds):
    """The line printed when a dataset is written."""
    what = f"{meta['documents']:,} documents ({meta['tokenizer']}) in {seconds:.1f}s"
    if "windows" not in meta:
        return (
            f"wrote {out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens of "
            + what
        )
    L = meta["windows"]["block_size"]
    train = meta["train_tokens"] // L
    val = meta["val_tokens"] // L
    if meta["eval_only"]:
        return (
            f"wrote {out}: {val:,} validation windows of {L} tokens (evaluation only) from {what}"
        )
    return f"wrote {out}: {train:,} train + {val:,} val windows of {L} tokens from {what}"
