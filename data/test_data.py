"""Tests of the recipes of the paper's datasets (data/openwebtext, data/lm1b, data/zero_shot and
their shared data/wrapping.py): each prepared as the authors' dataloader.py prepares it, from local
copies in the sources' own layouts that the tests build. `pytest data`; the tokenizers and datasets
packages are needed where a test says so."""

import io
import json
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from data import common, prepare, wordpiece, wrapping
from data.lm1b import prepare as lm1b
from data.zero_shot import prepare as zero_shot

ROOT = Path(__file__).resolve().parent.parent
EOT = 256  # the stand-in GPT-2's <|endoftext|> (the gpt2 fixture's)


EOT = 256  # the stand-in GPT-2's <|endoftext|>


LM1B_ROOT = lm1b.LM1B_ROOT


def bins(name):
    folder = common.dataset_dir(name)
    meta = json.loads((folder / "meta.json").read_text())
    train = np.fromfile(folder / "train.bin", dtype=meta["dtype"]).astype(np.int64)
    val = np.fromfile(folder / "val.bin", dtype=meta["dtype"]).astype(np.int64)
    return train, val, meta


def cut(tokens, L, edge=None):
    """Reference wrapping of one batch: chunks of L (L - 2 between two edge tokens), the rest
    dropped."""
    inner = L
    if edge is not None:
        inner = L - 2
    n = len(tokens) // inner
    rows = np.array(tokens[: n * inner], dtype=np.int64).reshape(n, inner)
    if edge is not None:
        column = np.full((n, 1), edge)
        rows = np.concatenate([column, rows, column], axis=1)
    return rows.reshape(-1)


def add_member(tar, name, data=None):
    """A file (data: bytes) or, without data, a folder in an open tar."""
    info = tarfile.TarInfo(name)
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        return
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    "text, expected",
    [
        ('He said , " it \'s fine . "', 'He said, "it\'s fine."'),
        ("Visit http : / / www.x.com now !", "Visit http://www.x.com now!"),
        ("Is it https : / / a.org / b ?", "Is it https://a.org/b?"),
        # the final " ." stays: the rule wants a word before it, and ")" is none
        ("It costs $ 5 ( about £ 3 ) .", "It costs $5 (about £3) ."),
        # n't is not LM1B's artefact: it stays apart
        ("Do n't go ? Yes ; no : maybe", "Do n't go? Yes; no: maybe"),
        # the same for "]": the end rules run before the bracket rules
        ("The ' Beatles ' played [ live ] .", "The 'Beatles' played [live] ."),
    ],
)
def test_lm1b_detokenize(data_dir, text, expected):
    assert lm1b.lm1b_detokenize(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (" The game @-@ play costs 1 @,@ 000 @.@ 5 . \n", " The game-play costs 1,000.5.\n"),
        (" = = Gameplay = = \n", " == Gameplay ==\n"),
        # " N " is read as " 1 " once, after " \n" lost its space: the N before it stays
        (' He said " hello " ( a [ b ] ) N \n', ' He said "hello" (a [b]) N\n'),
        (" N N N x", " 1 N 1 x"),
        # "s '" joins first; then the quote rule hugs "' farm /'" as if it were a quotation
        (" 5 ° C at Jones ' farm /' 5/", " 5°C at Jones'farm /'[0-9]/"),
    ],
)
def test_wikitext_detokenize(data_dir, text, expected):
    assert zero_shot.wikitext_detokenize(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (" no it was n't black monday ", " no it wasn't black monday "),
        (" the company 's $ N billion \\/ share ", " the company's $1 billion / share "),
        # ten passes: every N of a run becomes 1
        (" rose N N N N N points ", " rose 1 1 1 1 1 points "),
        (" <unk> said # N of the dogs ' bones ", " ? said #1 of the dogs' bones "),
    ],
)
def test_ptb_detokenize(data_dir, text, expected):
    assert zero_shot.ptb_detokenize(text) == expected


def test_lambada_and_scientific_papers_detokenize(data_dir):
    assert zero_shot.lambada_detokenize("“Hello,” she said.  ") == '\n"Hello," she said.'
    article = "the value @-@ based method ( see [ 1 ] ) , costs $ 5 ."
    expected = "the value-based method (see [1]), costs $5."
    assert zero_shot.scientific_papers_detokenize(article) == expected


def write_vocab(path):
    """A tiny bert-base-uncased-like vocab.txt: its special tokens at their ids (101 = [CLS]),
    punctuation, letters and ## letters (so any word can be spelled), and a few words."""
    pytest.importorskip("tokenizers")
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(".,'\"()$£?!:;/-[]%")
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    tokens += list(letters) + [f"##{c}" for c in letters]
    tokens += "he said it fine do go visit http www com now costs price alpha omega cafe".split()
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return tokens


def test_wordpiece_is_bert_base_uncased_on_a_tiny_vocabulary(data_dir, tmp_path):
    tokens = write_vocab(tmp_path / "vocab.txt")
    enc = common.get_tokenizer("bert-base-uncased", tmp_path / "vocab.txt")
    assert enc.eot_token == 101
    assert enc.n_vocab == len(tokens)

    def pieces(ids):
        return [tokens[i] for i in ids]

    assert pieces(enc.encode_ordinary("He's FINE.")) == ["he", "'", "s", "fine", "."]
    # accents stripped after lower case; an unknown word spelled with ## pieces
    assert pieces(enc.encode_ordinary("Café Zebu")) == ["cafe", "z", "##e", "##b", "##u"]
    assert pieces(enc.encode_ordinary("x" * 101)) == ["[UNK]"]
    # the special tokens are read as tokens only when allowed
    assert enc.encode_batch(["a [CLS] b"], allowed_special="all") == [
        [enc.encode_ordinary("a")[0], 101, enc.encode_ordinary("b")[0]]
    ]
    assert 101 not in enc.encode_ordinary("a [CLS] b")
    ids = enc.encode_ordinary("he ' s fine , do n't go ?")
    assert enc.decode([101, *ids, 101]) == "[CLS] he's fine, don't go? [CLS]"

    # the authors' tokenizer class on the same vocabulary (from_pretrained: a folder with vocab.txt,
    # the one way to give it a vocabulary that transformers 4 and 5 share)
    from transformers import BertTokenizer

    theirs = BertTokenizer.from_pretrained(str(tmp_path))
    texts = [
        'He said, "it\'s FINE." Ünïcode (naïve) $5 £3 http://www.x.com 中文 [CLS] [cls]',
        "Prices rose 5% to $12; omega:alpha / beta-gamma!",
        "  tabs\tand\nnewlines\u00a0and\u200bzero width",
    ]
    for text in texts:
        expected = theirs.encode(text, add_special_tokens=False)
        assert enc.encode_batch([text], allowed_special="all")[0] == expected, text


def test_a_vocabulary_without_bert_s_special_tokens_is_refused(data_dir, tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\na\n")
    with pytest.raises(common.PrepareError, match=r"has no \[CLS\]"):
        common.get_tokenizer("bert-base-uncased", tmp_path / "vocab.txt")


TRAIN_SENTENCES = {
    "news.en-00001-of-00100": ['He said , " it \'s fine . "', "Alpha costs $ 5 ."] * 40,
    "news.en-00002-of-00100": ["Visit http : / / www.x.com now !"] * 30,
}


TEST_SENTENCES = {
    "news.en.heldout-00000-of-00050": ["Omega ' s price ( now ) ?", "Do n't go !"] * 25,
    "news.en.heldout-00001-of-00050": ["  omega said it .  "] * 20,
}


def lm1b_release(folder):
    """A tiny LM1B release, unpacked, in the release's own folder layout (with a README and
    files that do not match the patterns)."""
    root = folder / LM1B_ROOT
    train = root / "training-monolingual.tokenized.shuffled"
    test = root / "heldout-monolingual.tokenized.shuffled"
    train.mkdir(parents=True)
    test.mkdir(parents=True)
    (root / "README").write_text("not a split")
    (train / "other.txt").write_text("not train")
    for directory, files in ((train, TRAIN_SENTENCES), (test, TEST_SENTENCES)):
        for name, lines in files.items():
            (directory / name).write_text("\n".join(lines) + "\n")
    return root


def lm1b_reference(files, enc):
    """The windows of one split by hand: each sentence detokenized, tokenized and followed by
    [CLS]; the whole (fewer than 1,000 sentences: one batch) cut into [CLS] + 126 + [CLS]."""
    stream = []
    for name in sorted(files):
        for line in files[name]:
            stream += enc.encode_ordinary(lm1b.lm1b_detokenize(line.strip())) + [101]
    return cut(stream, 128, edge=101)


def test_lm1b_is_wrapped_into_cls_windows_of_128(data_dir, tmp_path):
    write_vocab(tmp_path / "vocab.txt")
    root = lm1b_release(tmp_path / "raw")
    out, meta = prepare.prepare(
        ["--dataset=lm1b", f"--raw_dir={root.parent}", f"--tokenizer={tmp_path / 'vocab.txt'}"]
    )
    train, val, meta = bins("lm1b")
    enc = common.dataset_tokenizer("lm1b")
    assert np.array_equal(val, lm1b_reference(TEST_SENTENCES, enc))
    assert np.array_equal(train, lm1b_reference(TRAIN_SENTENCES, enc))
    windows = val.reshape(-1, 128)
    assert (windows[:, 0] == 101).all() and (windows[:, -1] == 101).all()
    assert "omega" in enc.decode(val) and "alpha" not in enc.decode(val)
    assert "alpha" in enc.decode(train) and "omega" not in enc.decode(train)
    assert meta["windows"] == {
        "block_size": 128,
        "bos": 101,
        "eos": 101,
        "doc_eos": 101,
        "group_docs": 1000,
        "shards": 1,
    }
    assert meta["eos"] == 101
    assert meta["tokenizer"] == "bert-base-uncased"
    assert meta["vocab_file"] == "vocab.txt"
    assert meta["val_split"] == "test"
    assert meta["eval_only"] is False
    assert (out / "vocab.txt").read_text() == (tmp_path / "vocab.txt").read_text()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_lm1b_reads_its_tar_gz_in_archive_order(data_dir, tmp_path):
    write_vocab(tmp_path / "vocab.txt")
    raw = tmp_path / "raw"
    raw.mkdir()
    # heldout-00001 before heldout-00000: the archive's order, not the names', is the order
    with tarfile.open(raw / f"{LM1B_ROOT}.tar.gz", "w:gz") as tar:
        add_member(tar, LM1B_ROOT)
        for name, lines in TRAIN_SENTENCES.items():
            data = ("\n".join(lines) + "\n").encode()
            add_member(tar, f"{LM1B_ROOT}/training-monolingual.tokenized.shuffled/{name}", data)
        for name in sorted(TEST_SENTENCES, reverse=True):
            data = ("\n".join(TEST_SENTENCES[name]) + "\n").encode()
            add_member(tar, f"{LM1B_ROOT}/heldout-monolingual.tokenized.shuffled/{name}", data)
            add_member(tar, f"{LM1B_ROOT}/heldout-monolingual.tokenized.shuffled/.{name}", b"x")
    out, meta = prepare.prepare(
        [
            "--dataset=lm1b",
            "--name=lm1b_tar",
            f"--raw_dir={raw}",
            f"--tokenizer={tmp_path / 'vocab.txt'}",
        ]
    )
    enc = common.dataset_tokenizer("lm1b_tar")
    stream = []
    for name in sorted(TEST_SENTENCES, reverse=True):
        for line in TEST_SENTENCES[name]:
            stream += enc.encode_ordinary(lm1b.lm1b_detokenize(line.strip())) + [101]
    assert np.array_equal(bins("lm1b_tar")[1], cut(stream, 128, edge=101))
    assert "archive order" in meta["source"]


def test_lm1b_offline_without_a_vocabulary_names_the_file_to_fetch(
    data_dir, tmp_path, monkeypatch, prepare_cli
):
    lm1b_release(tmp_path / "raw")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    args = ["--dataset=lm1b", f"--raw_dir={tmp_path / 'raw'}"]
    err = prepare_cli.refuses(args, wordpiece.BERT_VOCAB_URL)
    assert "--tokenizer=PATH/vocab.txt" in err
    assert not common.dataset_dir("lm1b").exists()


def owt_tars(folder):
    """OpenWebText's 21 urlsf_subsetNN.tar, as tars of .xz tars of .txt, with six documents in
    three subsets; hidden files, non-.xz and non-.txt members must be skipped."""
    docs = {
        0: [("b.txt", "first\n\n\n\n\ndoc  "), ("a.txt", "second doc")],
        5: [("c.txt", "third"), ("d.txt", "\n fourth \n")],
        20: [("e.txt", "fifth doc here"), ("f.txt", "sixth\n\n\nand last")],
    }
    folder.mkdir(parents=True)
    for i in range(21):
        with tarfile.open(folder / f"urlsf_subset{i:02d}.tar", "w") as outer:
            add_member(outer, "openwebtext")
            add_member(outer, "openwebtext/README", b"not an .xz")
            if i not in docs:
                continue
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w:xz") as inner:
                add_member(inner, "._hidden.txt", b"hidden")
                add_member(inner, "notes.json", b"{}")
                for name, text in docs[i]:
                    add_member(inner, name, text.encode())
            add_member(outer, f"openwebtext/urlsf_subset{i:02d}-1_data.xz", inner_bytes.getvalue())
            add_member(outer, "openwebtext/.hidden.xz", inner_bytes.getvalue())
    # as Hugging Face's openwebtext.py yields them, in archive order
    return ["first\n\ndoc", "second doc", "third", "fourth", "fifth doc here", "sixth\n\nand last"]


def test_openwebtext_holds_out_its_last_documents(data_dir, tmp_path, gpt2):
    texts = owt_tars(tmp_path / "owt")
    out, meta = prepare.prepare(
        ["--dataset=openwebtext", f"--raw_dir={tmp_path / 'owt'}", "--val_docs=2", "--block_size=8"]
    )
    train, val, meta = bins("openwebtext")

    def stream(docs):
        tokens = []
        for text in docs:
            tokens += list(text.encode()) + [EOT]
        return tokens

    # no special tokens at the window edges, EOS after every document, the remainder dropped
    assert np.array_equal(val, cut(stream(texts[-2:]), 8))
    assert np.array_equal(train, cut(stream(texts[:-2]), 8))
    assert meta["windows"]["bos"] is None and meta["windows"]["doc_eos"] == EOT
    assert meta["val_split"] == "train[-2:]"
    assert meta["train_split"] == "train[:-2]"
    assert meta["val_documents"] == 2 and meta["train_documents"] == 4
    assert meta["eos"] == EOT
    with pytest.raises(common.PrepareError, match="wrapped into windows of 8 tokens"):
        common.load_dataset("openwebtext", 1024)
    assert common.load_dataset("openwebtext", 8)[1].shape == (len(val),)


def test_openwebtext_refuses_a_raw_dir_without_its_21_tars(data_dir, tmp_path, gpt2, prepare_cli):
    owt_tars(tmp_path / "owt")
    (tmp_path / "owt" / "urlsf_subset07.tar").unlink()
    args = ["--dataset=openwebtext", f"--raw_dir={tmp_path / 'owt'}"]
    prepare_cli.refuses(args, "no urlsf_subset07.tar")
    prepare_cli.refuses(["--dataset=openwebtext", f"--raw_dir={tmp_path / 'nope'}"], "no such file")
    assert not common.dataset_dir("openwebtext").exists()


ZERO_SHOT = {
    # dataset: (split, column, detokenizer, the other columns)
    "ptb": ("validation", "sentence", zero_shot.ptb_detokenize, {}),
    "wikitext2": ("validation", "text", zero_shot.wikitext_detokenize, {}),
    "wikitext103": ("validation", "text", zero_shot.wikitext_detokenize, {}),
    "ag_news": ("test", "text", None, {"label": 1}),
    "pubmed": ("validation", "article", zero_shot.scientific_papers_detokenize, {"abstract": "x"}),
    "arxiv": ("validation", "article", zero_shot.scientific_papers_detokenize, {"abstract": "x"}),
}


ARTEFACTS = [
    " the company 's $ N billion \\/ share , said <unk> . \n",
    " = = Gameplay = = \n",
    " The game @-@ play costs 1 @,@ 000 ( see [ 1 ] ) . \n",
    'He said , " it \'s fine . " and left',
]


def save_dataset(folder, split, column, other_columns, texts):
    """A save_to_disk copy with the right split and columns, and a decoy split that must not be
    read."""
    datasets = pytest.importorskip("datasets")

    splits = {}
    for name, rows in ((split, texts), ("train", ["DECOY"] * 3)):
        table = {column: rows}
        for other, value in other_columns.items():
            table[other] = [value] * len(rows)
        splits[name] = datasets.Dataset.from_dict(table)
    datasets.DatasetDict(splits).save_to_disk(str(folder))


@pytest.mark.parametrize("dataset", list(ZERO_SHOT) + ["lambada"])
def test_zero_shot_sets_are_windows_between_two_eos(data_dir, tmp_path, gpt2, dataset):
    texts = [ARTEFACTS[i % len(ARTEFACTS)] + f" {i}" for i in range(60)]
    if dataset == "lambada":
        detokenize = zero_shot.lambada_detokenize
        raw = tmp_path / "lambada_test.jsonl"
        lines = [json.dumps({"text": "“" + text + "” he said"}) for text in texts]
        raw.write_text("\n".join(lines) + "\n\n")
        texts = ["“" + text + "” he said" for text in texts]
    else:
        split, column, detokenize, others = ZERO_SHOT[dataset]
        raw = tmp_path / "saved"
        save_dataset(raw, split, column, others, texts)
    out, meta = prepare.prepare([f"--dataset={dataset}", f"--raw_dir={raw}", "--block_size=64"])
    train, val, meta = bins(dataset)
    windows = val.reshape(-1, 64)
    # <|endoftext|> at both ends of every window, none between the documents
    assert (windows[:, 0] == EOT).all() and (windows[:, -1] == EOT).all()
    assert not (windows[:, 1:-1] == EOT).any()
    if detokenize is not None:
        texts = [detokenize(text) for text in texts]
    stream = list("".join(texts).encode())
    assert np.array_equal(val, cut(stream, 64, edge=EOT))
    assert len(train) == 0
    assert meta["eval_only"] is True
    assert meta["train_tokens"] == 0
    assert meta["detokenizer"] == (detokenize.__name__ if detokenize else None)
    assert meta["windows"]["doc_eos"] is None
    with pytest.raises(common.PrepareError, match="evaluation set"):
        common.load_dataset(dataset, 64, require_train=True)
    assert len(common.load_dataset(dataset, 64)[0]) == 0


def test_grouping_is_per_batch_of_1000_documents_within_each_shard(data_dir, tmp_path, gpt2):
    """2,500 documents: shards of 1,250, each grouped in batches of 1,000 and 250, the remainder
    of every batch dropped (not one cut over the whole stream)."""
    texts = [("abcdefg"[: 1 + i % 7]) + str(i % 10) for i in range(2500)]
    save_dataset(tmp_path / "saved", "validation", "sentence", {}, texts)

    def expected(shards):
        rows = []
        for shard in np.array_split(np.arange(2500), shards):
            for start in range(0, len(shard), 1000):
                batch = shard[start : start + 1000]
                tokens = list("".join(zero_shot.ptb_detokenize(texts[i]) for i in batch).encode())
                rows.append(cut(tokens, 16, edge=EOT))
        return np.concatenate(rows)

    for shards in (1, 2, 3):
        name = f"ptb{shards}"
        prepare.prepare(
            [
                "--dataset=ptb",
                f"--name={name}",
                f"--raw_dir={tmp_path / 'saved'}",
                "--block_size=16",
                f"--shards={shards}",
            ]
        )
        assert np.array_equal(bins(name)[1], expected(shards)), shards
    stream_wide = cut(list("".join(map(zero_shot.ptb_detokenize, texts)).encode()), 16, edge=EOT)
    assert not np.array_equal(bins("ptb1")[1], stream_wide)
    assert list(wrapping.map_batches(0, 2501, 3)) == [(0, 834), (834, 1668), (1668, 2501)]
    assert list(wrapping.map_batches(10, 2510, 1)) == [(10, 1010), (1010, 2010), (2010, 2510)]


def test_zero_shot_sources_refuse_bad_input_with_one_line(
    data_dir, tmp_path, gpt2, monkeypatch, prepare_cli
):
    save_dataset(tmp_path / "saved", "test", "text", {}, ["a b c"] * 50)
    prepare_cli.refuses(
        ["--dataset=ptb", f"--raw_dir={tmp_path / 'saved'}"], "no 'validation' split"
    )
    prepare_cli.refuses(
        ["--dataset=ag_news", f"--raw_dir={tmp_path / 'saved'}", "--val_docs=5"],
        "unrecognized arguments: --val_docs=5",
    )
    prepare_cli.refuses(["--dataset=lambada", f"--raw_dir={tmp_path}"], "no such file")
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    prepare_cli.refuses(["--dataset=wikitext103"], "--raw_dir=DIR")
    monkeypatch.setitem(sys.modules, "datasets", None)
    prepare_cli.refuses(
        ["--dataset=ptb", f"--raw_dir={tmp_path / 'saved'}"],
        "--dataset=ptb needs the `datasets` package: pip install datasets",
    )
    for name in ("ptb", "ag_news", "lambada", "wikitext103"):
        assert not common.dataset_dir(name).exists()


def test_a_missing_tokenizers_package_is_one_line(data_dir, tmp_path, monkeypatch, prepare_cli):
    write_vocab(tmp_path / "vocab.txt")
    root = lm1b_release(tmp_path / "raw")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    args = ["--dataset=lm1b", f"--raw_dir={root}", f"--tokenizer={tmp_path / 'vocab.txt'}"]
    prepare_cli.refuses(args, "needs the `tokenizers` package: pip install tokenizers")
    assert not common.dataset_dir("lm1b").exists()


def test_flags_that_do_not_apply_are_refused(data_dir, tmp_path, prepare_cli):
    """Each recipe takes its own flags: another's is refused in one line, and --help lists every
    dataset, and with --dataset the flags of its recipe."""
    src = tmp_path / "a.txt"
    src.write_text("x")
    cases = [
        (["--input", str(src), "--name", "a", "--block_size=8"], "unrecognized arguments"),
        (["--dataset=lm1b", "--val_fraction=0.1"], "unrecognized arguments: --val_fraction"),
        (["--dataset=lm1b", "--block_size=2"], "at least 3"),
        (["--dataset=openwebtext", "--val_docs=0"], "--val_docs must be at least 1"),
        (["--dataset=ptb", "--tokenizer=bytes"], "unrecognized arguments: --tokenizer"),
        (["--dataset=lm1b_gpt2", "--tokenizer=x/vocab.txt"], "tokenized with gpt2"),
        (["--dataset=c4"], "unknown dataset 'c4'"),
        (["--dataset=openwebtext", "--shards=0"], "--shards must be at least 1"),
    ]
    for args, message in cases:
        prepare_cli.refuses(args, message)
    code, out, _ = prepare_cli.run(["--help"])
    assert code == 0
    for dataset in prepare.RECIPES:
        assert f"  {dataset} " in out
    code, out, _ = prepare_cli.run(["--dataset=openwebtext", "--help"])
    assert code == 0 and "--val_docs" in out and "--val_fraction" not in out
