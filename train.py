"""
Train an Eso-LM.

  python train.py                                       # CPU-sized default on the offline corpus
  python train.py --alpha_0=0.25 --max_iters=5000       # any default below, as --key=value
  python train.py --init_from=resume                    # continue out/ckpt.pt where it stopped
  python train.py --eval_only=True --num_orders=100     # NELBO and IW bound of out/ckpt.pt
  python train.py --eval_only=True --init_from=FILE     # the same for another model (the authors')
  torchrun --standalone --nproc_per_node=4 train.py     # DDP: NCCL on GPUs, gloo on CPUs

Batch: each iteration takes batch_size x gradient_accumulation_steps sequences in total, shared
out over the processes in micro-batches of batch_size (nanoGPT's convention; the accumulation
steps are rounded up to a multiple of the process count). Every random draw of an iteration
(which sequences, the noise of the loss, dropout) is a function of (seed, iteration,
micro-batch), so a run gives the same result on 1 or N processes and resumes exactly, on any
number of processes. Ctrl-C or SIGTERM saves a checkpoint before exiting; checkpoints are written
atomically and hold only tensors and plain values (they load with torch.load(weights_only=True)).

Evaluation: during training, the NELBO of a fixed quick set (eval_iters x batch_size windows,
the same noise every time); with --eval_only, a full pass over the validation split as the paper
reports it (validation.py).
"""

import copy
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoint
import cli
import eso
import validation
from data.prepare import dataset_tokenizer, is_prepared, load_dataset, prepare

# -----------------------------------------------------------------------------
# Defaults: each is a flag, --key=value; `python train.py --help` lists them with their notes.
CONFIG = dict(
    # I/O
    out_dir=("out", "checkpoint folder (sample.py reads it)"),
    dataset=(
        "python_prose",
        "data/NAME, prepared by data/prepare.py (the default is prepared on first use)",
    ),
    init_from=(
        "scratch",
        "scratch; resume (out_dir/ckpt.pt); or a model: a checkpoint file (ours or an authors' "
        "Lightning file), an authors' Hugging Face folder or hub id (with --alpha_0): its "
        "weights, a fresh optimizer",
    ),
    eval_interval=(400, "iterations between validation runs and checkpoints"),
    eval_iters=(20, "validation batches during training (the same windows and noise every time)"),
    log_interval=(10, "iterations between log lines (out_dir/log.jsonl)"),
    eval_only=(
        False,
        "evaluate out_dir/ckpt.pt (or --init_from) in a full pass over the validation split, "
        "then exit",
    ),
    eval_windows=(0, "with eval_only: score this many windows (a fixed subset), not all (0)"),
    num_orders=(
        0,
        "with eval_only: orders K of the importance-weighted likelihood bound (0 = skip)",
    ),
    preset=(
        "",
        "owt or lm1b: the paper's OpenWebText or LM1B run (explicit flags still win)",
        ("", "owt", "lm1b"),
    ),
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
# The paper's runs (App. C.3 and the authors' scripts/esolm/train_*.sh): a 12 x 768 model with
# biases (their adaLN folds into them), global batch 512, AdamW lr 3e-4 constant after 2,500
# warmup steps, EMA 0.9999, dropout 0.1, bf16.
PAPER = dict(
    n_layer=12,
    n_head=12,
    n_embd=768,
    bias=True,
    dropout=0.1,
    batch_size=64,
    gradient_accumulation_steps=8,
    learning_rate=3e-4,
    lr_schedule="constant",
    warmup_iters=2500,
    ema=0.9999,
    weight_decay=0.0,
    beta2=0.999,
    eval_interval=10_000,
    eval_iters=50,
)
PRESETS = {
    # OpenWebText, L = 1024, 250K steps; low_var at alpha_0 = 1 (train_owt_esolmb_alpha0_1.sh)
    "owt": PAPER | dict(dataset="openwebtext", block_size=1024, max_iters=250_000),
    # LM1B, L = 128, 1M steps; elbo even at alpha_0 = 1 (train_lm1b_esolmb_alpha0_1.sh)
    "lm1b": PAPER | dict(dataset="lm1b", block_size=128, max_iters=1_000_000),
}
MODEL_KEYS = [f.name for f in fields(eso.EsoConfig) if f.name != "vocab_size"]
# the settings of a run that a resume or an evaluation takes from the command line, not the file
PER_RUN = {"init_from", "eval_only", "eval_windows", "num_orders", "out_dir", "device", "dtype"}
PER_RUN |= {"compile"}


class Diverged(cli.UserError):
    """A loss that went NaN or infinite: one line on stderr, exit status 1."""

    status = 1


def apply_preset(c, given):
    """The preset's settings, where the user gave no flag of their own."""
    if not c.preset:
        return
    for key, value in PRESETS[c.preset].items():
        if key not in given:
            setattr(c, key, value)
    if c.preset == "owt" and c.alpha_0 == 1 and "loss_type" not in given:
        c.loss_type = "low_var"


def check(c):
    """One line for the first setting that cannot work."""
    rules = [
        (
            c.batch_size >= 1 and c.gradient_accumulation_steps >= 1,
            "--batch_size and --gradient_accumulation_steps must be at least 1",
        ),
        (c.block_size >= 2, "--block_size must be at least 2"),
        (
            c.max_iters >= 0 and c.warmup_iters >= 0,
            "--max_iters and --warmup_iters must not be negative",
        ),
        (
            min(c.eval_interval, c.eval_iters, c.log_interval) >= 1,
            "--eval_interval, --eval_iters and --log_interval must be at least 1",
        ),
        (
            c.learning_rate > 0 and c.min_lr >= 0,
            "--learning_rate must be above 0 and --min_lr not below 0",
        ),
        (0 <= c.ema < 1, "--ema must lie in [0, 1)"),
        (
            c.grad_clip >= 0 and c.weight_decay >= 0,
            "--grad_clip and --weight_decay must not be negative",
        ),
        (0 <= c.beta1 < 1 and 0 <= c.beta2 < 1, "--beta1 and --beta2 must lie in [0, 1)"),
        (c.num_orders >= 0, "--num_orders must not be negative"),
        (c.eval_windows >= 0, "--eval_windows must not be negative"),
        (0 <= c.alpha_0 <= 1, f"--alpha_0 must lie in [0, 1], got {c.alpha_0}"),
    ]
    for ok, message in rules:
        if not ok:
            raise cli.UserError(message)


# -----------------------------------------------------------------------------
# The processes


@dataclass
class Process:
    """This process's place in the run: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE."""

    rank: int
    world: int
    device: torch.device
    ddp: bool

    @property
    def master(self):
        return self.rank == 0

    def say(self, *args, **kwargs):
        """print, on the first process only."""
        if self.master:
            print(*args, **kwargs)

    def barrier(self):
        if self.ddp:
            dist.barrier()


def start_process(c):
    """This process, with the process group started under torchrun."""
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = cli.device(c.device)
    if not ddp:
        return Process(0, 1, device, False)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Process(rank, world, device, True)


def seeded(device, *key):
    """A generator for one draw of the run; its seed depends only on the key (integers)."""
    return torch.Generator(device).manual_seed(hash(key) % 2**63)


# -----------------------------------------------------------------------------
# The model and the data


def load_or_build(c, given, proc):
    """(raw model, checkpoint dict or None, its source): from scratch (built once the data's
    vocabulary is known: None), or from a checkpoint, which then decides the model and, for a
    resume, the run's settings."""
    ckpt_path = Path(c.out_dir) / "ckpt.pt"
    if c.init_from == "scratch" and not c.eval_only:
        return None, None, None
    source = Path(c.init_from)
    if c.init_from in ("scratch", "resume"):
        source = ckpt_path
    alpha_0 = c.alpha_0 if "alpha_0" in given else None  # for the authors' HF models
    model, ckpt = cli.load_model(source, proc.device, ema=False, alpha_0=alpha_0)
    config = model.config
    for key in MODEL_KEYS:
        if key in given and getattr(c, key) != getattr(config, key):
            raise cli.UserError(
                f"--{key}={getattr(c, key)} conflicts with the checkpoint ({key}="
                f"{getattr(config, key)}): drop the flag, or train from scratch in another "
                "--out_dir"
            )
    settings = {"dataset": ckpt.get("dataset")}
    if source == ckpt_path:
        settings = ckpt.get("train_config", {})
    for key, value in settings.items():
        if key in CONFIG and value is not None and key not in given | PER_RUN:
            setattr(c, key, value)
    for key in MODEL_KEYS:
        setattr(c, key, getattr(config, key))
    return model, ckpt, source


def load_data(c, proc):
    """(train, val, meta) of data/NAME; the default corpus is prepared on first use."""
    is_default = c.dataset == "python_prose"
    if is_default and proc.master and not is_prepared("python_prose"):
        print("data/python_prose is not prepared yet: preparing it now (a few seconds, once)")
        prepare("python_prose", overwrite=True)
    proc.barrier()
    return load_dataset(c.dataset, c.block_size)


def build_model(c, meta, proc):
    """A fresh model for the data's vocabulary, with the same initial weights on every
    process."""
    settings = {key: getattr(c, key) for key in MODEL_KEYS}
    try:
        config = eso.EsoConfig(vocab_size=meta["vocab_size"], **settings)
    except ValueError as e:
        raise cli.UserError(f"--{e}") from None
    c.batch_split = config.batch_split
    torch.manual_seed(c.seed)
    return eso.EsoLM(config).to(proc.device)


def check_fits_data(c, model, ckpt, meta):
    """The model, the data and the settings agree, or one line."""
    config = model.config
    if ckpt is not None:
        same = config.vocab_size == meta["vocab_size"] and ckpt["tokenizer"] == meta["tokenizer"]
        if not same:
            raise cli.UserError(
                f"data/{c.dataset} uses {meta['tokenizer']} ({meta['vocab_size']} ids) but the "
                f"checkpoint was trained with {ckpt['tokenizer']} ({config.vocab_size} ids)"
            )
    if c.num_orders and config.variant != "B" and config.alpha_0 > 0:
        raise cli.UserError(
            "--num_orders needs a variant B model, or alpha_0 = 0 (variant A's clean tokens "
            "change as tokens arrive)"
        )
    if 0 < config.batch_split < 1 and c.batch_size < 2:
        raise cli.UserError(
            f"--batch_size must be at least 2 when batch_split is {config.batch_split} "
            "(both terms need rows)"
        )
    if not c.eval_only and meta.get("train_tokens", 0) == 0:
        raise cli.UserError(
            f"data/{c.dataset} is an evaluation set (it has no training split): use it with "
            "--eval_only=True"
        )


class Batches:
    """The start of every sequence of each iteration (its global batch), a function of (seed,
    iteration) only. Windowed data (the authors' wrapped chunks) gives whole windows, each epoch
    a fresh shuffle, as their loader does; a stream gives random offsets."""

    def __init__(self, n_tokens, block_size, global_batch, seed, windows):
        self.n_tokens = n_tokens
        self.L = block_size
        self.global_batch = global_batch
        self.seed = seed
        self.windows = windows
        self.orders = {}  # epoch -> the order of the windows in it (the last two kept)

    def offsets(self, it):
        if not self.windows:
            generator = seeded("cpu", self.seed, it)
            return torch.randint(self.n_tokens - self.L, (self.global_batch,), generator=generator)
        n = self.n_tokens // self.L
        first = it * self.global_batch
        index = torch.arange(first, first + self.global_batch)
        epoch = index // n
        offsets = torch.empty_like(index)
        for e in epoch.unique().tolist():  # a batch can straddle two epochs
            inside = epoch == e
            offsets[inside] = self.epoch_order(n, e)[index[inside] % n] * self.L
        return offsets

    def epoch_order(self, n, epoch):
        """The order of the n windows in an epoch, a function of (seed, epoch)."""
        if epoch not in self.orders:
            if len(self.orders) >= 2:
                self.orders.pop(min(self.orders))
            generator = seeded("cpu", self.seed, -1, epoch)
            self.orders[epoch] = torch.randperm(n, generator=generator)
        return self.orders[epoch]


def get_batch(data, offsets, block_size, device):
    """The sequences of block_size tokens that start at `offsets`, as a (len(offsets), L)
    LongTensor."""
    index = offsets.numpy()[:, None] + np.arange(block_size)
    x = torch.from_numpy(data[index].astype(np.int64))
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


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


# -----------------------------------------------------------------------------
# Evaluation only


def evaluate_only(c, model, ckpt, source, val, meta, ctx, proc):
    """--eval_only: the NELBO (and the IW bound) in a full pass over the validation windows, or
    a fixed subset of --eval_windows of them; a JSON line at the end."""
    if ckpt.get("ema"):  # the EMA weights are the ones evaluated (the paper's)
        model.load_state_dict(ckpt["ema"])
    config = model.config
    windows = validation.windows(val, config.block_size)
    chosen = validation.subset(len(windows), c.eval_windows)
    n_tokens = len(chosen) * config.block_size
    weights = "EMA" if ckpt.get("ema") else "raw"
    what = f"{len(chosen):,} of {len(windows):,} windows" if c.eval_windows else "a full pass"
    proc.say(
        f"{source} (step {ckpt['iter_num']}, alpha_0={config.alpha_0}, kappa={config.batch_split},"
        f" variant {config.variant}, {weights} weights) on data/{c.dataset} val, {what}: "
        f"{len(chosen):,} windows of {config.block_size} tokens ({n_tokens:,} tokens)",
        flush=True,
    )
    res = validation.full_pass(
        model, windows, chosen, c.batch_size, ctx, proc.rank, proc.world, c.num_orders, c.seed
    )
    proc.say(
        f"  NELBO {res['nelbo']:.4f} nats/token (diffusion {res['diffusion']:.4f} + sequential "
        f"{res['sequential']:.4f}), perplexity {res['ppl']:.2f}"
    )
    if c.num_orders:
        proc.say(
            f"  IW bound (K={c.num_orders}) {res['iw_bound']:.4f} nats/token, perplexity "
            f"{res['iw_ppl']:.2f}"
        )
    summary = {"checkpoint": str(source), "step": ckpt["iter_num"], "dataset": c.dataset}
    summary |= {"alpha_0": config.alpha_0, "variant": config.variant, **res}
    proc.say(json.dumps(summary))
    proc.barrier()
    return 0


# -----------------------------------------------------------------------------
# Training


@dataclass
class Run:
    """What a training run holds and changes as it goes."""

    raw_model: eso.EsoLM  # the model itself (what is saved)
    model: torch.nn.Module  # what the steps call: the raw model, compiled and/or wrapped in DDP
    ema_model: eso.EsoLM | None  # the EMA of the weights, used for evaluation and sampling
    eval_forward: object  # the evaluation's forward (compiled or not)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    accum: int  # micro-batches per process and iteration
    iter_num: int = 0
    best_val: float = float("inf")
    train_seconds: float = 0.0  # spent training (not evaluating)

    @property
    def eval_model(self):
        if self.ema_model is not None:
            return self.ema_model
        return self.raw_model


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


def start_run(c, given, raw_model, ckpt, proc):
    """The run's optimizer, scaler, EMA and step functions; a resume takes the checkpoint's
    state, with the global batch it had on any process count."""
    device = proc.device
    raw_model.train()
    has_ema = bool(ckpt and ckpt.get("ema"))
    ema_model = None
    if c.ema > 0 or has_ema:
        ema_model = copy.deepcopy(raw_model).requires_grad_(False)
    if has_ema:
        ema_model.load_state_dict(ckpt["ema"])
    optimizer = torch.optim.AdamW(
        raw_model.parameters(),
        lr=c.learning_rate,
        betas=(c.beta1, c.beta2),
        weight_decay=c.weight_decay,
        fused=device.type == "cuda",
    )
    scaler = torch.amp.GradScaler("cuda", enabled=c.dtype == "float16")
    accum = -(-c.gradient_accumulation_steps // proc.world)
    run = Run(raw_model, raw_model, ema_model, raw_model, optimizer, scaler, accum)
    if c.init_from == "resume":
        resume(run, c, given, ckpt, proc)
    c.gradient_accumulation_steps = run.accum * proc.world  # as used, over all processes
    # one graph per shape: the loss's draws are made outside it (EsoLM.draws), and dynamic=False
    # keeps Dynamo from tracing a second, symbolic-shape graph when a shape changes
    if c.compile:
        run.model = torch.compile(raw_model, dynamic=False)
        run.eval_forward = torch.compile(run.eval_model, dynamic=False)
    else:
        run.eval_forward = run.eval_model
    if proc.ddp:
        device_ids = [device.index] if device.type == "cuda" else None
        run.model = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=device_ids)
    return run


def resume(run, c, given, ckpt, proc):
    """The optimizer, scaler and counters of the checkpoint; its global batch on this process
    count, unless the user set the accumulation."""
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.iter_num = ckpt["iter_num"]
    run.best_val = ckpt.get("best_val_loss", float("inf"))
    run.train_seconds = ckpt.get("train_seconds", 0.0)
    global_batch = ckpt.get("global_batch")
    if not global_batch or "gradient_accumulation_steps" in given:
        return
    accum, rest = divmod(global_batch, c.batch_size * proc.world)
    if rest or not accum:
        raise cli.UserError(
            f"the checkpoint's global batch of {global_batch} sequences does not split into "
            f"micro-batches of {c.batch_size} on each of {proc.world} process(es): resume with a "
            "--batch_size and a process count whose product divides it"
        )
    run.accum = accum


def save(run, c, meta, proc):
    """out_dir/ckpt.pt: the weights, the EMA, the optimizer, the settings and the counters."""
    if not proc.master:
        return
    config = run.raw_model.config
    extra = dict(
        ema=run.ema_model.state_dict() if run.ema_model is not None else None,
        optimizer=run.optimizer.state_dict(),
        scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
        dataset=c.dataset,
        eos=meta.get("eos"),
        train_config={k: v for k, v in vars(c).items() if k in CONFIG},
        global_batch=c.batch_size * c.gradient_accumulation_steps,
        best_val_loss=run.best_val,
        train_seconds=run.train_seconds,
        versions={"torch": str(torch.__version__), "python": sys.version.split()[0]},
    )
    if "vocab_file" in meta:  # a WordPiece vocabulary travels with the model (LM1B's)
        extra["vocab"] = dataset_tokenizer(c.dataset).vocab
    state = checkpoint.state(run.raw_model, config, meta["tokenizer"], run.iter_num, **extra)
    checkpoint.save(Path(c.out_dir) / "ckpt.pt", state)


def log(record, c, proc):
    """A line of out_dir/log.jsonl."""
    if proc.master:
        with open(Path(c.out_dir) / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def check_writable(out, proc):
    """Fail now, not after hours of training, if the checkpoint cannot be written."""
    if not proc.master:
        return
    probe = out / f".write-test-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise cli.UserError(
            f"cannot write to --out_dir {out} ({e.strerror}): pick a writable folder"
        ) from None


def validate(run, c, val, ctx, proc):
    """The quick validation set's NELBO, logged; the best so far kept."""
    res = validation.quick(
        run.eval_model,
        val,
        c.eval_iters,
        c.batch_size,
        ctx,
        proc.rank,
        proc.world,
        forward=run.eval_forward,
    )
    run.best_val = min(run.best_val, res["nelbo"])
    proc.say(
        f"step {run.iter_num}: val NELBO {res['nelbo']:.4f} (diffusion {res['diffusion']:.4f} + "
        f"sequential {res['sequential']:.4f}), perplexity {res['ppl']:.2f}",
        flush=True,
    )
    log({"iter": run.iter_num, "val": res, "train_s": round(run.train_seconds, 3)}, c, proc)


def train_step(run, c, train, batches, proc, ctx, signals):
    """One iteration: the global batch's micro-batches, one update. Returns (loss, diffusion
    part, sequential part, lr, whether any process caught a signal)."""
    L = c.block_size
    B = c.batch_size
    lr = get_lr(run.iter_num, c)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    # this iteration's sequences: a function of (seed, iteration) only, shared out by micro-batch
    offsets = batches.offsets(run.iter_num)
    stats = torch.zeros(4, device=proc.device)  # loss, its two parts, a signal caught
    for micro in range(run.accum):
        slot = micro * proc.world + proc.rank  # this micro-batch's place in the global batch
        x = get_batch(train, offsets[slot * B : (slot + 1) * B], L, proc.device)
        torch.manual_seed(hash((c.seed, run.iter_num, slot)) % 2**63)  # dropout
        draws = run.raw_model.draws(x, seeded(proc.device, c.seed, run.iter_num, slot, 1))
        n_skip = eso.skip_of(draws)
        last = micro == run.accum - 1
        sync = nullcontext() if not proc.ddp or last else run.model.no_sync()
        with sync:
            with ctx:
                loss, parts = run.model(x, draws, n_skip=n_skip)
            run.scaler.scale(loss / run.accum).backward()
        terms = torch.stack([loss.detach(), parts["diffusion"], parts["sequential"]])
        stats[:3] += terms.float() / run.accum
    stats[3] = float(bool(signals.caught))
    if proc.ddp:  # the global batch's loss, and whether any process caught a signal
        dist.all_reduce(stats)
        stats[:3] /= proc.world
    loss, diffusion, sequential, stop = stats.tolist()
    if not math.isfinite(loss):
        raise Diverged(
            f"loss is {loss} at step {run.iter_num}: stopping; the last good checkpoint "
            f"({Path(c.out_dir) / 'ckpt.pt'}) is kept. Try a lower --learning_rate or --grad_clip=1"
        )
    if c.grad_clip:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), c.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema_model is not None:
        ema_update(run.ema_model, run.raw_model, c.ema, run.iter_num)
    run.iter_num += 1
    return loss, diffusion, sequential, lr, bool(stop)


def train(run, c, data, meta, ctx, proc):
    """The training loop: evaluate and save every eval_interval iterations and at the end, log
    every log_interval, stop cleanly on a signal."""
    train_data, val = data
    global_batch = c.batch_size * c.gradient_accumulation_steps
    batches = Batches(len(train_data), c.block_size, global_batch, c.seed, "windows" in meta)
    ckpt_path = Path(c.out_dir) / "ckpt.pt"
    bar = tqdm(
        total=c.max_iters,
        initial=run.iter_num,
        disable=not (proc.master and sys.stderr.isatty()),
        dynamic_ncols=True,
        unit="it",
    )  # without a terminal: plain log lines instead
    t_last = time.time()
    it_last = run.iter_num
    resumed_at = run.iter_num
    with StopSignals() as signals:
        while True:
            at_interval = run.iter_num % c.eval_interval == 0 and run.iter_num != resumed_at
            if at_interval or run.iter_num == c.max_iters:
                run.train_seconds += time.time() - t_last
                validate(run, c, val, ctx, proc)
                save(run, c, meta, proc)
                t_last = time.time()  # tokens/s counts training time only
                it_last = run.iter_num
            if run.iter_num >= c.max_iters:
                break
            loss, diffusion, sequential, lr, stop = train_step(
                run, c, train_data, batches, proc, ctx, signals
            )
            bar.update(1)
            if run.iter_num % c.log_interval == 0 or stop:
                now = time.time()
                elapsed = max(now - t_last, 1e-9)
                tok_s = global_batch * c.block_size * (run.iter_num - it_last) / elapsed
                run.train_seconds += now - t_last
                t_last = now
                it_last = run.iter_num
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                if bar.disable:
                    proc.say(
                        f"iter {run.iter_num}: loss {loss:.4f} (diffusion {diffusion:.4f} + "
                        f"sequential {sequential:.4f}), lr {lr:.2e}, {tok_s:,.0f} tokens/s",
                        flush=True,
                    )
                record = {"iter": run.iter_num, "loss": loss, "diffusion": diffusion}
                record |= {"sequential": sequential, "lr": lr, "tok_s": tok_s}
                record["train_s"] = round(run.train_seconds, 3)
                log(record, c, proc)
            if stop:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                save(run, c, meta, proc)
                bar.close()
                sig = signals.first()
                proc.say(
                    f"caught {signal.Signals(sig).name} at step {run.iter_num}: saved "
                    f"{ckpt_path}; continue with --init_from=resume"
                )
                return 128 + sig
    bar.close()
    ppl = math.exp(min(run.best_val, 700))
    proc.say(
        f"done: {run.iter_num} iterations, best val NELBO {run.best_val:.4f} (perplexity "
        f"{ppl:.2f}); checkpoint in {ckpt_path}. Sample with: python sample.py "
        f"--out_dir={c.out_dir}"
    )
    return 0


def describe(c, run, meta, proc):
    """The two lines that open a run: the model, and the batch and data."""
    config = run.raw_model.config
    L = config.block_size
    global_batch = c.batch_size * c.gradient_accumulation_steps
    params = run.raw_model.num_params() / 1e6
    proc.say(
        f"Eso-LM ({config.variant}) {params:.2f}M parameters: {config.n_layer} layers x "
        f"{config.n_embd}, L={L}, vocab {config.vocab_size} + [MASK]; alpha_0={config.alpha_0}, "
        f"batch split kappa={config.batch_split} ({config.loss_type})"
    )
    micro = "micro-batches" if run.accum > 1 else "micro-batch"
    processes = "processes" if proc.world > 1 else "process"
    line = (
        f"global batch {global_batch} sequences = {c.batch_size} per micro-batch x {run.accum} "
        f"{micro} x {proc.world} {processes}: {global_batch * L:,} tokens per iteration; "
        f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
        f"({meta['tokenizer']}); {proc.device}, {c.dtype}"
    )
    if c.compile:
        line += ", compiled"
    if run.iter_num:
        line += f"; resuming at step {run.iter_num}"
    proc.say(line)


def main(argv):
    c, given = cli.parse(CONFIG, argv, __doc__)
    apply_preset(c, given)
    check(c)
    proc = start_process(c)
    c.dtype, ctx = cli.precision(proc.device, c.dtype)
    if c.compile is None:
        c.compile = proc.device.type == "cuda" and sys.platform == "linux"
    raw_model, ckpt, source = load_or_build(c, given, proc)
    train_data, val, meta = load_data(c, proc)
    if raw_model is None:
        raw_model = build_model(c, meta, proc)
    check_fits_data(c, raw_model, ckpt, meta)
    if c.eval_only:
        return evaluate_only(c, raw_model, ckpt, source, val, meta, ctx, proc)
    if ckpt is not None and c.init_from == "resume" and ckpt["iter_num"] >= c.max_iters:
        proc.say(
            f"{source} has already finished its {ckpt['iter_num']} iterations (--max_iters="
            f"{c.max_iters}): nothing to do; raise --max_iters to train on"
        )
        return 0
    run = start_run(c, given, raw_model, ckpt, proc)
    ckpt = None  # its tensors live in the models now
    check_writable(Path(c.out_dir), proc)
    describe(c, run, meta, proc)
    code = train(run, c, (train_data, val), meta, ctx, proc)
    # leave together: a process that tears gloo down while another still saves can abort
    proc.barrier()
    return code


if __name__ == "__main__":
    cli.run(main, "train.py")
