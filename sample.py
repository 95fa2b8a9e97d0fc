"""
Sample from a trained Eso-LM (out/ckpt.pt by default).

  python sample.py                                          # 8 samples with the defaults below
  python sample.py --prompt="The while statement"           # a prompt (or --prompt=FILE:path.txt)
  python sample.py --infill="The {{12}} statement {{40}}."  # fill the {{N}} spans of N tokens each
  python sample.py --show_steps=True --num_samples=1        # watch the canvas fill, step by step
  python sample.py --alpha_0=1 --steps=16                   # sampling-time alpha_0: 16 steps
  python sample.py --temperature=0                          # greedy: the most likely token
  python sample.py @paper/presets/samples.txt               # the paper's settings (a preset file)

Prompting and infilling are one operation: known tokens stay exactly where they are and every
other position (the {{N}} spans, and whatever follows the text up to the model's length) is
generated. With a tokenizer that has an end-of-text token (GPT-2's, LM1B's [CLS]), each sample is
printed up to its first one (--eos=keep: the whole canvas). Prints the samples, then NFE
(transformer forwards), seconds and tokens/s.
"""

import re
import time
from pathlib import Path

import torch
from tqdm import tqdm

import checkpoint
import cli
import eso
from compiled import CompiledSampler
from data.common import get_tokenizer

# -----------------------------------------------------------------------------
# Defaults: each is a flag, --key=value; `python sample.py --help` lists them with their notes.
CONFIG = dict(
    out_dir=("out", "folder of ckpt.pt (written by train.py)"),
    init_from=(
        "",
        "a checkpoint file to sample from instead (the authors' models: python -m paper.convert)",
    ),
    # num_samples, batch_size, steps, alpha_0, top_p, temperature, block_order, compile, seed:
    # the sampler's flags, shared with the paper's evaluate
    **cli.SAMPLING,
    kv_cache=(True, "False: the slow reference, a full forward per step (same tokens)"),
    prompt=("", "known text at the start; FILE:path reads it from a file (its final newlines cut)"),
    infill=("", "a template: text with {{N}} where N tokens are to be generated"),
    eos=(
        "cut",
        "cut: print each sample up to its first end-of-text token; keep: all of it",
        ("cut", "keep"),
    ),
    show_steps=(False, "print the first sample's canvas after every step (░ = still masked)"),
    quiet=(False, "print only the summary line"),
    **cli.SYSTEM,  # device, dtype
)
# the flags that other commands now take
MOVED = {"preset": "the paper's sampling settings are a preset file: @paper/presets/samples.txt"}
SPAN = re.compile(r"(\{\{.*?\}\})")  # a {{...}} span, well formed or not
GOOD_SPAN = re.compile(r"\{\{([0-9]+)\}\}")
HOLE = "░"  # how --show_steps draws a position still masked (unlike "_", not in the text)


def template_pieces(template):
    """[(text, 0) or ("", N)]: the template's text and its {{N}} spans, or a one-line refusal
    naming the first malformed span."""
    pieces = []
    for piece in SPAN.split(template):
        if not piece.startswith("{{"):
            if "{{" in piece or "}}" in piece:
                bad = piece[piece.find("{{") :][:20] if "{{" in piece else "}}"
                raise cli.UserError(
                    f"--infill has an unclosed span at {bad!r}: write {{{{N}}}}, N tokens to fill"
                )
            pieces.append((piece, 0))
            continue
        good = GOOD_SPAN.fullmatch(piece)
        if good is None or int(good.group(1)) < 1:
            raise cli.UserError(
                f"--infill has a bad span {piece}: write {{{{N}}}} with N a whole number of "
                "tokens, at least 1"
            )
        pieces.append(("", int(good.group(1))))
    if not any(n for _, n in pieces):
        raise cli.UserError(
            "--infill has no {{N}} span: mark where N tokens go, e.g. 'The {{12}} statement'"
        )
    return pieces


def build_canvas(text, enc, L, mask_id, template):
    """(1, L) canvas: the text's tokens where known, mask_id elsewhere. In a template each
    {{N}} is N masked tokens; everything after the text up to L is masked too."""
    pieces = [(text, 0)]
    if template:
        pieces = template_pieces(text)
    ids = []
    for piece, n_masks in pieces:
        ids += enc.encode_ordinary(piece) + [mask_id] * n_masks
    if len(ids) > L:
        what = "template" if template else "prompt"
        raise cli.UserError(
            f"the {what} is {len(ids)} tokens, longer than the model's context of {L}: shorten it"
        )
    return torch.tensor([ids + [mask_id] * (L - len(ids))])


def render(tokens, enc, mask_id, hole=HOLE):
    """Text of a row of tokens, each mask shown as `hole`."""
    out = []
    run = []
    for t in tokens.tolist():
        if t != mask_id:
            run.append(t)
            continue
        if run:
            out.append(enc.decode(run))
        out.append(hole)
        run = []
    if run:
        out.append(enc.decode(run))
    return "".join(out)


def up_to_eos(row, eos):
    """The tokens of a sample up to (not including) its first end-of-text token eos, a leading
    one skipped (LM1B's windows begin with it); all of them when eos is None."""
    tokens = row.tolist()
    if eos is None:
        return tokens
    start = 1 if tokens[:1] == [eos] else 0
    if eos in tokens[start:]:
        return tokens[start : tokens.index(eos, start)]
    return tokens[start:]


class StepPrinter:
    """--show_steps: after every step, the first sample's canvas on one line (░ = still masked,
    ↵ = a newline), under a header that says the step's phase and size."""

    def __init__(self, enc, mask_id, sizes):
        self.enc = enc
        self.mask_id = mask_id
        self.sizes = sizes  # the diffusion steps' sizes; then one token per step

    def __call__(self, tokens, nfe):
        if nfe == 0:
            header = "--- step 0: the canvas (known tokens; the rest masked) ---"
        elif nfe <= len(self.sizes):
            size = self.sizes[nfe - 1]
            noun = "token" if size == 1 else "tokens"
            header = f"--- step {nfe}: diffusion, {size} {noun} ---"
        else:
            header = f"--- step {nfe}: sequential, 1 token ---"
        if nfe == len(self.sizes) + 1:
            print("=== the sequential phase begins: one token per step, left to right ===")
        text = render(tokens[0], self.enc, self.mask_id).replace("\n", "\u21b5")
        print(f"{header}\n{text}", flush=True)


def bar_ticker(bar):
    """A callback that moves a progress bar by one step."""

    def tick(tokens, nfe):
        bar.update()

    return tick


def read_text(c):
    """The prompt or template text, from the flag or a FILE: (final newlines cut)."""
    text = c.prompt or c.infill
    if not text.startswith("FILE:"):
        return text
    path = Path(text[5:])
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise cli.UserError(f"cannot read {path} ({why}): give a readable UTF-8 file") from None


def main(argv):
    c, _ = cli.parse(CONFIG, argv, __doc__, moved=MOVED)
    if c.batch_size is None:
        c.batch_size = c.num_samples
    if c.prompt and c.infill:
        raise cli.UserError(
            "use --prompt or --infill, not both (a prompt is a template without spans)"
        )
    dev = cli.device(c.device)
    _, ctx = cli.precision(dev, c.dtype)
    source = Path(c.init_from or Path(c.out_dir) / "ckpt.pt")
    model, ckpt = checkpoint.load(source, dev)  # the EMA weights, if it has them
    L = model.config.block_size
    mask_id = model.mask_id
    enc = get_tokenizer(ckpt["tokenizer"], ckpt.get("vocab"))
    a0 = model.config.alpha_0 if c.alpha_0 is None else c.alpha_0
    try:
        steps = eso.check_sampling_args(c.steps, a0, c.temperature, c.top_p)
        eso.whole("num_samples", c.num_samples)
        eso.whole("batch_size", c.batch_size)
    except ValueError as e:
        raise cli.UserError(f"--{e}") from None
    text = read_text(c)
    canvas = torch.full((1, L), mask_id)
    if text:
        canvas = build_canvas(text, enc, L, mask_id, bool(c.infill))
    eos = None
    if c.eos == "cut":
        eos = ckpt.get("eos")
    sampler = model
    if c.compile:
        sampler = CompiledSampler(model)
    # a long run shows its progress (on a terminal)
    bar = tqdm(unit="step", leave=False, disable=c.show_steps or None)
    generator = torch.Generator(dev).manual_seed(c.seed)
    cli.synchronize(dev)
    t0 = time.perf_counter()
    samples = []
    nfe = 0
    for start in range(0, c.num_samples, c.batch_size):
        n = min(c.batch_size, c.num_samples - start)
        with ctx:
            plan = model.plan(
                n,
                steps,
                alpha_0=a0,
                canvas=canvas,
                block_order=c.block_order,
                generator=generator,
            )
            callback = None
            if c.show_steps:
                callback = StepPrinter(enc, mask_id, plan[2])
                callback(plan[0][:1], 0)
            elif not bar.disable:  # no bar: no per-step callback at all
                callback = bar_ticker(bar)
            tokens, nfe = sampler.decode(
                *plan,
                temperature=c.temperature,
                top_p=c.top_p,
                kv_cache=c.kv_cache,
                generator=generator,
                callback=callback,
            )
        samples.append(tokens)
    bar.close()
    cli.synchronize(dev)
    seconds = time.perf_counter() - t0
    if not c.quiet:
        for row in torch.cat(samples):
            print(enc.decode(up_to_eos(row, eos)) + "\n" + "-" * 60)
    new = c.num_samples * int((canvas == mask_id).sum())
    noun = "sample" if c.num_samples == 1 else "samples"
    where = str(dev)
    if c.compile:
        where += ", compiling included: paid once per process"
    cut = ""
    if eos is not None:
        cut = "; each printed up to its first end-of-text token (--eos=keep: all of it)"
    print(
        f"{c.num_samples} {noun} x {L} tokens, alpha_0={a0}, T={steps}: NFE {nfe}, "
        f"{seconds:.2f} s, {new / seconds:,.0f} tokens/s ({where}){cut}"
    )
    return 0


if __name__ == "__main__":
    cli.run(main, "sample.py")
