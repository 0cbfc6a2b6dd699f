"""Maps written to disk as they are computed, in files numpy and TensorFlow read as they are.

A directory written by :meth:`~saliencekit.attributions.BlackBoxExplainer.explain_to`::

    manifest.json       what produced the maps and how they are laid out (JSON)
    maps-00000.npy      float32 (k, *map_shape): the maps of inputs s*shard_size ... + k - 1
    index-00000.npy     int64 (k,): the index of the input each map belongs to
    maps-00001.npy ...

Shard ``s`` holds the maps of inputs ``[s * shard_size, (s + 1) * shard_size)`` in input
order; every shard but the last is full. Every file is written under a temporary name
(``.<name>.<pid>.<random>.tmp``) and renamed once complete and flushed to disk
(``os.replace`` is atomic), so a file under its final name is whole; a shard's index file is
renamed before its maps file, so a shard is complete when its maps file exists. The
manifest's ``complete`` turns true, with the total ``count``, once every shard is written.

Reading without saliencekit::

    maps = np.concatenate([np.load(f) for f in sorted(glob("maps-*.npy"))])
    shard = np.load("maps-00003.npy", mmap_mode="r")        # one shard, memory-mapped
    ds = tf.data.Dataset.from_tensor_slices(np.load("maps-00003.npy"))

A single ``.npy`` file is not written while maps are computed: a preallocated file filled
through a memory map keeps its pages in the writer's resident memory (which would then grow
with the dataset) and has no unit that is atomically complete, which resuming needs.
:meth:`MapStore.to_npy` makes one ``.npy`` memory map of a finished store, copying shard by
shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from . import validation

FORMAT = "saliencekit.maps"
VERSION = 1
MANIFEST = "manifest.json"
#: The settings two runs must share to write into one directory (``count`` when both know
#: it). ``map_shape`` is compared when the resumed run computes its first maps.
COMPARED = ("format", "version", "explainer", "model_weights", "input_shape", "shard_size")
_MAPS = re.compile(r"maps-(\d+)\.npy")
_TEMPORARY = re.compile(r"\..+\.tmp")


def maps_file(shard: int) -> str:
    return f"maps-{shard:05d}.npy"


def index_file(shard: int) -> str:
    return f"index-{shard:05d}.npy"


def fingerprint(arrays: Iterable[np.ndarray]) -> str:
    """A digest of arrays' shapes, dtypes and values (a model's weights)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return "blake2b:" + digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` through ``write(file)`` under a temporary name, flush it to disk, then
    rename it: ``path`` is either absent, as it was, or whole."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_json(path: Path, value: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(value, indent=1).encode()))


def _read_manifest(path: Path) -> dict | None:
    file = path / MANIFEST
    if not file.exists():
        return None
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise validation.value_error(
            "path", "a directory of saliencekit maps with a readable manifest.json",
            f"{str(path)!r} whose manifest.json cannot be read ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise validation.value_error(
            "path", f"a directory of saliencekit maps (manifest format {FORMAT!r})",
            f"{str(path)!r} with another manifest.json")
    return manifest


def _shard_header(file: Path) -> tuple[tuple, np.dtype]:
    """Shape and dtype of a ``.npy`` file, from its header (no data is read)."""
    with open(file, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
    return shape, dtype


def _complete_shards(path: Path) -> dict[int, Path]:
    shards = {}
    for file in path.iterdir():
        match = _MAPS.fullmatch(file.name)
        if match and (path / index_file(int(match.group(1)))).exists():
            shards[int(match.group(1))] = file
    return dict(sorted(shards.items()))


def rows(maps: Any) -> tuple[np.ndarray, list | None]:
    """A batch's maps as one float32 array, a row per input, and for the maps of a
    multi-input model (a tuple, list or dict of arrays) how to split each row back:
    ``[container, [[key, shape], ...]]``; ``None`` for a single array."""
    if not isinstance(maps, (tuple, list, dict)):
        return np.asarray(maps), None
    if isinstance(maps, dict):
        container, parts = "dict", list(maps.items())
    else:
        container, parts = type(maps).__name__, list(enumerate(maps))
    arrays = [np.asarray(value) for _, value in parts]
    flat = np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1)
    return flat, [container, [[key, list(a.shape[1:])] for (key, _), a in zip(parts, arrays)]]


def _split_rows(flat: np.ndarray, layout: list) -> Any:
    container, parts = layout
    out, start = [], 0
    for key, shape in parts:
        size = int(np.prod(shape))
        out.append((key, flat[:, start:start + size].reshape(len(flat), *shape)))
        start += size
    if container == "dict":
        return dict(out)
    values = [value for _, value in out]
    return values if container == "list" else tuple(values)


class MapStore:
    """Maps written to disk by ``explain_to``; ``MapStore(path)`` opens a directory.

    Attributes
    ----------
    path : pathlib.Path
    manifest : dict
        What produced the maps (``explainer``, ``model_weights``, ``seed``, ...) and their
        layout (``map_shape``, ``dtype``, ``shard_size``), ``count`` and ``complete``.

    ``len(store)`` is the number of maps written; :meth:`load` and :meth:`index` give them
    in input order.

    Examples
    --------
    >>> import os, tempfile, numpy as np, keras
    >>> from saliencekit.attributions import Saliency
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> path = tempfile.mkdtemp()
    >>> x = np.ones((5, 4), "float32")
    >>> explainer = Saliency(model, batch_size=2)
    >>> store = explainer.explain_to(path, x, [0, 1, 2, 0, 1], shard_size=4, verbose=0)
    >>> store.load().shape, store.index().tolist(), [m.name for m, _ in store.shards]
    ((5, 4), [0, 1, 2, 3, 4], ['maps-00000.npy', 'maps-00001.npy'])
    >>> MapStore(path).to_npy(os.path.join(path, "all.npy")).shape  # one memory-mapped .npy
    (5, 4)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest = _read_manifest(self.path) if self.path.is_dir() else None
        if manifest is None:
            raise validation.value_error(
                "path", "a directory written by explain_to (with a manifest.json)",
                repr(str(path)))
        self.manifest = manifest

    @property
    def complete(self) -> bool:
        """The run finished and every shard is still there."""
        return bool(self.manifest.get("complete")) and len(self) == self.manifest["count"]

    @property
    def map_shape(self) -> tuple | None:
        shape = self.manifest.get("map_shape")
        return None if shape is None else tuple(shape)

    @property
    def shards(self) -> list[tuple[Path, Path]]:
        """``(maps file, index file)`` of each complete shard, in input order."""
        return [(file, self.path / index_file(s))
                for s, file in _complete_shards(self.path).items()]

    def __len__(self) -> int:
        """The number of maps in complete shards (read from the files' headers)."""
        return sum(_shard_header(maps)[0][0] for maps, _ in self.shards)

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return f"MapStore({str(self.path)!r}, {len(self)} maps, {state})"

    def load(self) -> np.ndarray:
        """Every map written, ``(len(self), *map_shape)`` float32, in input order (all the
        inputs' maps when :attr:`complete`; those of :meth:`index` otherwise). A
        multi-input model's maps come back in the structure its inputs were given in (a
        tuple, list or dict of arrays); on disk each row holds them one after another."""
        shards = [np.load(maps) for maps, _ in self.shards]
        flat = np.concatenate(shards) if shards else np.zeros(
            (0, *(self.map_shape or ())), np.float32)
        layout = self.manifest.get("layout")
        return flat if layout is None else _split_rows(flat, layout)

    def index(self) -> np.ndarray:
        """The input index of each map of :meth:`load`, int64."""
        shards = [np.load(index) for _, index in self.shards]
        return np.concatenate(shards) if shards else np.zeros(0, np.int64)

    def to_npy(self, file: str | os.PathLike) -> np.memmap:
        """Copy a complete store into one ``.npy`` file (``np.lib.format.open_memmap``),
        shard by shard, and return it memory-mapped read-only: row ``i`` is input ``i``."""
        if not self.complete:
            raise validation.value_error(
                "store", "a complete store (every shard written)",
                f"{len(self)} maps in {str(self.path)!r} of an unfinished run",
                "Run explain_to again with the same arguments to finish it.")
        if self.manifest.get("layout") is not None:
            raise validation.value_error(
                "store", "the maps of a single-input model", "the maps of a multi-input model",
                "load() gives them as they were explained, one array per input.")
        out = np.lib.format.open_memmap(
            file, mode="w+", dtype=np.float32, shape=(len(self), *self.map_shape))
        start = 0
        for maps, _ in self.shards:
            shard = np.load(maps, mmap_mode="r")
            out[start:start + len(shard)] = shard
            start += len(shard)
        out.flush()
        del out
        return np.load(file, mmap_mode="r")


class ShardWriter:
    """Writes one run's maps into a directory, shard by shard, resuming what is there.

    ``settings`` are the manifest's fields that describe the run (``explainer``,
    ``model_weights``, ``input_shape``, ``count`` or None, ...); an existing directory must
    have been written with the same :data:`COMPARED` settings. With ``write=False`` (a worker
    that is not the chief of a multi-worker run) the directory is only read.
    """

    def __init__(self, path: str | os.PathLike, settings: dict, shard_size: int | None,
                 default_shard_size: int, *, write: bool = True):
        self.path = Path(path)
        self.write = write
        if self.path.exists() and not self.path.is_dir():
            raise validation.value_error(
                "path", "a directory (new, empty, or written by explain_to)",
                f"{str(path)!r}, an existing file")
        manifest = _read_manifest(self.path) if self.path.is_dir() else None
        if manifest is None:
            if write:  # a reader may see the writer's first files appear
                self._check_empty()
            manifest = {"format": FORMAT, "version": VERSION, **settings,
                        "shard_size": shard_size or default_shard_size,
                        "map_shape": None, "dtype": "float32", "seed": None,
                        "count": settings.get("count"), "complete": False}
        else:
            ours = {"format": FORMAT, "version": VERSION, **settings,
                    "shard_size": shard_size or manifest.get("shard_size")}
            for key in (*COMPARED, "count"):
                if key == "count" and (ours.get(key) is None or manifest.get(key) is None):
                    continue
                if ours.get(key) != manifest.get(key):
                    raise validation.value_error(
                        "path", f"a new directory, or maps of this run ({key}={ours.get(key)!r})",
                        f"{str(path)!r} holding maps of {key}={manifest.get(key)!r}",
                        "Pass another path, or delete this one to start over.")
        self.manifest = manifest
        self.shard_size = int(manifest["shard_size"])
        if write:
            self.path.mkdir(parents=True, exist_ok=True)
            for file in self.path.iterdir():  # left by an interrupted run: never complete
                if _TEMPORARY.fullmatch(file.name):
                    file.unlink(missing_ok=True)
        self.done = self._check_shards()
        if manifest.get("complete") and sum(self.done.values()) != manifest["count"]:
            manifest["complete"] = False  # finished, then shards were deleted: redo those
        self._buffer: np.ndarray | None = None
        self._shard = -1  # the shard being filled
        self._filled = 0

    def _check_empty(self) -> None:
        if self.path.is_dir():
            names = [f.name for f in self.path.iterdir() if not _TEMPORARY.fullmatch(f.name)]
            if names:
                raise validation.value_error(
                    "path", "a new or empty directory, or one written by explain_to",
                    f"{str(self.path)!r} holding {len(names)} other files "
                    f"(e.g. {sorted(names)[0]!r})")

    def _check_shards(self) -> dict[int, int]:
        """``{shard: rows}`` of the complete shards, checked against the manifest."""
        done = {}
        shape = self.manifest.get("map_shape")
        for shard, file in (_complete_shards(self.path).items() if self.path.is_dir() else ()):
            (rows, *map_shape), dtype = _shard_header(file)
            if (shape is not None and map_shape != shape) or dtype != np.float32 or not (
                    0 < rows <= self.shard_size):
                raise validation.value_error(
                    "path", f"shards of at most {self.shard_size} float32 maps of shape "
                    f"{tuple(shape or ())}", f"{file.name} of shape {(rows, *map_shape)} and "
                    f"dtype {dtype}", "Delete the directory to start over.")
            done[shard] = rows
        short = [s for s, rows in done.items() if rows < self.shard_size]
        if short and short[0] != max(done):
            raise validation.value_error(
                "path", "shards that are full except the last",
                f"{maps_file(short[0])} with {done[short[0]]} maps before {maps_file(max(done))}",
                "Delete the directory to start over.")
        return done

    @property
    def seed(self) -> int | None:
        return self.manifest.get("seed")

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def batches_done(self, batch_size: int, batch_count: int | None) -> list[int] | None:
        """Indices of the batches (of ``batch_size`` inputs, ``batch_count`` of them when
        known) that complete shards hold, or None when every shard is there."""
        end = self.manifest.get("count")
        short = [s for s, rows in self.done.items() if rows < self.shard_size]
        if short:  # the last shard: the inputs end with it
            end = short[0] * self.shard_size + self.done[short[0]]
        if end is not None and all(
                s in self.done for s in range(-(-end // self.shard_size))):
            return None
        if batch_count is None:  # a Dataset: batches up to the last complete shard
            batch_count = -(-(max(self.done, default=-1) + 1) * self.shard_size // batch_size)
        return [b for b in range(batch_count) if b * batch_size // self.shard_size in self.done]

    def start(self, seed: int) -> None:
        """Record the run's seed (the one of a run being resumed is kept)."""
        if self.manifest.get("seed") is None:
            self.manifest["seed"] = int(seed)
            self._save_manifest()

    def _save_manifest(self) -> None:
        if self.write:
            _write_json(self.path / MANIFEST, self.manifest)

    def add(self, first_row: int, maps: tuple[np.ndarray, list | None]) -> None:
        """Maps of inputs ``first_row, first_row + 1, ...``, in input order, as
        :func:`rows` gives them."""
        maps, layout = maps
        if layout is not None and self.manifest.get("layout") is None:
            self.manifest["layout"] = layout
        shard, start = divmod(first_row, self.shard_size)
        if self._buffer is None:
            shape = self.manifest.get("map_shape")
            if shape is not None and list(maps.shape[1:]) != shape:
                raise validation.value_error(
                    "path", f"a new directory, or maps of shape {tuple(maps.shape[1:])}",
                    f"{str(self.path)!r} holding maps of shape {tuple(shape)}",
                    "Pass another path, or delete this one to start over.")
            if shape is None:
                self.manifest["map_shape"] = list(maps.shape[1:])
                self._save_manifest()
            self._buffer = np.empty((self.shard_size, *maps.shape[1:]), np.float32)
        if shard != self._shard:
            self._flush()
            self._shard, self._filled = shard, 0
        if start != self._filled or start + len(maps) > self.shard_size:
            raise RuntimeError(  # a bug, not a user error: batches must tile shards in order
                f"maps of rows {first_row}..{first_row + len(maps)} do not continue shard "
                f"{shard} at row {self._filled}")
        self._buffer[start:start + len(maps)] = maps
        self._filled += len(maps)
        if self._filled == self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if self._filled == 0:
            return
        shard, rows = self._shard, self._filled
        if self.write:
            first = shard * self.shard_size
            index = np.arange(first, first + rows, dtype=np.int64)
            atomic_write(self.path / index_file(shard), lambda f: np.save(f, index))
            maps = self._buffer[:rows]
            atomic_write(self.path / maps_file(shard), lambda f: np.save(f, maps))
        self.done[shard] = rows
        self._filled = 0

    def finish(self) -> None:
        """Write the last (short) shard and complete the manifest with the count."""
        self._flush()
        shards = sorted(self.done)
        if shards != list(range(len(shards))) or any(
                self.done[s] != self.shard_size for s in shards[:-1]):
            missing = sorted(set(range(max(shards, default=-1) + 1)) - set(shards))
            raise validation.value_error(
                "inputs", "the inputs of the run that wrote this directory (same count, same "
                "order)", f"inputs that ended before shards {[maps_file(s) for s in missing]} "
                "or after a shorter last shard", "Pass another path, or delete this one.")
        count = sum(self.done.values())
        if self.manifest.get("count") not in (None, count):
            raise validation.value_error(
                "inputs", f"{self.manifest['count']} inputs, as in the run that wrote "
                f"{str(self.path)!r}", f"{count}")
        self.manifest.update(count=count, complete=True)
        self._save_manifest()
