"""
Train a BD3-LM, or MDLM (one block), as train.py trains an Eso-LM: the same transformer, the same
settings and defaults, the same data in the same order, the same optimizer and schedule.

  python -m paper.train_bd3lm --block_len=4 --out_dir=out/bd3_4      # BD3-LM with L' = 4
  python -m paper.train_bd3lm --block_len=128 --out_dir=out/mdlm     # L' = L: MDLM
  python -m paper.evaluate --out_dir=out/bd3_4 --steps=2             # then sample and score it

One process, from scratch, no EMA: what the comparison of paper/frontier.py needs. (train.py
adds DDP, resume, signals and EMA for Eso-LMs.) Every random draw of an iteration is the
function of (seed, iteration) that train.py's is, and a test binds the schedule to train.py's.
The checkpoint is ours (checkpoint.py), with "method": "bd3lm" and "block_len" beside the
weights: paper/bd3lm.py loads it.
"""

import json
import math
import sys
import time
from pathlib import Path

import torch

import checkpoint
import cli
import eso
from data import common
from data.batches import Batches, get_batch, seeded
from paper import bd3lm

CONFIG = dict(
    out_dir=("out/bd3lm", "checkpoint folder"),
    dataset=("python_prose", "data/NAME, prepared by data/prepare.py"),
    block_len=(4, "L', the block length: a divisor of block_size (block_size itself: MDLM)"),
    eval_interval=(400, "iterations between validation runs"),
    eval_iters=(20, "validation batches (the same windows and noise every time)"),
    log_interval=(10, "iterations between log lines (out_dir/log.jsonl)"),
    # data and model: train.py's defaults
    batch_size=(16, "sequences per batch"),
    block_size=(128, "L, the sequence length"),
    n_layer=(4, "transformer blocks"),
    n_head=(4, "attention heads"),
    n_embd=(128, "width"),
    dropout=(0.0, "dropout rate"),
    bias=(False, "biases in the LayerNorms, the MLP and the head"),
    # optimizer: train.py's defaults
    max_iters=(2400, "training iterations"),
    learning_rate=(3e-3, "peak learning rate (AdamW)"),
    warmup_iters=(200, "linear warmup iterations"),
    lr_schedule=("cosine", "constant, or cosine to min_lr at max_iters", ("constant", "cosine")),
    min_lr=(3e-4, "the cosine schedule's final learning rate"),
    weight_decay=(0.0, "AdamW weight decay"),
    beta1=(0.9, "AdamW beta1"),
    beta2=(0.99, "AdamW beta2"),
    grad_clip=(1.0, "clip the gradient norm to this (0 = off)"),
    **cli.SYSTEM,  # device, dtype
    seed=(1337, "seed of every random draw"),
)


def get_lr(it, c):
    """Linear warmup to learning_rate, then constant or cosine down to min_lr at max_iters: the
    schedule of train.py's get_lr (a test binds the two)."""
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    if c.lr_schedule == "constant":
        return c.learning_rate
    progress = min(1.0, (it - c.warmup_iters) / max(1, c.max_iters - c.warmup_iters))
    return c.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (c.learning_rate - c.min_lr)


@torch.no_grad()
def estimate_loss(model, val, c, ctx):
    """The per-token NELBO of train.py's fixed validation set (its windows, seed 0; its noise
    seeds, 1000 + i)."""
    model.eval()
    device = model.transformer.wte.weight.device
    L = c.block_size
    offsets = torch.randint(
        len(val) - L, (c.eval_iters, c.batch_size), generator=torch.Generator().manual_seed(0)
    )
    total = 0.0
    for i in range(c.eval_iters):
        x = get_batch(val, offsets[i], L, device)
        with ctx:
            loss, _ = model.loss(x, torch.Generator(device).manual_seed(1000 + i))
        total += loss.item()
    model.train()
    return total / c.eval_iters


def main(argv):
    c, _ = cli.parse(CONFIG, argv, __doc__)
    device = cli.device(c.device)
    c.dtype, ctx = cli.precision(device, c.dtype)
    if c.batch_size < 1 or c.eval_interval < 1 or c.eval_iters < 1 or c.log_interval < 1:
        raise cli.UserError(
            "--batch_size, --eval_interval, --eval_iters and --log_interval must be at least 1"
        )
    if c.max_iters < 0:
        raise cli.UserError("--max_iters must not be negative")
    out_dir = Path(c.out_dir)
    train_data, val, meta = common.load_dataset(c.dataset, c.block_size)
    config = eso.EsoConfig(
        block_size=c.block_size,
        vocab_size=meta["vocab_size"],
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        dropout=c.dropout,
        bias=c.bias,
        alpha_0=1.0,  # unused by BD3-LM: it has its own loss and sampler
    )
    torch.manual_seed(c.seed)
    try:
        model = bd3lm.BD3LM(eso.EsoLM(config), c.block_len).to(device)
    except ValueError as e:
        raise cli.UserError(f"--{e}") from None
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=c.learning_rate,
        betas=(c.beta1, c.beta2),
        weight_decay=c.weight_decay,
        fused=device.type == "cuda",
    )
    scaler = torch.amp.GradScaler("cuda", enabled=c.dtype == "float16")  # as train.py's
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"BD3-LM L'={c.block_len}"
    if model.n_blocks == 1:
        name = "MDLM"
    params = model.transformer.num_params() / 1e6
    print(f"{name}: {params:.2f}M parameters, L={c.block_size}, {model.n_blocks} block(s)")
    batches = Batches(len(train_data), c.block_size, c.batch_size, c.seed, "windows" in meta)
    t0 = time.time()
    best_val = float("inf")
    with open(out_dir / "log.jsonl", "w") as log:
        for it in range(c.max_iters + 1):
            if (it % c.eval_interval == 0 and it > 0) or it == c.max_iters:
                nelbo = estimate_loss(model, val, c, ctx)
                best_val = min(best_val, nelbo)
                ppl = math.exp(min(nelbo, 700))
                print(f"step {it}: val NELBO {nelbo:.4f}, perplexity {ppl:.2f}", flush=True)
                log.write(json.dumps({"iter": it, "val": {"nelbo": nelbo}}) + "\n")
            if it == c.max_iters:
                break
            for group in optimizer.param_groups:
                group["lr"] = get_lr(it, c)
            x = get_batch(train_data, batches.offsets(it), c.block_size, device)
            torch.manual_seed(hash((c.seed, it, 0)) % 2**63)  # dropout's draws, as train.py's
            with ctx:
                loss, _ = model.loss(x, seeded(device, c.seed, it, 0, 1))
            value = loss.item()
            if not math.isfinite(value):
                raise cli.UserError(f"loss is {value} at step {it}: try a lower --learning_rate")
            scaler.scale(loss).backward()
            if c.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if (it + 1) % c.log_interval == 0:
                record = {"iter": it + 1, "loss": value, "train_s": round(time.time() - t0, 3)}
                log.write(json.dumps(record) + "\n")
    extra = dict(dataset=c.dataset, eos=meta.get("eos"), best_val_loss=best_val)
    extra |= dict(train_config=vars(c), train_seconds=time.time() - t0)
    state = bd3lm.state(model, meta["tokenizer"], c.max_iters, **extra)
    checkpoint.save(out_dir / "ckpt.pt", state)
    print(f"done in {time.time() - t0:.0f} s: best val NELBO {best_val:.4f}; {out_dir}/ckpt.pt")
    return 0


if __name__ == "__main__":
    cli.run(main, "python -m paper.train_bd3lm", sys.argv[1:])
