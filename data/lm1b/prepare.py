"""
LM1B, the One Billion Word benchmark, as the paper's runs use it (data=lm1b-wrap): every sentence
detokenized, tokenized by bert-base-uncased's WordPiece, followed by [CLS], and the stream cut into
windows of [CLS] + 126 tokens + [CLS] (L = 128); the test split is the validation set. Also
lm1b_gpt2, its test split in GPT-2 BPE, one of the zero-shot sets of Table 5.

  python data/prepare.py --dataset=lm1b            # downloads the release (1.8 GB) and vocab.txt
  python data/prepare.py --dataset=lm1b --raw_dir=DIR --tokenizer=PATH/vocab.txt
  python data/prepare.py --dataset=lm1b_gpt2

The sentences come in the order of Hugging Face's lm1b.py (the loading script load_dataset('lm1b')
runs): the files of each split in the release's archive order.
"""

import fnmatch
import re
import tarfile
from pathlib import Path

from data import wrapping
from data.common import PrepareError
from data.writing import archive_files, download

LM1B_ROOT = "1-billion-word-language-modeling-benchmark-r13output"


LM1B_URL = f"http://www.statmt.org/lm-benchmark/{LM1B_ROOT}.tar.gz"


LM1B_FILES = {
    "train": "training-monolingual.tokenized.shuffled/news.en-*",
    "test": "heldout-monolingual.tokenized.shuffled/news.en.heldout-*",
}


# ----------------------------------------------------------------------------- detokenizing
# Each detokenizer undoes the tokenization artefacts of one corpus, rule by rule in the order of
# the authors' function of the same purpose in dataloader.py, quirks included: the datasets are
# the ones the paper's numbers were measured on. A rule is (old, new): a string is replaced
# everywhere, a compiled pattern through re.sub.


def apply_rules(text, rules):
    for old, new in rules:
        if isinstance(old, re.Pattern):
            text = old.sub(new, text)
        else:
            text = text.replace(old, new)
    return text


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


PROTOCOLS = {
    # data=lm1b-wrap, model.length=128: [CLS] sentence [CLS] sentence ... cut into [CLS] 126 [CLS]
    "lm1b": wrapping.Protocol(
        tokenizer="bert-base-uncased",
        block_size=128,
        edges=True,
        doc_eos=True,
        train_split="train",
        val_split="test",
        detokenizer=lm1b_detokenize,
    ),
    # eval_zero_shot.sh --data lm1b-gpt2
    "lm1b_gpt2": wrapping.zero_shot("test", lm1b_detokenize),
}


# ----------------------------------------------------------------------------- reading the release


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


def add_arguments(parser):
    wrapping.add_arguments(
        parser,
        "the release's .tar.gz (read in archive order, as Hugging Face's lm1b.py does) or its "
        "folder, or the unpacked release (read in file-name order)",
    )
    parser.add_argument(
        "--tokenizer",
        help="lm1b: the path of bert-base-uncased's vocab.txt (default: downloaded)",
    )


def prepare(name, out, args):
    """Build out/ from LM1B's release (downloaded into out/raw without --raw_dir)."""
    protocol = PROTOCOLS[name]
    wrapping.check_arguments(protocol, args)
    if args.tokenizer not in (None, "gpt2") and name != "lm1b":
        raise PrepareError(f"--dataset={name} is tokenized with gpt2, as in the paper")
    download_dir = out / "raw"
    raw_dir = wrapping.raw_dir(args)
    enc = wrapping.paper_tokenizer(protocol, args.tokenizer, download_dir)
    release = lm1b_release(raw_dir, download_dir)
    order = "in archive order"
    if release.is_dir():
        order = "unpacked: files in name order"
    meta = {"source": f"lm1b: {release} ({order})"}
    train_texts = []
    if protocol.train_split is not None:
        train_texts = lm1b_sentences(release, "train")
    val_texts = lm1b_sentences(release, "test")
    return wrapping.wrap(out, protocol, enc, train_texts, val_texts, meta, args)
