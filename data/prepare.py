"""
The data floor: tokenize a corpus into data/NAME/{train.bin, val.bin, meta.json}, and read it back.

  python data/prepare.py                                 # offline default: Python's docs, bytes
  python data/prepare.py --input a.txt b.txt --name mine # local UTF-8 text, a document a paragraph
  python data/prepare.py --dataset=openwebtext           # 21 tars, 13 GB; GPT-2 BPE, L = 1024
  python data/prepare.py --dataset=lm1b                  # 1.8 GB; bert-base-uncased, L = 128

The zero-shot evaluation sets of the paper's Table 5 (GPT-2 BPE, L = 1024, val.bin only):

  python data/prepare.py --dataset=ptb
  python data/prepare.py --dataset=wikitext2
  python data/prepare.py --dataset=wikitext103
  python data/prepare.py --dataset=lm1b_gpt2             # LM1B's test split in GPT-2 BPE
  python data/prepare.py --dataset=lambada
  python data/prepare.py --dataset=ag_news
  python data/prepare.py --dataset=pubmed
  python data/prepare.py --dataset=arxiv

Local text (python_prose, --input) is a stream of documents, each followed by a blank line
(bytes) or <|endoftext|> (gpt2); document i goes to val.bin when i = k - 1 mod k, with
k = round(1 / val_fraction).

The paper's datasets are prepared as the authors' dataloader.py does (get_dataset, _group_texts):
each document detokenized and tokenized, EOS after it (not in the zero-shot sets), and the tokens
cut into windows of L per batch of 1,000 documents, the remainder of each batch dropped; LM1B's and
the zero-shot sets' windows are BOS + L - 2 tokens + EOS. train.bin and val.bin hold whole windows;
meta.json's "windows" says how they were made. OpenWebText's validation set is its last 100,000
documents. The datasets land in ESO_DATA_DIR (default: this folder), or --data_dir.

Files are written under temporary names, meta.json last: an interrupted run leaves nothing
half-written."""

import argparse
import ast
import fnmatch
import hashlib
import http.client
import importlib
import itertools
import json
import lzma
import os
import pydoc_data.topics
import re
import shutil
import sys
import sysconfig
import tarfile
import time
import unicodedata
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken
from tqdm import tqdm

MIN_TOKENS = 2048  # a corpus shorter than this cannot fill a training batch and a validation set
GROUP_DOCS = 1000  # datasets.Dataset.map's default batch_size: the documents _group_texts sees
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
OWT_URL = "https://huggingface.co/datasets/Skylion007/openwebtext/resolve/main/subsets/urlsf_subset{:02d}.tar"
OWT_SUBSETS = 21
OWT_VAL_DOCS = 100_000
LM1B_ROOT = "1-billion-word-language-modeling-benchmark-r13output"
LM1B_URL = f"http://www.statmt.org/lm-benchmark/{LM1B_ROOT}.tar.gz"
LM1B_FILES = {
    "train": "training-monolingual.tokenized.shuffled/news.en-*",
    "test": "heldout-monolingual.tokenized.shuffled/news.en.heldout-*",
}
LAMBADA_URL = "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"
BERT_VOCAB_URL = "https://huggingface.co/bert-base-uncased/resolve/main/vocab.txt"
BERT_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


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
    if name == "bert-base-uncased":
        if vocab is None:
            raise PrepareError(
                f"the bert-base-uncased tokenizer needs its vocab.txt: fetch {BERT_VOCAB_URL} "
                "and give its path"
            )
        if isinstance(vocab, (str, Path)):
            vocab = read_vocab(vocab)
        return WordPiece(vocab)
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


def dataset_tokenizer(name, data_dir=None):
    """The tokenizer data/NAME was made with (a WordPiece one reads the vocab.txt in the folder)."""
    folder = dataset_dir(name, data_dir)
    meta = read_meta(folder, name)
    vocab = None
    if "vocab_file" in meta:
        vocab = folder / meta["vocab_file"]
    return get_tokenizer(meta["tokenizer"], vocab)


# ----------------------------------------------------------------------------- detokenizers
# Each undoes the tokenization artefacts of one corpus, rule by rule in the order of the authors'
# function of the same purpose in dataloader.py, quirks included: the datasets are the ones the
# paper's numbers were measured on. A rule is (old, new): a string is replaced everywhere, a
# compiled pattern through re.sub.


def apply_rules(text, rules):
    for old, new in rules:
        if isinstance(old, re.Pattern):
            text = old.sub(new, text)
        else:
            text = text.replace(old, new)
    return text


WIKITEXT_RULES = [
    ("s '", "s'"),
    # as the authors wrote it: the digit becomes the five characters "[0-9]"
    (re.compile(r"/' [0-9]/"), r"/'[0-9]/"),
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    (" : ", ": "),
    (" ; ", "; "),
    (" . ", ". "),
    (" ! ", "! "),
    (" ? ", "? "),
    (" , ", ", "),
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),
    (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
    ("= = = =", "===="),
    ("= = =", "==="),
    ("= =", "=="),
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    (" \n", "\n"),
    ("\n ", "\n"),
    # one pass: of " N N " only the first N becomes 1
    (" N ", " 1 "),
    (" 's", "'s"),
]


def wikitext_detokenize(text):
    """WikiText's raw text as prose (the authors' wt_detokenizer): the " @-@ " joins, spaces
    before punctuation and inside brackets and quotes, "= =" headings, and " N " read as " 1 "."""
    return apply_rules(text, WIKITEXT_RULES)


PTB_RULES_BEFORE_N = [
    (" 's", "'s"),
    ("s ' ", "s' "),
    (" n't", "n't"),
    (" \n ", "\n"),
    ("\\/", "/"),
]
PTB_RULES_AFTER_N = [
    ("$ 1", "$1"),
    ("# 1", "#1"),
    ("<unk>", "?"),
]


def ptb_detokenize(text):
    """Penn Treebank's sentences as prose (the authors' ptb_detokenizer): contractions joined,
    "\\/" as "/", the number placeholder N as 1 (ten passes, so runs of N all change), "$ 1" and
    "# 1" joined, and <unk> as "?"."""
    text = apply_rules(text, PTB_RULES_BEFORE_N)
    for _ in range(10):
        text = text.replace(" N ", " 1 ")
    return apply_rules(text, PTB_RULES_AFTER_N)


LM1B_RULES = [
    ("http : / / ", "http://"),
    ("https : / / ", "https://"),
    (re.compile(r" '(\w+)"), r"'\1"),
    (re.compile(r" (\w+) \. "), r" \1. "),
    (re.compile(r" (\w+) \.$"), r" \1."),
    (" ? ", "? "),
    (re.compile(r" \?$"), "?"),
    (" ! ", "! "),
    (re.compile(r" \!$"), "!"),
    (" , ", ", "),
    (" : ", ": "),
    (" ; ", "; "),
    (" / ", "/"),
    (re.compile(r"\" ([^\"]+) \""), r'"\1"'),
    (re.compile(r"' ([^']+) '"), r"'\1'"),
    (re.compile(r"\( ([^\(\)]+) \)"), r"(\1)"),
    (re.compile(r"\[ ([^\[\]]+) \]"), r"[\1]"),
    ("$ ", "$"),
    ("\N{POUND SIGN} ", "\N{POUND SIGN}"),
]


def lm1b_detokenize(text):
    """An LM1B sentence as prose (the authors' lm1b_detokenizer, the paper's detokenization): URLs
    joined, 's and other apostrophes attached, the space before . ? ! , : ; dropped, "a / b" as
    "a/b", quotes and brackets hugged, and "$ " and "£ " joined to their numbers. It runs on the
    cased text, before the uncased tokenizer."""
    return apply_rules(text, LM1B_RULES)


def lambada_detokenize(text):
    """A LAMBADA passage (the authors' lambada_detokenizer): curly double quotes as straight ones,
    stripped, and a newline in front."""
    text = text.replace("\N{LEFT DOUBLE QUOTATION MARK}", '"')
    text = text.replace("\N{RIGHT DOUBLE QUOTATION MARK}", '"')
    return "\n" + text.strip()


def scientific_papers_detokenize(text):
    """A PubMed or arXiv article (the authors' scientific_papers_detokenizer): WikiText's rules,
    then LM1B's."""
    return lm1b_detokenize(wikitext_detokenize(text))


# ----------------------------------------------------------------------------- local text


def stdlib_docstrings():
    """The docstrings of the standard library's modules, classes and functions (read with ast;
    nothing is imported), tests and third-party packages left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skipped = {"test", "tests", "idle_test", "site-packages", "lib2to3"}
    for path in sorted(root.rglob("*.py")):
        if skipped & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                yield ast.get_docstring(node) or ""


# identifiers, calls, operators, markup
CODE_CHARACTERS = re.compile(r"[_=<>{}\[\]|\\#@$^~`]|\(\)|\w\.\w|::|->|\*\*")


def reads_as_prose(paragraph):
    """Whether a paragraph of documentation reads as English prose (see python_prose)."""
    text = " ".join(paragraph.split())
    words = text.split()
    # indented (code, grammar, tables, argument lists), a doctest, or a rule
    if re.search(r"^\s|>>>|^\W{3,}$", paragraph, re.M):
        return False
    if len(words) < 8:
        return False
    if not text[0].isupper() or text[-1] not in ".!?":
        return False
    if len(CODE_CHARACTERS.findall(text)) * 10 > len(words):
        return False
    prose_characters = sum(c.isalpha() or c in " ,.;:'\"-()" for c in text)
    return prose_characters >= 0.95 * len(text)


def python_prose():
    """The offline default corpus: the English prose of CPython's own documentation, as documents.

    Sources that come with every Python: the language reference (pydoc_data.topics) and the
    standard library's longer docstrings. Kept: paragraphs that read as prose, each on one line.
    Dropped: indented blocks (code, grammar, tables, argument lists), doctests, rules, and
    paragraphs that are short, start in lower case, end mid-sentence or are dense in code
    characters; a million-parameter byte model would spend itself on those. CPython 3.11 gives
    686 KB: 112,000 words in 3,800 paragraphs."""
    topics = pydoc_data.topics.topics
    docs = [topics[key] for key in sorted(topics)]
    docs += stdlib_docstrings()
    for doc in docs:
        if len(doc) <= 200:
            continue
        for paragraph in re.split(r"\n\s*\n", doc):
            if reads_as_prose(paragraph):
                yield " ".join(paragraph.split())


def read_text(path):
    """The UTF-8 text of one user file, or a one-line error naming it and the fix."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        if p.is_dir():
            message = f"{path} is a folder: name the text files in it (for example {path}/*.txt)"
        elif not p.exists():
            message = f"{path}: no such file"
        else:
            message = f"{path}: cannot read it ({e.strerror}); check its permissions"
        raise PrepareError(message) from None
    except UnicodeDecodeError as e:
        raise PrepareError(
            f"{path} is not UTF-8 text (bad byte at offset {e.start}): convert it, "
            f"e.g. iconv -f latin1 -t utf-8 {path} > {p.stem}.utf8.txt"
        ) from None
    if not text.strip():
        raise PrepareError(f"{path} is empty: give a file with text in it")
    return text


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


# ----------------------------------------------------------------------------- the paper's sources


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


def openwebtext_documents(raw_dir, fetch):
    """OpenWebText's documents in the order of Hugging Face's openwebtext.py (the loading script
    load_dataset('openwebtext') runs): urlsf_subset00.tar .. urlsf_subset20.tar, in each its
    members named *.xz in archive order, in each of those its members named *.txt, each text
    with runs of three or more newlines made two, then stripped. fetch: download a missing tar
    (each is read as soon as it is there)."""
    for i in range(OWT_SUBSETS):
        path = raw_dir / f"urlsf_subset{i:02d}.tar"
        if fetch:
            download(OWT_URL.format(i), path, "pass --raw_dir=DIR, a folder with all 21 tars")
        try:
            with open(path, "rb") as f:
                for xz_name, xz_file in archive_files(f):
                    if not xz_name.endswith(".xz"):
                        continue
                    for txt_name, txt_file in archive_files(xz_file):
                        if not txt_name.endswith(".txt"):
                            continue
                        yield openwebtext_text(txt_file.read(), f"{path}: {xz_name}/{txt_name}")
        except (tarfile.TarError, EOFError, lzma.LZMAError) as e:
            raise PrepareError(f"{path} is damaged ({e}): delete it and run again") from None


def openwebtext_text(raw, where):
    """One OpenWebText document as openwebtext.py yields it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PrepareError(f"{where} is not UTF-8 (Hugging Face's loader would stop too)") from None
    return re.sub("\n\n\n+", "\n\n", text).strip()


def openwebtext_tars(raw_dir):
    """The folder of OpenWebText's 21 tars given with --raw_dir, checked before anything is read."""
    missing = [i for i in range(OWT_SUBSETS) if not (raw_dir / f"urlsf_subset{i:02d}.tar").exists()]
    if missing:
        raise PrepareError(
            f"--raw_dir={raw_dir} has no urlsf_subset{missing[0]:02d}.tar ({len(missing)} of the "
            f"21 missing): it must hold all of OpenWebText's urlsf_subset00..20.tar"
        )
    return raw_dir


def lm1b_release(raw_dir, download_dir):
    """LM1B's release: its .tar.gz (downloaded into download_dir without --raw_dir), or raw_dir:
    the .tar.gz, a folder holding it, or the unpacked release (its folder or the one above it)."""
    archive = f"{LM1B_ROOT}.tar.gz"
    if raw_dir is None:
        return download(LM1B_URL, download_dir / archive, "pass --raw_dir=DIR (see --help)")
    if raw_dir.is_file():
        return raw_dir
    if (raw_dir / archive).is_file():
        return raw_dir / archive
    for folder in (raw_dir / LM1B_ROOT, raw_dir):
        if (folder / Path(LM1B_FILES["train"]).parent).is_dir():
            return folder
    raise PrepareError(
        f"--raw_dir={raw_dir} holds neither {archive} nor the unpacked release "
        f"({LM1B_ROOT}/{Path(LM1B_FILES['train']).parent}/...)"
    )


def lm1b_sentences(release, split):
    """The sentences of LM1B's "train" or "test" split in the order of Hugging Face's lm1b.py (the
    loading script load_dataset('lm1b') runs): the files its pattern matches, in archive order,
    each line decoded and stripped. An unpacked copy has no archive order: its files are read in
    the order of their names."""
    if release.is_file():
        pattern = f"{LM1B_ROOT}/{LM1B_FILES[split]}"
        try:
            with open(release, "rb") as f:
                for name, member in archive_files(f):
                    # fnmatch as on POSIX, where lm1b.py's fnmatch does not fold case
                    if fnmatch.fnmatchcase(name, pattern):
                        yield from lm1b_lines(member, name)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise PrepareError(f"{release} is damaged ({e}): delete it and run again") from None
        return
    for path in sorted(release.glob(LM1B_FILES[split])):
        if path.is_file() and not path.name.startswith((".", "__")):
            with open(path, "rb") as f:
                yield from lm1b_lines(f, path)


def lm1b_lines(f, name):
    for number, line in enumerate(f, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise PrepareError(f"{name}: line {number} is not UTF-8") from None
        yield text.strip()


def lambada_texts(raw_dir, download_dir):
    """The "text" of every line of OpenAI's lambada_test.jsonl, as the authors'
    get_lambada_test_dataset reads it (empty lines skipped)."""
    if raw_dir is None:
        path = download(LAMBADA_URL, download_dir / "lambada_test.jsonl", "pass --raw_dir=FILE")
    elif raw_dir.is_dir():
        path = raw_dir / "lambada_test.jsonl"
    else:
        path = raw_dir
    if not path.is_file():
        raise PrepareError(f"{path}: no such file (--raw_dir: lambada_test.jsonl or its folder)")
    texts = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line:
            continue
        try:
            texts.append(json.loads(line)["text"])
        except (ValueError, KeyError, TypeError):
            raise PrepareError(f"{path}: line {number} is not a JSON object with a text") from None
    return texts


def hub_texts(dataset, hub, split, column, raw_dir):
    """The `column` of `split` of a Hugging Face dataset (hub: its path and config), as the
    authors' get_dataset loads it; with raw_dir, a copy saved there with save_to_disk (a
    DatasetDict, or the split itself as a Dataset)."""
    datasets = import_optional("datasets", f"--dataset={dataset}")
    path, config = hub
    if raw_dir is None:
        where = path
        try:
            table = datasets.load_dataset(path, config, split=split)
        except Exception as e:  # datasets raises many kinds; each means "not from here"
            reason = type(e).__name__
            text = str(e).strip()
            if text:
                reason += ": " + text.splitlines()[0][:200]
            raise PrepareError(
                f"datasets could not load {path!r}, {config!r} ({reason}; offline?): where it "
                f"can, save datasets.load_dataset({path!r}, {config!r}) with .save_to_disk(DIR) "
                "and pass --raw_dir=DIR"
            ) from None
    else:
        where = str(raw_dir)
        table = saved_split(datasets, raw_dir, split)
    if column not in table.column_names:
        raise PrepareError(f"{where} has no column {column!r} (it has {table.column_names})")
    return list(table[column])


def saved_split(datasets, raw_dir, split):
    """`split` of a dataset saved with save_to_disk in raw_dir."""
    if not raw_dir.exists():
        raise PrepareError(f"--raw_dir={raw_dir}: no such folder")
    try:
        saved = datasets.load_from_disk(str(raw_dir))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise PrepareError(
            f"--raw_dir={raw_dir} is not a dataset saved with save_to_disk ({type(e).__name__})"
        ) from None
    if not isinstance(saved, datasets.DatasetDict):
        return saved
    if split not in saved:
        raise PrepareError(f"--raw_dir={raw_dir} has no {split!r} split (it has {list(saved)})")
    return saved[split]


# ----------------------------------------------------------------------------- the paper's datasets


@dataclass(frozen=True)
class Protocol:
    """How the authors' get_dataset (dataloader.py) prepares one dataset for the paper's runs:
    configs/data/*.yaml and the flags of scripts/esolm/*.sh."""

    tokenizer: str  # gpt2, or bert-base-uncased (data=lm1b-wrap)
    block_size: int  # L, model.length in the scripts
    edges: bool  # BOS and EOS at both ends of every window (insert_*_special=True)
    doc_eos: bool  # EOS after every document (insert_*_eos=True)
    train_split: str | None  # None: an evaluation set, val.bin only
    val_split: str  # the split val.bin is made from ('test' for lm1b and ag_news)
    reader: str  # openwebtext, lm1b, lambada or hub
    detokenizer: Callable | None = None
    hub: tuple | None = None  # (path, config) for datasets.load_dataset
    column: str = "text"


def zero_shot(val_split, detokenizer, reader="hub", hub=None, column="text"):
    """A zero-shot evaluation set (eval_zero_shot.sh: data.insert_valid_eos=False,
    +data.insert_valid_special=True, model.length=1024, the gpt2 tokenizer of the OWT models)."""
    return Protocol(
        tokenizer="gpt2",
        block_size=1024,
        edges=True,
        doc_eos=False,
        train_split=None,
        val_split=val_split,
        reader=reader,
        detokenizer=detokenizer,
        hub=hub,
        column=column,
    )


PROTOCOLS = {
    # data=openwebtext-split, +data.insert_train_special=False, +data.insert_valid_special=False
    "openwebtext": Protocol(
        tokenizer="gpt2",
        block_size=1024,
        edges=False,
        doc_eos=True,
        train_split="train[:-100000]",
        val_split="train[-100000:]",
        reader="openwebtext",
    ),
    # data=lm1b-wrap, model.length=128: [CLS] sentence [CLS] sentence ... cut into [CLS] 126 [CLS]
    "lm1b": Protocol(
        tokenizer="bert-base-uncased",
        block_size=128,
        edges=True,
        doc_eos=True,
        train_split="train",
        val_split="test",
        reader="lm1b",
        detokenizer=lm1b_detokenize,
    ),
    # the zero-shot sets: eval_zero_shot.sh --data lm1b-gpt2, ptb, wikitext2, ...
    "lm1b_gpt2": zero_shot("test", lm1b_detokenize, reader="lm1b"),
    "ptb": zero_shot("validation", ptb_detokenize, hub=("ptb_text_only", None), column="sentence"),
    "wikitext2": zero_shot(
        "validation", wikitext_detokenize, hub=("wikitext", "wikitext-2-raw-v1")
    ),
    "wikitext103": zero_shot(
        "validation", wikitext_detokenize, hub=("wikitext", "wikitext-103-raw-v1")
    ),
    "lambada": zero_shot("all of lambada_test.jsonl", lambada_detokenize, reader="lambada"),
    "ag_news": zero_shot("test", None, hub=("ag_news", None)),
    "pubmed": zero_shot(
        "validation",
        scientific_papers_detokenize,
        hub=("scientific_papers", "pubmed"),
        column="article",
    ),
    "arxiv": zero_shot(
        "validation",
        scientific_papers_detokenize,
        hub=("scientific_papers", "arxiv"),
        column="article",
    ),
}


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
        if isinstance(enc, WordPiece):
            (out / ".vocab.txt.tmp").write_text("\n".join(enc.vocab) + "\n", encoding="utf-8")
            moves["vocab"] = (out / ".vocab.txt.tmp", "vocab.txt")
            meta["vocab_file"] = "vocab.txt"
        finish(out, moves, meta)
        return meta
    finally:
        for path in [stream_path, out / ".vocab.txt.tmp", *tmp.values()]:
            path.unlink(missing_ok=True)


def paper_tokenizer(dataset, protocol, tokenizer, download_dir):
    """The tokenizer a paper dataset is made with: gpt2, or bert-base-uncased from --tokenizer's
    vocab.txt (else the one downloaded before into download_dir, else downloaded now)."""
    if protocol.tokenizer == "gpt2":
        if tokenizer not in (None, "gpt2"):
            raise PrepareError(f"--dataset={dataset} is tokenized with gpt2, as in the paper")
        return get_tokenizer("gpt2")
    if tokenizer in (None, "bert-base-uncased"):
        instead = "pass its path as --tokenizer=PATH/vocab.txt"
        vocab = download(BERT_VOCAB_URL, download_dir / "vocab.txt", instead)
    else:
        vocab = Path(tokenizer)
    return get_tokenizer("bert-base-uncased", vocab)


def prepare_paper(dataset, out, tokenizer, raw_dir, block_size, val_docs, shards):
    """Build data/NAME from one of the paper's datasets, as its Protocol says."""
    protocol = PROTOCOLS[dataset]
    download_dir = out / "raw"
    if raw_dir is not None:
        raw_dir = Path(raw_dir)
        if not raw_dir.exists():
            raise PrepareError(f"--raw_dir={raw_dir}: no such file or folder")
    enc = paper_tokenizer(dataset, protocol, tokenizer, download_dir)
    layout = {
        "block_size": block_size or protocol.block_size,
        "bos": None,
        "eos": None,
        "doc_eos": None,
        "group_docs": GROUP_DOCS,
        "shards": shards or 1,
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
    }
    train_texts = []
    val_tail = None
    if protocol.reader == "openwebtext":
        val_tail = val_docs or OWT_VAL_DOCS
        meta["train_split"] = f"train[:-{val_tail}]"
        meta["val_split"] = f"train[-{val_tail}:]"
        if raw_dir is None:
            train_texts = openwebtext_documents(download_dir, fetch=True)
        else:
            train_texts = openwebtext_documents(openwebtext_tars(raw_dir), fetch=False)
        meta["source"] = f"openwebtext: the 21 urlsf_subsetNN.tar in {raw_dir or download_dir}"
        val_texts = None
    elif protocol.reader == "lm1b":
        release = lm1b_release(raw_dir, download_dir)
        order = "in archive order"
        if release.is_dir():
            order = "unpacked: files in name order"
        meta["source"] = f"lm1b: {release} ({order})"
        if protocol.train_split is not None:
            train_texts = lm1b_sentences(release, "train")
        val_texts = lm1b_sentences(release, "test")
    elif protocol.reader == "lambada":
        val_texts = lambada_texts(raw_dir, download_dir)
        meta["source"] = "lambada: " + LAMBADA_URL
        if raw_dir is not None:
            meta["source"] = f"lambada: {raw_dir}"
    else:
        val_texts = hub_texts(dataset, protocol.hub, protocol.val_split, protocol.column, raw_dir)
        path, config = protocol.hub
        meta["source"] = f"{dataset}: datasets.load_dataset({path!r}, {config!r})"
        if raw_dir is not None:
            meta["source"] = f"{dataset}: {raw_dir} (save_to_disk)"
    detokenize = protocol.detokenizer
    if detokenize is not None:
        meta["detokenizer"] = detokenize.__name__
        train_texts = map(detokenize, train_texts)
        val_texts = map(detokenize, val_texts)
    return write_windowed(out, enc, layout, train_texts, val_texts, val_tail, meta)


def check_options(dataset, local, val_fraction, block_size, val_docs, shards, raw_dir):
    """One line for a flag that does not apply to the dataset, or a value out of range."""
    paper_only = {
        "--raw_dir": raw_dir,
        "--block_size": block_size,
        "--val_docs": val_docs,
        "--shards": shards,
    }
    if local:
        for flag, value in paper_only.items():
            if value is not None:
                raise PrepareError(
                    f"{flag} is for the paper's datasets (--dataset=openwebtext, lm1b, ...), "
                    "not for local text"
                )
        if val_fraction is not None and not 0 < val_fraction < 0.5:
            raise PrepareError(f"--val_fraction must lie in (0, 0.5), got {val_fraction}")
        return
    if val_fraction is not None:
        raise PrepareError(
            "--val_fraction is for local text: openwebtext holds out its last --val_docs "
            "documents, the other datasets have the splits the paper uses"
        )
    if val_docs is not None and dataset != "openwebtext":
        raise PrepareError("--val_docs is for --dataset=openwebtext")
    if val_docs is not None and val_docs < 1:
        raise PrepareError(f"--val_docs must be at least 1, got {val_docs}")
    if shards is not None and shards < 1:
        raise PrepareError(f"--shards must be at least 1, got {shards}")
    smallest = 2
    if PROTOCOLS[dataset].edges:
        smallest = 3
    if block_size is not None and block_size < smallest:
        raise PrepareError(f"--block_size must be at least {smallest} here, got {block_size}")


def prepare(
    dataset="python_prose",
    inputs=None,
    name=None,
    tokenizer=None,
    val_fraction=None,
    overwrite=False,
    data_dir=None,
    raw_dir=None,
    block_size=None,
    val_docs=None,
    shards=None,
):
    """Build data/NAME -> (path, metadata). After a PrepareError no folder it made is left
    (finished downloads are)."""
    if inputs and not name:
        raise PrepareError("--input needs --name NAME (the dataset is written to data/NAME)")
    local = bool(inputs) or dataset == "python_prose"
    if not local and dataset not in PROTOCOLS:
        raise PrepareError(
            f"unknown dataset {dataset!r}: use python_prose, {', '.join(PROTOCOLS)} "
            "(or --input ... --name)"
        )
    check_options(dataset, local, val_fraction, block_size, val_docs, shards, raw_dir)
    out = dataset_dir(name or dataset, data_dir)
    existed = out.exists()
    if (out / "meta.json").exists() and not overwrite:
        raise PrepareError(
            f"{out} already holds a dataset: pass --overwrite to replace it, or pick another --name"
        )
    try:
        if not local:
            meta = prepare_paper(dataset, out, tokenizer, raw_dir, block_size, val_docs, shards)
            return out, meta
        if tokenizer not in (None, "bytes", "gpt2"):
            raise PrepareError(f"unknown tokenizer {tokenizer!r} for local text: use bytes or gpt2")
        # the tokenizer is checked first: fail at once, before anything is read
        enc = get_tokenizer(tokenizer or "bytes")
        if inputs:
            # read every file first: fail before writing anything
            texts = [read_text(p) for p in inputs]
            # a document per paragraph
            docs = [p for t in texts for p in re.split(r"\n\s*\n", t) if p.strip()]
            source = "files: " + ", ".join(map(str, inputs))
        else:
            docs = python_prose()
            source = dataset
        if val_fraction is None:
            val_fraction = 0.05
        return out, write_dataset(docs, out, enc, source, val_fraction)
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


def windows(tokens, block_size):
    """The whole windows of block_size tokens of a split, as an (n, block_size) view: for a
    windowed dataset (meta.json has "windows") exactly the authors' chunks; for a stream,
    non-overlapping windows from offset 0, the remainder dropped."""
    n = len(tokens) // block_size
    return tokens[: n * block_size].reshape(n, block_size)


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
            "train.bin): the paper trains on openwebtext and evaluates on it zero-shot"
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


# ----------------------------------------------------------------------------- the command line


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line and exit status 2."""

    def error(self, message):
        print(f"data/prepare.py: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


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


def main(argv=None):
    p = OneLineParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument(
        "--dataset",
        default="python_prose",
        help=f"python_prose (default, offline), {', '.join(PROTOCOLS)}",
    )
    p.add_argument(
        "--input", nargs="+", metavar="FILE", help="local UTF-8 text files instead of --dataset"
    )
    p.add_argument("--name", help="the dataset folder under data/ (default: the dataset's name)")
    p.add_argument(
        "--tokenizer",
        help="local text: bytes (default) or gpt2; lm1b: the path of bert-base-uncased's vocab.txt "
        "(default: downloaded)",
    )
    p.add_argument(
        "--val_fraction", type=float, help="local text: share of documents held out (default 0.05)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing data/NAME")
    p.add_argument(
        "--data_dir", help="where the dataset folders go (default: $ESO_DATA_DIR, else data/)"
    )
    p.add_argument(
        "--raw_dir",
        help="a local copy instead of a download: openwebtext: the folder of its 21 "
        "urlsf_subsetNN.tar; lm1b, lm1b_gpt2: the release's .tar.gz (read in archive order, as "
        "Hugging Face's lm1b.py does) or its folder, or the unpacked release (read in file-name "
        "order); lambada: lambada_test.jsonl or its folder; the others: a folder written by "
        "datasets' save_to_disk",
    )
    p.add_argument(
        "--block_size",
        type=int,
        help="window length L (default: 1024; lm1b: 128)",
    )
    p.add_argument(
        "--val_docs",
        type=int,
        help="openwebtext: its last N documents are the validation set (default 100000)",
    )
    p.add_argument(
        "--shards",
        type=int,
        help="cut each split into N contiguous shards before grouping in batches of 1,000 "
        "documents (default 1); the authors ran map with num_proc = their machine's CPU count",
    )
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        out, meta = prepare(
            args.dataset,
            args.input,
            args.name,
            args.tokenizer,
            args.val_fraction,
            args.overwrite,
            data_dir=args.data_dir,
            raw_dir=args.raw_dir,
            block_size=args.block_size,
            val_docs=args.val_docs,
            shards=args.shards,
        )
    except KeyboardInterrupt:
        # str() of a KeyboardInterrupt is empty: say it in words
        print("data/prepare.py: error: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    except PrepareError as e:
        print(f"data/prepare.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(summary(out, meta, time.time() - t0))


if __name__ == "__main__":
    main()
