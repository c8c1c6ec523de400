"""The command line, end to end: dry run, one prompt, JSON, JSONL batches, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tipo.cli import main

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--max-new-tokens", "8", "--tag-length", "very_short", "--nl-length", "very_short"]


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tipo", *argv], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, **(env or {})}, timeout=300,
    )  # fmt: skip


def test_import_pulls_in_no_torch_gradio_or_webui():
    code = (
        "import sys, tipo, tipo.cli, tipo.request, tipo.pipeline, tipo.args;"
        "bad = [m for m in ('torch', 'transformers', 'gradio', 'modules', 'kgen') if m in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_dry_run_needs_no_model(capsys):
    assert main(["1girl, hatsune_miku, masterpiece, solo", "--nl", "A girl sings.", "--dry-run", "--width", "832", "--height", "1216"]) == 0
    out = capsys.readouterr().out
    assert "characters: hatsune miku" in out and "quality: masterpiece" in out
    assert "1. short_to_tag (long, expand)" in out and "2. tag_to_long (long, expand)" in out
    assert "characters: hatsune miku\nquality: masterpiece\naspect_ratio: 0.7\ntarget: <|long|> <|short_to_tag|>\nshort: A girl sings.\ntag: 1girl, solo" in out


def test_dry_run_json_in_a_fresh_process():
    out = run_cli("", "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["passes"] == [{"task": "tag", "length": "long", "expand": True}, {"task": "tag_to_long", "length": "long", "expand": True}]
    assert report["first_model_input"] == "aspect_ratio: 1.0\ntarget: <|long|>"


def test_one_prompt_with_a_local_model(tiny_model_dir, capsys):
    assert main(["1girl, (solo:1.1), <lora:x:0.5>", "--model", str(tiny_model_dir), "--seed", "5", *FAST]) == 0
    out = capsys.readouterr().out
    assert "(solo:1.1)" in out and "<lora:x:0.5>" in out and "1girl" in out


def test_json_output_reports_the_seed(tiny_model_dir, capsys):
    assert main(["1girl", "--model", str(tiny_model_dir), "--seed", "-1", "--json", *FAST]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["seed"] >= 0 and result["original"] == "1girl"


def test_batch_jsonl(tiny_model_dir, tmp_path):
    lines = [{"prompt": "1girl", "seed": 1}, {"prompt": "scenery", "seed": 2, "mode": "tag_only", "width": 640}]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    target = tmp_path / "out.jsonl"
    assert main(["--batch", str(source), "--output", str(target), "--model", str(tiny_model_dir), *FAST]) == 0
    results = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [r["seed"] for r in results] == [1, 2] and all(r["ok"] for r in results)
    assert results[0]["original"] == "1girl" and "scenery" in results[1]["prompt"]


def test_batch_with_a_bad_line_names_it(tiny_model_dir, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a", "tag_lenght": "long"}\n', encoding="utf-8")
    assert main(["--batch", str(source), "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert "in.jsonl:1" in err and "tag_lenght" in err and "tag_length" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["x", "--ban-tags", "/(/", "--dry-run"], "'/(/'"),
        (["x", "--temperature", "nan", "--dry-run"], "temperature"),
        (["x", "--model", "nobody/nothing"], "not a known TIPO model"),
        (["x", "--model", "/no/such/folder"], "/no/such/folder"),
    ],
)
def test_errors_are_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tipo: error:") and message in err


def test_hub_unreachable_says_what_to_do(tmp_path):
    out = run_cli("1girl", env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2
    assert "KBlueLeaf/TIPO-500M-ft" in out.stderr and "--model" in out.stderr
    assert "Traceback" not in out.stderr
