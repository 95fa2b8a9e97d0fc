#!/usr/bin/env python
"""
Both final checkpoints on the same validation windows: ours' fixed set (train.py's evaluate:
eval_iters x batch_size windows of L bytes, offsets drawn with torch.Generator().manual_seed(0)).
This removes two of the differences in the val column of compare.py: nanoGPT's random val
batches, and the first byte of each window, which ours predicts from no context at all.

  python results/nanogpt/eval_fixed.py          # out/nanogpt/{out-nanogpt,eso_a0}/ckpt.pt
  python results/nanogpt/eval_fixed.py --nanogpt=out/nanogpt/short/out-nanogpt --eso=out/nanogpt/short/eso_a0

Prints, in nats/byte:
  ours, all L positions      ours' val NELBO at alpha_0 = 0 (checked against EsoLM.loss)
  ours, positions 1..L-1     the same without the context-free first byte
  nanoGPT, positions 1..L-1  the same targets with the same contexts: directly comparable to the line above
  nanoGPT, own convention    targets 1..L of a window of L+1 (what nanoGPT's estimate_loss averages)
Ours' per-position values come from EsoLM._sequential_logprobs (a private method of eso.py; if it
changes, only the two "ours" per-position lines are lost). --code: our checkout (default this
repository); nanoGPT's model.py from $NANOGPT or results/nanogpt/src. Writes nothing except --json if given.
"""

import json
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

sys.dont_write_bytecode = True
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from run_nanogpt import REPO, WORK, nanogpt_model  # noqa: E402


def main(argv):
    a = {
        "nanogpt": str(WORK / "out-nanogpt"),
        "eso": str(WORK / "eso_a0"),
        "code": str(REPO),
        "data": str(REPO / "data" / "python_prose"),
        "json": "",
    }
    for x in argv:
        k, _, v = x.lstrip("-").partition("=")
        if k not in a:
            sys.exit(
                f"eval_fixed.py: unknown flag {x!r}; flags: " + ", ".join(f"--{k}=" for k in a)
            )
        a[k] = v
    for f in (
        Path(a["nanogpt"]) / "ckpt.pt",
        Path(a["eso"]) / "ckpt.pt",
        Path(a["data"]) / "val.bin",
    ):
        if not f.is_file():
            sys.exit(
                f"eval_fixed.py: {f} not found (run run_compare.sh first; data: python data/prepare.py)"
            )
    sys.path.insert(0, a["code"])
    import cli  # our checkpoint loader

    ours, ck = cli.load_checkpoint(Path(a["eso"]) / "ckpt.pt", ema=False)
    tc = ck.get("train_config", {})
    B, L, n = tc.get("batch_size", 16), ours.config.block_size, tc.get("eval_iters", 20)
    if ours.config.alpha_0 != 0:
        sys.exit(f"eval_fixed.py: {a['eso']} was trained at alpha_0 = {ours.config.alpha_0}, not 0")

    ng = nanogpt_model()
    nck = torch.load(Path(a["nanogpt"]) / "ckpt.pt", map_location="cpu", weights_only=True)
    with redirect_stdout(StringIO()):
        gpt = ng.GPT(ng.GPTConfig(**nck["model_args"]))
    sd = {k.removeprefix("_orig_mod."): v for k, v in nck["model"].items()}
    gpt.load_state_dict(sd)
    gpt.eval()
    if nck["model_args"]["block_size"] != L:
        sys.exit("eval_fixed.py: the two models have different block sizes")

    val = np.memmap(Path(a["data"]) / "val.bin", dtype=np.uint16, mode="r")
    offsets = torch.randint(
        len(val) - L, (n, B), generator=torch.Generator().manual_seed(0)
    )  # as train.py
    sums = {
        "ours_all": 0.0,
        "ours_1": 0.0,
        "ours_0": 0.0,
        "ours_loss": 0.0,
        "ng_1": 0.0,
        "ng_own": 0.0,
    }
    per_pos_ok = True
    with torch.no_grad():
        for i in range(n):
            o = offsets[i].numpy()
            win = torch.from_numpy(val[o[:, None] + np.arange(L + 1)].astype(np.int64))  # (B, L+1)
            x = win[:, :L]
            loss, _ = ours.loss(
                x, loss_type="elbo", generator=torch.Generator().manual_seed(1000 + i)
            )
            sums["ours_loss"] += loss.item()
            if per_pos_ok:
                try:
                    masked = torch.ones(B, L, dtype=torch.bool)
                    sigma = torch.arange(L).expand(B, L)
                    logp = ours._sequential_logprobs(
                        x, masked, sigma
                    )  # (B, L), natural order at alpha_0 = 0
                    sums["ours_all"] += -logp.mean().item()
                    sums["ours_1"] += -logp[:, 1:].mean().item()
                    sums["ours_0"] += -logp[:, 0].mean().item()
                except Exception as e:  # a private method that may change
                    per_pos_ok = False
                    print(f"note: no per-position values from ours ({type(e).__name__}: {e})")
            logits, _ = gpt(
                x[:, : L - 1].contiguous(), x[:, 1:].contiguous()
            )  # targets 1..L-1, same contexts
            sums["ng_1"] += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).item()
            _, l_own = gpt(
                x.contiguous(), win[:, 1:].contiguous()
            )  # targets 1..L: nanoGPT's own windows
            sums["ng_own"] += l_own.item()
    r = {k: v / n for k, v in sums.items()}
    print(f"{n} x {B} validation windows of L = {L} (ours' fixed set), nats/byte:")
    print(f"  ours, all L positions (EsoLM.loss)  {r['ours_loss']:.4f}")
    if per_pos_ok:
        print(
            f"  ours, all L positions (per-pos)     {r['ours_all']:.4f}  (should equal the line above)"
        )
        print(f"  ours, position 0 alone (no context) {r['ours_0']:.4f}")
        print(f"  ours, positions 1..L-1              {r['ours_1']:.4f}")
    print(
        f"  nanoGPT, positions 1..L-1           {r['ng_1']:.4f}  (same targets and contexts as the line above)"
    )
    print(f"  nanoGPT, own convention (1..L)      {r['ng_own']:.4f}")
    if per_pos_ok:
        print(f"  ours - nanoGPT on positions 1..L-1  {r['ours_1'] - r['ng_1']:+.4f}")
    if a["json"]:
        Path(a["json"]).write_text(
            json.dumps({"windows": [n, B, L], "per_position_ok": per_pos_ok, **r}, indent=1)
        )
        print(f"wrote {a['json']}")


if __name__ == "__main__":
    main(sys.argv[1:])
