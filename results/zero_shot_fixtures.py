"""
Local copies of the zero-shot sets of the paper's Table 5, in each source's own layout and with
its artefacts, made from English text of this machine: the license texts of
/usr/share/common-licenses (or the files given). None of that text is in python_prose, so a model
trained on it scores them zero-shot. These are fixtures for the path, not the paper's data.

  python -m results.zero_shot_fixtures OUT [FILE ...]     # from the repository root

Writes, for `python data/prepare.py --dataset=NAME --raw_dir=OUT/NAME`:
  ptb/          save_to_disk, validation split, column "sentence": lower case, split words,
                N for numbers, <unk> for long words (Penn Treebank's conventions)
  wikitext2/    save_to_disk, validation split, column "text": " = Heading = ", " @-@ "
  wikitext103/  the same text, as WikiText-103 is a superset in the same format
  lm1b_gpt2/    the release's folder layout, heldout files of split sentences (a token train file)
  lambada/      lambada_test.jsonl, passages with curly quotes
  ag_news/      save_to_disk, test split, columns "text" and "label"
  pubmed/, arxiv/  save_to_disk, validation split, columns "article" and "abstract"
"""

import json
import re
import sys
from pathlib import Path

LICENSES = Path("/usr/share/common-licenses")
LM1B_ROOT = "1-billion-word-language-modeling-benchmark-r13output"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
WORD_OR_MARK = re.compile(r"\w+|[^\w\s]")


def paragraphs(files):
    """The paragraphs of the files, each on one line, short ones (headings, lists) left out."""
    out = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for block in re.split(r"\n\s*\n", text):
            line = " ".join(block.split())
            if len(line) >= 200:
                out.append(line)
    return out


def sentences(paragraph):
    return [s for s in SENTENCE_END.split(paragraph) if len(s) > 20]


def split_words(sentence):
    """Words and punctuation marks apart, as the tokenized corpora have them."""
    return WORD_OR_MARK.findall(sentence)


def ptb_line(sentence):
    words = []
    for word in split_words(sentence.lower()):
        if word.isdigit():
            words.append("N")
        elif len(word) > 11:
            words.append("<unk>")
        elif word not in '.,;:!?"()':  # PTB's text-only release keeps no punctuation but "'"
            words.append(word)
    return " " + " ".join(words) + " "


def wikitext_line(paragraph):
    text = " ".join(split_words(paragraph))
    text = text.replace(" - ", " @-@ ")
    return " " + text + " \n"


def lm1b_line(sentence):
    return " ".join(split_words(sentence))


def curly(paragraph):
    """Straight double quotes as the curly ones LAMBADA's passages have."""
    out = []
    opening = True
    for ch in paragraph:
        if ch == '"':
            out.append("\u201c" if opening else "\u201d")
            opening = not opening
        else:
            out.append(ch)
    return "".join(out)


def save(folder, split, table):
    import datasets

    datasets.DatasetDict({split: datasets.Dataset.from_dict(table)}).save_to_disk(str(folder))


def main(out, files):
    out = Path(out)
    files = sorted(Path(f) for f in files) or sorted(p for p in LICENSES.iterdir() if p.is_file())
    paras = paragraphs(files)
    if len(paras) < 50:
        sys.exit("results/zero_shot_fixtures.py: error: fewer than 50 paragraphs of text to use")
    every = [s for p in paras for s in sentences(p)]
    ptb = [ptb_line(s) for s in every]
    save(out / "ptb", "validation", {"sentence": ptb})
    wiki = []
    for i, p in enumerate(paras):
        if i % 8 == 0:
            wiki += ["", f" = Section {i // 8 + 1} = \n", ""]
        wiki.append(wikitext_line(p))
    for name in ("wikitext2", "wikitext103"):
        save(out / name, "validation", {"text": wiki})
    release = out / "lm1b_gpt2" / LM1B_ROOT
    heldout = release / "heldout-monolingual.tokenized.shuffled"
    heldout.mkdir(parents=True, exist_ok=True)
    train = release / "training-monolingual.tokenized.shuffled"  # not read: the test split is
    train.mkdir(exist_ok=True)
    (train / "news.en-00001-of-00100").write_text("unused .\n")
    half = len(every) // 2
    for k, part in enumerate((every[:half], every[half:])):
        lines = [lm1b_line(s) for s in part]
        (heldout / f"news.en.heldout-0000{k}-of-00050").write_text("\n".join(lines) + "\n")
    (out / "lambada").mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": curly(p)}) for p in paras]
    (out / "lambada" / "lambada_test.jsonl").write_text("\n".join(lines) + "\n")
    news = [f"{s.split(',')[0][:60]} (Licenses) {s}" for s in every]
    save(out / "ag_news", "test", {"text": news, "label": [i % 4 for i in range(len(news))]})
    articles = []
    for i in range(0, len(paras), 6):
        articles.append("\n".join(wikitext_line(p).strip() for p in paras[i : i + 6]))
    abstracts = [a[:200] for a in articles]
    for name in ("pubmed", "arxiv"):
        save(out / name, "validation", {"article": articles, "abstract": abstracts})
    print(f"{out}: {len(paras)} paragraphs, {len(every)} sentences from {len(files)} files")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
