"""
Train an Eso-LM.

  python train.py                                       # CPU-sized default on the offline corpus
  python train.py --alpha_0=0.25 --max_iters=5000       # any setting below, as --key=value
  python train.py --init_from=resume                    # continue out/ckpt.pt where it stopped
  python train.py @paper/presets/owt.txt --alpha_0=0.25 # a preset file of flags (the paper's run)
  torchrun --standalone --nproc_per_node=4 train.py     # DDP: NCCL on GPUs, gloo on CPUs

Batch: each iteration takes batch_size x gradient_accumulation_steps sequences in total, shared
out over the processes in micro-batches of batch_size (nanoGPT's convention; the accumulation
steps are rounded up to a multiple of the process count). Every random draw of an iteration
(which sequences, the noise of the loss, dropout) is a function of (seed, iteration,
micro-batch), so a run gives the same result on 1 or N processes and resumes exactly, on any
number of processes. Ctrl-C or SIGTERM saves a checkpoint before exiting; checkpoints are written
atomically and hold only tensors and plain values (they load with torch.load(weights_only=True)).

Validation during training is the NELBO of a fixed quick set (eval_iters x batch_size windows,
the same noise every time), so that the curve moves only with the model. The paper's full pass
over the validation split, and the IW bound, are python -m paper.likelihood.
"""

import copy
import functools
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoint
import cli
import eso
from data import common
from data.batches import Batches, get_batch, seeded

# -----------------------------------------------------------------------------
# Settings: each is a flag, --key=value; `python train.py --help` lists them with their notes.
CONFIG = dict(
    # I/O
    out_dir=("out", "checkpoint folder (sample.py reads it)"),
    dataset=(
        "python_prose",
        "data/NAME, prepared by data/prepare.py (the default is prepared on first use)",
    ),
    init_from=(
        "scratch",
        "scratch; resume (out_dir/ckpt.pt); or a checkpoint file of ours: its weights, a fresh "
        "optimizer",
    ),
    eval_interval=(400, "iterations between validation runs and checkpoints"),
    eval_iters=(20, "validation batches (the same windows and noise every time)"),
    log_interval=(10, "iterations between log lines (out_dir/log.jsonl)"),
    # data and model
    batch_size=(16, "sequences per micro-batch (per process)"),
    block_size=(128, "L, the sequence length"),
    n_layer=(4, "transformer blocks"),
    n_head=(4, "attention heads"),
    n_embd=(128, "width"),
    dropout=(0.0, "dropout rate"),
    alpha_0=(0.0625, "expected fraction of tokens made by the diffusion phase (0 = AR, 1 = MDM)"),
    bias=(False, "biases in the LayerNorms, the MLP and the head (as the authors' models)"),
    variant=(
        "B",
        "B (KV cache in both phases) or A (bidirectional clean tokens; the paper's ablation)",
        ("A", "B"),
    ),
    loss_type=(
        "elbo",
        "elbo, or low_var (diffusion weight 1; the paper's choice at alpha_0 = 1)",
        ("elbo", "low_var"),
    ),
    batch_split=(
        None,
        "kappa, the share of each batch for the diffusion term (None: 1, 0 or 0.5 by alpha_0)",
        float,
    ),
    # optimizer
    max_iters=(2400, "training iterations"),
    learning_rate=(3e-3, "peak learning rate (AdamW)"),
    warmup_iters=(200, "linear warmup iterations"),
    lr_schedule=(
        "cosine",
        "after warmup: constant, or cosine to min_lr at max_iters",
        ("constant", "cosine"),
    ),
    min_lr=(3e-4, "the cosine schedule's final learning rate"),
    weight_decay=(0.0, "AdamW weight decay"),
    beta1=(0.9, "AdamW beta1"),
    beta2=(0.99, "AdamW beta2"),
    grad_clip=(1.0, "clip the gradient norm to this (0 = off)"),
    gradient_accumulation_steps=(
        1,
        "micro-batches per iteration, over all processes (rounded up to a multiple)",
    ),
    ema=(0.0, "EMA decay of the weights used for eval and sampling (0 = off; the paper: 0.9999)"),
    # system
    **cli.SYSTEM,  # device, dtype
    compile=(None, "torch.compile the model (None: on for CUDA on Linux)", bool),
    seed=(1337, "seed of every random draw"),
)
# the flags that other commands now take
MOVED = {
    "eval_only": "a full validation pass is " + checkpoint.paper_ring("python -m paper.likelihood"),
    "num_orders": "the IW bound is " + checkpoint.paper_ring("python -m paper.likelihood"),
    "eval_windows": checkpoint.paper_ring("python -m paper.likelihood --eval_windows=N"),
    "preset": "the paper's runs are preset files: "
    + checkpoint.paper_ring("python train.py @paper/presets/owt.txt"),
}
MODEL_KEYS = [f.name for f in fields(eso.EsoConfig) if f.name != "vocab_size"]
# the settings that a resume takes from the command line, not from the checkpoint
PER_RUN = {"init_from", "out_dir", "device", "dtype", "compile"}


def check(c):
    """One line for the first setting that cannot work (EsoConfig checks the model's)."""
    rules = [
        (c.batch_size >= 1, "--batch_size must be at least 1"),
        (c.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be at least 1"),
        (c.block_size >= 2, "--block_size must be at least 2"),
        (c.max_iters >= 0 and c.warmup_iters >= 0, "--max_iters and --warmup_iters must be >= 0"),
        (
            min(c.eval_interval, c.eval_iters, c.log_interval) >= 1,
            "--eval_interval, --eval_iters and --log_interval must be at least 1",
        ),
        (c.learning_rate > 0 and c.min_lr >= 0, "--learning_rate must be > 0, --min_lr >= 0"),
        (0 <= c.ema < 1, "--ema must lie in [0, 1)"),
        (c.grad_clip >= 0 and c.weight_decay >= 0, "--grad_clip and --weight_decay must be >= 0"),
        (0 <= c.beta1 < 1 and 0 <= c.beta2 < 1, "--beta1 and --beta2 must lie in [0, 1)"),
    ]
    for ok, message in rules:
        if not ok:
            raise cli.UserError(message)


# -----------------------------------------------------------------------------
# The pieces of a run, in the order main uses them


def load_data(c, master, ddp):
    """(train, val, meta) of data/NAME; the default corpus is prepared on first use."""
    if c.dataset == "python_prose" and master and not common.is_prepared("python_prose"):
        print("data/python_prose is not prepared yet: preparing it now (a few seconds, once)")
        from data import writing  # only for this, once
        from data.python_prose import prepare as python_prose

        build = functools.partial(python_prose.prepare, "python_prose")
        writing.prepare("python_prose", build, overwrite=True)
    if ddp:
        dist.barrier()
    return common.load_dataset(c.dataset, c.block_size, require_train=True)


def get_lr(it, c):
    """Linear warmup to learning_rate, then constant or cosine down to min_lr at max_iters."""
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    if c.lr_schedule == "constant":
        return c.learning_rate
    progress = min(1.0, (it - c.warmup_iters) / max(1, c.max_iters - c.warmup_iters))
    return c.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (c.learning_rate - c.min_lr)


@torch.no_grad()
def ema_update(ema_model, model, decay, it):
    """ema <- d ema + (1 - d) model, with the paper's warmup of the decay:
    d = min(decay, (1 + it) / (10 + it))."""
    d = min(decay, (1 + it) / (10 + it))
    for p_ema, p in zip(ema_model.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - d)


@torch.no_grad()
def estimate_loss(model, forward, val, c, ctx, rank, world):
    """The per-token NELBO (elbo weights, the training alpha_0 and kappa) of a fixed validation
    set: eval_iters batches of batch_size windows at offsets drawn once (seed 0), the same noise
    at every call, shared out over processes. forward: the model's forward, compiled or not (the
    draws are made outside it). Summed in float64, on every device."""
    model.eval()
    device = model.wte.weight.device
    L = model.config.block_size
    offsets = torch.randint(
        len(val) - L, (c.eval_iters, c.batch_size), generator=torch.Generator().manual_seed(0)
    )
    totals = np.zeros(3)  # nelbo, diffusion, sequential, in float64 (MPS has no float64 tensors)
    for i in range(rank, c.eval_iters, world):
        x = get_batch(val, offsets[i], L, device)
        with ctx:
            draws = model.draws(x, torch.Generator(device).manual_seed(1000 + i))
            loss, parts = forward(x, draws, "elbo")
        totals += [loss.item(), parts["diffusion"].item(), parts["sequential"].item()]
    if world > 1:
        reduce_device = device if device.type == "cuda" else "cpu"
        summed = torch.tensor(totals, dtype=torch.float64, device=reduce_device)
        dist.all_reduce(summed)
        totals = summed.cpu().numpy()
    model.train()
    nelbo, diffusion, sequential = (totals / c.eval_iters).tolist()
    ppl = math.exp(min(nelbo, 700))
    return {"nelbo": nelbo, "ppl": ppl, "diffusion": diffusion, "sequential": sequential}


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM, caught while training: the current iteration finishes, a
    checkpoint is saved, and the run exits with 128 + the signal. The old handlers come back on
    the way out."""

    def __enter__(self):
        self.caught = []
        self.previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.catch)
        return self

    def catch(self, signum, frame):
        self.caught.append(signum)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def first(self):
        if self.caught:
            return self.caught[0]
        return signal.SIGTERM  # another process caught it


class Diverged(cli.UserError):
    """A loss that went NaN or infinite: one line on stderr, exit status 1."""

    status = 1


def save(path, model, ema_model, optimizer, scaler, c, meta, counters):
    """The checkpoint: the weights, the EMA, the optimizer, the settings and the counters
    (iter_num, best_val_loss, train_seconds), written atomically."""
    extra = dict(
        ema=ema_model.state_dict() if ema_model is not None else None,
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict() if scaler.is_enabled() else None,
        dataset=c.dataset,
        eos=meta.get("eos"),
        train_config={k: v for k, v in vars(c).items() if k in CONFIG},
        global_batch=c.batch_size * c.gradient_accumulation_steps,
        versions={"torch": str(torch.__version__), "python": sys.version.split()[0]},
    )
    extra |= {k: v for k, v in counters.items() if k != "iter_num"}
    if "vocab_file" in meta:  # a WordPiece vocabulary travels with the model (LM1B's)
        extra["vocab"] = common.dataset_tokenizer(c.dataset).vocab
    state = checkpoint.state(model, model.config, meta["tokenizer"], counters["iter_num"], **extra)
    checkpoint.save(path, state)


def log(out_dir, record):
    """A line of out_dir/log.jsonl."""
    with open(out_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def describe(c, model, meta, accum, world, iter_num):
    """The two lines that open a run: the model, and the batch and data."""
    config = model.config
    global_batch = c.batch_size * c.gradient_accumulation_steps
    print(
        f"Eso-LM ({config.variant}) {model.num_params() / 1e6:.2f}M parameters: {config.n_layer} "
        f"layers x {config.n_embd}, L={config.block_size}, vocab {config.vocab_size} + [MASK]; "
        f"alpha_0={config.alpha_0}, batch split kappa={config.batch_split} ({config.loss_type})"
    )
    tokens = global_batch * config.block_size
    line = (
        f"global batch {global_batch} sequences = batch_size {c.batch_size} x accumulation "
        f"{accum} x world size {world}: {tokens:,} tokens per iteration; "
        f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
        f"({meta['tokenizer']}); {c.device}, {c.dtype}"
    )
    if c.compile:
        line += ", compiled"
    if iter_num:
        line += f"; resuming at step {iter_num}"
    print(line)


# -----------------------------------------------------------------------------


def main(argv):
    # settings
    c, given = cli.parse(CONFIG, argv, __doc__, moved=MOVED)
    check(c)
    rank, world, device = cli.start_distributed(c.device)
    master = rank == 0
    ddp = dist.is_available() and dist.is_initialized()
    c.device = str(device)
    c.dtype, ctx = cli.precision(device, c.dtype)
    if c.compile is None:
        c.compile = device.type == "cuda" and sys.platform == "linux"
    out_dir = Path(c.out_dir)
    ckpt_path = out_dir / "ckpt.pt"

    # a model to start from: a checkpoint decides the model and, for a resume, the run's settings
    model = None
    ckpt = None
    if c.init_from != "scratch":
        source = ckpt_path
        if c.init_from != "resume":
            source = Path(c.init_from)
        model, ckpt = checkpoint.load(source, device, ema=False)
        for key in MODEL_KEYS:
            if key in given and getattr(c, key) != getattr(model.config, key):
                raise cli.UserError(
                    f"--{key}={getattr(c, key)} conflicts with the checkpoint ({key}="
                    f"{getattr(model.config, key)}): drop the flag, or train from scratch in "
                    "another --out_dir"
                )
        settings = {"dataset": ckpt.get("dataset")}
        if c.init_from == "resume":
            settings = ckpt.get("train_config", {})
        for key, value in settings.items():
            if key in CONFIG and value is not None and key not in given | PER_RUN:
                setattr(c, key, value)
        for key in MODEL_KEYS:
            setattr(c, key, getattr(model.config, key))
        model.train()

    # data, and a fresh model for its vocabulary (the same initial weights on every process)
    train_data, val, meta = load_data(c, master, ddp)
    if model is None:
        settings = {key: getattr(c, key) for key in MODEL_KEYS}
        try:
            config = eso.EsoConfig(vocab_size=meta["vocab_size"], **settings)
        except ValueError as e:
            raise cli.UserError(f"--{e}") from None
        torch.manual_seed(c.seed)
        model = eso.EsoLM(config).to(device)
    config = model.config
    c.batch_split = config.batch_split
    if ckpt is not None:
        same_vocabulary = config.vocab_size == meta["vocab_size"]
        same_tokenizer = ckpt["tokenizer"] == meta["tokenizer"]
        if not (same_vocabulary and same_tokenizer):
            raise cli.UserError(
                f"data/{c.dataset} uses {meta['tokenizer']} ({meta['vocab_size']} ids) but the "
                f"checkpoint was trained with {ckpt['tokenizer']} ({config.vocab_size} ids)"
            )
    if 0 < config.batch_split < 1 and c.batch_size < 2:
        raise cli.UserError(
            f"--batch_size must be at least 2 when batch_split is {config.batch_split} (both "
            "terms need rows)"
        )

    # optimizer, gradient scaler and EMA; a resume takes their state and its global batch
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=c.learning_rate,
        betas=(c.beta1, c.beta2),
        weight_decay=c.weight_decay,
        fused=device.type == "cuda",
    )
    scaler = torch.amp.GradScaler("cuda", enabled=c.dtype == "float16")
    ema_model = None
    if c.ema > 0 or (ckpt and ckpt.get("ema")):
        ema_model = copy.deepcopy(model).requires_grad_(False)
        if ckpt and ckpt.get("ema"):
            ema_model.load_state_dict(ckpt["ema"])
    eval_model = model  # what validation scores: the EMA weights, when there are some
    if ema_model is not None:
        eval_model = ema_model
    accum = -(-c.gradient_accumulation_steps // world)  # micro-batches per process
    iter_num = 0
    best_val = float("inf")
    train_seconds = 0.0  # spent training (not evaluating)
    if c.init_from == "resume":
        if "optimizer" not in ckpt:
            raise cli.UserError(
                f"{ckpt_path} holds weights but no training state to resume: start from its "
                f"weights with --init_from={ckpt_path} and another --out_dir"
            )
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        iter_num = ckpt["iter_num"]
        best_val = ckpt.get("best_val_loss", best_val)
        train_seconds = ckpt.get("train_seconds", 0.0)
        global_batch = ckpt.get("global_batch")
        if global_batch and "gradient_accumulation_steps" not in given:
            # the same global batch on this process count
            accum, rest = divmod(global_batch, c.batch_size * world)
            if rest or not accum:
                raise cli.UserError(
                    f"the checkpoint's global batch of {global_batch} sequences does not split "
                    f"into micro-batches of {c.batch_size} on each of {world} process(es): "
                    "resume with a --batch_size and a process count whose product divides it"
                )
    c.gradient_accumulation_steps = accum * world  # as used, over all processes
    ckpt = None  # its tensors live in the models now

    # compile (one graph per shape: the loss's draws are made outside it, and dynamic=False
    # keeps Dynamo from tracing a second, symbolic-shape graph when a shape changes), then DDP
    step_model = model
    eval_forward = eval_model
    if c.compile:
        step_model = torch.compile(model, dynamic=False)
        eval_forward = torch.compile(eval_model, dynamic=False)
    if ddp:
        device_ids = [device.index] if device.type == "cuda" else None
        step_model = torch.nn.parallel.DistributedDataParallel(step_model, device_ids=device_ids)

    # the loop: evaluate and save every eval_interval iterations and at the end, log every
    # log_interval, and on a signal finish the iteration, save and stop
    if master:  # fail now, not after hours of training: write and remove a file there
        probe = out_dir / f".write-test-{os.getpid()}"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise cli.UserError(
                f"cannot write to --out_dir {out_dir} ({e.strerror}): pick a writable folder"
            ) from None
    if c.init_from == "resume" and iter_num >= c.max_iters:
        res = estimate_loss(eval_model, eval_forward, val, c, ctx, rank, world)
        if master:
            print(
                f"{ckpt_path} has already finished its {iter_num} iterations (--max_iters="
                f"{c.max_iters}): nothing to train; raise --max_iters to train on. Its "
                f"validation NELBO is {res['nelbo']:.4f} (perplexity {res['ppl']:.2f})"
            )
        return 0
    if master:
        describe(c, model, meta, accum, world, iter_num)
    global_batch = c.batch_size * c.gradient_accumulation_steps
    batches = Batches(len(train_data), c.block_size, global_batch, c.seed, "windows" in meta)
    bar = tqdm(
        total=c.max_iters,
        initial=iter_num,
        disable=not (master and sys.stderr.isatty()),
        dynamic_ncols=True,
        unit="it",
    )  # without a terminal: plain log lines instead
    resumed_at = iter_num
    t_last = time.time()  # tokens/s and train_seconds count training time only
    it_last = iter_num
    with StopSignals() as signals:
        while True:
            # evaluate and save
            at_interval = iter_num % c.eval_interval == 0 and iter_num != resumed_at
            if at_interval or iter_num == c.max_iters:
                train_seconds += time.time() - t_last
                res = estimate_loss(eval_model, eval_forward, val, c, ctx, rank, world)
                best_val = min(best_val, res["nelbo"])
                if master:
                    print(
                        f"step {iter_num}: val NELBO {res['nelbo']:.4f} (diffusion "
                        f"{res['diffusion']:.4f} + sequential {res['sequential']:.4f}), "
                        f"perplexity {res['ppl']:.2f}",
                        flush=True,
                    )
                    log(out_dir, {"iter": iter_num, "val": res, "train_s": round(train_seconds, 3)})
                    counters = dict(iter_num=iter_num, best_val_loss=best_val)
                    counters["train_seconds"] = train_seconds
                    save(ckpt_path, model, ema_model, optimizer, scaler, c, meta, counters)
                t_last = time.time()
                it_last = iter_num
            if iter_num >= c.max_iters:
                break

            # one iteration: the global batch's micro-batches, one update
            lr = get_lr(iter_num, c)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # this iteration's sequences: a function of (seed, iteration), shared out by micro-batch
            offsets = batches.offsets(iter_num)
            stats = torch.zeros(4, device=device)  # loss, its two parts, a signal caught
            for micro in range(accum):
                slot = micro * world + rank  # this micro-batch's place in the global batch
                rows = offsets[slot * c.batch_size : (slot + 1) * c.batch_size]
                x = get_batch(train_data, rows, c.block_size, device)
                torch.manual_seed(hash((c.seed, iter_num, slot)) % 2**63)  # dropout's draws
                draws = model.draws(x, seeded(device, c.seed, iter_num, slot, 1))
                sync = nullcontext()
                if ddp and micro < accum - 1:
                    sync = step_model.no_sync()  # all-reduce the gradients once, at the last
                with sync:
                    with ctx:
                        loss, parts = step_model(x, draws)
                    scaler.scale(loss / accum).backward()
                terms = torch.stack([loss.detach(), parts["diffusion"], parts["sequential"]])
                stats[:3] += terms.float() / accum
            stats[3] = float(bool(signals.caught))
            if ddp:  # the global batch's loss, and whether any process caught a signal
                dist.all_reduce(stats)
                stats[:3] /= world
            loss, diffusion, sequential, stop = stats.tolist()
            if not math.isfinite(loss):
                raise Diverged(
                    f"loss is {loss} at step {iter_num}: stopping; the last good checkpoint "
                    f"({ckpt_path}) is kept. Try a lower --learning_rate or --grad_clip=1"
                )
            if c.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema_model is not None:
                ema_update(ema_model, model, c.ema, iter_num)
            iter_num += 1
            bar.update(1)

            # log
            if iter_num % c.log_interval == 0 or stop:
                now = time.time()
                tok_s = global_batch * c.block_size * (iter_num - it_last) / max(now - t_last, 1e-9)
                train_seconds += now - t_last
                t_last = now
                it_last = iter_num
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                if master and bar.disable:
                    print(
                        f"iter {iter_num}: loss {loss:.4f} (diffusion {diffusion:.4f} + "
                        f"sequential {sequential:.4f}), lr {lr:.2e}, {tok_s:,.0f} tokens/s",
                        flush=True,
                    )
                if master:
                    record = {"iter": iter_num, "loss": loss, "diffusion": diffusion}
                    record |= {"sequential": sequential, "lr": lr, "tok_s": tok_s}
                    log(out_dir, record | {"train_s": round(train_seconds, 3)})

            # stop on a signal, with a checkpoint to resume from
            if stop:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                bar.close()
                sig = signals.first()
                if master:
                    counters = dict(iter_num=iter_num, best_val_loss=best_val)
                    counters["train_seconds"] = train_seconds
                    save(ckpt_path, model, ema_model, optimizer, scaler, c, meta, counters)
                    print(
                        f"caught {signal.Signals(sig).name} at step {iter_num}: saved "
                        f"{ckpt_path}; continue with --init_from=resume"
                    )
                if ddp:  # leave together, once the first process has saved
                    dist.barrier()
                return 128 + sig
    bar.close()
    if ddp:  # leave together, once the first process has saved
        dist.barrier()
    if master:
        print(
            f"done: {iter_num} iterations, best val NELBO {best_val:.4f} (perplexity "
            f"{math.exp(min(best_val, 700)):.2f}); checkpoint in {ckpt_path}. Sample with: "
            f"python sample.py --out_dir={c.out_dir}"
        )
    return 0


if __name__ == "__main__":
    cli.run(main, "train.py")
