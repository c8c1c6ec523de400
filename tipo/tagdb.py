"""Exact name -> category lookup over the Danbooru tag lists TIPO was trained with.

The four lists (artist, characters, copyrights, meta; about 957k names, see the "Input
categories" section of the TIPO format sheet) take 99 MiB as one Python ``set`` per list
(measured).  Here they live in two flat buffers instead (29.7 MiB):

* ``blob``: every name as UTF-8 followed by ``\\n``, grouped by category and sorted
  bytewise within it (sorted text compresses to 5.7 MB instead of 6.9 MB);
* ``table``: an open-addressing hash table of little-endian uint32, slot =
  ``crc32(name + "\\n") & (size - 1)``, linear probing, size a power of two at least four
  times the name count (measured: at twice, misses probe longer and lookups are about 25 %
  slower).  An occupied slot holds ``offset << 4 | category code`` (codes 1..15), an empty
  one 0; a candidate counts only if its bytes in ``blob`` equal the query's.

Both are stored as they are used, so opening is two ``zlib.decompress`` calls and a
zero-copy ``memoryview`` (0.2-0.3 s measured, 10.3 MB file).  Storing only each slot's
category code and rebuilding the offsets at load was measured too: 8.1 MB, but 0.6 s.

File layout (format 1): ``b"TIPOTAGS"``, ``<II`` format version and header length, a
UTF-8 JSON header (source wheel and sha256, categories with counts, table size, stream
lengths), the zlib stream of ``table``, the zlib stream of ``blob``.
"""

from __future__ import annotations

import functools
import itertools
import json
import mmap
import os
import re
import struct
import sys
import threading
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tipo.errors import TagDatabaseError

__all__ = ["TagDatabase", "TagSource", "default_database", "packaged_path"]

MAGIC = b"TIPOTAGS"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII")  # magic, format version, JSON header length
_CODE_BITS = 4  # low bits of a table entry: category code, 0 = empty slot
_MAX_CATEGORIES = (1 << _CODE_BITS) - 1
_MAX_BLOB = 1 << (32 - _CODE_BITS)  # offsets share a uint32 with the code
_SLOTS_PER_NAME = 4
_MAX_TABLE = 1 << 28  # entries; far above any list (4M for the real ones)
_BUILD_HINT = "run `python tools/build_tagdb.py` to rebuild it"
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class TagSource:
    """Where the names came from, recorded in the file header for provenance."""

    name: str
    sha256: str | None = None


def packaged_path() -> Path:
    """The database shipped inside the package (built by ``tools/build_tagdb.py``)."""
    return Path(__file__).resolve().parent / "data" / "tagdb.bin"


class TagDatabase:
    """Immutable, thread-safe exact lookup of tag names in the category lists.

    Lookup is case-sensitive and exact (``Highres`` is not ``highres``); the rules that try
    ``_`` -> space or fall back to ``general`` belong to the categoriser, not here.
    """

    __slots__ = ("_categories", "_counts", "_source", "_blob", "_table", "_mask")
    _categories: tuple[str, ...]  # index = category code; code 0 (empty slot) is never read
    _counts: tuple[int, ...]
    _source: TagSource
    _blob: bytes  # names as UTF-8, each followed by "\n"
    _table: memoryview  # uint32 entries: offset << 4 | code
    _mask: int

    def __init__(
        self,
        categories: tuple[str, ...],
        counts: tuple[int, ...],
        table: bytes,
        blob: bytes,
        source: TagSource,
    ) -> None:
        """Assemble from decoded buffers; use :meth:`load` or :meth:`from_lists` instead.

        Raises :class:`ValueError` when the buffers disagree with each other, which the
        loader turns into a :class:`TagDatabaseError` naming the file.
        """
        entries = _check_layout(categories, counts, table, blob)
        init = object.__setattr__
        init(self, "_categories", ("", *categories))
        init(self, "_counts", counts)
        init(self, "_source", source)
        init(self, "_blob", blob)
        init(self, "_table", entries)
        init(self, "_mask", len(entries) - 1)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_lists(
        cls, lists: Mapping[str, Iterable[str]], *, source: TagSource | None = None
    ) -> TagDatabase:
        """Build in memory from ``{category: names}``, categories in mapping order.

        Names are stripped and blanks dropped, as the build tool does with the wheel's
        files. Raises :class:`TagDatabaseError` when a name is in two lists or twice in one,
        or contains ``_`` or a control character: one category per name, the categoriser's
        ``_`` -> space retry and the line-based storage rely on these.
        """
        categories, names = _validated(lists)
        keys = [sorted(name.encode("utf-8") + b"\n" for name in group) for group in names]
        blob = b"".join(key for group in keys for key in group)
        if len(blob) >= _MAX_BLOB:
            raise TagDatabaseError(f"names take {len(blob)} bytes, the format holds {_MAX_BLOB}")
        size = 2
        while size < _SLOTS_PER_NAME * sum(map(len, keys)):
            size *= 2
        mask = size - 1
        table = array("I", [0]) * size
        offset = 0
        for code, group in enumerate(keys, start=1):
            for key in group:
                i = zlib.crc32(key) & mask
                while table[i]:
                    i = (i + 1) & mask
                table[i] = offset << _CODE_BITS | code
                offset += len(key)
        if sys.byteorder != "little":
            table.byteswap()
        counts = tuple(map(len, keys))
        return cls(categories, counts, table.tobytes(), blob, source or TagSource("in-memory"))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> TagDatabase:
        """Open a file written by :meth:`to_bytes`; ``None`` opens :func:`packaged_path`."""
        file = Path(path) if path is not None else packaged_path()
        try:
            with open(file, "rb") as stream:
                data = _map(stream)
        except OSError as exc:
            message = f"cannot read tag database {file}: {exc}; {_BUILD_HINT}"
            raise TagDatabaseError(message) from exc
        try:
            try:
                return cls._decode(data)
            finally:
                if isinstance(data, mmap.mmap):
                    data.close()
        except (ValueError, KeyError, TypeError, struct.error, zlib.error) as exc:
            message = f"tag database {file} is damaged ({exc}); {_BUILD_HINT}"
            raise TagDatabaseError(message) from exc

    @classmethod
    def _decode(cls, data: bytes | mmap.mmap) -> TagDatabase:
        magic, version, header_len = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise ValueError("not a TIPO tag database (bad magic)")
        if version != FORMAT_VERSION:
            raise ValueError(f"format version {version}, this code reads {FORMAT_VERSION}")
        start = _PREFIX.size + header_len
        header: dict[str, Any] = json.loads(data[_PREFIX.size : start].decode("utf-8"))
        table_size, blob_bytes = int(header["table_size"]), int(header["blob_bytes"])
        if not (0 < table_size <= _MAX_TABLE and 0 <= blob_bytes < _MAX_BLOB):
            raise ValueError(f"table size {table_size} or name bytes {blob_bytes} out of range")
        table_end = start + int(header["table_zlib_bytes"])
        if table_end + int(header["blob_zlib_bytes"]) != len(data):
            raise ValueError(f"file is {len(data)} bytes, the header describes another size")
        with memoryview(data) as view:
            table = _inflate(view[start:table_end], 4 * table_size)
            blob = _inflate(view[table_end:], blob_bytes)
        if len(table) != 4 * table_size or len(blob) != blob_bytes:
            raise ValueError("decompressed sizes differ from the header")
        categories = tuple(str(entry["name"]) for entry in header["categories"])
        counts = tuple(int(entry["count"]) for entry in header["categories"])
        source = TagSource(str(header["source"]["name"]), header["source"]["sha256"])
        return cls(categories, counts, table, blob, source)

    def to_bytes(self) -> bytes:
        """Serialise; the same lists always give the same bytes (with the same zlib)."""
        table = array("I", self._table.tobytes())
        if sys.byteorder != "little":
            table.byteswap()
        table_z = zlib.compress(table.tobytes(), 9)
        blob_z = zlib.compress(self._blob, 9)
        header = {
            "source": {"name": self._source.name, "sha256": self._source.sha256},
            "categories": [
                {"name": name, "count": count} for name, count in zip(self.categories, self._counts)
            ],
            "hash": "crc32(utf8(name) + LF) & (table_size - 1), linear probing",
            "table_entry": "uint32 LE: blob offset << 4 | category code (1-based), 0 = empty",
            "table_size": len(table),
            "blob_bytes": len(self._blob),
            "table_zlib_bytes": len(table_z),
            "blob_zlib_bytes": len(blob_z),
        }
        header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes))
        return b"".join((prefix, header_bytes, table_z, blob_z))

    # -- queries --------------------------------------------------------------------------

    def category(self, name: str) -> str | None:
        """The list holding exactly ``name`` (``"artist"``, ``"characters"``, ...), or None.

        Hot path (called per tag): one encode, one crc32 and on average 1.2 probes; the
        byte comparison makes hash collisions harmless.
        """
        try:
            key = (name + "\n").encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: no stored name is like that
            return None
        table = self._table
        mask = self._mask
        i = zlib.crc32(key) & mask
        entry = table[i]
        while entry:
            if self._blob.startswith(key, entry >> _CODE_BITS):
                # A query holding "\n" could match a run of consecutive names.
                return self._categories[entry & _MAX_CATEGORIES] if "\n" not in name else None
            i = (i + 1) & mask
            entry = table[i]
        return None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.category(name) is not None

    def __len__(self) -> int:
        return sum(self._counts)

    def names(self) -> Iterator[tuple[str, str]]:
        """Every ``(name, category)``: categories in order, names sorted bytewise within one.

        For tools and benchmarks (sampling real names); it decodes the whole blob, so keep it
        off hot paths.
        """
        lines = iter(self._blob.split(b"\n"))
        for category, count in zip(self.categories, self._counts):
            for line in itertools.islice(lines, count):
                yield line.decode("utf-8"), category

    def counts(self) -> dict[str, int]:
        """Names per category, in the order the categories were given."""
        return dict(zip(self.categories, self._counts))

    @property
    def categories(self) -> tuple[str, ...]:
        return self._categories[1:]

    @property
    def source(self) -> TagSource:
        """Provenance from the header: the wheel's file name and sha256 for the packaged file."""
        return self._source

    @property
    def sha256(self) -> str | None:
        """sha256 of the wheel the names were read from (None when built from lists)."""
        return self._source.sha256

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={count}" for name, count in self.counts().items())
        return f"<TagDatabase {counts} from {self._source.name}>"


def default_database() -> TagDatabase:
    """The packaged database, opened on first use and shared afterwards.

    The lock makes concurrent first calls wait for one load instead of each reading the
    file (``lru_cache`` alone does not prevent that).
    """
    with _LOAD_LOCK:
        return _load_packaged()


@functools.lru_cache(maxsize=None)
def _load_packaged() -> TagDatabase:
    return TagDatabase.load(None)


def _map(stream: BinaryIO) -> bytes | mmap.mmap:
    """The file's bytes without copying them into the heap.

    Measured: reading the 10 MB file into a ``bytes`` and freeing it leaves about 13 MiB
    more resident after the open, because glibc keeps later temporaries in the grown heap.
    """
    if os.fstat(stream.fileno()).st_size == 0:
        return b""  # mmap refuses empty files; the decoder reports it as damaged
    return mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)


def _inflate(part: memoryview, size: int) -> bytes:
    """Decompress into one buffer of the expected size (no growing copies, see :func:`_map`)."""
    with part:  # released even on error, so the mmap can be closed
        return zlib.decompress(part, bufsize=max(size, 1))


def _validated(lists: Mapping[str, Iterable[str]]) -> tuple[tuple[str, ...], list[list[str]]]:
    """Strip, drop blanks and check the invariants lookup and categorisation rely on."""
    categories = tuple(lists)
    if not 0 < len(categories) <= _MAX_CATEGORIES:
        raise TagDatabaseError(f"need 1 to {_MAX_CATEGORIES} categories, got {len(categories)}")
    unsafe = re.compile(r"[_\x00-\x1f\x7f]").search
    seen: dict[str, str] = {}
    names: list[list[str]] = []
    for category in categories:
        if not isinstance(category, str) or not category:
            raise TagDatabaseError(f"category names must be non-empty strings, got {category!r}")
        if isinstance(lists[category], (str, bytes)):
            raise TagDatabaseError(f"{category!r} needs a list of names, not one string")
        group = []
        for raw in lists[category]:
            name = raw.strip()
            if not name:
                continue
            if unsafe(name):
                raise TagDatabaseError(
                    f"{category} name {name!r} contains '_' or a control character; "
                    "the tag lists spell names with spaces, one name a line"
                )
            if name in seen:
                raise TagDatabaseError(
                    f"{name!r} is listed in {seen[name]!r} and again in {category!r}; "
                    "each name must have one category"
                )
            seen[name] = category
            group.append(name)
        names.append(group)
    return categories, names


def _check_layout(
    categories: tuple[str, ...], counts: tuple[int, ...], table: bytes, blob: bytes
) -> memoryview:
    """The table as uint32 entries, after the consistency checks that run at C speed.

    They catch truncated or mismatched buffers; bit rot inside the streams is caught
    earlier by zlib's checksums.  Offsets are not range-checked (a pass over 4M entries
    costs 0.1 s): a wrong one can only make ``startswith`` fail, never crash a lookup.
    """
    if len(categories) != len(counts) or not 0 < len(counts) <= _MAX_CATEGORIES:
        raise ValueError(f"{len(categories)} categories with {len(counts)} counts")
    entries = memoryview(table).cast("I")
    if sys.byteorder != "little":
        swapped = array("I", table)
        swapped.byteswap()
        entries = memoryview(swapped)
    size, total = len(entries), sum(counts)
    if entries.itemsize != 4 or size & (size - 1) or size <= total:
        raise ValueError(f"table size {size} is not a power of two above {total} names")
    if len(blob) >= _MAX_BLOB or blob.count(b"\n") != total or blob[-1:] not in (b"\n", b""):
        raise ValueError(f"the name blob does not hold {total} lines")
    # The low byte of each little-endian entry carries the code in its low bits.  Counted in
    # 64k-entry pieces: small temporaries leave nothing behind in the heap (see _map).
    low_bits = bytes(b & _MAX_CATEGORIES for b in range(256))
    found = [0] * (_MAX_CATEGORIES + 1)
    step = 4 << 16
    for first in range(0, len(table), step):
        codes = table[first : first + step : 4].translate(low_bits)
        for code in range(len(counts) + 1):
            found[code] += codes.count(code)
    slots = found[1 : len(counts) + 1]
    if slots != list(counts) or found[0] != size - total:
        raise ValueError(f"the table has {slots} slots per category for {list(counts)} names")
    return entries
