"""
Prepare a dataset into data/NAME/{train.bin, val.bin, meta.json} (or $ESO_DATA_DIR/NAME).

  python data/prepare.py                                  # the offline default corpus, python_prose
  python data/prepare.py --input a.txt b.txt --name mine  # local UTF-8 text, a document a paragraph
  python data/prepare.py --dataset=openwebtext            # one of the paper's datasets
  python data/prepare.py --dataset=lm1b --help            # the flags of that dataset's recipe

Each dataset's recipe is one file, found by the dataset's name:
  data/python_prose/prepare.py  python_prose, the default (train.py prepares it on first use)
  data/openwebtext/prepare.py   openwebtext, the paper's training set
  data/lm1b/prepare.py          lm1b, and lm1b_gpt2 (its test split in GPT-2 BPE, for Table 5)
  data/zero_shot/prepare.py     ptb, wikitext2, wikitext103, lambada, ag_news, pubmed, arxiv
They stand on data/common.py (paths, tokenizers) and data/writing.py (writing the files), and the
paper's datasets also on data/wrapping.py (the authors' cutting into windows). Local text
(--input) is a stream of documents, each followed by a blank line (bytes) or <|endoftext|> (gpt2).
Files are written under temporary names, meta.json last: an interrupted run leaves nothing
half-written.
"""

import argparse
import functools
import importlib
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as `python data/prepare.py`, Python puts this folder first on its path; the data
    # package's modules are imported from the folder above it, as `python -m data.prepare` does.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from data import common, writing  # noqa: E402
from data.common import PrepareError  # noqa: E402

# dataset name -> (its recipe's module, what it is)
RECIPES = {
    "python_prose": ("data.python_prose.prepare", "the offline default: CPython's documentation"),
    "openwebtext": ("data.openwebtext.prepare", "OpenWebText, the paper's training set (13 GB)"),
    "lm1b": ("data.lm1b.prepare", "LM1B in bert-base-uncased WordPiece (needs tokenizers)"),
    "lm1b_gpt2": ("data.lm1b.prepare", "LM1B's test split in GPT-2 BPE (Table 5)"),
}
for name in ("ptb", "wikitext2", "wikitext103", "lambada", "ag_news", "pubmed", "arxiv"):
    RECIPES[name] = ("data.zero_shot.prepare", "a zero-shot set of Table 5 (needs datasets)")


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line and exit status 2."""

    def error(self, message):
        print(f"data/prepare.py: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


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


def prepare_local(out, inputs, args):
    """Build out/ from local text files, a document a paragraph."""
    # every file is read first: fail before writing anything
    texts = [read_text(path) for path in inputs]
    docs = [p for text in texts for p in re.split(r"\n\s*\n", text) if p.strip()]
    enc = common.get_tokenizer(args.tokenizer)
    source = "files: " + ", ".join(map(str, inputs))
    return writing.write_dataset(docs, out, enc, source, args.val_fraction)


def parser_for(dataset, local, recipe):
    """The command line of one dataset: the shared flags, then its recipe's."""
    names = "\n".join(f"  {name:<13} {what}" for name, (_, what) in RECIPES.items())
    p = OneLineParser(
        description=__doc__,
        epilog=f"datasets (--dataset=NAME; --dataset=NAME --help lists its flags):\n{names}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--dataset", default="python_prose", help="which dataset (see below)")
    p.add_argument("--input", nargs="+", metavar="FILE", help="local UTF-8 text files instead")
    p.add_argument("--name", help="the dataset folder under data/ (default: the dataset's name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data/NAME")
    p.add_argument(
        "--data_dir", help="where the dataset folders go (default: $ESO_DATA_DIR, else data/)"
    )
    if local:
        recipe.add_local_arguments(p.add_argument_group("flags of local text"))
    else:
        recipe.add_arguments(p.add_argument_group(f"flags of {dataset}"))
    return p


def prepare(argv):
    """(out, metadata) of the dataset that the command line argv asks for, or a PrepareError."""
    # which recipe: read --dataset and --input first, then parse with that recipe's flags
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--dataset", default="python_prose")
    first.add_argument("--input", nargs="+")
    known, _ = first.parse_known_args(argv)
    local = bool(known.input)
    dataset = known.dataset
    if local:
        dataset = "python_prose"  # local text is prepared as the default corpus is
    if dataset not in RECIPES:
        names = ", ".join(RECIPES)
        raise PrepareError(f"unknown dataset {dataset!r}: use one of {names}, or --input")
    recipe = importlib.import_module(RECIPES[dataset][0])
    args = parser_for(dataset, local, recipe).parse_args(argv)
    if local and not args.name:
        raise PrepareError("--input needs --name NAME (the dataset is written to data/NAME)")
    val_fraction = getattr(args, "val_fraction", None)
    if val_fraction is not None and not 0 < val_fraction < 0.5:
        raise PrepareError(f"--val_fraction must lie in (0, 0.5), got {val_fraction}")
    if local:
        build = functools.partial(prepare_local, inputs=args.input, args=args)
    else:
        build = functools.partial(recipe.prepare, args.dataset, args=args)
    name = args.name or args.dataset
    return writing.prepare(name, build, args.overwrite, args.data_dir)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    t0 = time.time()
    try:
        out, meta = prepare(argv)
    except KeyboardInterrupt:
        # str() of a KeyboardInterrupt is empty: say it in words
        print("data/prepare.py: error: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    except PrepareError as e:
        print(f"data/prepare.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(writing.summary(out, meta, time.time() - t0))


if __name__ == "__main__":
    main()
