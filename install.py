"""WebUI installer hook: install what TIPO needs and is missing, nothing else.

The WebUI runs this file with its own ``launch`` module on start-up. It never upgrades or
downgrades a package the WebUI already has (A1111 pins transformers 4.30.2, Forge 4.46.1), never
compiles anything, and does nothing, offline included, when everything is present.
Requirements are declared once, in ``REQUIREMENTS`` below, as ``packaging`` specifiers.
"""

from __future__ import annotations

import importlib.metadata
import sys

#: distribution name -> (import name, minimum version that works with the core)
REQUIREMENTS = {
    "transformers": ("transformers", "4.30.2"),
    "huggingface_hub": ("huggingface_hub", "0.14"),
    "sentencepiece": ("sentencepiece", "0.1.99"),
    "regex": ("regex", "2021.8.3"),
}


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements() -> list[str]:
    """Pip specifiers of the requirements that are absent (present ones are left alone,
    whatever their version: the WebUI's pins win)."""
    return [f"{dist}>={minimum}" for dist, (_, minimum) in REQUIREMENTS.items() if _installed_version(dist) is None]


def main() -> None:
    if "--skip-install" in sys.argv:
        return
    missing = missing_requirements()
    if not missing:
        return
    try:
        import launch  # the WebUI's own module; present only inside a WebUI
    except ImportError:
        print("TIPO: missing packages: " + " ".join(missing) + f"\n  install them with: {sys.executable} -m pip install " + " ".join(f'"{m}"' for m in missing))
        return
    for requirement in missing:
        try:
            launch.run_pip(f'install "{requirement}"', f"TIPO requirement: {requirement}")
        except Exception as error:  # the WebUI must start even if one install fails
            print(f"TIPO: could not install {requirement} ({error}); run: {sys.executable} -m pip install \"{requirement}\"")


main()
