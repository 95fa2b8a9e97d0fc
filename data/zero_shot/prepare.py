"""
The zero-shot evaluation sets of the paper's Table 5, as the authors prepare them
(scripts/esolm/eval_zero_shot.sh): each text detokenized, GPT-2 BPE, no EOS after documents, and
windows of L = 1024 between two <|endoftext|>; val.bin only (the OpenWebText models are scored on
them, never trained). LM1B's test split in GPT-2 BPE (lm1b_gpt2) is prepared by data/lm1b/.

  python data/prepare.py --dataset=ptb           # also wikitext2, wikitext103, lambada, ag_news,
                                                 # pubmed, arxiv (needs the datasets package)
  python data/prepare.py --dataset=ptb --raw_dir=DIR   # a copy saved with save_to_disk
"""

import json
import re

from data import common, wrapping
from data.common import PrepareError, import_optional
from data.lm1b.prepare import apply_rules, lm1b_detokenize
from data.writing import download

LAMBADA_URL = "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"


# ----------------------------------------------------------------------------- detokenizing
# As data/lm1b/'s: the authors' functions rule by rule, quirks included.


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


# Each set: its protocol, and where its texts come from: (path, config) of datasets.load_dataset
# and the column, or None for LAMBADA (OpenAI's lambada_test.jsonl).
SETS = {
    "ptb": (wrapping.zero_shot("validation", ptb_detokenize), ("ptb_text_only", None), "sentence"),
    "wikitext2": (
        wrapping.zero_shot("validation", wikitext_detokenize),
        ("wikitext", "wikitext-2-raw-v1"),
        "text",
    ),
    "wikitext103": (
        wrapping.zero_shot("validation", wikitext_detokenize),
        ("wikitext", "wikitext-103-raw-v1"),
        "text",
    ),
    "lambada": (
        wrapping.zero_shot("all of lambada_test.jsonl", lambada_detokenize),
        None,
        "text",
    ),
    "ag_news": (wrapping.zero_shot("test", None), ("ag_news", None), "text"),
    "pubmed": (
        wrapping.zero_shot("validation", scientific_papers_detokenize),
        ("scientific_papers", "pubmed"),
        "article",
    ),
    "arxiv": (
        wrapping.zero_shot("validation", scientific_papers_detokenize),
        ("scientific_papers", "arxiv"),
        "article",
    ),
}


# ----------------------------------------------------------------------------- reading the sources


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


def add_arguments(parser):
    wrapping.add_arguments(
        parser,
        "lambada: lambada_test.jsonl or its folder; the others: a folder written by datasets' "
        "save_to_disk",
    )


def prepare(name, out, args):
    """Build out/ (val.bin only) from the set's source."""
    protocol, hub, column = SETS[name]
    wrapping.check_arguments(protocol, args)
    raw_dir = wrapping.raw_dir(args)
    enc = common.get_tokenizer("gpt2")
    if hub is None:
        texts = lambada_texts(raw_dir, out / "raw")
        source = f"lambada: {raw_dir or LAMBADA_URL}"
    else:
        texts = hub_texts(name, hub, protocol.val_split, column, raw_dir)
        path, config = hub
        source = f"{name}: datasets.load_dataset({path!r}, {config!r})"
        if raw_dir is not None:
            source = f"{name}: {raw_dir} (save_to_disk)"
    return wrapping.wrap(out, protocol, enc, [], texts, {"source": source}, args)
