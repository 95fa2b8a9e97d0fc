"""
Measure the samples of a trained Eso-LM: draw them as sample.py does (same defaults, same
seed, same tokens), then score them.

  python evaluate.py                          # 8 samples: how much of them is real words, how much blank
  python evaluate.py --seeds=7                # the same for seeds 1337..1343, and the medians
  python evaluate.py --judge=out/judge --num_samples=64 --alpha_0=0.5 --steps=64 --top_p=0.9 --temperature=1

Scores, per run of num_samples samples:
  words3, words4  the share of the samples' words of 3+ (4+) letters, in lower case, that
                  occur as words in the training text of the checkpoint's dataset
  blank           the share of characters that sit in runs of 3 or more whitespace characters
  gen_ppl         with --judge (an alpha_0 = 0 model, whose loss is exact AR cross-entropy):
                  exp of its NLL per token of the samples ("generative perplexity", paper App. C)
  entropy         the mean over samples of each sample's unigram entropy (nats; the paper's
                  check for repetitive, mode-collapsed samples)
Prints a line per seed, the medians, then one JSON line with everything.
"""

import json
import math
import re
import statistics
from pathlib import Path

import torch

import cli
import eso
from data.prepare import get_tokenizer, load_dataset

# -----------------------------------------------------------------------------
# Defaults: each is a flag, --key=value; the sampling ones are sample.py's (cli.SAMPLING).
CONFIG = dict(
    out_dir=("out", "folder of ckpt.pt (written by train.py)"),
    num_samples=(8, "samples per seed"),
    seeds=(1, "how many seeds: seed, seed + 1, ...; medians are printed when more than one"),
    **cli.SAMPLING,  # sample.py's: steps, alpha_0, top_p, temperature, block_order, seed
    judge=(
        "",
        "out_dir of an alpha_0 = 0 model: its generative perplexity and entropy of the samples",
    ),
    quiet=(False, "print only the JSON line"),
    **cli.SYSTEM,  # device, dtype
)
WORD = re.compile(r"[a-z]+")


def corpus_words(text):
    """The set of lower-case words of a text."""
    return set(WORD.findall(text.lower()))


def word_share(texts, vocab, min_len):
    """(found, total): the samples' words of min_len+ letters, and how many of them are in vocab."""
    words = [w for t in texts for w in WORD.findall(t.lower()) if len(w) >= min_len]
    return sum(w in vocab for w in words), len(words)


def blank_share(texts):
    """The share of characters that sit in runs of 3 or more whitespace characters."""
    return sum(len(m) for t in texts for m in re.findall(r"\s{3,}", t)) / max(
        1, sum(map(len, texts))
    )


@torch.no_grad()
def judge_nll(judge, tokens):
    """The judge's NLL per token of the samples: at alpha_0 = 0 the bound has one order and is exact."""
    return sum(judge.likelihood(t, 1).item() * len(t) for t in tokens.split(64)) / len(tokens)


def unigram_entropy(tokens):
    """The mean over rows of each row's unigram entropy, in nats."""
    p = [torch.bincount(row).float() for row in tokens]
    return sum(float(-(q[q > 0] / q.sum() * (q[q > 0] / q.sum()).log()).sum()) for q in p) / len(p)


def main(argv):
    c, _ = cli.parse(CONFIG, argv, __doc__)
    dev = cli.device(c["device"])
    _, ctx = cli.precision(dev, c["dtype"])
    model, ckpt = cli.load_checkpoint(Path(c["out_dir"]) / "ckpt.pt", dev)
    enc, L = get_tokenizer(ckpt["tokenizer"]), model.config.block_size
    a0 = model.config.alpha_0 if c["alpha_0"] is None else c["alpha_0"]
    try:
        steps = eso.check_sampling_args(c["steps"], a0, c["temperature"], c["top_p"])
        eso.whole("num_samples", c["num_samples"])
        eso.whole("seeds", c["seeds"])
    except ValueError as e:
        raise cli.UserError(f"--{e}") from None
    dataset = ckpt.get("train_config", {}).get("dataset", "python_prose")
    vocab = corpus_words(enc.decode(load_dataset(dataset)[0][:20_000_000].tolist()))
    judge = None
    if c["judge"]:
        judge, jckpt = cli.load_checkpoint(Path(c["judge"]) / "ckpt.pt", dev)
        if (
            judge.config.alpha_0 != 0
            or jckpt["tokenizer"] != ckpt["tokenizer"]
            or judge.config.block_size < L
        ):
            raise cli.UserError(
                f"--judge needs an alpha_0 = 0 model with the {ckpt['tokenizer']} tokenizer and "
                f"block_size >= {L}; {c['judge']} has alpha_0={judge.config.alpha_0}, "
                f"{jckpt['tokenizer']}, block_size {judge.config.block_size}"
            )
    runs = []
    for seed in range(c["seed"], c["seed"] + c["seeds"]):
        generator = torch.Generator(dev).manual_seed(seed)
        with ctx:
            tokens, nfe = model.generate(
                c["num_samples"],
                steps,
                alpha_0=a0,
                temperature=c["temperature"],
                top_p=c["top_p"],
                block_order=c["block_order"],
                compile=c["compile"],
                generator=generator,
            )
        texts = [enc.decode(row.tolist()) for row in tokens]
        (f3, n3), (f4, n4) = word_share(texts, vocab, 3), word_share(texts, vocab, 4)
        run = {
            "seed": seed,
            "nfe": nfe,
            "words3": f3 / max(n3, 1),
            "words4": f4 / max(n4, 1),
            "blank": blank_share(texts),
            "n_words3": n3,
            "n_words4": n4,
            "entropy": unigram_entropy(tokens),
        }
        if judge is not None:
            with ctx:
                run["judge_nll"] = judge_nll(judge, tokens)
            run["gen_ppl"] = math.exp(run["judge_nll"])
        runs.append(run)
        if not c["quiet"]:
            print(
                f"seed {seed}: words of 3+ letters {run['words3']:.1%} ({f3} of {n3}), of 4+ letters "
                f"{run['words4']:.1%} ({f4} of {n4}) found in data/{dataset}; characters in blank runs "
                f"{run['blank']:.1%}; unigram entropy {run['entropy']:.3f} nats"
                + (
                    f"; judge NLL {run['judge_nll']:.4f}, generative perplexity {run['gen_ppl']:.3f}"
                    if judge is not None
                    else ""
                ),
                flush=True,
            )
    keys = [k for k in ("words3", "words4", "blank", "entropy", "gen_ppl") if k in runs[0]]
    median = {k: statistics.median(r[k] for r in runs) for k in keys}
    if not c["quiet"] and len(runs) > 1:
        print(f"median of {len(runs)} seeds: " + ", ".join(f"{k} {median[k]:.4g}" for k in keys))
    print(
        json.dumps(
            {
                "checkpoint": str(Path(c["out_dir"]) / "ckpt.pt"),
                "alpha_0_train": model.config.alpha_0,
                "alpha_0": a0,
                "steps": steps,
                "block_order": c["block_order"],
                "temperature": c["temperature"],
                "top_p": c["top_p"],
                "num_samples": c["num_samples"],
                "median": median,
                "runs": runs,
            }
        )
    )
    return 0


if __name__ == "__main__":
    cli.run(main, "evaluate.py")
