"""Ban lists: names, globs, regexes and NL phrases; bad and hostile patterns."""

from __future__ import annotations

import threading
import time

import pytest

from tipo.bans import BanList, split_ban_text
from tipo.errors import BanPatternError, InvalidArgument


def test_names_are_exact_case_and_underscore_insensitive():
    bans = BanList.compile(["hat", "Long_Hair"])
    assert bans.bans_tag("hat") and bans.bans_tag("HAT")
    assert bans.bans_tag("long hair") and bans.bans_tag("long_hair")
    assert not bans.bans_tag("chat"), "the reference's substring match removed 'chat' for 'hat'"


def test_globs_match_the_whole_tag():
    bans = BanList.compile(["*text*", "official*"])
    assert bans.bans_tag("english text") and bans.bans_tag("text")
    assert bans.bans_tag("official art") and bans.bans_tag("official_art")
    assert not bans.bans_tag("unofficial")


def test_regexes_fullmatch_between_slashes():
    bans = BanList.compile(["/.*(hat|cap)/", "/a{2,}, b/"])
    assert bans.bans_tag("witch hat") and bans.bans_tag("baseball cap")
    assert not bans.bans_tag("hat trick")
    assert bans.bans_tag("aaa, b")


def test_split_ban_text_keeps_commas_inside_regexes():
    assert split_ban_text("hat, /a{1,2}, b/\n*text*,, ") == ["hat", "/a{1,2}, b/", "*text*"]


def test_invalid_regex_names_the_pattern():
    with pytest.raises(BanPatternError, match=r"'/\(unclosed/'") as info:
        BanList.compile(["fine", "/(unclosed/", "/[z-a]/"])
    assert "'/[z-a]/'" in str(info.value)
    assert isinstance(info.value, (InvalidArgument, ValueError))


def test_catastrophic_regex_is_bounded_and_switched_off(caplog):
    bans = BanList.compile(["/(a|aa)+c/"])
    started = time.perf_counter()
    results = [bans.bans_tag("a" * 40) for _ in range(50)]
    assert not any(results)
    assert time.perf_counter() - started < 2.0, "one timeout, then the pattern is off"
    assert "switched off" in caplog.text


def test_nl_phrases_ban_the_sentence():
    bans = BanList.compile(nl_bans=["Red Umbrella"])
    assert bans.bans_sentence("She holds a red umbrella")
    assert not bans.bans_sentence("She holds a blue umbrella")


def test_two_threads_never_see_each_others_bans():
    """The reference kept BAN_TAGS in a module global."""
    seen: dict[str, list[bool]] = {}

    def run(name: str, ban: str) -> None:
        bans = BanList.compile([ban])
        seen[name] = [bans.bans_tag("hat") for _ in range(2000)]

    threads = [threading.Thread(target=run, args=("a", "hat")), threading.Thread(target=run, args=("b", "cap"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(seen["a"]) and not any(seen["b"])
