"""Atomic, verified checkpoints in Equinox's leaf format (no pickle).

Layout of a run folder::

    run_dir/checkpoints/step_00000100/
        model.eqx         the model's array leaves (`eqx.tree_serialise_leaves`)
        train_state.eqx   optimizer state, step and PRNG key
        config.yaml       the resolved config of the run (when given)
        manifest.json     step, and the size and SHA-256 of each file (written last)

A checkpoint is written into a temporary folder and renamed into place with `os.replace`, so a
crash mid-write leaves no half checkpoint under a final name. Loading checks sizes and hashes
against the manifest and raises `CheckpointError` naming the file on any mismatch; the newest
`keep` checkpoints are kept, so the one before a damaged checkpoint still loads.
"""

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
from jaxtyping import PyTree

from probnet.training.sharding import to_host
from probnet.training.state import TrainState

FORMAT_VERSION = 1
MODEL_FILE = "model.eqx"
STATE_FILE = "train_state.eqx"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
_NAME = re.compile(r"^step_(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or does not match the expected structure."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint folders of a run, oldest first (temporary folders are ignored)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    run_dir: str | os.PathLike,
    state: TrainState,
    *,
    config_yaml: str | None = None,
    keep: int = 2,
) -> Path:
    """Write `state` atomically as `run_dir/checkpoints/step_<step>`; prune to the newest `keep`."""
    step = int(to_host(state.step))
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    for stale in root.glob(".tmp-*"):  # left by a crash mid-write; never loaded
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    host = jax.tree.map(_host_leaf, state)
    files = {
        MODEL_FILE: lambda f: eqx.tree_serialise_leaves(f, host.model),
        STATE_FILE: lambda f: eqx.tree_serialise_leaves(f, (host.opt_state, host.step, host.key)),
    }
    if config_yaml is not None:
        files[CONFIG_FILE] = lambda f: f.write(config_yaml.encode())
    entries = {}
    for name, write in files.items():
        path = tmp / name
        with open(path, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        entries[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format_version": FORMAT_VERSION, "step": step, "files": entries}
    _write_synced(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
    old = None
    if final.exists():  # re-saving the same step (e.g. after a resume): swap it out first
        old = root / f".tmp-old-{final.name}-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """The manifest of checkpoint folder `path`, after checking every file's size and hash."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST_FILE} (incomplete write?)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        int(manifest["step"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST_FILE} is unreadable ({e})") from None
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(
                f"checkpoint {path}: {name} has {size} bytes but the manifest records "
                f"{entry['bytes']} (truncated or overwritten)"
            )
        if _sha256(file) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {path}: {name} fails its SHA-256 check (corrupt)")
    return manifest


def load_checkpoint(path: str | os.PathLike, like: TrainState) -> TrainState:
    """Verify and load checkpoint folder `path` into the structure of `like`.

    `like` may hold `jax.ShapeDtypeStruct`s (from `eqx.filter_eval_shape`) instead of arrays.
    """
    path = Path(path)
    verify_checkpoint(path)
    model = load_model(path, like.model, verify=False)
    state_like = (like.opt_state, like.step, like.key)
    opt_state, step, key = _deserialise(path / STATE_FILE, state_like)
    return TrainState(model=model, opt_state=opt_state, step=step, key=key)


def load_model(path: str | os.PathLike, like: PyTree, *, verify: bool = True) -> PyTree:
    """Only the model of checkpoint folder `path`, in the structure of `like`."""
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    return _deserialise(path / MODEL_FILE, like)


def latest_valid_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint that passes `verify_checkpoint`; warns about each newer damaged one.

    Returns None if the run has no checkpoint; raises `CheckpointError` if none is valid.
    """
    found = list_checkpoints(run_dir)
    errors = []
    for path in reversed(found):
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"skipping damaged checkpoint: {e}", stacklevel=2)
            errors.append(str(e))
            continue
        return path
    if errors:
        raise CheckpointError(f"no valid checkpoint in {run_dir}: " + "; ".join(errors))
    return None


def _is_key(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _host_leaf(x):
    """NumPy copy of an array leaf; typed PRNG keys as their raw key data."""
    if not isinstance(x, jax.Array):
        return x
    if _is_key(x):
        x = jax.random.key_data(x)
    return to_host(x)


def _load_leaf(f, like):
    if _is_key(like):
        impl = jax.random.key_impl(like) if isinstance(like, jax.Array) else like.dtype._impl
        return jax.random.wrap_key_data(np.load(f), impl=impl)
    return eqx.default_deserialise_filter_spec(f, like)


def _deserialise(file: Path, like):
    try:
        return eqx.tree_deserialise_leaves(file, like, filter_spec=_load_leaf)
    except Exception as e:  # wrong structure, shape or dtype; unreadable bytes
        raise CheckpointError(
            f"cannot load {file} into the expected structure ({type(e).__name__}: {e}); was it "
            "written by a different model or optimizer config?"
        ) from e


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
