"""
OpenWebText as the paper's runs use it (data=openwebtext-split in the authors' scripts): the last
100,000 documents are the validation set, GPT-2 BPE, an EOS after every document, windows of
L = 1024 with no BOS or EOS at their edges.

  python data/prepare.py --dataset=openwebtext                    # downloads the 21 tars, 13 GB
  python data/prepare.py --dataset=openwebtext --raw_dir=DIR      # or reads them from DIR

The documents come in the order of Hugging Face's openwebtext.py (the loading script that
load_dataset('openwebtext') runs), so that train[-100000:] holds the same documents as theirs.
"""

import lzma
import re
import tarfile

from data import common, wrapping
from data.common import PrepareError
from data.writing import archive_files, download

OWT_URL = "https://huggingface.co/datasets/Skylion007/openwebtext/resolve/main/subsets/urlsf_subset{:02d}.tar"


OWT_SUBSETS = 21


OWT_VAL_DOCS = 100_000
# +data.insert_train_special=False, +data.insert_valid_special=False
PROTOCOL = wrapping.Protocol(
    tokenizer="gpt2",
    block_size=1024,
    edges=False,
    doc_eos=True,
    train_split="train[:-100000]",
    val_split="train[-100000:]",
)


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


def add_arguments(parser):
    wrapping.add_arguments(parser, "the folder of OpenWebText's 21 urlsf_subsetNN.tar")
    parser.add_argument(
        "--val_docs",
        type=int,
        default=OWT_VAL_DOCS,
        help=f"its last N documents are the validation set (default {OWT_VAL_DOCS:,})",
    )


def prepare(name, out, args):
    """Build out/ from OpenWebText's tars (downloaded into out/raw without --raw_dir)."""
    wrapping.check_arguments(PROTOCOL, args)
    if args.val_docs < 1:
        raise PrepareError(f"--val_docs must be at least 1, got {args.val_docs}")
    enc = common.get_tokenizer("gpt2")
    where = wrapping.raw_dir(args)
    if where is None:
        where = out / "raw"
        documents = openwebtext_documents(where, fetch=True)
    else:
        documents = openwebtext_documents(openwebtext_tars(where), fetch=False)
    meta = {
        "train_split": f"train[:-{args.val_docs}]",
        "val_split": f"train[-{args.val_docs}:]",
        "source": f"openwebtext: the 21 urlsf_subsetNN.tar in {where}",
    }
    return wrapping.wrap(out, PROTOCOL, enc, documents, None, meta, args, val_tail=args.val_docs)
