"""``python -m tipo``: expand a prompt, or a JSONL file of them, from the command line.

Results go to stdout, logs to stderr. ``--dry-run`` needs no model: it prints the categorised
tags, the pass plan and the exact first model input. Every flag is derived from
:class:`tipo.args.TipoArgs`, the schema the WebUI and the API use too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Iterator, Sequence, TextIO

from tipo.args import TipoArgs, fields, webui_fields
from tipo.errors import TipoError

__all__ = ["main", "build_parser"]

logger = logging.getLogger("tipo")

_SKIP = {"enabled", "nl_prompt"} | {f.name for f in webui_fields()}
_FLAG_NAMES = {"template": "--format", "nl_prompt": "--nl"}


def _flag(name: str) -> str:
    return _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tipo",
        description="Expand a Stable Diffusion prompt with a TIPO model.",
        epilog="Example: python -m tipo '1girl, solo, scenery' --mode both_tag_first --seed 42",
    )
    parser.add_argument("prompt", nargs="?", default="", help="the prompt, as typed in the WebUI")
    parser.add_argument("--nl", dest="nl_prompt", default="", help="extra natural-language prompt")
    for f in fields():
        if f.name in _SKIP:
            continue
        info = f.metadata["spec"]
        kwargs: dict[str, Any] = {"dest": f.name, "default": f.default, "help": f"{info.help} (default: %(default)s)"}
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = type(f.default)
            if info.choices:
                kwargs["choices"] = info.choices
        parser.add_argument(_flag(f.name), **kwargs)
    parser.add_argument("--width", type=int, default=1024, help="image width, for the aspect ratio")
    parser.add_argument("--height", type=int, default=1024, help="image height, for the aspect ratio")
    parser.add_argument("--protect", default="", help="comma-separated words the model must not see (embeddings)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--dry-run", action="store_true", help="no model: print tags, plan and first model input")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of the prompt")
    parser.add_argument("--batch", metavar="FILE.jsonl", help="expand one JSON request per line")
    parser.add_argument("--output", metavar="FILE.jsonl", help="where --batch writes (default: stdout)")
    parser.add_argument("--batch-size", type=int, default=32, help="requests per batched engine call")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def _args_from(ns: argparse.Namespace) -> TipoArgs:
    values = {f.name: getattr(ns, f.name) for f in fields() if f.name not in _SKIP or f.name == "nl_prompt"}
    return TipoArgs(enabled=True, **values)


def _protected(ns: argparse.Namespace) -> tuple[str, ...]:
    return tuple(word.strip() for word in ns.protect.split(",") if word.strip())


def _dry_run(ns: argparse.Namespace, args: TipoArgs, out: TextIO) -> None:
    from tipo.request import prepare
    from tipo.tagdb import default_database

    request = args.request(ns.prompt, width=ns.width, height=ns.height, protected_words=_protected(ns))
    prepared = prepare(request, default_database().category)
    categories = {k: v for k, v in prepared.tag_map.items() if v}
    report = {
        "categories": categories,
        "nl": prepared.nl,
        "passes": [{"task": p.task.value, "length": p.length, "expand": p.expand} for p in prepared.passes],
        "first_model_input": prepared.first_input(),
    }
    if ns.json:
        json.dump(report, out, ensure_ascii=False, indent=2)
        out.write("\n")
        return
    out.write("categories:\n")
    for category, tags in categories.items():
        out.write(f"  {category}: {', '.join(tags)}\n")
    out.write(f"nl: {prepared.nl}\n" if prepared.nl else "")
    out.write("passes:\n")
    for index, p in enumerate(prepared.passes, 1):
        out.write(f"  {index}. {p.task.value} ({p.length}, {'expand' if p.expand else 'write'})\n")
    out.write("first model input:\n" + prepared.first_input() + "\n")


def _expansion_json(expansion: Any) -> dict[str, Any]:
    data = {"prompt": expansion.prompt, "original": expansion.original, "seed": expansion.seed}
    data.update(ok=expansion.ok, error=expansion.error, generations=expansion.generations)
    return data


def _read_batch(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise TipoError(f"{path}:{number}: not JSON ({error})") from error


def _batch_request(item: dict[str, Any], base: TipoArgs, ns: argparse.Namespace, where: str) -> Any:
    if not isinstance(item, dict):
        raise TipoError(f"{where}: expected a JSON object")
    item = dict(item)
    prompt = str(item.pop("prompt", ""))
    width, height = int(item.pop("width", ns.width)), int(item.pop("height", ns.height))
    try:
        args = TipoArgs.from_dict({**base.to_dict(), **item})
    except TipoError as error:
        raise TipoError(f"{where}: {error}") from error
    return args.request(prompt, width=width, height=height, protected_words=_protected(ns))


def _run_batch(ns: argparse.Namespace, base: TipoArgs, expander: Any, out: TextIO) -> int:
    from tqdm.auto import tqdm  # a dependency of huggingface_hub; honours TQDM_DISABLE

    items = list(_read_batch(ns.batch))
    requests = [_batch_request(item, base, ns, f"{ns.batch}:{n}") for n, item in items]
    failed = 0
    size = max(1, ns.batch_size)
    with tqdm(total=len(requests), unit="prompt", desc="TIPO", file=sys.stderr) as bar:
        for start in range(0, len(requests), size):
            for result in expander.expand(requests[start : start + size], strict=base.strict):
                failed += not result.ok
                out.write(json.dumps(_expansion_json(result), ensure_ascii=False) + "\n")
            out.flush()
            bar.update(len(requests[start : start + size]))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose > 1 else logging.INFO if ns.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args = _args_from(ns)
        if ns.dry_run:
            _dry_run(ns, args, sys.stdout)
            return 0
        from tipo.api import Expander

        expander = Expander(args.model, device=ns.device, dtype=ns.dtype)
        if ns.batch:
            out = open(ns.output, "w", encoding="utf-8") if ns.output else sys.stdout
            try:
                return _run_batch(ns, args, expander, out)
            finally:
                if out is not sys.stdout:
                    out.close()
        request = args.request(ns.prompt, width=ns.width, height=ns.height, protected_words=_protected(ns))
        (result,) = expander.expand([request], strict=args.strict)
    except TipoError as error:
        print(f"tipo: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"tipo: error: {error}", file=sys.stderr)
        return 2
    if not result.ok:
        print(f"tipo: expansion failed, original prompt kept: {result.error}", file=sys.stderr)
    if ns.json:
        print(json.dumps(_expansion_json(result), ensure_ascii=False, indent=2))
    else:
        print(result.prompt)
    return 0 if result.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
