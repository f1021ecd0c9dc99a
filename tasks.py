"""The project's two entry points, plus one for authors.

    python3 tasks.py book      # install, execute every chapter, write _build/html
    python3 tasks.py test      # install, pytest tests/ and strict nbval over every chapter,
                               # then nbval again under a perturbed numeric environment
    python3 tasks.py execute   # authors: rebuild book/*.ipynb from book/src/*.md and run them

Everything runs inside ``.venv`` (created on first use) so a fresh clone needs only
Python 3.11 and pip; the offline JavaScript assets come from the npm registry via
``npm pack`` (Node's npm ships on the project's machines).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".requirements.sha256"
NBVAL_SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
# A second numeric environment for the chapters' nbval run: generic (non-AVX) ATen kernels, MKL
# limited to AVX2 code paths, one thread. Rounding digits change under it as they do on another
# CPU, so a notebook that prints them fails here, on any single machine.
PERTURBED = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "OMP_NUM_THREADS": "1"}


def run(*cmd: str | Path, **env: str) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True, env={**os.environ, **env})


def install() -> None:
    """Create .venv and install requirements.txt and invlib (editable), once per change."""
    if not PY.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "requirements.txt").read_bytes()
                            + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    run(PY, "-m", "pip", "install", "--quiet", "-r", "requirements.txt")
    run(PY, "-m", "pip", "install", "--quiet", "--no-deps", "-e", ".")
    STAMP.write_text(wanted)


def chapters() -> list[Path]:
    return sorted((ROOT / "book").glob("*.ipynb"))


def book() -> None:
    install()
    run(PY, "tools/vendor_assets.py")
    shutil.rmtree(ROOT / "_build", ignore_errors=True)  # a clean build executes every chapter
    run(VENV / "bin" / "jupyter-book", "build", "-W", "-n", "--keep-going", ".")
    run(PY, "tools/offline_check.py", "_build/html")


def test() -> None:
    install()
    nbval = [PY, "-m", "pytest", "--nbval", "--nbval-current-env",
             "--nbval-sanitize-with", NBVAL_SANITIZE]
    notebooks = [c.relative_to(ROOT) for c in chapters()]
    # The unit tests, then strict nbval over every executed chapter ...
    run(*nbval, "tests", *notebooks)
    # ... and the chapters once more, against the same committed outputs, with other CPU kernels
    # and one thread (nbval's kernel inherits the environment).
    run(*nbval, *notebooks, **PERTURBED)


def execute(names: list[str]) -> None:
    install()
    run(PY, "tools/execute_chapters.py", *names)


if __name__ == "__main__":
    task, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if task == "book":
        book()
    elif task == "test":
        test()
    elif task == "execute":
        execute(rest)
    else:
        sys.exit(__doc__)
