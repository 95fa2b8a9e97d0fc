"""
The data floor: tokenize a corpus into data/NAME/{train.bin, val.bin, meta.json}, and read it back.

  python data/prepare.py                                  # offline default: prose of the Python docs, bytes
  python data/prepare.py --input a.txt b.txt --name mine  # any local UTF-8 text, a document per paragraph
  python data/prepare.py --dataset openwebtext            # downloads ~13 GB; GPT-2 BPE

Document i goes to val.bin when i = k - 1 mod k, k = round(1 / val_fraction). Files are written under
temporary names, meta.json last: an interrupted run leaves nothing half-written."""

import argparse
import ast
import hashlib
import itertools
import json
import os
import pydoc_data.topics
import re
import shutil
import sys
import sysconfig
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import tiktoken
from tqdm import tqdm

DATA_DIR = Path(__file__).resolve().parent
MIN_TOKENS = 2048  # a corpus shorter than this cannot fill a training batch and a validation set
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
OWT_URL = "https://huggingface.co/datasets/Skylion007/openwebtext/resolve/main/subsets/urlsf_subset{:02d}.tar"


class PrepareError(Exception):
    """A user error about data: printed as one line, exit status 2."""


def get_tokenizer(name):
    """A tiktoken Encoding: "bytes" (each UTF-8 byte is its own id; offline) or "gpt2" (BPE, 50257 ids)."""
    if name == "bytes":
        return tiktoken.Encoding(
            name="bytes",
            pat_str=r"[\s\S]{1,256}",
            mergeable_ranks={bytes([i]): i for i in range(256)},
            special_tokens={},
        )
    if name != "gpt2":
        raise PrepareError(f"unknown tokenizer {name!r}: use bytes or gpt2")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # offline: say what failed and how to fix it
        names = [
            hashlib.sha1((GPT2_URL + f).encode()).hexdigest() for f in ("vocab.bpe", "encoder.json")
        ]
        raise PrepareError(
            f"tiktoken could not load the GPT-2 encoding ({type(e).__name__}; offline?): save "
            f"{GPT2_URL}{{vocab.bpe,encoder.json}} as {names[0]} and {names[1]} in a folder and set "
            "TIKTOKEN_CACHE_DIR to it (to prepare data, --tokenizer bytes needs no files)"
        ) from None


def python_prose():
    """The offline default corpus: the English prose of CPython's own documentation, as documents.

    Sources that come with every Python: the language reference (pydoc_data.topics) and the
    standard library's longer docstrings (read with ast; nothing is imported). Kept: paragraphs
    that read as prose, each on one line. Dropped: indented blocks (code, grammar, tables, argument
    lists), doctests, rules, and paragraphs that are short, start in lower case, end mid-sentence or
    are dense in code characters; a million-parameter byte model would spend itself on those.
    CPython 3.11 gives 686 KB: 112,000 words in 3,800 paragraphs."""
    code = re.compile(
        r"[_=<>{}\[\]|\\#@$^~`]|\(\)|\w\.\w|::|->|\*\*"
    )  # identifiers, calls, operators, markup
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = [pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)]
    for path in sorted(root.rglob("*.py")):
        if not {"test", "tests", "idle_test", "site-packages", "lib2to3"} & set(
            path.relative_to(root).parts
        ):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, OSError):
                continue
            docs += [
                ast.get_docstring(n) or ""
                for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            ]
    for para in (p for doc in docs if len(doc) > 200 for p in re.split(r"\n\s*\n", doc)):
        text = " ".join(para.split())
        words = text.split()
        if not (
            re.search(r"^\s|>>>|^\W{3,}$", para, re.M)
            or len(words) < 8
            or not text[0].isupper()
            or text[-1] not in ".!?"
            or len(code.findall(text)) * 10 > len(words)
            or sum(c.isalpha() or c in " ,.;:'\"-()" for c in text) < 0.95 * len(text)
        ):
            yield text


def read_text(path):
    """The UTF-8 text of one user file, or a one-line error naming it and the fix."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise PrepareError(
            f"{path} is a folder: name the text files in it (for example {path}/*.txt)"
            if p.is_dir()
            else f"{path}: no such file"
            if not p.exists()
            else f"{path}: cannot read it ({e.strerror}); check its permissions"
        ) from None
    except UnicodeDecodeError as e:
        raise PrepareError(
            f"{path} is not UTF-8 text (bad byte at offset {e.start}): convert it, "
            f"e.g. iconv -f latin1 -t utf-8 {path} > {p.stem}.utf8.txt"
        ) from None
    if not text.strip():
        raise PrepareError(f"{path} is empty: give a file with text in it")
    return text


def openwebtext(raw_dir):
    """OpenWebText as Hugging Face hosts it (21 tars of .xz tars of .txt), kept in raw_dir once downloaded."""
    for i in range(21):
        url, dest = OWT_URL.format(i), raw_dir / f"urlsf_subset{i:02d}.tar"
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with (
                    urllib.request.urlopen(url, timeout=30) as r,
                    open(dest.with_suffix(".part"), "wb") as f,
                ):
                    shutil.copyfileobj(r, f)
            except (OSError, ValueError) as e:
                dest.with_suffix(".part").unlink(missing_ok=True)
                raise PrepareError(
                    f"could not download {url} ({getattr(e, 'reason', e)}; offline?): fetch it "
                    f"elsewhere and save it as {dest}, or prepare local text with --input"
                ) from None
            dest.with_suffix(".part").replace(dest)
        with tarfile.open(dest) as tar:
            for member in (m for m in tar if m.name.endswith(".xz")):
                with tarfile.open(fileobj=tar.extractfile(member), mode="r:xz") as inner:
                    for doc in (d for d in inner if d.isfile()):
                        yield (
                            inner.extractfile(doc).read().decode("utf-8", errors="replace").strip()
                        )


def dataset_dir(name):
    """data/NAME, refusing names that would write anywhere else."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise PrepareError(
            f"dataset name {name!r} must be letters, digits, '_', '-' or '.', without '..' or '/'"
        )
    if (DATA_DIR / name).is_symlink():
        raise PrepareError(f"{DATA_DIR / name} is a symbolic link; refusing to write through it")
    return DATA_DIR / name


def write_dataset(docs, out, enc, source, val_fraction):
    """Tokenize documents into out/{train,val}.bin and out/meta.json; returns the metadata."""
    tmp = {split: out / f".{split}.bin.tmp" for split in ("train", "val")}
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = {split: open(path, "wb") for split, path in tmp.items()}
    except OSError as e:
        raise PrepareError(
            f"cannot write to {out} ({e.strerror}): check its permissions or free space"
        ) from None
    dtype, every = np.uint16 if enc.n_vocab <= 2**16 else np.uint32, max(2, round(1 / val_fraction))
    sep = [enc.eot_token] if enc.name == "gpt2" else list(b"\n\n")  # between documents
    counts, n_docs, docs = (
        {"train": 0, "val": 0},
        0,
        iter(tqdm(docs, unit="doc", leave=False, disable=None)),
    )
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
            raise PrepareError(
                f"{source} is too short: {counts['train'] + counts['val']} tokens in {n_docs} documents;"
                f" prepare needs {MIN_TOKENS} tokens in {every} or more paragraphs (give more text)"
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
        }
        (out / "meta.json").unlink(
            missing_ok=True
        )  # an old dataset stops being whole before it is replaced
        for split, path in tmp.items():
            path.replace(out / f"{split}.bin")
        (out / ".meta.json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
        (out / ".meta.json.tmp").replace(
            out / "meta.json"
        )  # written last: its presence means the dataset is whole
        return meta
    finally:
        for split, path in tmp.items():
            files[split].close()
            path.unlink(missing_ok=True)


def prepare(
    dataset="python_prose",
    inputs=None,
    name=None,
    tokenizer=None,
    val_fraction=None,
    overwrite=False,
):
    """Build data/NAME -> (path, metadata); after a PrepareError no folder it made is left (finished downloads are)."""
    if inputs and not name:
        raise PrepareError("--input needs --name NAME (the dataset is written to data/NAME)")
    if not inputs and dataset not in ("python_prose", "openwebtext"):
        raise PrepareError(
            f"unknown dataset {dataset!r}: use python_prose or openwebtext (or --input ... --name)"
        )
    out, existed = dataset_dir(name or dataset), dataset_dir(name or dataset).exists()
    if (out / "meta.json").exists() and not overwrite:
        raise PrepareError(
            f"{out} already holds a dataset: pass --overwrite to replace it, or pick another --name"
        )
    owt = (
        dataset == "openwebtext" and not inputs
    )  # the paper holds out 100K of OpenWebText's 8M documents
    val_fraction = (0.0125 if owt else 0.05) if val_fraction is None else val_fraction
    if not 0 < val_fraction < 0.5:
        raise PrepareError(f"--val_fraction must lie in (0, 0.5), got {val_fraction}")
    try:
        enc = get_tokenizer(tokenizer or ("gpt2" if owt else "bytes"))
        if inputs:
            texts = [
                read_text(p) for p in inputs
            ]  # read every file first: fail before writing anything
            docs = [
                p for t in texts for p in re.split(r"\n\s*\n", t) if p.strip()
            ]  # a document per paragraph
            source = "files: " + ", ".join(map(str, inputs))
        else:  # the tokenizer is checked first: fail at once, before any download
            docs, source = (
                python_prose() if dataset == "python_prose" else openwebtext(out / "raw"),
                dataset,
            )
        return out, write_dataset(docs, out, enc, source, val_fraction)
    except BaseException:
        for d in [] if existed else [out / "raw", out]:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise


def load_dataset(name, block_size=0):
    """(train, val, meta): the token arrays of data/NAME (memory-mapped) and its metadata."""
    folder = dataset_dir(name)
    if not (folder / "meta.json").exists():
        raise PrepareError(
            f"dataset {name!r} was never prepared (no {folder / 'meta.json'}): run python "
            f"data/prepare.py --dataset {name}, or --input FILE ... --name {name}"
        )
    try:
        meta = json.loads((folder / "meta.json").read_text())
        splits = [
            np.memmap(folder / f"{s}.bin", dtype=np.dtype(meta["dtype"]), mode="r")
            for s in ("train", "val")
        ]
    except (OSError, ValueError, KeyError) as e:
        raise PrepareError(
            f"data/{name} is damaged ({e}): prepare it again with --overwrite"
        ) from None
    for split, arr in zip(("train", "val"), splits):
        if len(arr) <= block_size:
            raise PrepareError(
                f"data/{name}/{split}.bin holds {len(arr)} tokens, fewer than one training sequence "
                f"(block_size {block_size}): lower --block_size or prepare more text"
            )
    return *splits, meta


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument(
        "--dataset", default="python_prose", help="python_prose (default, offline) or openwebtext"
    )
    p.add_argument(
        "--input", nargs="+", metavar="FILE", help="local UTF-8 text files instead of --dataset"
    )
    p.add_argument("--name", help="the dataset folder under data/ (default: the dataset's name)")
    p.add_argument(
        "--tokenizer",
        choices=["bytes", "gpt2"],
        help="default: bytes for local text, gpt2 for downloads",
    )
    p.add_argument("--val_fraction", type=float, help="share of documents held out (default 0.05)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data/NAME")
    p.error = lambda msg: sys.exit(
        print(f"data/prepare.py: error: {msg} (see --help)", file=sys.stderr) or 2
    )
    args, t0 = p.parse_args(argv), time.time()
    try:
        out, meta = prepare(
            args.dataset, args.input, args.name, args.tokenizer, args.val_fraction, args.overwrite
        )
    except (
        PrepareError,
        KeyboardInterrupt,
    ) as e:  # str() of a KeyboardInterrupt is empty: say it in words
        interrupted = isinstance(e, KeyboardInterrupt)
        print(
            f"data/prepare.py: error: {'interrupted; nothing was written' if interrupted else e}",
            file=sys.stderr,
        )
        sys.exit(130 if interrupted else 2)
    print(
        f"wrote {out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens of {meta['documents']:,} "
        f"documents ({meta['tokenizer']}) in {time.time() - t0:.1f}s"
    )


if __name__ == "__main__":
    main()
