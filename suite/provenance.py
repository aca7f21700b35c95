"""What a run was built with: the lock of exact package versions the test suite passed with, and whether the
installed packages match it. Recorded on every run (tags ``rnnsuite.lock`` and ``rnnsuite.lock_match``) and in
every report, because the first question about a result that does not repeat is which versions produced it."""
from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"  # beside pyproject.toml in a checkout


@functools.lru_cache(maxsize=None)
def lock_tags(path: Path = LOCK) -> dict[str, str]:
    """{"rnnsuite.lock": first 12 hex digits of the lock's sha256, "rnnsuite.lock_match": "yes" or "no (...)"};
    "none" where the package was installed without its checkout (no lock file beside it)."""
    try:
        text = path.read_text()
    except OSError:
        return {"rnnsuite.lock": "none"}
    differ = []
    for line in text.splitlines():
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        if not version:
            continue
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            differ.append(f"{name} missing")
            continue
        if have != version:
            differ.append(f"{name} {have} (lock {version})")
    match = "yes" if not differ else f"no, {len(differ)} differ: {', '.join(differ[:4])}"
    return {"rnnsuite.lock": hashlib.sha256(text.encode()).hexdigest()[:12], "rnnsuite.lock_match": match[:250]}
