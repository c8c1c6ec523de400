"""Shared fixtures: a tiny random-weight TIPO-shaped model, and a guard against network use.

Tests never reach the network (style sheet, section 10); the guard turns an accidental
connection to anything but loopback into an immediate error instead of a hang or a download.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

# Tests run on the CPU, where Triton kernels (tipo/engine/kernels.py) run only in Triton's
# interpreter; it must be chosen before anything imports triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_TOKENIZER = ROOT / "tests" / "fixtures" / "tipo-tokenizer"


def load_tool(name: str) -> Any:
    """Import ``tools/<name>.py`` (tools/ is no package: its scripts run standalone)."""
    module_name = f"_tipo_tool_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _is_loopback(address: Any) -> bool:
    if isinstance(address, tuple) and address:
        host = address[0]
    elif isinstance(address, (str, bytes)):
        return True  # AF_UNIX path
    else:
        return False
    if host in ("localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="session")
def no_network() -> Iterator[None]:
    """Refuse every connection except to loopback, for the whole session."""
    original = socket.socket.connect
    original_ex = socket.socket.connect_ex

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        if not _is_loopback(address):
            raise ConnectionRefusedError(f"tests may not use the network (tried {address!r})")
        return original(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> Any:
        if not _is_loopback(address):
            raise ConnectionRefusedError(f"tests may not use the network (tried {address!r})")
        return original_ex(self, address)

    patcher = pytest.MonkeyPatch()
    patcher.setattr(socket.socket, "connect", guarded_connect)
    patcher.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    try:
        yield
    finally:
        patcher.undo()


@pytest.fixture(scope="session")
def one_torch_thread() -> Iterator[None]:
    """The tiny model's matrices are 64 wide: thread hand-offs cost more than the work, and on
    a loaded 2-core machine they made generation 4-10x slower. Restored afterwards."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    """A TIPO-shaped model folder (tools/make_tiny_model.py, seed 0), built once per session."""
    return load_tool("make_tiny_model").make_tiny_model(tmp_path_factory.mktemp("tiny-tipo"), seed=0)


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_dir: Path) -> Any:
    """The tiny model as a float32 CPU ``LlamaForCausalLM`` in eval mode, loaded by transformers
    alone (engine tests need no tokenizer). Read-only: tests that change weights copy it."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(tiny_model_dir), use_safetensors=True, local_files_only=True)
    model.eval()
    model.requires_grad_(False)
    return model
