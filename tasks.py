"""The project's two entry points, plus one for authors.

    python3 tasks.py book      # install, execute every chapter, write _build/html
    python3 tasks.py test      # install, pytest tests/ and strict nbval over every chapter,
                               # then nbval again under a perturbed numeric environment
    python3 tasks.py lab       # readers: open the chapters in JupyterLab (MyST rendered, figures shown)
    python3 tasks.py lab-check # open chapters in JupyterLab in headless Chromium and check what renders
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
    run(PY, "tools/link_check.py", "_build/html")


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
    # The chapters as JupyterLab shows them: every chapter opened (MyST rendered, no broken image
    # before anything runs), and one slider chapter run, its slider moved and its figure redrawn.
    if Path("/usr/bin/chromium").exists():
        lab_check([c.name for c in notebooks])
        lab_check(["algorithm.ipynb", "--run"])
    else:
        print("lab-check skipped: no Chromium at /usr/bin/chromium (Debian: apt-get install chromium); "
              ".ci/run installs it", flush=True)


LAB = ROOT / "_lab"


def _lab_command(extra: list[str]) -> list[str]:
    """JupyterLab on reading copies of the chapters in _lab/ (tools/lab_notebooks.py: the glued
    numbers filled in), trusted, with --allow-root only when running as root."""
    run(PY, "tools/lab_notebooks.py", LAB)
    run(VENV / "bin" / "jupyter", "trust", *sorted(p.relative_to(ROOT) for p in LAB.glob("*.ipynb")))
    cmd = [str(VENV / "bin" / "jupyter"), "lab", f"--ServerApp.root_dir={LAB}", *extra]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    return cmd


def lab(extra: list[str]) -> None:
    """Start JupyterLab on the chapters: MyST rendered by jupyterlab-myst, the glued numbers filled
    in, the notebooks trusted so their stored figures and slider players show before anything
    runs. The copies in _lab/ are rewritten at every start (edit book/src/ to change a chapter).
    Extra arguments go to ``jupyter lab`` (e.g. ``--no-browser --port 8888``)."""
    install()
    cmd = _lab_command(extra)
    print("+", " ".join(cmd), flush=True)
    os.execv(cmd[0], cmd)


LAB_CHECK_PORT = 8891
PLAYWRIGHT = "playwright-core@1.64.1"


def lab_check(extra: list[str]) -> None:
    """Start JupyterLab as ``lab`` does, open chapters in headless Chromium (tools/lab_check.js) and
    fail if a Markdown cell shows raw MyST or an image is broken before anything runs; with
    ``--run``, also run all cells and move a live slider. Default chapters: every slider chapter."""
    import socket
    import tempfile
    import time
    install()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        sys.exit("lab-check needs Chromium at /usr/bin/chromium (Debian: apt-get install chromium)")
    node_dir = ROOT / ".cache" / "lab-check"
    if not (node_dir / "node_modules" / "playwright-core").exists():
        node_dir.mkdir(parents=True, exist_ok=True)
        run("npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", node_dir, PLAYWRIGHT)
    notebooks = [a for a in extra if a.endswith(".ipynb")] or [
        f"{c.stem}.ipynb" for c in chapters() if "invlib-player" in c.read_text()]
    options = [a for a in extra if not a.endswith(".ipynb")]
    with tempfile.TemporaryDirectory() as settings:
        # Render every cell (no windowing), so the check sees the whole notebook.
        Path(settings, "overrides.json").write_text(
            '{"@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"}, '
            '"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}')
        cmd = _lab_command(["--no-browser", f"--port={LAB_CHECK_PORT}", "--ServerApp.token=",
                            "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
                            "--LabApp.expose_app_in_browser=True",
                            f"--LabApp.app_settings_dir={settings}"])
        server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(120):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", LAB_CHECK_PORT)) == 0:
                        break
                time.sleep(1)
            else:
                sys.exit("JupyterLab did not start within two minutes")
            run("node", ROOT / "tools" / "lab_check.js", str(LAB_CHECK_PORT), *notebooks, *options,
                NODE_PATH=str(node_dir / "node_modules"))
        finally:
            server.terminate()
            server.wait(timeout=30)


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
    elif task == "lab":
        lab(rest)
    elif task == "lab-check":
        lab_check(rest)
    else:
        sys.exit(__doc__)
