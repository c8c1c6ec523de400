"""Build ``tipo/data/tagdb.bin`` from the tag lists in the pinned ``tipo-kgen`` wheel.

Usage::

    python tools/build_tagdb.py                  # pip-download tipo-kgen==0.3.1, build
    python tools/build_tagdb.py --wheel PATH     # use a wheel already on disk
    python tools/build_tagdb.py --check          # rebuild in memory, compare with the file

The lists come from KGen by KohakuBlueleaf (Apache-2.0, see NOTICE).  The wheel is
checked against its published sha256 so the output only ever changes when this file
changes; the same wheel gives the same bytes on every run (zlib output is stable for a
given zlib build).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python tools/build_tagdb.py` puts tools/, not the repo, first
    sys.path.insert(0, str(REPO_ROOT))

from tipo.errors import TagDatabaseError  # noqa: E402
from tipo.tagdb import TagDatabase, TagSource, packaged_path  # noqa: E402

logger = logging.getLogger("build_tagdb")

WHEEL_REQUIREMENT = "tipo-kgen==0.3.1"
WHEEL_NAME = "tipo_kgen-0.3.1-py3-none-any.whl"
WHEEL_SHA256 = "b284ba7fddd4a0e512f1f112ffdc5ada7027cd5dde65e58ba77e1ba5501d752d"
LIST_FOLDER = "kgen/tag-list"
# Category order is fixed here, never taken from the archive listing (KGen's own loader
# orders by os.listdir, which differs between filesystems).
CATEGORIES = ("artist", "characters", "copyrights", "meta")


class BuildError(RuntimeError):
    """The wheel cannot be fetched, is not the pinned one, or lacks a tag list."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(folder: Path) -> Path:
    """``pip download`` the pinned wheel into ``folder`` (network needed only here)."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--dest", str(folder), WHEEL_REQUIREMENT,
    ]  # fmt: skip
    logger.info("running %s", " ".join(command))
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wheel = folder / WHEEL_NAME
    if result.returncode != 0 or not wheel.is_file():
        raise BuildError(
            f"`{' '.join(command)}` did not produce {WHEEL_NAME}:\n{result.stdout.strip()}\n"
            f"Download it by hand and pass --wheel PATH."
        )
    return wheel


def read_tag_lists(wheel: Path) -> dict[str, list[str]]:
    """The four lists as written in the wheel: universal newlines, stripped, blanks dropped."""
    lists: dict[str, list[str]] = {}
    try:
        with zipfile.ZipFile(wheel) as archive:
            for category in CATEGORIES:
                member = f"{LIST_FOLDER}/{category}.txt"
                try:
                    raw = archive.open(member)
                except KeyError as exc:
                    raise BuildError(f"{wheel} has no {member}") from exc
                # newline=None: the files use CRLF; "\r\n" and "\r" both end a line.
                with io.TextIOWrapper(raw, encoding="utf-8", newline=None) as text:
                    lists[category] = [line.strip() for line in text if line.strip()]
    except zipfile.BadZipFile as exc:
        raise BuildError(f"{wheel} is not a wheel (zip) file: {exc}") from exc
    return lists


def build_database(
    wheel: Path, *, expected_sha256: str = WHEEL_SHA256, source_name: str = WHEEL_REQUIREMENT
) -> TagDatabase:
    """Verify the wheel, read its lists and build the database in memory.

    The list invariants (pairwise disjoint, no ``_``, no control characters) are checked by
    :meth:`TagDatabase.from_lists`, which raises ``TagDatabaseError`` naming the offender.
    """
    digest = file_sha256(wheel)
    if digest != expected_sha256:
        raise BuildError(
            f"{wheel} has sha256 {digest}, expected {expected_sha256} "
            f"({WHEEL_REQUIREMENT} as published on PyPI); refusing to build from other data"
        )
    lists = read_tag_lists(wheel)
    logger.info("read %s", ", ".join(f"{name}: {len(names)}" for name, names in lists.items()))
    return TagDatabase.from_lists(lists, source=TagSource(source_name, digest))


def write_atomically(path: Path, data: bytes) -> None:
    """Write beside the target and rename, so a crash never leaves half a database."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.chmod(temp, 0o644)  # mkstemp creates 0600; this is an ordinary package file
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help=f"use this {WHEEL_NAME} instead of downloading")
    parser.add_argument("--output", type=Path, default=packaged_path(), help="default: %(default)s")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if --output differs from a fresh build"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.wheel is not None:
            data = build_database(args.wheel).to_bytes()
        else:
            with tempfile.TemporaryDirectory() as folder:
                data = build_database(download_wheel(Path(folder))).to_bytes()
    except (BuildError, TagDatabaseError) as exc:
        logger.error("error: %s", exc)
        return 1
    if args.check:
        same = args.output.is_file() and args.output.read_bytes() == data
        logger.info("%s is %s", args.output, "up to date" if same else "OUT OF DATE")
        return 0 if same else 1
    write_atomically(args.output, data)
    logger.info("wrote %s (%d bytes)", args.output, len(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
