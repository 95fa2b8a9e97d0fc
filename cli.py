"""
What train.py, sample.py, evaluate.py and bench.py share (the role of nanoGPT's configurator.py): the
command line, the device and precision policy, and loading a checkpoint (ours, or the authors').

Each script keeps its defaults in one block, name=(default, note[, kind]), and gets --key=value (or
--key value) for each, checked against its type or choices; --help, which lists them with their
notes; and one-line refusals of unknown or mistyped options (with "did you mean"), exit status 2.
From Python: model, ckpt = cli.load_checkpoint("out/ckpt.pt") gives a trained model to sample from."""

import _compat_pickle
import argparse
import difflib
import pickle
import sys
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch

import eso
from data.prepare import PrepareError


# The flags of every script that runs a model; the sampler's, shared so that evaluate.py scores what sample.py prints.
SYSTEM = dict(
    device=("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"),
    dtype=(
        "auto",
        "auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16 or float16",
        ("auto", "float32", "bfloat16", "float16"),
    ),
)
SAMPLING = dict(
    steps=(128, "T of the diffusion schedule; NFE = non-empty diffusion steps + sequential tokens"),
    alpha_0=(None, "sampling-time alpha_0 (None: the model's own)", float),
    top_p=(0.8, "nucleus sampling (1 = off)"),
    temperature=(0.6, "below 1 sharpens the distribution (chosen by measurement, see RESULTS.md)"),
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
    """A mistake of the user's: one line on stderr, exit status 2."""

    status = 2


class Diverged(UserError):
    """A loss that went NaN or infinite: one line on stderr, exit status 1."""

    status = 1


def _converter(default, kind):
    """text -> value for --key; kind is a type (for None defaults) or a tuple of choices."""
    kind = kind if kind is not None else type(default)
    truth = dict.fromkeys(("true", "1", "yes", "on"), True) | dict.fromkeys(
        ("false", "0", "no", "off"), False
    )

    def convert(text):
        if text.lower() == "none" and default is None:
            return None
        try:
            if isinstance(kind, tuple):
                return kind[kind.index(text)]
            return (
                truth[text.lower()]
                if kind is bool
                else int(text, 10)
                if kind is int
                else kind(text)
            )
        except (KeyError, ValueError):
            what = {int: "an integer", float: "a number", bool: "True or False"}.get(kind) or (
                f"one of {', '.join(map(repr, kind))}" if isinstance(kind, tuple) else kind.__name__
            )
            raise argparse.ArgumentTypeError(f"takes {what}, not {text!r}") from None

    return convert


class _Parser(argparse.ArgumentParser):
    def error(
        self, message
    ):  # "argument --max_iters: takes an integer, not '1.5'": one line, our exit status
        raise UserError(message.replace("argument ", "", 1))


def parse(defaults, argv, doc):
    """(config dict, the set of names the user gave): `defaults` ({name: (default, note[, kind])}) after argv."""
    if any(a in ("-h", "--help") for a in argv):
        print(doc.strip() + "\n\noptions (default):")
        for key, (default, note, *_) in defaults.items():
            print(f"  --{key}={default!r}".ljust(34) + f" {note}")
        sys.exit(0)
    parser = _Parser(add_help=False, allow_abbrev=False)
    for key, (default, _, *kind) in defaults.items():
        is_bool = (kind[0] if kind else type(default)) is bool
        parser.add_argument(
            f"--{key}",
            default=default,
            type=_converter(default, kind[0] if kind else None),
            nargs="?" if is_bool else None,
            const=True if is_bool else None,
        )
    args, extra = parser.parse_known_args(argv)
    if extra:
        key = extra[0].split("=")[0]
        if not key.startswith("--"):
            raise UserError(
                f"unexpected argument {extra[0]!r}: options look like --key=value (see --help)"
            )
        close = difflib.get_close_matches(key[2:], defaults, n=1)
        raise UserError(
            f"unknown option {key}"
            + (f" (did you mean --{close[0]}?)" if close else " (see --help)")
        )
    config = vars(args)
    given = {a[2:].split("=")[0] for a in argv if a.startswith("--")} & set(config)
    return config, given


def device(name):
    """A torch.device from auto (CUDA, then MPS, then CPU), cpu, mps, cuda or cuda:N."""
    if name == "auto":
        name = (
            "cuda"
            if torch.cuda.is_available()
            else "mps"
            if torch.backends.mps.is_available()
            else "cpu"
        )
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device must be auto, cpu, mps, cuda or cuda:N, not {name!r}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device must be auto, cpu, mps, cuda or cuda:N, not {name!r}")
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
    """(dtype name, autocast context): the one precision policy, for training, evaluation and sampling. auto =
    bf16 autocast on CUDA (float16 where bf16 is missing), float32 elsewhere; bf16 also runs on CPUs; float16
    needs CUDA (and a gradient scaler, which train.py adds)."""
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
    """Wait for the work queued on `device` (CUDA: on that device, not cuda:0; MPS), so that a timer measures it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file and why, in one line."""


def load_checkpoint(path, device="cpu", ema=True):
    """(model, checkpoint dict) of a file written by train.py, or of one of the authors' released Eso-LMs
    (their_checkpoint), on `device`, in eval mode, with the EMA weights when it has them (ema=False: the
    raw ones). Ours load with weights_only=True: tensors and plain values only. A file that names any
    other class or function is read by an inert unpickler, runs none of them, and is refused unless it
    is the authors' checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint"
            if path.is_dir()
            else f"no checkpoint at "
            f"{path}: train one with `python train.py` (or point --out_dir or --init_from elsewhere)"
        )
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        text = " ".join(str(e).split())
        if "unsupported global" not in text.lower():
            why = text.split("WeightsUnpickler error: ")[-1] or type(e).__name__
            raise CheckpointError(
                f"{path} is not a readable checkpoint (truncated or corrupt?): {why[:160]}"
            ) from None
        ckpt = their_checkpoint(path, device)
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
        raise CheckpointError(
            f"{path}: the weights do not fit its config ({first[:160]})"
        ) from None
    return model.to(device).eval(), ckpt


class _Inert(dict):
    """Stands in for a class or function that a foreign pickle names: keeps what it is handed, runs nothing."""

    state = None

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        self.state = state


class _InertUnpickler(
    pickle.Unpickler
):  # resolves what rebuilds tensors and plain values; the rest: _Inert
    SAFE = {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch", "Size"),
        ("torch", "device"),
        ("_codecs", "encode"),
        *(
            ("builtins", n)
            for n in "dict list tuple set frozenset int float bool str bytes bytearray".split()
        ),
    }
    named = set()  # what the last file stood in for

    def find_class(
        self, module, name
    ):  # torch.save writes protocol 2, with Python 2's names for builtins
        module, name = _compat_pickle.NAME_MAPPING.get(
            (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
        )
        if (module, name) in self.SAFE or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        self.named.add(f"{module}.{name}")
        return type(name, (_Inert,), {"__module__": module})


def _plain(obj):
    """The plain values behind stand-ins of omegaconf's containers and nodes (their state holds _content or _val)."""
    if (
        isinstance(obj, _Inert)
        and isinstance(obj.state, dict)
        and ({"_content", "_val"} & set(obj.state))
    ):
        return _plain(obj.state.get("_content", obj.state.get("_val")))
    return {k: _plain(v) for k, v in obj.items()} if isinstance(obj, dict) else obj


def their_checkpoint(path, device="cpu"):
    """The authors' released Eso-LM (a Lightning file, read inertly) as a checkpoint of ours: their EsoLMDiT folded by
    eso.from_reference, and its EMA (in the order of its parameters: its state dict's but rotary_emb.inv_freq)."""
    _InertUnpickler.named.clear()
    try:
        raw = torch.load(
            path,
            map_location=device,
            weights_only=False,
            pickle_module=SimpleNamespace(Unpickler=_InertUnpickler, __name__="inert"),
        )
    except Exception as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint: {type(e).__name__} {e}"[:200]
        ) from None
    if not (
        isinstance(raw, dict)
        and isinstance(raw.get("state_dict"), dict)
        and "hyper_parameters" in raw
    ):
        raise CheckpointError(
            f"refusing {path}: unpickling it would run arbitrary code "
            f"({', '.join(sorted(_InertUnpickler.named)[:3])}), which neither a checkpoint of ours "
            "nor the authors' needs; none of it was run"
        )
    config = (
        _plain(raw["hyper_parameters"]).get("config")
        if isinstance(raw["hyper_parameters"], dict)
        else None
    )
    model_cfg, algo, data = ((config or {}).get(k) or {} for k in ("model", "algo", "data"))
    if (
        data.get("tokenizer_name_or_path", "gpt2") != "gpt2"
    ):  # LM1B's BERT models keep [MASK] inside the vocabulary
        raise CheckpointError(
            f"{path} uses the {data['tokenizer_name_or_path']} tokenizer: only GPT-2 ones load here"
        )
    kw = dict(
        n_head=model_cfg.get("n_heads"),
        block_size=model_cfg.get("length"),
        alpha_0=algo.get("alpha_0"),
        variant="A" if algo.get("diffusion_attn_mode") == "mixed2" else "B",
        batch_split=algo.get("batch_split"),
        loss_type=algo.get("loss_type", "elbo"),
    )
    state = {k: v for k, v in raw["state_dict"].items() if k.startswith("backbone.")} or raw[
        "state_dict"
    ]
    names = [
        k for k in state if not k.endswith("rotary_emb.inv_freq")
    ]  # the parameters, in their order
    shadow = raw["ema"].get("shadow_params") if isinstance(raw.get("ema"), dict) else None
    try:
        folded = [eso.from_reference(state, **kw)]
        if shadow is not None:
            if len(shadow) != len(
                names
            ):  # (a tensor of the wrong shape is named by from_reference)
                raise ValueError(f"its EMA holds {len(shadow)} tensors for {len(names)} parameters")
            folded.append(eso.from_reference({**state, **dict(zip(names, shadow))}, **kw))
    except (
        TypeError,
        ValueError,
    ) as e:  # e.g. a config without model.n_heads, model.length or algo.alpha_0
        raise CheckpointError(f"{path}: {e} (what its config gives: {kw})") from None
    if shadow is None:
        print(
            f"note: {path} holds no EMA weights (the paper's numbers use them): using the raw ones",
            file=sys.stderr,
        )
    return {
        "model": folded[0].state_dict(),
        "ema": folded[1].state_dict() if shadow is not None else None,
        "config": asdict(folded[0].config),
        "tokenizer": "gpt2",
        "iter_num": int(raw.get("global_step") or 0),
        "dataset": "openwebtext",
        "source": f"the authors' checkpoint {path}",
    }


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
