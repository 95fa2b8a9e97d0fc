"""
The quality grid's yardstick on real text: the validation text of python_prose, cut into
windows of the judge's length, scored like samples (entropy, and the alpha_0 = 0 judge's
generative perplexity): one JSON line.

  python -m results.reference_text out/results/b0/ckpt.pt      # from the repository root
"""

import json
import math
import sys

import torch

import checkpoint
from data.common import load_dataset
from paper import judge


def main(judge_path):
    model, _ = checkpoint.load(judge_path)
    L = model.config.block_size
    val = load_dataset("python_prose")[1]
    n = len(val) // L  # the validation windows of a full pass: non-overlapping, from offset 0
    windows = torch.from_numpy(val[: n * L].reshape(n, L).astype("int64"))
    nll = 0.0
    with torch.no_grad():
        for batch in windows.split(64):
            nll += model.likelihood(batch, 1).item() * len(batch)
    nll /= len(windows)
    record = {"text": f"validation text, {len(windows)} windows of {L} bytes"}
    record |= {"entropy": judge.unigram_entropy(windows), "gen_ppl": math.exp(nll)}
    print(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
