"""
Sample from a trained Eso-LM (out/ckpt.pt by default).

  python sample.py                                          # 3 samples with the defaults below
  python sample.py --prompt="The while statement"           # a prompt (or --prompt=FILE:path.txt)
  python sample.py --infill="The {{12}} statement {{40}}."  # fill the {{N}} spans of N tokens each
  python sample.py --show_steps=True --num_samples=1        # watch the canvas fill, step by step
  python sample.py --alpha_0=1 --steps=16                   # sampling-time alpha_0: 16 parallel steps

Prompting and infilling are one operation: known tokens stay exactly where they are and every
other position (the {{N}} spans, and whatever follows the text up to the model's length) is
generated. Prints the samples, then NFE (transformer forwards), seconds and tokens/s.
"""

import json
import math
import re
import sys
import time
from pathlib import Path

import torch

import eso
from train import UserError, cli, load_checkpoint, load_data, model_from_checkpoint, parse_config, pick_device

# -----------------------------------------------------------------------------
_BEFORE = set(globals())
out_dir = "out"  # folder of ckpt.pt (written by train.py)
num_samples = 3
steps = 128  # T of the diffusion schedule; NFE = non-empty diffusion steps + sequential tokens
alpha_0 = None  # sampling-time alpha_0 (None: the model's own)
top_p = 0.8  # nucleus sampling (1 = off)
temperature = 0.7  # below 1 sharpens the distribution (chosen by measurement, see README)
order = "random"  # random, or block (evenly spaced streams per diffusion step)
kv_cache = True  # False: the slow reference, a full forward per step (same tokens)
prompt = ""  # known text at the start; FILE:path reads it from a file
infill = ""  # a template: text with {{N}} where N tokens are to be generated
show_steps = False  # print the first sample's canvas after every step
judge = ""  # out_dir of an alpha_0 = 0 model: its NLL of the samples (generative perplexity) and their entropy
words = False  # also print the share of the samples' words found in the training corpus
quiet = False  # print only the summary line (and the JSON line with --judge)
seed = 1337
device = "auto"  # auto, cpu, cuda, cuda:N or mps
DEFAULTS = {k: v for k, v in globals().items() if k not in _BEFORE and k != "_BEFORE"}
SPAN = re.compile(r"\{\{(\d+)\}\}")


def get_tokenizer(name):
    sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
    from prepare import PrepareError
    from prepare import get_tokenizer as _get
    try:
        return _get(name)
    except PrepareError as e:
        raise UserError(str(e)) from None


def build_canvas(text, enc, L, mask_id, template):
    """(1, L) canvas: the text's tokens where known, mask_id elsewhere. In a template each
    {{N}} is N masked tokens; everything after the text up to L is masked too."""
    pieces = SPAN.split(text) if template else [text]
    ids = []
    for i, piece in enumerate(pieces):
        ids += [mask_id] * int(piece) if i % 2 else enc.encode_ordinary(piece)
    if len(ids) > L:
        raise UserError(f"the {'template' if template else 'prompt'} is {len(ids)} tokens, longer than the model's "
                        f"context of {L}: shorten it")
    if template and len(pieces) == 1:
        raise UserError("--infill has no {{N}} span: mark where N tokens go, e.g. 'The {{12}} statement'")
    return torch.tensor([ids + [mask_id] * (L - len(ids))])


def render(tokens, enc, mask_id, hole="_"):
    """Text of a row of tokens, each mask shown as `hole`."""
    out, run = [], []
    for t in tokens.tolist() + [None]:
        if t is not None and t != mask_id:
            run.append(t)
            continue
        if run:
            out.append(enc.decode(run))
            run = []
        if t is not None:
            out.append(hole)
    return "".join(out)


def main(argv):
    c, _ = parse_config(argv, DEFAULTS, "sample.py", __doc__, types={"alpha_0": float},
                        choices={"order": ("random", "block")}, script=__file__)
    if c["num_samples"] < 1:
        raise UserError("--num_samples must be at least 1")
    if c["prompt"] and c["infill"]:
        raise UserError("use --prompt or --infill, not both (a prompt is a template without spans)")
    dev = torch.device(pick_device(c["device"]))
    ckpt, config = load_checkpoint(Path(c["out_dir"]) / "ckpt.pt", dev)
    model = model_from_checkpoint(ckpt, config, "ema" if ckpt.get("ema") else "model").to(dev).eval()
    enc = get_tokenizer(ckpt["tokenizer"])
    text = c["prompt"] or c["infill"]
    if text.startswith("FILE:"):
        path = Path(text[5:])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {path} ({getattr(e, 'strerror', None) or e}): give a readable UTF-8 file")
    canvas = build_canvas(text, enc, config.block_size, model.mask_id, bool(c["infill"])) if text else None
    try:
        eso.check_sampling_args(c["steps"], config.alpha_0 if c["alpha_0"] is None else c["alpha_0"],
                                c["temperature"], c["top_p"], c["order"])
    except ValueError as e:
        raise UserError(f"--{e}") from None

    def show(tokens, nfe):
        print(f"--- step {nfe} ---\n" + render(tokens[0], enc, model.mask_id).replace("\n", "\u21b5"), flush=True)

    generator = torch.Generator(device=dev).manual_seed(c["seed"])
    if c["show_steps"]:
        show(canvas if canvas is not None else torch.full((1, config.block_size), model.mask_id), 0)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tokens, nfe = model.generate(c["num_samples"], c["steps"], alpha_0=c["alpha_0"], temperature=c["temperature"],
                                 top_p=c["top_p"], canvas=canvas, order=c["order"], kv_cache=c["kv_cache"],
                                 generator=generator, callback=show if c["show_steps"] else None)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if not c["quiet"]:
        for row in tokens:
            print(enc.decode(row.tolist()))
            print("-" * 60)
    new = c["num_samples"] * int((canvas == model.mask_id).sum() if canvas is not None else config.block_size)
    a0 = config.alpha_0 if c["alpha_0"] is None else c["alpha_0"]
    print(f"{c['num_samples']} samples x {config.block_size} tokens, alpha_0={a0}, T={c['steps']}: NFE {nfe}, "
          f"{seconds:.2f} s, {new / seconds:,.0f} tokens/s ({dev})")
    if c["words"]:
        dataset = ckpt.get("train_config", {}).get("dataset", "python_docs")
        found, total = corpus_words(tokens, enc, load_data(dataset, 0)[0])
        print(f"corpus words: {found} of the {total} words of three or more letters in the samples "
              f"({found / max(total, 1):.1%}) occur in data/{dataset}/train.bin")
    if c["judge"]:
        nll, entropy = judge_samples(c["judge"], tokens, ckpt["tokenizer"], dev)
        print(f"judge NLL {nll:.4f} nats/token (generative perplexity {math.exp(nll):.3f}), "
              f"mean unigram entropy {entropy:.3f} nats")
        print(json.dumps({"alpha_0_train": config.alpha_0, "alpha_0": a0, "steps": c["steps"], "order": c["order"],
                          "top_p": c["top_p"], "nfe": nfe, "judge_nll": nll, "gen_ppl": math.exp(nll),
                          "entropy": entropy, "num_samples": c["num_samples"], "seconds": seconds}))
    return 0


def corpus_words(tokens, enc, train, max_tokens=10_000_000):
    """(found, total): how many of the samples' words of three or more letters, compared in
    lower case, are words of the training text (its first max_tokens tokens)."""
    word = re.compile(r"[a-z]{3,}")
    vocab = set(word.findall(enc.decode(train[:max_tokens].tolist()).lower()))
    sample_words = [w for row in tokens for w in word.findall(enc.decode(row.tolist()).lower())]
    return sum(w in vocab for w in sample_words), len(sample_words)


@torch.no_grad()
def judge_samples(judge_dir, tokens, tokenizer, dev):
    """The judge's NLL per token of the samples (an alpha_0 = 0 model: its loss is exact AR
    cross-entropy), and the mean over samples of each sample's unigram entropy (paper App. C)."""
    ckpt, config = load_checkpoint(Path(judge_dir) / "ckpt.pt", dev)
    if config.alpha_0 != 0 or ckpt["tokenizer"] != tokenizer or config.block_size < tokens.size(1):
        raise UserError(f"--judge needs an alpha_0 = 0 model with the {tokenizer} tokenizer and block_size >= "
                        f"{tokens.size(1)}; {judge_dir} has alpha_0={config.alpha_0}, {ckpt['tokenizer']}, "
                        f"block_size {config.block_size}")
    judge = model_from_checkpoint(ckpt, config, "ema" if ckpt.get("ema") else "model").to(dev).eval()
    nll = sum(judge.likelihood(tokens[i:i + 64], 1).item() * len(tokens[i:i + 64])
              for i in range(0, len(tokens), 64)) / len(tokens)
    entropy = 0.0
    for row in tokens:
        p = torch.bincount(row).float()
        p = p[p > 0] / row.numel()
        entropy += float(-(p * p.log()).sum()) / len(tokens)
    return nll, entropy


if __name__ == "__main__":
    cli(main, "sample.py")
