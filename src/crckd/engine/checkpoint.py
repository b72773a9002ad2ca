"""Checkpoints: written atomically, read without unpickling code.

A checkpoint is a plain mapping of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`: a file carrying a pickled payload is refused instead of run.
Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed over
the target (`run_folder.atomic_file`), so a kill at any moment leaves the previous checkpoint
intact; a failed write (disk full) raises RunFolderError naming the file and keeps it too.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from crckd.engine.run_folder import atomic_file
from crckd.errors import CheckpointError

FORMAT = "crckd-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write `state` (tagged with the format name and version) to `path`."""
    buffer = io.BytesIO()  # torch.save turns a failed file write (disk full) into a vague error
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, buffer)
    with atomic_file(Path(path), "wb") as handle:
        handle.write(buffer.getbuffer())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a crckd checkpoint safely; refuses pickled code and foreign files with a clear error."""
    path = Path(path)
    if path.is_dir():
        hint = path / "checkpoints" / "best.pt"
        raise CheckpointError(f"{path} is a folder, not a checkpoint; did you mean {hint}?")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as handle:
        start = handle.read(4)
    if start != b"PK\x03\x04" and not start.startswith(b"\x80"):  # torch.save: zip or pickle
        raise CheckpointError(f"{path}: not a crckd checkpoint (not a file torch.save wrote)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and "
            f"plain data, which could run code ({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a crckd checkpoint (no '{FORMAT}' tag)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer crckd (format {state['format_version']}); upgrade crckd"
        )
    return state
