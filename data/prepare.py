"""
The data floor: tokenize a corpus into data/NAME/{train.bin, val.bin, meta.json}, and read it back.

  python data/prepare.py                                  # offline default: the Python docs, bytes
  python data/prepare.py --input a.txt b.txt --name mine  # any local UTF-8 text
  python data/prepare.py --dataset shakespeare            # downloads; GPT-2 BPE by default
  python data/prepare.py --dataset openwebtext            # downloads ~13 GB; GPT-2 BPE

Document i goes to val.bin when i = k - 1 mod k, k = round(1 / val_fraction): deterministic and
spread over the corpus. Files are written under temporary names and renamed at the end,
meta.json last, so an interrupted run leaves nothing half-written; --overwrite replaces a dataset.
"""

import argparse
import ast
import hashlib
import itertools
import json
import os
import re
import sys
import sysconfig
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent
MIN_TOKENS = 2048  # a corpus shorter than this cannot fill a training batch and a validation set
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
OWT_URL = "https://huggingface.co/datasets/Skylion007/openwebtext/resolve/main/subsets/urlsf_subset{:02d}.tar"


class PrepareError(Exception):
    """A user error about data: printed as one line, exit status 2."""


def get_tokenizer(name):
    """A tiktoken Encoding: "bytes" (each UTF-8 byte is its own id; offline) or "gpt2" (BPE, 50257 ids)."""
    import tiktoken

    if name == "bytes":
        return tiktoken.Encoding(name="bytes", pat_str=r"[\s\S]{1,256}",
                                 mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={})
    if name != "gpt2":
        raise PrepareError(f"unknown tokenizer {name!r}: use bytes or gpt2")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # offline: say what failed and how to fix it
        names = [hashlib.sha1((GPT2_URL + f).encode()).hexdigest() for f in ("vocab.bpe", "encoder.json")]
        raise PrepareError(f"tiktoken could not load the GPT-2 encoding ({type(e).__name__}; offline?). Either use "
                           f"--tokenizer bytes, or download {GPT2_URL}{{vocab.bpe,encoder.json}} elsewhere, save them "
                           f"as {names[0]} and {names[1]} in a folder, and set TIKTOKEN_CACHE_DIR to it") from None


# -----------------------------------------------------------------------------
# Corpora: each gives documents (str)


def python_docs():
    """The offline default: CPython's language reference (pydoc_data.topics) and the standard
    library's longer docstrings (read with ast, nothing is imported)."""
    import pydoc_data.topics

    yield from (pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if {"test", "tests", "idle_test", "site-packages", "lib2to3"} & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    yield doc


def read_text(path):
    """The UTF-8 text of one user file, or a one-line error naming it and the fix."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise PrepareError(f"{path} is a folder: name the text files in it (for example {path}/*.txt)" if p.is_dir()
                           else f"{path}: no such file" if not p.exists() else
                           f"{path}: cannot read it ({e.strerror}); check its permissions") from None
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path} is not UTF-8 text (bad byte at offset {e.start}): convert it, "
                           f"e.g. iconv -f latin1 -t utf-8 {path} > {p.stem}.utf8.txt") from None
    if not text.strip():
        raise PrepareError(f"{path} is empty: give a file with text in it")
    return text


def paragraphs(text):
    """Documents of a plain text: its blank-line separated paragraphs."""
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def download(url, dest):
    """Fetch url to dest (kept for later runs), or fail at once with what to do."""
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=30) as r, open(part, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
        except (OSError, ValueError) as e:
            part.unlink(missing_ok=True)
            raise PrepareError(f"could not download {url} ({getattr(e, 'reason', e)}; offline?): fetch it elsewhere "
                               f"and save it as {dest}, or prepare local text with --input FILE --name NAME") from None
        part.replace(dest)
    return dest


def openwebtext(raw_dir):
    """OpenWebText as Hugging Face hosts it: 21 tars of xz-compressed tars of .txt documents."""
    for i in range(21):
        with tarfile.open(download(OWT_URL.format(i), raw_dir / f"urlsf_subset{i:02d}.tar")) as tar:
            for member in (m for m in tar if m.name.endswith(".xz")):
                with tarfile.open(fileobj=tar.extractfile(member), mode="r:xz") as inner:
                    for doc in (d for d in inner if d.isfile()):
                        yield inner.extractfile(doc).read().decode("utf-8", errors="replace").strip()


# -----------------------------------------------------------------------------
# Writing a dataset, and reading it back


def dataset_dir(name):
    """data/NAME, refusing names that would write anywhere else."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise PrepareError(f"dataset name {name!r} must be letters, digits, '_', '-' or '.', without '..' or '/'")
    if (DATA_DIR / name).is_symlink():
        raise PrepareError(f"{DATA_DIR / name} is a symbolic link; refusing to write through it")
    return DATA_DIR / name


def write_dataset(docs, out, enc, source, val_fraction):
    """Tokenize documents into out/{train,val}.bin and out/meta.json; returns the metadata."""
    from tqdm import tqdm

    tmp = {split: out / f".{split}.bin.tmp" for split in ("train", "val")}
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = {split: open(path, "wb") for split, path in tmp.items()}
    except OSError as e:
        raise PrepareError(f"cannot write to {out} ({e.strerror}): check its permissions or free space") from None
    dtype, every = np.uint16 if enc.n_vocab <= 2 ** 16 else np.uint32, max(2, round(1 / val_fraction))
    sep = [enc.eot_token] if enc.name == "gpt2" else list(b"\n\n")  # between documents
    counts, n_docs, docs = {"train": 0, "val": 0}, 0, iter(tqdm(docs, unit="doc", leave=False, disable=None))
    try:
        while chunk := list(itertools.islice(docs, 1024)):  # tiktoken encodes a batch in parallel
            for ids in enc.encode_ordinary_batch(chunk):
                split, n_docs = "val" if n_docs % every == every - 1 else "train", n_docs + 1
                counts[split] += len(ids) + len(sep)
                np.array(ids + sep, dtype=dtype).tofile(files[split])
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
        if counts["train"] + counts["val"] < MIN_TOKENS or counts["val"] == 0:
            raise PrepareError(f"{source} is too short: {counts['train'] + counts['val']} tokens in {n_docs} "
                               f"documents; prepare needs at least {MIN_TOKENS} tokens in {every} or more "
                               f"paragraphs (give more text)")
        meta = {"tokenizer": enc.name, "vocab_size": enc.n_vocab, "dtype": np.dtype(dtype).name,
                "train_tokens": counts["train"], "val_tokens": counts["val"], "documents": n_docs,
                "source": source, "python": sys.version.split()[0], "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        (out / "meta.json").unlink(missing_ok=True)  # an old dataset stops being whole before it is replaced
        for split, path in tmp.items():
            path.replace(out / f"{split}.bin")
        (out / ".meta.json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
        (out / ".meta.json.tmp").replace(out / "meta.json")  # written last: its presence means the dataset is whole
        return meta
    finally:
        for split, path in tmp.items():
            files[split].close()
            path.unlink(missing_ok=True)


def prepare(dataset="python_docs", inputs=None, name=None, tokenizer=None, val_fraction=None, overwrite=False):
    """Build data/NAME; returns (path, metadata). Raises PrepareError on user errors, leaving
    no folder it created behind (downloads already complete are kept for the next try)."""
    if inputs and not name:
        raise PrepareError("--input needs --name NAME (the dataset is written to data/NAME)")
    if not inputs and dataset not in ("python_docs", "shakespeare", "openwebtext"):
        raise PrepareError(f"unknown dataset {dataset!r}: use python_docs, shakespeare or openwebtext "
                           "(or --input FILE ... --name NAME)")
    out, existed = dataset_dir(name or dataset), dataset_dir(name or dataset).exists()
    if (out / "meta.json").exists() and not overwrite:
        raise PrepareError(f"{out} already holds a dataset: pass --overwrite to replace it, or pick another --name")
    if val_fraction is None:  # the paper holds out the last 100K of OpenWebText's 8M documents
        val_fraction = 0.0125 if dataset == "openwebtext" and not inputs else 0.05
    if not 0 < val_fraction < 0.5:
        raise PrepareError(f"--val_fraction must lie in (0, 0.5), got {val_fraction}")
    try:
        downloads = dataset in ("shakespeare", "openwebtext") and not inputs
        enc = get_tokenizer(tokenizer or ("gpt2" if downloads else "bytes"))  # fail at once, before any download
        if inputs:
            texts = [read_text(p) for p in inputs]  # read every file first: fail before writing anything
            docs, source = [d for t in texts for d in paragraphs(t)], "files: " + ", ".join(map(str, inputs))
        else:
            docs, source = (python_docs() if dataset == "python_docs" else openwebtext(out / "raw")
                            if dataset == "openwebtext" else
                            paragraphs(read_text(download(SHAKESPEARE_URL, out / "raw" / "input.txt")))), dataset
        return out, write_dataset(docs, out, enc, source, val_fraction)
    except BaseException:
        for d in ([] if existed else [out / "raw", out]):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise


def load_dataset(name, block_size=0):
    """(train, val, meta): the token arrays of data/NAME (memory-mapped) and its metadata."""
    folder = dataset_dir(name)
    if not (folder / "meta.json").exists():
        raise PrepareError(f"dataset {name!r} was never prepared (no {folder / 'meta.json'}): run python "
                           f"data/prepare.py --dataset {name}, or python data/prepare.py --input FILE ... --name {name}")
    try:
        meta = json.loads((folder / "meta.json").read_text())
        splits = [np.memmap(folder / f"{s}.bin", dtype=np.dtype(meta["dtype"]), mode="r") for s in ("train", "val")]
    except (OSError, ValueError, KeyError) as e:
        raise PrepareError(f"data/{name} is damaged ({e}): prepare it again with --overwrite") from None
    for split, arr in zip(("train", "val"), splits):
        if len(arr) < block_size + 1:
            raise PrepareError(f"data/{name}/{split}.bin holds {len(arr)} tokens, fewer than one training sequence "
                               f"(block_size {block_size}): lower --block_size or prepare more text")
    return splits[0], splits[1], meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default="python_docs", help="python_docs (default, offline), shakespeare, openwebtext")
    p.add_argument("--input", nargs="+", metavar="FILE", help="local UTF-8 text files instead of --dataset")
    p.add_argument("--name", help="the dataset folder under data/ (default: the dataset's name)")
    p.add_argument("--tokenizer", choices=["bytes", "gpt2"], help="default: bytes for local text, gpt2 for downloads")
    p.add_argument("--val_fraction", type=float, help="share of documents held out (default 0.05)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data/NAME")
    p.error = lambda msg: sys.exit(print(f"data/prepare.py: error: {msg} (see --help)", file=sys.stderr) or 2)
    args, t0 = p.parse_args(argv), time.time()
    try:
        out, meta = prepare(args.dataset, args.input, args.name, args.tokenizer, args.val_fraction, args.overwrite)
    except (PrepareError, KeyboardInterrupt) as e:
        print(f"data/prepare.py: error: {e or 'interrupted; nothing was written'}", file=sys.stderr)
        sys.exit(2 if isinstance(e, PrepareError) else 130)
    print(f"wrote {out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
          f"({meta['tokenizer']}, vocab {meta['vocab_size']}, {meta['documents']:,} documents) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
