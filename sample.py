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

import re
import time
from pathlib import Path

import torch
from tqdm import tqdm

import cli
import eso
from data.prepare import get_tokenizer

# -----------------------------------------------------------------------------
# Defaults: each is a flag, --key=value; `python sample.py --help` lists them with their notes.
CONFIG = dict(
    out_dir=("out", "folder of ckpt.pt (written by train.py)"),
    init_from=(
        "",
        "a checkpoint file to sample from instead (ours, or one of the authors' released Eso-LMs)",
    ),
    num_samples=(3, "samples to draw"),
    **cli.SAMPLING,  # steps, alpha_0, top_p, temperature, block_order, seed
    kv_cache=(True, "False: the slow reference, a full forward per step (same tokens)"),
    prompt=("", "known text at the start; FILE:path reads it from a file"),
    infill=("", "a template: text with {{N}} where N tokens are to be generated"),
    show_steps=(False, "print the first sample's canvas after every step"),
    quiet=(False, "print only the summary line"),
    **cli.SYSTEM,  # device, dtype
)
SPAN = re.compile(r"\{\{(\d+)\}\}")


def build_canvas(text, enc, L, mask_id, template):
    """(1, L) canvas: the text's tokens where known, mask_id elsewhere. In a template each
    {{N}} is N masked tokens; everything after the text up to L is masked too."""
    pieces = SPAN.split(text) if template else [text]
    if template and len(pieces) == 1:
        raise cli.UserError(
            "--infill has no {{N}} span: mark where N tokens go, e.g. 'The {{12}} statement'"
        )
    ids = [
        t
        for i, piece in enumerate(pieces)  # {{N}} spans at odd indices
        for t in ([mask_id] * int(piece) if i % 2 else enc.encode_ordinary(piece))
    ]
    if len(ids) > L:
        raise cli.UserError(
            f"the {'template' if template else 'prompt'} is {len(ids)} tokens, longer than the "
            f"model's context of {L}: shorten it"
        )
    return torch.tensor([ids + [mask_id] * (L - len(ids))])


def render(tokens, enc, mask_id, hole="_"):
    """Text of a row of tokens, each mask shown as `hole`."""
    out, run = [], []
    for t in tokens.tolist() + [None]:
        if t is not None and t != mask_id:
            run.append(t)
            continue
        out += [enc.decode(run)] if run else []
        out += [hole] if t is not None else []
        run = []
    return "".join(out)


def main(argv):
    c, _ = cli.parse(CONFIG, argv, __doc__)
    if c["prompt"] and c["infill"]:
        raise cli.UserError(
            "use --prompt or --infill, not both (a prompt is a template without spans)"
        )
    dev = cli.device(c["device"])
    _, ctx = cli.precision(dev, c["dtype"])
    model, ckpt = cli.load_checkpoint(
        c["init_from"] or Path(c["out_dir"]) / "ckpt.pt", dev
    )  # EMA weights if any
    L, mask_id, enc = model.config.block_size, model.mask_id, get_tokenizer(ckpt["tokenizer"])
    a0 = model.config.alpha_0 if c["alpha_0"] is None else c["alpha_0"]
    try:
        steps = eso.check_sampling_args(c["steps"], a0, c["temperature"], c["top_p"])
        eso.whole("num_samples", c["num_samples"])
    except ValueError as e:
        raise cli.UserError(f"--{e}") from None
    text = c["prompt"] or c["infill"]
    if text.startswith("FILE:"):
        try:
            text = Path(text[5:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise cli.UserError(
                f"cannot read {text[5:]} ({getattr(e, 'strerror', None) or e}): give a readable "
                "UTF-8 file"
            ) from None
    canvas = (
        build_canvas(text, enc, L, mask_id, bool(c["infill"]))
        if text
        else torch.full((1, L), mask_id)
    )

    def show(tokens, nfe):
        print(
            f"--- step {nfe} ---\n" + render(tokens[0], enc, mask_id).replace("\n", "\u21b5"),
            flush=True,
        )

    if c["show_steps"]:
        show(canvas, 0)
    bar = tqdm(
        unit="step", leave=False, disable=c["show_steps"] or None
    )  # a long run shows progress (on a tty)
    tick = (
        None if bar.disable else lambda tokens, nfe: bar.update()
    )  # no bar: no per-step callback at all
    generator = torch.Generator(dev).manual_seed(c["seed"])
    cli.synchronize(dev)
    t0 = time.perf_counter()
    with ctx:
        tokens, nfe = model.generate(
            c["num_samples"],
            steps,
            alpha_0=a0,
            temperature=c["temperature"],
            top_p=c["top_p"],
            canvas=canvas,
            block_order=c["block_order"],
            kv_cache=c["kv_cache"],
            compile=c["compile"],
            generator=generator,
            callback=show if c["show_steps"] else tick,
        )
    bar.close()
    cli.synchronize(dev)
    seconds = time.perf_counter() - t0
    for row in [] if c["quiet"] else tokens:
        print(enc.decode(row.tolist()) + "\n" + "-" * 60)
    new = c["num_samples"] * int((canvas == mask_id).sum())
    print(
        f"{c['num_samples']} samples x {L} tokens, alpha_0={a0}, T={steps}: NFE {nfe}, {seconds:.2f} s, "
        f"{new / seconds:,.0f} tokens/s ({dev}"
        + (", compiling included: paid once per process)" if c["compile"] else ")")
    )
    return 0


if __name__ == "__main__":
    cli.run(main, "sample.py")
