"""
Writing a dataset, for the recipes (data/NAME/prepare.py): tokenizing documents into
train.bin and val.bin, downloading a missing source file, reading a tar archive, and putting the
files in place so that nothing half-written is left. meta.json goes last: its presence means the
dataset is whole (data/common.py reads it back).
"""

import http.client
import itertools
import json
import os
import shutil
import sys
import tarfile
import time
import urllib.request

import numpy as np
from tqdm import tqdm

from data.common import PrepareError, dataset_dir

MIN_TOKENS = 2048  # a corpus shorter than this cannot fill a training batch and a validation set


def token_dtype(enc):
    return np.uint16 if enc.n_vocab <= 2**16 else np.uint32


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
