"""
What the scripts share (the role of nanoGPT's configurator.py): flags from each script's block of
defaults, the device and precision policy, and how a script ends.

Each script keeps its defaults in one block, name=(default, note[, kind]), and gets --key=value
(or --key value) for each, checked against its type or choices; --help, which lists them with
their notes; and one-line refusals of unknown or mistyped options (with "did you mean"), exit
status 2. An argument @FILE reads flags from a preset file, one --key=value a line (blank lines
and # comments skipped), where it stands: flags after it win.
"""

import argparse
import difflib
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

# Imported before any init_process_group (start_distributed), for a clean exit under load.
# DistributedDataParallel imports torch.distributed.nn on first use, and that module's functions
# take group=group.WORLD as a default argument, which Python evaluates once, at import. Imported
# after init, those defaults hold the process group for good, so destroy_process_group (run)
# cannot free it, and its gloo worker threads live on into interpreter shutdown. On a busy
# machine one of them may not yet have dropped the last barrier's work, which holds a Python
# tensor; dropping it needs the GIL, the finalizing interpreter ends that thread, and the process
# aborts: "terminate called without an active exception". Imported first, the defaults are None,
# and destroy_process_group frees the group, joining those threads while Python still runs.
if dist.is_available():
    import torch.distributed.nn  # noqa: F401

from checkpoint import CheckpointError
from data.common import PrepareError

# The flags of every script that runs a model.
SYSTEM = dict(
    device=("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"),
    dtype=(
        "auto",
        "auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16 or float16",
        ("auto", "float32", "bfloat16", "float16"),
    ),
)
# The sampler's flags, one definition for sample.py and the paper's evaluate, so that it scores
# what sample.py prints. The defaults suit the small byte-level models (RESULTS.md says how they
# were chosen); the paper's are a preset file, @paper/presets/samples.txt.
SAMPLING = dict(
    num_samples=(8, "samples to draw"),
    batch_size=(None, "samples drawn at once (None: all of them)", int),
    steps=(128, "T of the diffusion schedule; NFE = non-empty diffusion steps + sequential tokens"),
    alpha_0=(None, "sampling-time alpha_0 (None: the model's own)", float),
    top_p=(0.8, "nucleus sampling, 1 = off"),
    temperature=(0.6, "below 1 sharpens the distribution; 0 is greedy (the most likely token)"),
    block_order=(
        False,
        "the paper's block order: each diffusion step decodes a stream of evenly spaced positions",
    ),
    compile=(
        False,
        "compile the cached step (torch.compile; CUDA graphs on CUDA): pays off on long samples",
    ),
    seed=(1337, "seed of the sampler's generator"),
)


class UserError(Exception):
    """A mistake of the user's: one line on stderr, exit status 2 (or `status`)."""

    status = 2


def converter(default, kind):
    """text -> value for --key; kind is a type (for None defaults) or a tuple of choices."""
    if kind is None:
        kind = type(default)

    def convert(text):
        if text.lower() == "none" and default is None:
            return None
        try:
            return parse_value(text, kind)
        except (KeyError, ValueError):
            raise argparse.ArgumentTypeError(f"takes {describe(kind)}, not {text!r}") from None

    return convert


TRUTH = {"true": True, "1": True, "yes": True, "on": True}
TRUTH |= {"false": False, "0": False, "no": False, "off": False}


def parse_value(text, kind):
    """The value of a flag's text for kind (a type, or a tuple of choices)."""
    if isinstance(kind, tuple):
        return kind[kind.index(text)]
    if kind is bool:
        return TRUTH[text.lower()]
    if kind is int:
        return int(text, 10)
    return kind(text)


def describe(kind):
    """What a flag of this kind takes, in words."""
    if isinstance(kind, tuple):
        return "one of " + ", ".join(map(repr, kind))
    names = {int: "an integer", float: "a number", bool: "True or False"}
    return names.get(kind, kind.__name__)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # "argument --max_iters: takes an integer, not '1.5'": one line, our exit status
        raise UserError(message.replace("argument ", "", 1))


def expand_presets(argv):
    """argv with each @FILE replaced by the flags of that preset file: one --key=value a line,
    blank lines and # comments skipped."""
    expanded = []
    for arg in argv:
        if not arg.startswith("@"):
            expanded.append(arg)
            continue
        path = Path(arg[1:])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            why = getattr(e, "strerror", None) or e
            raise UserError(f"cannot read the preset {path} ({why})") from None
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                expanded.append(line)
    return expanded


def parse(defaults, argv, doc, moved=None):
    """(settings, the set of names the user gave): `defaults` ({name: (default, note[, kind])})
    after argv, as the attributes of an argparse.Namespace (settings.max_iters, ...). Preset
    files (@FILE) are read where they stand. moved: {flag: what replaces it}, for flags that
    another command now takes."""
    argv = expand_presets(argv)
    for arg in argv:
        key = arg.split("=")[0].removeprefix("--")
        if arg.startswith("--") and moved and key in moved:
            raise UserError(f"--{key} is not a flag of this script any more: {moved[key]}")
    if any(a in ("-h", "--help") for a in argv):
        print(doc.strip() + "\n\noptions (default):")
        for key, (default, note, *_) in defaults.items():
            print(f"  --{key}={default!r}".ljust(34) + f" {note}")
        sys.exit(0)
    parser = Parser(add_help=False, allow_abbrev=False)
    for key, (default, _, *kind) in defaults.items():
        kind = kind[0] if kind else None
        is_bool = (kind or type(default)) is bool
        options = dict(default=default, type=converter(default, kind))
        if is_bool:  # --flag alone means True
            options |= dict(nargs="?", const=True)
        parser.add_argument(f"--{key}", **options)
    args, extra = parser.parse_known_args(argv)
    if extra:
        key = extra[0].split("=")[0]
        if not key.startswith("--"):
            raise UserError(
                f"unexpected argument {extra[0]!r}: options look like --key=value (see --help)"
            )
        close = difflib.get_close_matches(key[2:], defaults, n=1)
        hint = " (see --help)"
        if close:
            hint = f" (did you mean --{close[0]}?)"
        raise UserError(f"unknown option {key}{hint}")
    given = {a[2:].split("=")[0] for a in argv if a.startswith("--")} & set(defaults)
    return args, given


# -----------------------------------------------------------------------------
# Device and precision


def device(name):
    """A torch.device from auto (CUDA, then MPS, then CPU), cpu, mps, cuda or cuda:N."""
    if name == "auto":
        name = "cpu"
        if torch.backends.mps.is_available():
            name = "mps"
        if torch.cuda.is_available():
            name = "cuda"
    refusal = f"--device must be auto, cpu, mps, cuda or cuda:N, not {name!r}"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(refusal) from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(refusal)
    available = {
        "cpu": 1,
        "cuda": torch.cuda.device_count(),
        "mps": int(torch.backends.mps.is_available()),
    }
    if (dev.index or 0) >= available[dev.type]:
        raise UserError(
            f"--device={name} but there is no such {dev.type.upper()} device here: use --device=cpu"
        )
    return dev


def precision(device, dtype="auto"):
    """(dtype name, autocast context): the one precision policy, for training, evaluation and
    sampling. auto = bf16 autocast on CUDA (float16 where bf16 is missing), float32 elsewhere;
    bf16 also runs on CPUs; float16 needs CUDA (and a gradient scaler, which train.py adds)."""
    device = torch.device(device)
    if dtype == "auto":
        dtype = "float32"
        if device.type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"--dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    if dtype == "float32":
        return dtype, nullcontext()
    runs_here = device.type == "cuda" or (device.type == "cpu" and dtype == "bfloat16")
    if not runs_here:
        raise UserError(f"--dtype {dtype} does not run on {device.type}: use float32")
    return dtype, torch.autocast(device.type, dtype=getattr(torch, dtype))


def synchronize(device):
    """Wait for the work queued on `device` (CUDA: on that device, not cuda:0; MPS), so that a
    timer measures it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def start_distributed(name):
    """(rank, world size, device) of this process. Under torchrun (which sets RANK, LOCAL_RANK
    and WORLD_SIZE) the process group starts: NCCL on GPUs, gloo on CPUs, each process on its
    own GPU."""
    device_ = device(name)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, device_
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    backend = "gloo"
    if device_.type == "cuda":
        device_ = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device_)
        backend = "nccl"
    dist.init_process_group(backend=backend)
    return rank, world, device_


def run(main, prog, argv=None):
    """Run main(argv) as a script (argv: sys.argv[1:]): a user error is one line on stderr and
    exit status 2 (1 for a diverged run), Ctrl-C outside training 130."""
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except (UserError, PrepareError, CheckpointError) as e:
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
