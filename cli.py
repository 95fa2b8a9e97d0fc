"""
The command line that train.py, sample.py, evaluate.py and bench.py share (the role of nanoGPT's
configurator.py): flags from each script's block of defaults, the device and precision policy,
the models that --out_dir and --init_from name, and how a script ends.

Each script keeps its defaults in one block, name=(default, note[, kind]), and gets --key=value
(or --key value) for each, checked against its type or choices; --help, which lists them with
their notes; and one-line refusals of unknown or mistyped options (with "did you mean"), exit
status 2.
"""

import argparse
import difflib
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

import checkpoint
import reference
from checkpoint import CheckpointError
from data.prepare import PrepareError
from judge import JudgeError

# The flags of every script that runs a model.
SYSTEM = dict(
    device=("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"),
    dtype=(
        "auto",
        "auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16 or float16",
        ("auto", "float32", "bfloat16", "float16"),
    ),
)
# The sampler's flags, one definition for sample.py and evaluate.py, so that evaluate.py scores
# what sample.py prints. A None takes the preset's value (SAMPLING_PRESETS).
SAMPLING = dict(
    preset=(
        "",
        "'' (tuned for the small byte-level models) or paper (top_p 0.9, temperature 1, 5,120 "
        "samples in batches of 256: the paper's Tables 13-15)",
        ("", "paper"),
    ),
    num_samples=(None, "samples to draw (None: the preset's, 8 or 5,120)", int),
    batch_size=(None, "samples drawn at once (None: the preset's, all of them or 256)", int),
    steps=(128, "T of the diffusion schedule; NFE = non-empty diffusion steps + sequential tokens"),
    alpha_0=(None, "sampling-time alpha_0 (None: the model's own)", float),
    top_p=(None, "nucleus sampling, 1 = off (None: the preset's, 0.8 or 0.9)", float),
    temperature=(None, "below 1 sharpens the distribution (None: the preset's, 0.6 or 1)", float),
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
# The byte-level default model's settings were chosen by measurement (RESULTS.md); the paper's
# are those of its sample-quality tables. batch_size None: all the samples at once.
SAMPLING_PRESETS = {
    "": dict(temperature=0.6, top_p=0.8, num_samples=8, batch_size=None),
    "paper": dict(temperature=1.0, top_p=0.9, num_samples=5120, batch_size=256),
}


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


def parse(defaults, argv, doc):
    """(settings, the set of names the user gave): `defaults` ({name: (default, note[, kind])})
    after argv, as the attributes of an argparse.Namespace (settings.max_iters, ...)."""
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


def sampling_settings(c):
    """The settings c with the sampling preset applied, in place: each of its settings that the
    user left at None takes the preset's value (a batch_size left at None: all the samples at
    once)."""
    for key, value in SAMPLING_PRESETS[c.preset].items():
        if getattr(c, key) is None:
            setattr(c, key, value)
    if c.batch_size is None:
        c.batch_size = c.num_samples
    return c


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


# -----------------------------------------------------------------------------
# The models that the flags name


def load_model(source, device="cpu", ema=True, alpha_0=None):
    """(model, checkpoint dict) of what --init_from (or out_dir/ckpt.pt) names: a checkpoint of
    ours; an authors' Lightning file; an authors' Hugging Face folder (config.json plus weights)
    or hub id (`owner/name`), whose alpha_0 the caller gives (their config has none). In eval
    mode, with the EMA weights where there are some (ema=False: the raw ones)."""
    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        ckpt = reference.hugging_face(path, alpha_0, device)
    elif reference.looks_like_hub_id(source):
        ckpt = reference.hugging_face(reference.download(str(source)), alpha_0, device)
    elif not path.is_file():
        return checkpoint.load(path, device, ema)  # its message says what is missing
    elif is_ours(path):
        return checkpoint.load(path, device, ema)
    else:
        ckpt = reference.lightning(path, device)
    return checkpoint.model_from(ckpt, path, device, ema)


def is_ours(path):
    """Whether a torch.save file names nothing but tensors and plain values (as ours do)."""
    named = checkpoint.pickle_globals(path)
    return named <= checkpoint.REAL_GLOBALS


def run(main, prog, argv=None):
    """Run main(argv) as a script (argv: sys.argv[1:]): a user error is one line on stderr and
    exit status 2 (1 for a diverged run), Ctrl-C outside training 130."""
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except (UserError, PrepareError, CheckpointError, JudgeError) as e:
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
