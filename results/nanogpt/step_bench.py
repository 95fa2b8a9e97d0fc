#!/usr/bin/env python
"""
Where the time of one training step goes: forward + backward of one batch (B x L bytes), random
weights, the comparison's model size, interleaved repeats, median milliseconds.

  python results/nanogpt/step_bench.py                  # our code from this repository
  python results/nanogpt/step_bench.py --code=/path --reps=30

  nanoGPT            nanoGPT's GPT ($NANOGPT/model.py, default results/nanogpt/src): L positions,
                     learned positions, tied head
  ours_plain_AR      our transformer (EsoLM.hidden + lm_head) run as a plain AR model: L positions,
                     causal, shifted targets. Same network as ours, without the Eso-LM formulation:
                     ours_plain_AR / nanoGPT is the cost of the architecture (rotary, untied head, ...)
  ours_alpha0        EsoLM.loss at alpha_0 = 0, what train.py runs: 2L positions ([x ; z] through
                     SequentialPattern). ours_alpha0 / ours_plain_AR is the cost of the formulation
  ours_alpha0_dense  the same loss through the dense 2L x 2L mask (the reference path)

The optimizer step (AdamW on ~0.85M parameters, the same work on both sides) is not included.
Uses only EsoConfig, EsoLM, EsoLM.hidden, EsoLM.lm_head and EsoLM.loss of our eso.py; nothing is
written in the code folder (no bytecode).
"""

import statistics
import sys
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

sys.dont_write_bytecode = True
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from run_nanogpt import REPO, cpu_busy_s, nanogpt_model  # noqa: E402


def main(argv):
    a = {
        "code": str(REPO),
        "reps": "20",
        "warmup": "3",
        "B": "16",
        "L": "128",
        "n_layer": "4",
        "n_head": "4",
        "n_embd": "128",
        "interleave": "1",
    }
    for x in argv:
        k, _, v = x.lstrip("-").partition("=")
        if k not in a:
            sys.exit(
                f"step_bench.py: unknown flag {x!r}; flags: " + ", ".join(f"--{k}=" for k in a)
            )
        a[k] = v
    try:
        B, L, reps, warm = int(a["B"]), int(a["L"]), int(a["reps"]), int(a["warmup"])
        size = dict(n_layer=int(a["n_layer"]), n_head=int(a["n_head"]), n_embd=int(a["n_embd"]))
    except ValueError as e:
        sys.exit(
            f"step_bench.py: flags B, L, reps, warmup, n_layer, n_head, n_embd are integers ({e})"
        )
    if reps < 1:
        sys.exit("step_bench.py: --reps must be at least 1")

    ng = nanogpt_model()
    sys.path.insert(0, a["code"])
    import eso

    torch.manual_seed(0)
    with redirect_stdout(StringIO()):
        gpt = ng.GPT(ng.GPTConfig(block_size=L, vocab_size=256, dropout=0.0, bias=False, **size))
    ours = eso.EsoLM(eso.EsoConfig(block_size=L, vocab_size=256, dropout=0.0, alpha_0=0.0, **size))
    gpt.train()
    ours.train()
    win = torch.randint(0, 256, (B, L + 1))
    idx, tgt, x = win[:, :L].contiguous(), win[:, 1:].contiguous(), win[:, :L].contiguous()
    pos = torch.arange(L).expand(B, L)

    def nanogpt():
        _, loss = gpt(idx, tgt)
        loss.backward()

    def plain_ar():
        logits = ours.lm_head(ours.hidden(idx, pos))
        F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten()).backward()

    def alpha0(dense=False):
        loss, _ = ours.loss(x, generator=torch.Generator().manual_seed(1), dense=dense)
        loss.backward()

    cases = {
        "nanoGPT": nanogpt,
        "ours_plain_AR": plain_ar,
        "ours_alpha0": alpha0,
        "ours_alpha0_dense": lambda: alpha0(True),
    }
    times = {k: [] for k in cases}
    busy0, self0, t0 = cpu_busy_s(), time.process_time(), time.perf_counter()
    # interleaved (default): drift in the machine's speed hits every case alike; --interleave=0 runs
    # each case's repeats back to back (warmer caches and allocator for that one shape)
    order = (
        [(r, name) for r in range(warm + reps) for name in cases]
        if a["interleave"] != "0"
        else [(r, name) for name in cases for r in range(warm + reps)]
    )
    for r, name in order:
        for m in (gpt, ours):
            m.zero_grad(set_to_none=True)
        t = time.perf_counter()
        cases[name]()
        dt = time.perf_counter() - t
        if r >= warm:
            times[name].append(dt * 1000)
    wall = time.perf_counter() - t0
    other = (
        (cpu_busy_s() - busy0 - (time.process_time() - self0)) / wall if busy0 is not None else None
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"forward + backward, B={B} x L={L}, {size}, float32, {torch.get_num_threads()} threads, "
        f"median of {reps} (min..max), {'interleaved' if a['interleave'] != '0' else 'case by case'}:"
    )
    for k, v in times.items():
        print(
            f"  {k:<18} {med[k]:8.1f} ms  ({min(v):.1f}..{max(v):.1f})  {B * L / med[k] * 1000:9,.0f} tok/s"
        )
    print(
        f"  architecture  ours_plain_AR / nanoGPT     = {med['ours_plain_AR'] / med['nanoGPT']:.2f}x"
    )
    print(
        f"  formulation   ours_alpha0 / ours_plain_AR = {med['ours_alpha0'] / med['ours_plain_AR']:.2f}x "
        f"(2L = {2 * L} positions against L = {L})"
    )
    print(
        f"  in all        ours_alpha0 / nanoGPT       = {med['ours_alpha0'] / med['nanoGPT']:.2f}x"
    )
    print(
        f"  dense path    ours_alpha0_dense / ours_alpha0 = {med['ours_alpha0_dense'] / med['ours_alpha0']:.2f}x"
    )
    if other is not None:
        print(
            f"  other processes used {max(0.0, other):.2f} cores on average during the bench"
            + ("  <-- NOT QUIET: numbers distorted" if other > 0.1 else " (quiet)")
        )


if __name__ == "__main__":
    main(sys.argv[1:])
