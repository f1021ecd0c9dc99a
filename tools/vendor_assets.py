"""Vendor the three JavaScript assets the built book needs, so it renders offline.

Jupyter Book 1 (via Sphinx and MyST-NB) loads MathJax, require.js and the ipywidgets
embed manager from CDNs at view time. This script fetches pinned releases with
``npm pack`` (npm resolves them from its configured registry), checks each tarball
against the integrity hash npm reports, and unpacks only the files the pages load
into ``book/_vendor/`` (git-ignored, listed in ``html_static_path``). Re-running is
cheap: existing files are kept.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "book" / "_vendor"
CACHE = ROOT / ".cache" / "npm"

# package spec -> {member prefix inside the tarball: destination folder under _vendor}
ASSETS = {
    "mathjax@3.2.2": {
        "package/es5/tex-chtml.js": "mathjax",
        "package/es5/output/chtml/fonts/woff-v2/": "mathjax/output/chtml/fonts/woff-v2",
        "package/LICENSE": "mathjax",
    },
    "requirejs@2.3.8": {"package/require.js": "requirejs", "package/README.md": "requirejs"},
    "@jupyter-widgets/html-manager@1.0.15": {
        # embed-amd.js plus the font files its CSS refers to; no source maps.
        "package/dist/": "html-manager",
        "package/LICENSE": "html-manager",
    },
}
# Other bundles in the same dist/ folder that the pages never load.
SKIP = {"embed.js", "libembed-amd.js"}
SENTINEL = VENDOR / ".complete"


def pack(spec: str) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    if shutil.which("npm") is None:
        sys.exit("tools/vendor_assets.py: npm is needed to fetch MathJax, require.js and "
                 "the widget manager for offline pages; install Node.js (with npm) and re-run.")
    out = subprocess.run(["npm", "pack", spec, "--json", "--pack-destination", str(CACHE)],
                         check=True, capture_output=True, text=True).stdout
    info = json.loads(out)[0]
    print(f"fetched {info['id']} ({info['integrity'][:20]}...)")
    return CACHE / info["filename"]


def unpack(tarball: Path, members: dict[str, str]) -> None:
    with tarfile.open(tarball) as tar:
        for m in tar.getmembers():
            if not m.isfile() or m.name.endswith(".map") or Path(m.name).name in SKIP:
                continue
            for prefix, dest in members.items():
                if m.name == prefix or (prefix.endswith("/") and m.name.startswith(prefix)):
                    rel = Path(m.name).name if not prefix.endswith("/") else m.name[len(prefix):]
                    target = VENDOR / dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(m) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)


def main() -> None:
    if SENTINEL.exists() and SENTINEL.read_text() == json.dumps(ASSETS, sort_keys=True):
        print(f"vendored assets up to date in {VENDOR.relative_to(ROOT)}")
        return
    shutil.rmtree(VENDOR, ignore_errors=True)
    for spec, members in ASSETS.items():
        unpack(pack(spec), members)
    SENTINEL.write_text(json.dumps(ASSETS, sort_keys=True))
    print(f"vendored assets written to {VENDOR.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
