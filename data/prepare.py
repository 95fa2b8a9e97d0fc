"""
Tokenize a corpus into data/NAME/{train.bin, val.bin, meta.json} for train.py.

  python data/prepare.py                                  # offline default: the Python docs, bytes
  python data/prepare.py --input a.txt b.txt --name mine  # any local UTF-8 text
  python data/prepare.py --dataset shakespeare            # downloads; GPT-2 BPE by default
  python data/prepare.py --dataset openwebtext            # downloads ~13 GB; GPT-2 BPE

Tokens are stored as uint16 (uint32 when the vocabulary needs it). Documents go to val.bin
when their index is k-1 mod k, k = round(1 / val_fraction): deterministic, and spread over
the whole corpus. A dataset is written to temporary files and renamed into place at the
end, so an interrupted run leaves nothing half-written; an existing dataset is replaced
only with --overwrite.
"""

import argparse
import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
import tarfile
import tempfile
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
    """A user error: printed as one line, exit status 2."""


# -----------------------------------------------------------------------------
# Tokenizers: "bytes" (256 ids, offline) and "gpt2" (tiktoken's BPE, 50257 ids)


def get_tokenizer(name):
    """A tiktoken Encoding. "bytes" maps each UTF-8 byte to its value and needs no files."""
    import tiktoken

    if name == "bytes":
        return tiktoken.Encoding(name="bytes", pat_str=r"[\s\S]{1,256}",
                                 mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={})
    if name == "gpt2":
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline: say what failed and how to fix it
            names = {f: hashlib.sha1((GPT2_URL + f).encode()).hexdigest() for f in ("vocab.bpe", "encoder.json")}
            raise PrepareError(
                f"tiktoken could not load the GPT-2 encoding ({type(e).__name__}; offline?). Either use "
                f"--tokenizer bytes, or download {GPT2_URL}{{vocab.bpe,encoder.json}} elsewhere, save them as "
                f"{names['vocab.bpe']} and {names['encoder.json']} in a folder, and set TIKTOKEN_CACHE_DIR to it"
            ) from None
    raise PrepareError(f"unknown tokenizer {name!r}: use bytes or gpt2")


def separator(enc):
    """What goes between documents: GPT-2's <|endoftext|>, or a blank line for bytes."""
    return [enc.eot_token] if enc.name == "gpt2" else list(b"\n\n")


# -----------------------------------------------------------------------------
# Corpora: each yields documents (str)


def python_docs():
    """The offline default: CPython's language reference (pydoc_data.topics) and the standard
    library's longer docstrings (read with ast, nothing is imported). Real English prose
    about Python; its exact content follows the CPython version."""
    import pydoc_data.topics

    for key in sorted(pydoc_data.topics.topics):
        yield pydoc_data.topics.topics[key]
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "lib2to3"}
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
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
    if not p.exists():
        raise PrepareError(f"{path}: no such file")
    if p.is_dir():
        raise PrepareError(f"{path} is a folder: name the text files in it (for example {path}/*.txt)")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise PrepareError(f"{path}: cannot read it ({e.strerror}); check its permissions") from None
    try:
        text = raw.decode("utf-8")
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
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0)
            from tqdm import tqdm
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name, leave=False, disable=None) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise PrepareError(f"could not download {url} ({reason}; offline?): fetch it elsewhere and save it as "
                           f"{dest}, or prepare local text with --input FILE --name NAME") from None
    part.replace(dest)
    return dest


def shakespeare(raw_dir):
    return paragraphs(download(SHAKESPEARE_URL, raw_dir / "input.txt").read_text(encoding="utf-8"))


def openwebtext(raw_dir):
    """OpenWebText as Hugging Face hosts it: 21 tars of xz-compressed tars of .txt documents."""
    for i in range(21):
        outer = download(OWT_URL.format(i), raw_dir / f"urlsf_subset{i:02d}.tar")
        with tarfile.open(outer) as tar:
            for member in tar:
                if not member.name.endswith(".xz"):
                    continue
                with tarfile.open(fileobj=tar.extractfile(member), mode="r:xz") as inner:
                    for doc in inner:
                        if doc.isfile():
                            yield inner.extractfile(doc).read().decode("utf-8", errors="replace").strip()


# -----------------------------------------------------------------------------
# Writing


def dataset_dir(name):
    """data/NAME, refusing names that would write anywhere else."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise PrepareError(f"dataset name {name!r} must be letters, digits, '_', '-' or '.', without '..' or '/'")
    out = DATA_DIR / name
    if out.is_symlink():
        raise PrepareError(f"{out} is a symbolic link; refusing to write through it")
    return out


def write_dataset(docs, out, enc, source, val_fraction, overwrite, total=None):
    """Tokenize documents into out/{train,val}.bin and out/meta.json; returns the metadata."""
    from tqdm import tqdm

    if (out / "meta.json").exists() and not overwrite:
        raise PrepareError(f"{out} already holds a dataset: pass --overwrite to replace it, or pick another --name")
    if not 0 < val_fraction < 0.5:
        raise PrepareError(f"--val_fraction must lie in (0, 0.5), got {val_fraction}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-")
        probe.close()
    except OSError as e:
        raise PrepareError(f"cannot write to {out} ({e.strerror}): check its permissions or free space") from None
    dtype = np.uint16 if enc.n_vocab <= 2 ** 16 else np.uint32
    every = max(2, round(1 / val_fraction))
    sep = separator(enc)
    tmp = {split: out / f".{split}.bin.tmp" for split in ("train", "val")}
    counts, n_docs = {"train": 0, "val": 0}, 0
    try:
        files = {split: open(path, "wb") for split, path in tmp.items()}
        batch = []

        def flush():
            for i, ids in zip(range(len(batch)), enc.encode_ordinary_batch([d for _, d in batch])):
                split = batch[i][0]
                arr = np.array(ids + sep, dtype=dtype)
                arr.tofile(files[split])
                counts[split] += len(arr)
            batch.clear()

        for doc in tqdm(docs, total=total, unit="doc", desc=f"tokenizing ({enc.name})", leave=False,
                        disable=None):
            batch.append(("val" if n_docs % every == every - 1 else "train", doc))
            n_docs += 1
            if len(batch) == 1024:
                flush()
        flush()
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
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
        meta_tmp = out / ".meta.json.tmp"
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n")
        meta_tmp.replace(out / "meta.json")  # written last: its presence means the dataset is whole
        return meta
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)


def prepare(dataset="python_docs", inputs=None, name=None, tokenizer=None, val_fraction=None, overwrite=False):
    """Build data/NAME; returns (path, metadata). Raises PrepareError on user errors, leaving
    no folder it created behind (downloads already complete are kept for the next try)."""
    if inputs and not name:
        raise PrepareError("--input needs --name NAME (the dataset is written to data/NAME)")
    out = dataset_dir(name or dataset)
    existed = out.exists()
    try:
        return _prepare(dataset, inputs, name, tokenizer, val_fraction, overwrite)
    except BaseException:
        if not existed:
            for d in (out / "raw", out):
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
        raise


def _prepare(dataset, inputs, name, tokenizer, val_fraction, overwrite):
    if inputs:
        out = dataset_dir(name)
        texts = [read_text(p) for p in inputs]  # read every file first: fail before writing anything
        docs = [d for t in texts for d in paragraphs(t)]
        source = "files: " + ", ".join(str(p) for p in inputs)
        default_tok, total = "bytes", len(docs)
    elif dataset == "python_docs":
        out, docs, source, default_tok, total = dataset_dir(name or dataset), python_docs(), "python_docs", "bytes", None
    elif dataset in ("shakespeare", "openwebtext"):
        out = dataset_dir(name or dataset)
        default_tok, source, total = "gpt2", dataset, None
    else:
        raise PrepareError(f"unknown dataset {dataset!r}: use python_docs, shakespeare or openwebtext "
                           "(or --input FILE ... --name NAME)")
    enc = get_tokenizer(tokenizer or default_tok)  # fail at once, before any download
    if dataset in ("shakespeare", "openwebtext") and not inputs:
        if (out / "meta.json").exists() and not overwrite:
            raise PrepareError(f"{out} already holds a dataset: pass --overwrite to replace it")
        raw = out / "raw"
        docs = shakespeare(raw) if dataset == "shakespeare" else openwebtext(raw)
    if val_fraction is None:  # the paper holds out the last 100K of OpenWebText's 8M documents
        val_fraction = 0.0125 if dataset == "openwebtext" and not inputs else 0.05
    return out, write_dataset(docs, out, enc, source, val_fraction, overwrite, total)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--dataset", default="python_docs", help="python_docs (default, offline), shakespeare, openwebtext")
    parser.add_argument("--input", nargs="+", metavar="FILE", help="local UTF-8 text files instead of --dataset")
    parser.add_argument("--name", help="the dataset folder under data/ (default: the dataset's name)")
    parser.add_argument("--tokenizer", choices=["bytes", "gpt2"], help="default: bytes for local text, gpt2 for downloads")
    parser.add_argument("--val_fraction", type=float, help="share of documents held out (default 0.05)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing data/NAME")
    def fail(msg):
        print(f"data/prepare.py: error: {msg}", file=sys.stderr)
        sys.exit(2)

    parser.error = lambda msg: fail(f"{msg} (see --help)")
    args = parser.parse_args(argv)
    t0 = time.time()
    try:
        out, meta = prepare(args.dataset, args.input, args.name, args.tokenizer, args.val_fraction, args.overwrite)
    except PrepareError as e:
        fail(e)
    except KeyboardInterrupt:
        print("data/prepare.py: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    print(f"wrote {out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
          f"({meta['tokenizer']}, vocab {meta['vocab_size']}, {meta['documents']:,} documents) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
