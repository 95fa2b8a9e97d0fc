"""
Checkpoints of ours: written atomically, and read back without running anything in the file.

A checkpoint is a torch.save file of tensors and plain values only (the model's weights, its EMA,
its config as a dict, the tokenizer's name, the optimizer and the run's settings), so it loads
with torch.load(weights_only=True). It is written to a temporary file and renamed: a crash at any
moment leaves the previous one intact.

A file from elsewhere is where code could run or memory blow up, so every read goes through
read_pickle. It lists the globals that the file's pickle names, from its opcodes, before anything
is unpickled, and refuses in one line any outside an allow-list: torch's tensor rebuilders and
storage types, and a few plain containers. (torch's own weights_only unpickler would build
`bytearray(10**11)` from a 2 KB file; this refuses it before any allocation.) Then no tensor may
claim more elements than its data holds, and a model is built only once its weights are known to
fit its config. The authors' own formats are read by the paper's ring (paper/formats.py).
"""

import _compat_pickle
import importlib.util
import os
import pickletools
import zipfile
from dataclasses import asdict
from pathlib import Path

import torch

import eso

# The globals that a pickle may name and that are rebuilt for real: tensors, their storages and
# dtypes, and plain containers (protocol 2 writes Python 2's names; NAME_MAPPING maps them).
TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}
REAL_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "Size"),
    ("torch", "device"),
    ("_codecs", "encode"),  # how protocol 2 writes bytes: from a string in the file
    ("builtins", "set"),
    ("builtins", "frozenset"),
    *(("torch", name) for name in TORCH_DTYPES),
    *(("torch", name) for name in dir(torch) if name.endswith("Storage")),
}
MAX_DEPTH = 64  # how deep the plain values of a config may nest


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and why, in one line."""

    status = 2


# -----------------------------------------------------------------------------
# Ours: save and load


def save(path, state):
    """Write state to path: to a temporary file, fsync, then rename, so a crash at any moment
    (kill -9 included) leaves the previous checkpoint intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # the rename itself, on disk
            fd = os.open(path.parent, os.O_DIRECTORY)
            os.fsync(fd)
            os.close(fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        why = e.strerror or e
        raise CheckpointError(
            f"could not write {path} ({why}); the previous checkpoint is intact"
        ) from None


def load(path, device="cpu", ema=True, method="eso"):
    """(model, checkpoint dict) of a file written by train.py, on `device`, in eval mode, with the
    EMA weights when it has them (ema=False: the raw ones). method: the model the file must hold,
    "eso" (train.py's); the paper's baselines (paper/bd3lm.py) hold another on the same
    transformer; None takes any."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint")
    if not path.is_file():
        raise CheckpointError(missing(path))
    ckpt = read_pickle(path, device)
    held = "eso"
    if isinstance(ckpt, dict):
        held = ckpt.get("method", "eso")
    if method is not None and held != method:
        raise CheckpointError(
            f"{path} holds a {held} model, not an Eso-LM: sample and score it with "
            f"{paper_ring(f'python -m paper.evaluate --init_from={path}')}"
        )
    return model_from(ckpt, path, device, ema)


def paper_ring(command):
    """A command of the paper's ring, with a word when the ring (the paper/ folder) is not in this
    copy of the repository."""
    if importlib.util.find_spec("paper") is None:
        return f"{command} (from the paper/ folder, which this copy lacks)"
    return command


def missing(path):
    """What to say of a checkpoint that is not there: the command that makes it, or, for a name
    that looks like a Hugging Face hub id, the one that converts it."""
    if looks_like_hub_id(path):
        convert = paper_ring(f"python -m paper.convert {path} --alpha_0=A")
        return (
            f"no file or folder {path}; for an authors' Hugging Face model, convert it: {convert}"
        )
    return f"no checkpoint at {path}: train one with `python train.py --out_dir={path.parent}`"


def looks_like_hub_id(source):
    """Whether source reads as owner/name and names nothing here. A name with a file suffix
    (out/ckpt.pt) or in a folder that exists (out/missing) is a missing file, not a hub id."""
    path = Path(source)
    parts = str(source).split("/")
    if len(parts) != 2 or not all(parts):
        return False
    return not path.suffix and not path.exists() and not path.parent.exists()


def model_from(ckpt, path, device="cpu", ema=True):
    """(model, ckpt) from a checkpoint dict of ours (or one that paper/formats.py made)."""
    need = {"model", "config", "tokenizer", "iter_num"}
    if not isinstance(ckpt, dict) or not need <= set(ckpt):
        missing = "a dict"
        if isinstance(ckpt, dict):
            missing = ", ".join(sorted(need - set(ckpt)))
        raise CheckpointError(f"{path} is not an Eso-LM checkpoint (it lacks {missing})")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{path} holds a config that is not a dict")
    try:
        config = eso.EsoConfig(**ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an incompatible model config: {e}") from None
    weights = ckpt["model"]
    if ema and ckpt.get("ema"):
        weights = ckpt["ema"]
    check_fits(weights, config, path)
    model = eso.EsoLM(config)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: the weights do not fit its config ({first})") from None
    return model.to(device).eval(), ckpt


def check_fits(weights, config, path):
    """Refuse weights that are not the state dict of EsoLM(config), before the model is built: a
    config can name a model of any size, and only the file's own tensors may decide what is
    allocated. The model is laid out on the meta device (no memory) and compared name by name."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: its weights are not a state dict")
    with torch.device("meta"):
        expected = eso.EsoLM(config).state_dict()
    missing = sorted(set(expected) - set(weights))
    unknown = sorted(set(weights) - set(expected))
    if missing or unknown:
        names = ", ".join((missing or unknown)[:3])
        what = "lacks" if missing else "has unknown"
        raise CheckpointError(f"{path}: the weights do not fit its config (it {what} {names})")
    for name, tensor in expected.items():
        given = weights[name]
        if not isinstance(given, torch.Tensor) or given.shape != tensor.shape:
            shape = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
            raise CheckpointError(
                f"{path}: the weights do not fit its config ({name} is {shape}, "
                f"not {tuple(tensor.shape)})"
            )


def state(model, config, tokenizer, iter_num, **extra):
    """A checkpoint dict of ours for model: its weights, config and tokenizer, and any extra
    plain values (the EMA, the optimizer, the run's settings)."""
    return {
        "model": model.state_dict(),
        "config": asdict(config),
        "tokenizer": tokenizer,
        "iter_num": iter_num,
        **extra,
    }


# -----------------------------------------------------------------------------
# Reading any pickled file without running it


def read_pickle(path, device="cpu"):
    """The object a torch.save file of tensors and plain values holds, read without running
    anything it names: the file's globals are listed from its opcodes first (pickle_globals), and
    any outside REAL_GLOBALS is refused in one line. Tensors are checked to hold the data they
    claim (check_tensors)."""
    named = pickle_globals(path)
    foreign = sorted(f"{m}.{n}" for m, n in named if (m, n) not in REAL_GLOBALS)
    if foreign:
        raise CheckpointError(
            f"refusing {path}: it names {', '.join(foreign[:3])}, which a checkpoint of ours does "
            "not (unpickling could run code or fill memory); nothing in it was run. An authors' "
            f"checkpoint is converted first: {paper_ring(f'python -m paper.convert {path}')}"
        )
    obj = torch_load(path, device)
    check_tensors(obj, path)
    return obj


def pickle_globals(path):
    """The (module, name) pairs that the pickle inside a torch.save file names, read from its
    opcodes: nothing is unpickled. Python 2 names (protocol 2) are mapped to Python 3's."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise CheckpointError(f"{path} is not a torch.save file (no single data.pkl)")
            data = archive.read(pickles[0])
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt, or torch's legacy "
            "format from before 1.6, which is not read here)"
        ) from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror or e})") from None
    named = set()
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                module, name = arg.split(" ", 1)
                named.add(python3_name(module, name))
            elif opcode.name in ("STACK_GLOBAL", "EXT1", "EXT2", "EXT4"):
                # torch.save writes protocol 2, which names globals with GLOBAL only
                raise CheckpointError(
                    f"refusing {path}: its pickle names objects by {opcode.name}, which "
                    "torch.save never writes; nothing in it was run"
                )
    except (ValueError, EOFError) as e:  # pickletools on a damaged pickle
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt pickle: {e})"
        ) from None
    return named


def python3_name(module, name):
    """(module, name) of a global as Python 3 spells it (protocol 2 writes __builtin__.set, and
    __builtin__.long for int). The order is pickle's own, and torch's: the pair's mapping first,
    then the module's."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def torch_load(path, device):
    """torch.load(weights_only=True), with its failures in one line."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint: {short_reason(e)}") from None


def short_reason(error):
    """The first sentence of an error's message, whole (never cut mid-word)."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = text.split("WeightsUnpickler error: ")[-1]
    for end in (". ", "; "):
        if end in text:
            text = text[: text.index(end)]
    return text.rstrip(".")


def check_tensors(obj, path):
    """Refuse any tensor that claims more elements than its storage holds (a stride-0 view of a
    billion elements costs a few bytes in the file and gigabytes once copied). Every tensor
    reachable through containers and objects' attributes is checked."""
    seen = set()
    todo = [(obj, 0)]
    while todo:
        item, depth = todo.pop()
        if depth > MAX_DEPTH or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            needed = item.numel() * item.element_size()
            if item.numel() and needed > item.untyped_storage().nbytes():
                raise CheckpointError(
                    f"refusing {path}: a tensor of shape {tuple(item.shape)} claims more data "
                    "than the file holds"
                )
            continue
        if isinstance(item, dict):
            todo += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, (list, tuple)):
            todo += [(v, depth + 1) for v in item]
        if hasattr(item, "__dict__"):  # an object (a foreign file's stand-in)
            todo += [(v, depth + 1) for v in vars(item).values()]
