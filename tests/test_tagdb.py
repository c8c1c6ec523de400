"""The tag database: exact lookup, the file format, its errors and the build tool.

Most tests build a small database from ``tests/fixtures/tag-lists`` (CRLF files like the
wheel's) through the build tool's own code path; one opens the packaged file.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import json
import random
import re
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tipo.tagdb as tagdb
from tipo.errors import TagDatabaseError, TipoError
from tipo.tagdb import TagDatabase, TagSource, default_database

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "tag-lists"
CATEGORIES = ("artist", "characters", "copyrights", "meta")


@functools.lru_cache(maxsize=None)
def _fixture_lists() -> dict[str, list[str]]:
    """Read independently of the tool: universal newlines, stripped, blanks dropped."""
    lists = {}
    for category in CATEGORIES:
        text = (FIXTURES / f"{category}.txt").read_text(encoding="utf-8")
        lists[category] = [line.strip() for line in text.split("\n") if line.strip()]
    return lists


def _make_wheel(path: Path, members: list[str] | None = None) -> Path:
    """A stand-in for the tipo-kgen wheel holding the fixture lists."""
    with zipfile.ZipFile(path, "w") as archive:
        for category in members or CATEGORIES:
            data = (FIXTURES / f"{category}.txt").read_bytes()
            member = f"kgen/tag-list/{category}.txt"
            archive.writestr(zipfile.ZipInfo(member, date_time=(2024, 9, 29, 0, 0, 0)), data)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def build_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_tagdb", REPO / "tools" / "build_tagdb.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def db_file(tmp_path_factory: pytest.TempPathFactory, build_tool: ModuleType) -> Path:
    folder = tmp_path_factory.mktemp("tagdb")
    wheel = _make_wheel(folder / "fixture.whl")
    database = build_tool.build_database(
        wheel, expected_sha256=_sha256(wheel), source_name="fixture"
    )
    output = folder / "tagdb.bin"
    build_tool.write_atomically(output, database.to_bytes())
    return output


@pytest.fixture(scope="module")
def db(db_file: Path) -> TagDatabase:
    return TagDatabase.load(db_file)


def test_fixture_files_use_crlf_like_the_wheel() -> None:
    for category in CATEGORIES:
        data = (FIXTURES / f"{category}.txt").read_bytes()
        assert b"\r\n" in data and data.count(b"\n") == data.count(b"\r\n"), category


def test_every_fixture_name_has_its_category(db: TagDatabase) -> None:
    lists = _fixture_lists()
    for category, names in lists.items():
        for name in names:
            assert db.category(name) == category, name
            assert name in db
    assert db.counts() == {category: len(names) for category, names in lists.items()}
    assert len(db) == sum(map(len, lists.values()))
    assert db.categories == CATEGORIES


def test_header_records_the_source(db: TagDatabase, db_file: Path) -> None:
    wheel_sha256 = _sha256(db_file.parent / "fixture.whl")
    assert db.source == TagSource("fixture", wheel_sha256)
    assert db.sha256 == wheel_sha256
    data = db_file.read_bytes()
    (header_len,) = struct.unpack_from("<I", data, 12)
    header = json.loads(data[16 : 16 + header_len])
    assert header["source"]["sha256"] == db.sha256
    assert [entry["count"] for entry in header["categories"]] == list(db.counts().values())


@pytest.mark.parametrize(
    "query",
    [
        "1girl",
        "",
        " ",
        "highres ",
        " highres",
        "highres\r",
        "highre",
        "highresx",
        "high res",
        "commentary requests",
        "request",
        "hatsune_miku",  # the `_` -> space retry is the categoriser's job, not the lookup's
        "saber",
        "(fate)",
        "saber (fate",
    ],
)
def test_anything_but_an_exact_name_is_a_miss(db: TagDatabase, query: str) -> None:
    assert db.category(query) is None
    assert query not in db


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("hatsune miku", "characters"),
        ("Hatsune Miku", None),
        ("HATSUNE MIKU", None),
        ("highres", "meta"),
        ("Highres", None),
        ("original", "copyrights"),
        ("Original", None),
        ("wlop", "artist"),
        ("WLOP", None),
    ],
)
def test_lookup_is_case_sensitive(db: TagDatabase, query: str, expected: str | None) -> None:
    assert db.category(query) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("あさひ (asahi)", "artist"),
        ("🍓 ichigo (artist)", "artist"),  # four UTF-8 bytes, outside the BMP
        ("amélie lacroix", "characters"),
        ("ame\u0301lie lacroix", None),  # same text decomposed: bytes differ, no match
        ("ポケモン (fixture)", "copyrights"),
        ("ポケモン", None),
        ("\ud800", None),  # a lone surrogate cannot be encoded; it is simply not a name
        ("amélie lacroix\ud800", None),
    ],
)
def test_unicode_names(db: TagDatabase, query: str, expected: str | None) -> None:
    assert db.category(query) == expected


def test_non_strings_are_not_contained(db: TagDatabase) -> None:
    assert 5 not in db
    assert None not in db
    assert b"highres" not in db


def test_query_spanning_two_stored_names_is_a_miss() -> None:
    """A query holding a line break must not match two consecutive names of the blob.

    Relies on the documented layout (sorted names, 4 slots per name, crc32 of name + LF)
    to pick names whose probe sequence starts at the first name's slot.
    """
    for k in itertools.count():
        first, second = f"a{k}", f"b{k}"
        query = f"{first}\n{second}"
        if zlib.crc32(f"{query}\n".encode()) & 7 == zlib.crc32(f"{first}\n".encode()) & 7:
            break
    database = TagDatabase.from_lists({"artist": [first, second]})
    assert database.category(first) == "artist"
    assert database.category(second) == "artist"
    assert database.category(query) is None


@given(text=st.text())
def test_any_text_is_found_only_if_listed(db: TagDatabase, text: str) -> None:
    expected = next((c for c, names in _fixture_lists().items() if text in names), None)
    assert db.category(text) == expected


@given(name=st.sampled_from([n for names in _fixture_lists().values() for n in names]))
def test_any_listed_name_plus_a_character_is_a_miss(db: TagDatabase, name: str) -> None:
    for variant in (name + " ", name + "s", "_" + name, name.upper(), name.replace(" ", "_")):
        if variant != name:
            assert db.category(variant) is None


def _fixture_database() -> TagDatabase:
    return TagDatabase.from_lists(_fixture_lists())


def test_loaded_file_equals_in_memory_build(db: TagDatabase, db_file: Path) -> None:
    in_memory = TagDatabase.from_lists(_fixture_lists(), source=db.source)
    assert in_memory.to_bytes() == db_file.read_bytes()
    assert db.to_bytes() == db_file.read_bytes()
    assert list(in_memory.names()) == list(db.names())
    assert sorted(db.names()) == sorted(
        (name, category) for category, names in _fixture_lists().items() for name in names
    )


def test_build_is_deterministic(tmp_path: Path, build_tool: ModuleType, db_file: Path) -> None:
    wheel = db_file.parent / "fixture.whl"
    again = build_tool.build_database(wheel, expected_sha256=_sha256(wheel), source_name="fixture")
    assert again.to_bytes() == db_file.read_bytes()
    source = TagSource("fixture", None)
    outputs: list[bytes] = []
    for members in (list(CATEGORIES), list(reversed(CATEGORIES))):
        lists = build_tool.read_tag_lists(_make_wheel(tmp_path / f"{len(outputs)}.whl", members))
        outputs.append(TagDatabase.from_lists(lists, source=source).to_bytes())
    assert outputs[0] == outputs[1]
    shuffled = {category: list(names) for category, names in _fixture_lists().items()}
    for names in shuffled.values():
        random.Random(0).shuffle(names)
    assert TagDatabase.from_lists(shuffled).to_bytes() == _fixture_database().to_bytes()


def test_category_order_does_not_follow_the_archive(tmp_path: Path, build_tool: ModuleType) -> None:
    """KGen orders its lists by os.listdir, which depends on the filesystem; we never do."""
    wheel = _make_wheel(tmp_path / "reversed.whl", list(reversed(CATEGORIES)))
    assert tuple(build_tool.read_tag_lists(wheel)) == CATEGORIES


def test_tool_reads_crlf_lists_and_drops_blanks(tmp_path: Path, build_tool: ModuleType) -> None:
    lists = build_tool.read_tag_lists(_make_wheel(tmp_path / "w.whl"))
    assert lists == _fixture_lists()
    assert all("\r" not in name and name for names in lists.values() for name in names)


def test_tool_refuses_a_wheel_with_another_sha256(
    tmp_path: Path, build_tool: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    wheel = _make_wheel(tmp_path / "tipo_kgen-0.3.1-py3-none-any.whl")
    output = tmp_path / "out.bin"
    assert build_tool.main(["--wheel", str(wheel), "--output", str(output)]) == 1
    assert not output.exists()
    assert build_tool.WHEEL_SHA256 in caplog.text and _sha256(wheel) in caplog.text


def test_tool_reports_a_missing_list(tmp_path: Path, build_tool: ModuleType) -> None:
    wheel = _make_wheel(tmp_path / "w.whl", ["artist", "characters", "meta"])
    with pytest.raises(build_tool.BuildError, match="kgen/tag-list/copyrights.txt"):
        build_tool.build_database(wheel, expected_sha256=_sha256(wheel))


@pytest.mark.parametrize(
    ("lists", "message"),
    [
        ({"artist": ["wlop"], "meta": ["wlop"]}, "'wlop' is listed in 'artist' and again in 'meta"),
        ({"artist": ["wlop", " wlop "]}, "'wlop' is listed in 'artist' and again in 'artist'"),
        ({"characters": ["hatsune_miku"]}, "contains '_'"),
        ({"characters": ["hatsune\tmiku"]}, "control character"),
        ({}, "need 1 to 15 categories"),
        ({f"c{i}": [f"n{i}"] for i in range(16)}, "need 1 to 15 categories"),
        ({"": ["x"]}, "non-empty strings"),
        ({"artist": "wlop"}, "needs a list of names, not one string"),
    ],
)
def test_lists_breaking_an_invariant_are_refused(
    lists: dict[str, Iterable[str]], message: str
) -> None:
    with pytest.raises(TagDatabaseError, match=re.escape(message)):
        TagDatabase.from_lists(lists)


def test_empty_categories_are_allowed() -> None:
    database = TagDatabase.from_lists({"artist": [], "meta": ["", "  ", "highres"]})
    assert database.counts() == {"artist": 0, "meta": 1}
    assert database.category("highres") == "meta"
    assert TagDatabase._decode(database.to_bytes()).counts() == database.counts()


def test_database_is_immutable(db: TagDatabase) -> None:
    with pytest.raises(AttributeError):
        db._blob = b""
    with pytest.raises(AttributeError):
        del db._table
    with pytest.raises(AttributeError):
        db.extra = 1


def test_missing_file_names_the_path_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "tagdb.bin"
    with pytest.raises(TagDatabaseError) as caught:
        TagDatabase.load(missing)
    assert str(missing) in str(caught.value)
    assert "python tools/build_tagdb.py" in str(caught.value)
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    assert isinstance(caught.value, TipoError)


def _corruptions(data: bytes) -> dict[str, bytes]:
    (header_len,) = struct.unpack_from("<I", data, 12)
    header = json.loads(data[16 : 16 + header_len])
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF
    wrong_count = dict(header)
    wrong_count["categories"] = [dict(c) for c in header["categories"]]
    wrong_count["categories"][0]["count"] += 1
    relabelled = json.dumps(wrong_count, sort_keys=True).encode()
    return {
        "empty": b"",
        "text": b"itaru (kidomh63)\r\nwlop\r\n",
        "bad magic": b"NOTATAGS" + data[8:],
        "future version": data[:8] + struct.pack("<I", 2) + data[12:],
        "truncated": data[:-10],
        "trailing bytes": data + b"\0",
        "flipped byte": bytes(flipped),
        "header not json": data[:16] + b"x" * header_len + data[16 + header_len :],
        "wrong count": data[:12]
        + struct.pack("<I", len(relabelled))
        + relabelled
        + data[16 + header_len :],
    }


DAMAGES = (
    "empty",
    "text",
    "bad magic",
    "future version",
    "truncated",
    "trailing bytes",
    "flipped byte",
    "header not json",
    "wrong count",
)


def test_every_damage_is_tested(db_file: Path) -> None:
    assert tuple(_corruptions(db_file.read_bytes())) == DAMAGES


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_file_names_the_path_and_the_fix(
    db_file: Path, tmp_path: Path, damage: str
) -> None:
    broken = tmp_path / "broken.bin"
    broken.write_bytes(_corruptions(db_file.read_bytes())[damage])
    with pytest.raises(TagDatabaseError) as caught:
        TagDatabase.load(broken)
    assert str(broken) in str(caught.value)
    assert "python tools/build_tagdb.py" in str(caught.value)


def test_default_database_loads_once_across_16_threads(
    db_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = []
    real_load = TagDatabase.load.__func__  # type: ignore[attr-defined]

    def counting_load(cls: type[TagDatabase], path: object = None) -> TagDatabase:
        loads.append(path)
        database: TagDatabase = real_load(cls, path)
        return database

    monkeypatch.setattr(tagdb, "packaged_path", lambda: db_file)
    monkeypatch.setattr(TagDatabase, "load", classmethod(counting_load))
    tagdb._load_packaged.cache_clear()
    barrier = threading.Barrier(16)
    results: list[TagDatabase] = []
    answers: list[list[str | None]] = []
    queries = [name for names in _fixture_lists().values() for name in names] + ["1girl", "Wlop"]

    def worker() -> None:
        barrier.wait()
        database = default_database()
        results.append(database)
        answers.append([database.category(q) for q in queries * 20])

    threads = [threading.Thread(target=worker) for _ in range(16)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        tagdb._load_packaged.cache_clear()  # do not leak the fixture database to other tests
    assert len(loads) == 1
    assert len(results) == 16 and all(result is results[0] for result in results)
    reference = _fixture_database()
    expected = [reference.category(q) for q in queries * 20]
    assert answers == [expected] * 16


@pytest.fixture(scope="module")
def packaged() -> TagDatabase:
    return TagDatabase.load()  # tipo/data/tagdb.bin, in the repository: no network


def test_packaged_database_holds_the_pinned_lists(packaged: TagDatabase) -> None:
    database = packaged
    assert database.counts() == {
        "artist": 580988,
        "characters": 322737,
        "copyrights": 52594,
        "meta": 939,
    }
    assert database.sha256 == "b284ba7fddd4a0e512f1f112ffdc5ada7027cd5dde65e58ba77e1ba5501d752d"
    known = {
        "itaru (kidomh63)": "artist",  # first line of artist.txt
        "|6l6b": "artist",  # last line
        "wlop": "artist",
        "march 7th (honkai: star rail)": "characters",
        "hatsune miku": "characters",
        "saber (fate)": "characters",
        "zyva": "characters",
        "honkai: star rail": "copyrights",
        "touhou": "copyrights",
        "zz top": "copyrights",
        "highres": "meta",
        "absurdres": "meta",
        "zangskari commentary": "meta",
        "1girl": None,
        "masterpiece": None,
        "Highres": None,
        "hatsune_miku": None,
        "saber": None,
    }
    assert {name: database.category(name) for name in known} == known


def test_packaged_database_equals_the_installed_reference_lists(packaged: TagDatabase) -> None:
    """Differential: every line of tipo-kgen's lists maps to its own list, nothing more."""
    spec = importlib.util.find_spec("kgen")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tipo-kgen is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "tag-list"
    database = packaged
    lookup = database.category
    for category in CATEGORIES:
        with open(folder / f"{category}.txt", encoding="utf-8") as stream:
            names = [line.strip() for line in stream if line.strip()]
        assert database.counts()[category] == len(names)
        wrong = [name for name in names if lookup(name) != category]
        assert wrong == [], f"{len(wrong)} {category} names misfiled, e.g. {wrong[:3]}"
