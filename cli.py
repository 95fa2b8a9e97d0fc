"""
What train.py, sample.py, evaluate.py and bench.py share, in one place (the role of nanoGPT's
configurator.py): the command line, the device and precision policy, and loading a checkpoint.

Each script keeps its defaults in one block, name=(default, note[, kind]), and gets:
  --key=value (or --key value) for every default, checked against its type or choices;
  --help, which lists every default with its note;
  one-line refusals of unknown or mistyped options (with "did you mean"), exit status 2.
From Python: model, ckpt = cli.load_checkpoint("out/ckpt.pt") gives a trained model to sample from.
"""

import argparse
import difflib
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

import eso
from data.prepare import PrepareError


# The flags of every script that runs a model, and the sampler's, which sample.py and evaluate.py share
# (so that evaluate.py scores exactly what sample.py prints).
SYSTEM = dict(
    device=("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"),
    dtype=("auto", "auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16 or float16",
           ("auto", "float32", "bfloat16", "float16")),
)
SAMPLING = dict(
    steps=(128, "T of the diffusion schedule; NFE = non-empty diffusion steps + sequential tokens"),
    alpha_0=(None, "sampling-time alpha_0 (None: the model's own)", float),
    top_p=(0.8, "nucleus sampling (1 = off)"),
    temperature=(0.6, "below 1 sharpens the distribution (chosen by measurement, see RESULTS.md)"),
    block_order=(False, "the paper's block order: each diffusion step decodes a stream of evenly spaced positions"),
    compile=(False, "compile the cached step (torch.compile; CUDA graphs on CUDA): pays off on long samples"),
    seed=(1337, "seed of the sampler's generator"),
)


class UserError(Exception):
    """A mistake of the user's: one line on stderr, exit status 2."""
    status = 2


class Diverged(UserError):
    """A loss that went NaN or infinite: one line on stderr, exit status 1."""
    status = 1


def _converter(default, kind):
    """text -> value for --key; kind is a type (for None defaults) or a tuple of choices."""
    kind = kind if kind is not None else type(default)

    def convert(text):
        if isinstance(kind, tuple):
            if text not in kind:
                raise argparse.ArgumentTypeError(f"must be one of {', '.join(map(repr, kind))}, not {text!r}")
            return text
        if text.lower() == "none" and default is None:
            return None
        if kind is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"takes True or False, not {text!r}")
        try:
            return int(text, 10) if kind is int else kind(text)
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise argparse.ArgumentTypeError(f"takes {what}, not {text!r}") from None

    return convert


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # "argument --max_iters: takes an integer, not '1.5'": one line, our exit status
        raise UserError(message.replace("argument ", "", 1))


def parse(defaults, argv, doc):
    """The values of `defaults` ({name: (default, note[, kind])}) after the flags in argv.

    Returns (config dict, set of the names the user gave).
    """
    if any(a in ("-h", "--help") for a in argv):
        print(doc.strip() + "\n\noptions (default):")
        for key, (default, note, *_) in defaults.items():
            print(f"  --{key}={default!r}".ljust(34) + f" {note}")
        sys.exit(0)
    parser = _Parser(add_help=False, allow_abbrev=False)
    for key, (default, _, *kind) in defaults.items():
        is_bool = (kind[0] if kind else type(default)) is bool
        parser.add_argument(f"--{key}", default=default, type=_converter(default, kind[0] if kind else None),
                            nargs="?" if is_bool else None, const=True if is_bool else None)
    args, extra = parser.parse_known_args(argv)
    if extra:
        key = extra[0].split("=")[0]
        if not key.startswith("--"):
            raise UserError(f"unexpected argument {extra[0]!r}: options look like --key=value (see --help)")
        close = difflib.get_close_matches(key[2:], defaults, n=1)
        raise UserError(f"unknown option {key}" + (f" (did you mean --{close[0]}?)" if close else " (see --help)"))
    config = vars(args)
    given = {a[2:].split("=")[0] for a in argv if a.startswith("--")} & set(config)
    return config, given


def device(name):
    """A torch.device from auto (CUDA, then MPS, then CPU), cpu, mps, cuda or cuda:N."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device must be auto, cpu, mps, cuda or cuda:N, not {name!r}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device must be auto, cpu, mps, cuda or cuda:N, not {name!r}")
    available = {"cpu": 1, "cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}
    if (dev.index or 0) >= available[dev.type]:
        raise UserError(f"--device={name} but there is no such {dev.type.upper()} device here: use --device=cpu")
    return dev


def precision(device, dtype="auto"):
    """(dtype name, autocast context): the one precision policy, for training, evaluation and sampling.

    auto = bfloat16 autocast on CUDA (float16 where bf16 is missing), float32 elsewhere. bfloat16
    also runs on CPUs; float16 needs CUDA (and a gradient scaler, which train.py adds).
    """
    device = torch.device(device)
    if dtype == "auto":
        cuda = device.type == "cuda"
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if cuda else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"--dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    if dtype == "float32":
        return dtype, nullcontext()
    if device.type != "cuda" and not (device.type == "cpu" and dtype == "bfloat16"):
        raise UserError(f"--dtype {dtype} does not run on {device.type}: use float32")
    return dtype, torch.autocast(device.type, dtype=getattr(torch, dtype))


def synchronize(device):
    """Wait until `device` has run the work queued on it, so that a timer measures the work and
    not its dispatch: CUDA (that very device, not cuda:0) and MPS run asynchronously."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file and why, in one line."""


def load_checkpoint(path, device="cpu", ema=True):
    """(model, checkpoint dict) of a file written by train.py, on `device`, in eval mode.

    The model holds the EMA weights when the checkpoint has them (they are the ones to
    evaluate and sample with); ema=False gives the raw weights. weights_only=True: only
    tensors and plain values load, so a file that would run code while unpickling is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is a folder, not a checkpoint" if path.is_dir() else f"no checkpoint at "
                              f"{path}: train one with `python train.py` (or point --out_dir elsewhere)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        text = " ".join(str(e).split())
        if "unsupported global" in text.lower():  # the file names a callable to run while unpickling
            raise CheckpointError(f"refusing {path}: it needs arbitrary code to unpickle, which a checkpoint of "
                                  "ours never does (only load files you trust, with other tools)") from None
        why = text.split("WeightsUnpickler error: ")[-1] or type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {why[:160]}") from None
    need = {"model", "config", "tokenizer", "iter_num"}
    if not isinstance(ckpt, dict) or not need <= set(ckpt):
        missing = ", ".join(sorted(need - set(ckpt))) if isinstance(ckpt, dict) else "a dict"
        raise CheckpointError(f"{path} is not an Eso-LM checkpoint (it lacks {missing})")
    try:
        model = eso.EsoLM(eso.EsoConfig(**ckpt["config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an incompatible model config: {e}") from None
    try:
        model.load_state_dict(ckpt["ema"] if ema and ckpt.get("ema") else ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: the weights do not fit its config ({first[:160]})") from None
    return model.to(device).eval(), ckpt


def run(main, prog, argv=None):
    """Run main(argv) as a script (argv: sys.argv[1:]): a user error is one line on stderr and
    exit status 2 (1 for a diverged run), Ctrl-C outside training 130."""
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except (UserError, PrepareError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        code = getattr(e, "status", 2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was saved", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # output piped into head, say
        sys.stderr.close()
        code = 1
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    sys.exit(code)
