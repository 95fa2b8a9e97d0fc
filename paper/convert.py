"""
Convert an authors' released model into a checkpoint of ours, which every script reads.

  python -m paper.convert esolmb-alpha0-0d25-250k.ckpt --out=out/authors_0d25/ckpt.pt
  python -m paper.convert sahoo-diffusion/Eso-LM-B-alpha-0_25 --alpha_0=0.25 --out=out/hf/ckpt.pt
  python sample.py --out_dir=out/authors_0d25                 # then sample from it, or evaluate it

The source is a Lightning .ckpt file of theirs, a Hugging Face folder of theirs (config.json and
model.safetensors or pytorch_model.bin), or a hub id (downloaded once; needs huggingface_hub).
Nothing in the source is run (paper/formats.py reads it). The checkpoint keeps their EMA weights
as its EMA, the raw ones as its weights, GPT-2 as its tokenizer and OpenWebText as its dataset.
"""

import sys
from pathlib import Path

import checkpoint
import cli
from paper import formats

CONFIG = dict(
    out=("", "the checkpoint to write (default: out/converted/ckpt.pt)"),
    alpha_0=(None, "the model's alpha_0, for a Hugging Face model (their config has none)", float),
)


def split_source(argv):
    """(the sources, the flags) of argv: a flag is --key=value, or --key then its value."""
    sources = []
    flags = []
    takes_value = False
    for arg in argv:
        if takes_value:
            flags.append(arg)
            takes_value = False
        elif arg.startswith("--"):
            flags.append(arg)
            takes_value = "=" not in arg and arg not in ("--help", "-h")
        elif arg == "-h":
            flags.append(arg)
        else:
            sources.append(arg)
    return sources, flags


def main(argv):
    sources, flags = split_source(argv)
    c, _ = cli.parse(CONFIG, flags, __doc__)
    if len(sources) != 1:
        raise cli.UserError("give one source: a .ckpt file, a Hugging Face folder or a hub id")
    source = sources[0]
    model, ckpt = formats.load(source, "cpu", ema=False, alpha_0=c.alpha_0)
    out = Path(c.out or "out/converted/ckpt.pt")
    if out.exists():
        raise cli.UserError(f"{out} exists: remove it or give another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(out, ckpt)
    config = model.config
    print(
        f"wrote {out}: the authors' model from {source} (alpha_0={config.alpha_0}, variant "
        f"{config.variant}, {config.n_layer} layers x {config.n_embd}, L={config.block_size}); "
        f"sample it with: python sample.py --out_dir={out.parent}"
    )
    return 0


if __name__ == "__main__":
    cli.run(main, "python -m paper.convert", sys.argv[1:])
