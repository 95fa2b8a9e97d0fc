"""
The offline default corpus: the English prose of CPython's own documentation, byte-level.

  python data/prepare.py                          # what train.py also runs on first use
  python data/prepare.py --tokenizer=gpt2 --name=prose_gpt2

It needs nothing but Python: the language reference (pydoc_data.topics) and the standard
library's longer docstrings (read with ast; nothing is imported). Document i (a paragraph) goes to
val.bin when i = k - 1 mod k, k = round(1 / val_fraction).
"""

import ast
import pydoc_data.topics
import re
import sysconfig
from pathlib import Path

from data import common
from data.writing import write_dataset


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


def add_arguments(parser):
    add_local_arguments(parser)


def add_local_arguments(parser):
    """The flags of local text: the default corpus's, and those of --input files."""
    parser.add_argument(
        "--tokenizer", default="bytes", choices=["bytes", "gpt2"], help="default: bytes"
    )
    parser.add_argument(
        "--val_fraction", type=float, default=0.05, help="share of documents held out (0.05)"
    )


def prepare(name, out, args=None):
    """Build out/ from the corpus (python_prose), by default byte-level."""
    tokenizer = "bytes"
    val_fraction = 0.05
    if args is not None:
        tokenizer = args.tokenizer
        val_fraction = args.val_fraction
    enc = common.get_tokenizer(tokenizer)
    return write_dataset(python_prose(), out, enc, "python_prose", val_fraction)
