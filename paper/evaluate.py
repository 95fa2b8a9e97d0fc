"""
Measure the samples of a trained Eso-LM: draw them as sample.py does (same flags, defaults and
seed: the same tokens), or read them from a file, then score them.

  python -m paper.evaluate                     # 8 samples: how much is real words, how much blank
  python -m paper.evaluate --seeds=7           # the same for seeds 1337..1343, and the medians
  python -m paper.evaluate --ar_judge=out/judge   # + generative perplexity under our AR model
  python -m paper.evaluate --init_from=esolmb-alpha0-0d25-250k.ckpt --judge=gpt2-large \\
      @paper/presets/samples.txt --steps=1024 --alpha_0=0.25   # one cell of the paper's Table 13
  python -m paper.evaluate --samples=samples.jsonl --judge=gpt2-large   # anyone's samples

Scores, per seed of num_samples samples:
  words3, words4  the share of the samples' words of 3+ (4+) letters, in lower case, that occur
                  as words in the training text of the model's dataset (byte-level corpora only;
                  skipped with a note otherwise)
  blank           the share of characters that sit in runs of 3 or more whitespace characters
  gen_ppl         with --judge (a Hugging Face causal LM, gpt2-large as the paper): the authors'
                  generative perplexity (judge.py names their rules); pooled over all samples
                  with --ar_judge (an alpha_0 = 0 model of ours, whose NELBO is its exact NLL):
                  exp of its NLL per token of the samples' own tokens, all L of them
  entropy         the mean over samples of each sample's unigram entropy over its token ids
                  (nats; the paper's check for repetitive, mode-collapsed samples)
Prints a line per seed, the pooled figures and the medians; --json=FILE writes everything there.
--init_from takes any model paper/formats.py reads (ours, or the authors' formats).
"""

import json
import math
import re
import statistics
import time
from pathlib import Path

import torch

import cli
import eso
from compiled import CompiledSampler
from data.common import get_tokenizer, load_dataset
from paper import bd3lm, formats, judge

# -----------------------------------------------------------------------------
# Defaults: each is a flag, --key=value; the sampling ones are sample.py's (cli.SAMPLING).
CONFIG = dict(
    out_dir=("out", "folder of ckpt.pt (written by train.py)"),
    init_from=(
        "",
        "a model to draw from instead: a checkpoint file (ours, or an authors' Lightning file), "
        "an authors' Hugging Face folder or hub id (give --alpha_0)",
    ),
    **cli.SAMPLING,  # sample.py's: num_samples, batch_size, steps, alpha_0, ..., seed
    seeds=(1, "how many seeds: seed, seed + 1, ...; medians are printed when more than one"),
    samples=("", 'a .jsonl file of samples, one {"text": ...} a line, to score instead'),
    judge=("", "a Hugging Face causal LM (gpt2-large, or a folder): the paper's generative PPL"),
    ar_judge=(
        "",
        "out_dir of an alpha_0 = 0 model of ours, the offline judge for byte-level models "
        "(make one: python train.py --alpha_0=0 --out_dir=out/judge)",
    ),
    quiet=(False, "print only the pooled line, not a line per seed"),
    json=("", "also write every score, per seed and pooled, to this JSON file"),
    **cli.SYSTEM,  # device, dtype
)
WORD = re.compile(r"[a-z]+")
MAX_CORPUS_TOKENS = 20_000_000  # the words of the word shares come from this much training text


def corpus_words(text):
    """The set of lower-case words of a text."""
    return set(WORD.findall(text.lower()))


def word_share(texts, vocab, min_len):
    """(found, total): the samples' words of min_len+ letters, and how many of them are in vocab."""
    words = [w for t in texts for w in WORD.findall(t.lower()) if len(w) >= min_len]
    return sum(w in vocab for w in words), len(words)


def blank_share(texts):
    """The share of characters that sit in runs of 3 or more whitespace characters."""
    blank = sum(len(m) for t in texts for m in re.findall(r"\s{3,}", t))
    return blank / max(1, sum(map(len, texts)))


@torch.no_grad()
def ar_judge_nll(model, tokens):
    """Our alpha_0 = 0 model's NLL per token of the samples (B, L): at alpha_0 = 0 the bound
    has one order and is exact."""
    total = sum(model.likelihood(t, 1).item() * len(t) for t in tokens.split(64))
    return total / len(tokens)


def read_samples(path):
    """The texts of a .jsonl file, one {"text": ...} a line, or one line naming the bad line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise cli.UserError(f"cannot read --samples={path} ({why})") from None
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise cli.UserError(
                f'--samples={path}, line {number}: not a JSON object with a "text" string'
            )
        texts.append(record["text"])
    if not texts:
        raise cli.UserError(f"--samples={path} holds no samples")
    return texts


def load_ar_judge(c, tokenizer, L, device):
    """Our alpha_0 = 0 judge of --ar_judge, checked against the samples' tokenizer and length."""
    path = Path(c.ar_judge) / "ckpt.pt"
    if not path.is_file():
        raise cli.UserError(
            f"--ar_judge={c.ar_judge} holds no ckpt.pt: make a judge with `python train.py "
            f"--alpha_0=0 --out_dir={c.ar_judge}` (an AR model of ours, a few minutes on a CPU)"
        )
    model, ckpt = formats.load(path, device)
    fits = model.config.alpha_0 == 0 and ckpt["tokenizer"] == tokenizer
    if not fits or model.config.block_size < L:
        raise cli.UserError(
            f"--ar_judge needs an alpha_0 = 0 model with the {tokenizer} tokenizer and "
            f"block_size >= {L}; {c.ar_judge} has alpha_0={model.config.alpha_0}, "
            f"{ckpt['tokenizer']}, block_size {model.config.block_size}"
        )
    return model


def vocabulary_of(ckpt, enc):
    """(the words of the model's training corpus, its name), or (None, why not): the word
    shares are for byte-level corpora."""
    dataset = ckpt.get("dataset") or ckpt.get("train_config", {}).get("dataset")
    if ckpt["tokenizer"] != "bytes" or not dataset:
        return None, "word shares skipped: they are for the byte-level corpora"
    try:
        train, _, _ = load_dataset(dataset)
    except Exception:  # not prepared here: say so, score the rest
        return None, f"word shares skipped: data/{dataset} is not prepared here"
    return corpus_words(enc.decode(train[:MAX_CORPUS_TOKENS].tolist())), dataset


def draw(model, sampler, c, a0, steps, seed, ctx, device):
    """(tokens (num_samples, L), nfe, the batches of rows, seconds): the samples sample.py draws
    for this seed, batch by batch, and the seconds spent drawing them. A BD3-LM (paper/bd3lm.py)
    draws with its own sampler, steps per block."""
    generator = torch.Generator(device).manual_seed(seed)
    batches = []
    nfe = 0
    cli.synchronize(device)
    t0 = time.perf_counter()
    for start in range(0, c.num_samples, c.batch_size):
        n = min(c.batch_size, c.num_samples - start)
        with ctx:
            if isinstance(model, bd3lm.BD3LM):
                tokens, nfe = model.generate(
                    n, steps, temperature=c.temperature, top_p=c.top_p, generator=generator
                )
            else:
                plan = model.plan(
                    n, steps, alpha_0=a0, block_order=c.block_order, generator=generator
                )
                tokens, nfe = sampler.decode(
                    *plan, temperature=c.temperature, top_p=c.top_p, generator=generator
                )
        batches.append(tokens)
    cli.synchronize(device)
    return torch.cat(batches), nfe, batches, time.perf_counter() - t0


def main(argv):
    moved = {
        "preset": "the paper's sampling settings are a preset file: @paper/presets/samples.txt"
    }
    c, given = cli.parse(CONFIG, argv, __doc__, moved=moved)
    if c.batch_size is None:
        c.batch_size = c.num_samples
    dev = cli.device(c.device)
    _, ctx = cli.precision(dev, c.dtype)
    try:
        eso.whole("num_samples", c.num_samples)
        eso.whole("batch_size", c.batch_size)
        eso.whole("seeds", c.seeds)
    except ValueError as e:
        raise cli.UserError(f"--{e}") from None
    hf_judge = None
    if c.judge:
        hf_judge = judge.load(c.judge, dev)
    if c.samples:
        return score_file(c, given, hf_judge)
    source = c.init_from or Path(c.out_dir) / "ckpt.pt"
    model, ckpt = formats.load(source, dev, alpha_0=c.alpha_0)
    if ckpt.get("method") == "bd3lm":  # a baseline of paper/train_bd3lm.py
        if c.alpha_0 is not None or c.compile:
            raise cli.UserError("--alpha_0 and --compile are for Eso-LMs, not a BD3-LM")
        model = bd3lm.BD3LM(model, ckpt["block_len"]).eval()
    enc = get_tokenizer(ckpt["tokenizer"], ckpt.get("vocab"))
    L = model.config.block_size
    a0 = model.config.alpha_0 if c.alpha_0 is None else c.alpha_0
    try:
        steps = eso.check_sampling_args(c.steps, a0, c.temperature, c.top_p)
    except ValueError as e:
        raise cli.UserError(f"--{e}") from None
    vocab, corpus = vocabulary_of(ckpt, enc)
    ar_judge = None
    if c.ar_judge:
        ar_judge = load_ar_judge(c, ckpt["tokenizer"], L, dev)
    if vocab is None and not c.quiet:
        print(f"note: {corpus}")
    sampler = model
    if c.compile:
        sampler = CompiledSampler(model)
    runs = []
    pooled = [0.0, 0.0]  # the judge's NLL sum and counted tokens over every seed
    for seed in range(c.seed, c.seed + c.seeds):
        tokens, nfe, batches, seconds = draw(model, sampler, c, a0, steps, seed, ctx, dev)
        texts = [enc.decode(row.tolist()) for row in tokens]
        run = {"seed": seed, "nfe": nfe, "seconds": seconds, "blank": blank_share(texts)}
        run["entropy"] = judge.unigram_entropy(tokens)
        if vocab is not None:
            found3, n3 = word_share(texts, vocab, 3)
            found4, n4 = word_share(texts, vocab, 4)
            run |= {"words3": found3 / max(n3, 1), "words4": found4 / max(n4, 1)}
            run |= {"n_words3": n3, "n_words4": n4}
        if ar_judge is not None:
            with ctx:
                run["judge_nll"] = ar_judge_nll(ar_judge, tokens)
            run["gen_ppl"] = math.exp(run["judge_nll"])
        if hf_judge is not None:
            text_batches = [[enc.decode(row.tolist()) for row in b] for b in batches]
            run |= judge.gen_ppl(*hf_judge, text_batches, max_length=L)
            pooled[0] += run["judge_nll"] * run["counted"]
            pooled[1] += run["counted"]
        runs.append(run)
        if not c.quiet:
            print(seed_line(run, corpus), flush=True)
    summary = summarize(runs, pooled, c)
    record = {"checkpoint": str(source), "alpha_0_train": model.config.alpha_0, "alpha_0": a0}
    record |= {"method": ckpt.get("method", "eso"), "block_len": ckpt.get("block_len")}
    record |= {"steps": steps, "block_order": c.block_order, "temperature": c.temperature}
    record |= {"top_p": c.top_p, "num_samples": c.num_samples, "batch_size": c.batch_size}
    record |= {"judge": c.judge or c.ar_judge or None, **summary, "runs": runs}
    write_json(c.json, record)
    return 0


def write_json(path, record):
    """The scores, as JSON, into the file --json names (none: nowhere)."""
    if path:
        Path(path).write_text(json.dumps(record, indent=1) + "\n")


def seed_line(run, corpus):
    """One seed's scores, in words."""
    parts = [f"seed {run['seed']}: NFE {run['nfe']}, {run['seconds']:.2f} s"]
    if "words3" in run:
        parts.append(
            f"words of 3+ letters {run['words3']:.1%} (of {run['n_words3']}), of 4+ letters "
            f"{run['words4']:.1%} (of {run['n_words4']}) found in data/{corpus}"
        )
    parts.append(f"characters in blank runs {run['blank']:.1%}")
    parts.append(f"unigram entropy {run['entropy']:.3f} nats")
    if "gen_ppl" in run:
        parts.append(
            f"judge NLL {run['judge_nll']:.4f}, generative perplexity {run['gen_ppl']:.2f}"
        )
    return "; ".join(parts)


def summarize(runs, pooled, c):
    """The medians over seeds (printed when more than one), and the pooled generative
    perplexity over every sample (the paper's figure)."""
    keys = [k for k in ("words3", "words4", "blank", "entropy", "gen_ppl") if k in runs[0]]
    median = {k: statistics.median(r[k] for r in runs) for k in keys}
    entropy = statistics.fmean(r["entropy"] for r in runs)
    out = {"median": median, "entropy": entropy}
    if pooled[1]:
        nll = pooled[0] / pooled[1]
        out |= {"gen_ppl": math.exp(min(nll, 700)), "judge_nll": nll, "counted": int(pooled[1])}
    if len(runs) > 1 and not c.quiet:
        print(f"median of {len(runs)} seeds: " + ", ".join(f"{k} {median[k]:.4g}" for k in keys))
    samples = len(runs) * c.num_samples
    line = f"all {samples} samples: mean unigram entropy {entropy:.3f} nats"
    if pooled[1]:
        line += (
            f", generative perplexity {out['gen_ppl']:.2f} (pooled over {out['counted']:,} tokens)"
        )
    print(line)
    return out


def score_file(c, given, hf_judge):
    """--samples=FILE: the texts scored by the judge, in batches of batch_size (the sampler's
    batches of the paper: 256), and their entropy over the judge tokenizer's ids."""
    if hf_judge is None:
        raise cli.UserError("--samples needs --judge (a Hugging Face causal LM, e.g. gpt2-large)")
    texts = read_samples(c.samples)
    model, tokenizer = hf_judge
    size = len(texts)  # one batch, unless a batch size is asked for (the paper's: 256)
    if "batch_size" in given:
        size = c.batch_size
    batches = [texts[i : i + size] for i in range(0, len(texts), size)]
    scores = judge.gen_ppl(model, tokenizer, batches, max_length=judge.JUDGE_CONTEXT)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    entropy = judge.unigram_entropy(ids)
    record = {"samples": c.samples, "judge": c.judge, "num_samples": len(texts)}
    record |= {"batch_size": size, **scores, "entropy": entropy}
    print(
        f"{len(texts)} samples of {c.samples}: generative perplexity {scores['gen_ppl']:.2f} "
        f"under {c.judge} (pooled over {scores['counted']:,} tokens), mean unigram entropy "
        f"{entropy:.3f} nats (over its tokenizer's ids)"
    )
    write_json(c.json, record)
    return 0


if __name__ == "__main__":
    cli.run(main, "python -m paper.evaluate")
