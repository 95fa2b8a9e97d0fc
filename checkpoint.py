"""
Checkpoints: ours written and read back, and any pickled file read without running it.

A checkpoint of ours is a torch.save file of tensors and plain values only (the model's weights,
its EMA, its config as a dict, the tokenizer's name, the optimizer and the run's settings), so it
loads with torch.load(weights_only=True). It is written atomically: a crash at any moment leaves
the previous one intact.

Reading a file that someone else made is where code could run or memory blow up, so every read
goes through read_pickle: it lists the globals the file's pickle names (its opcodes, before
anything is unpickled) and refuses, in one line, any outside an allow-list: torch's tensor
rebuilders and storage types, and a few plain containers. torch's own weights_only unpickler
would build `bytearray(10**11)` from a 2 KB file; this refuses it before any allocation. Then no
tensor may claim more elements than its data holds, and a model is built only once its weights
are known to fit its config.
"""

import _compat_pickle
import os
import pickle
import pickletools
import zipfile
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

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
# The packages whose classes a foreign file (the authors' Lightning checkpoints) may name: their
# config (omegaconf), tokenizer (transformers, tokenizers) and trainer state. They are stood in
# for by inert objects that keep what they are handed and run nothing.
INERT_PACKAGES = {
    "omegaconf",
    "typing",
    "transformers",
    "tokenizers",
    "lightning",
    "lightning_fabric",
    "pytorch_lightning",
    "torchmetrics",
    "hydra",
    "numpy",
    "pathlib",
    "enum",
    "collections",
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


def load(path, device="cpu", ema=True):
    """(model, checkpoint dict) of a file written by train.py, on `device`, in eval mode, with the
    EMA weights when it has them (ema=False: the raw ones)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint")
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: train one with `python train.py --out_dir={path.parent}` "
            "(or point --out_dir or --init_from elsewhere)"
        )
    ckpt = read_pickle(path, device)
    return model_from(ckpt, path, device, ema)


def model_from(ckpt, path, device="cpu", ema=True):
    """(model, ckpt) from a checkpoint dict of ours (or one that reference.py made)."""
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


def read_pickle(path, device="cpu", inert=False):
    """The object a torch.save file holds, read without running anything it names.

    The file's globals are listed from its opcodes first (pickle_globals): any outside
    REAL_GLOBALS is refused in one line, unless inert=True and it comes from INERT_PACKAGES (the
    authors' files), when it is stood in for by an inert object. Tensors are checked to hold the
    data they claim (check_tensors)."""
    named = pickle_globals(path)
    foreign = sorted(f"{m}.{n}" for m, n in named if (m, n) not in REAL_GLOBALS)
    refused = [name for name in foreign if not inert or name.split(".")[0] not in INERT_PACKAGES]
    if refused:
        raise CheckpointError(
            f"refusing {path}: it names {', '.join(refused[:3])}, which a checkpoint does not "
            "need (unpickling could run code or fill memory); nothing in it was run"
        )
    if foreign:
        obj = read_inert(path, device, foreign)
    else:
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
    """(module, name) of a global as Python 3 spells it (protocol 2 writes __builtin__.set)."""
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return _compat_pickle.NAME_MAPPING.get((module, name), (module, name))


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


class Inert(dict):
    """Stands in for a class or function that a foreign pickle names: keeps what it is handed
    (its state, or its dict items), runs nothing."""

    state = None

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        self.state = state


def stand_in(qualified):
    """An inert class named like `qualified` ("module.Name")."""
    module, _, name = qualified.rpartition(".")
    return type(name, (Inert,), {"__module__": module})


def read_inert(path, device, foreign):
    """A foreign file with inert stand-ins for its foreign globals. torch's own weights_only
    unpickler does it (safe_globals); the hand-written InertUnpickler is kept for the pickles that
    torch's refuses (it rebuilds only what REAL_GLOBALS lists, so its reach is the same)."""
    stand_ins = [(stand_in(name), name) for name in foreign]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint: {short_reason(e)}") from None
    inert_pickle = SimpleNamespace(Unpickler=InertUnpickler, __name__="inert")
    try:
        return torch.load(path, map_location=device, weights_only=False, pickle_module=inert_pickle)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint: {short_reason(e)}") from None


class InertUnpickler(pickle.Unpickler):
    """Resolves REAL_GLOBALS; everything else becomes an inert stand-in (read_pickle has already
    refused what is neither)."""

    def find_class(self, module, name):
        module, name = python3_name(module, name)
        if (module, name) in REAL_GLOBALS:
            return super().find_class(module, name)
        return stand_in(f"{module}.{name}")


def check_tensors(obj, path):
    """Refuse any tensor that claims more elements than its storage holds (a stride-0 view of a
    billion elements costs a few bytes in the file and gigabytes once copied)."""
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
        elif isinstance(item, dict):
            todo += [(v, depth + 1) for v in item.values()]
            if isinstance(item, Inert):
                todo.append((item.state, depth + 1))
        elif isinstance(item, (list, tuple)):
            todo += [(v, depth + 1) for v in item]


def plain(obj, path, depth=0, inside=()):
    """The plain values behind inert stand-ins of omegaconf's containers and nodes (their state
    holds _content or _val): nested dicts, lists and scalars. A config nested deeper than
    MAX_DEPTH, or that contains itself, is refused in one line."""
    if depth > MAX_DEPTH or id(obj) in inside:
        raise CheckpointError(f"refusing {path}: its config contains itself or nests too deep")
    inside = (*inside, id(obj))
    if isinstance(obj, Inert):
        state = obj.state
        if isinstance(state, dict) and "_content" in state:
            return plain(state["_content"], path, depth + 1, inside)
        if isinstance(state, dict) and "_val" in state:
            return plain(state["_val"], path, depth + 1, inside)
    if isinstance(obj, dict):
        return {k: plain(v, path, depth + 1, inside) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, path, depth + 1, inside) for v in obj]
    return obj
