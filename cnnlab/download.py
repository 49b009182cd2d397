"""Download one file over HTTP(S), check its sha256, and put it in place atomically.

Generic on purpose: data sets, pretrained weights and anything else cnnlab
fetches go through :func:`fetch`, so every download streams to a temporary
file beside the destination, shows a progress bar, is verified against a
published sha256, and only then appears under its final name. A failed or
interrupted download never leaves a half-written file at ``dest_path``.

The cache root is :func:`cache_dir`: ``$CNNLAB_CACHE`` when set, else
``~/.cache/cnnlab``. Each area keeps its files in a subfolder of it
(data sets in ``datasets/NAME``).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from cnnlab.errors import ChecksumError, CnnlabError
from cnnlab.io.atomic import open_temporary

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60


def cache_dir() -> Path:
    """The cache root: ``$CNNLAB_CACHE`` if set and non-empty, else ``~/.cache/cnnlab``.

    The folder is not created here; :func:`fetch` creates what it writes into.
    """
    env = os.environ.get("CNNLAB_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnnlab"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest_path: str | os.PathLike, sha256: str, *,
          progress: bool = True, desc: str | None = None) -> Path:
    """Download ``url`` to ``dest_path`` unless it is already there with the right sha256.

    The bytes stream into a temporary file in ``dest_path``'s folder (created
    if missing) while a tqdm bar counts them against ``Content-Length``; the
    sha256 is checked, then the file is renamed into place (``os.replace``,
    atomic on one file system). Returns ``Path(dest_path)``.

    Raises :class:`~cnnlab.errors.ChecksumError` (naming the file, the
    expected and the actual hash) when the download does not match, after
    deleting it; :class:`~cnnlab.errors.CnnlabError` naming the URL when the
    server cannot be reached, answers with an error, or the transfer stops
    early, with a hint to place the file at ``dest_path`` by hand.
    """
    dest = Path(dest_path)
    expected = sha256.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise CnnlabError(f"fetch({dest.name}): sha256 must be 64 hex digits, got {sha256!r}")
    if dest.is_file() and sha256_file(dest) == expected:
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = open_temporary(dest.parent, dest.name)     # mode 0666 less the umask
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _stream(url, out, dest, progress=progress, desc=desc or dest.name)
        if actual != expected:
            raise ChecksumError(
                f"downloaded {dest.name} from {url} has sha256 {actual}, expected {expected}; "
                f"the file was deleted. Try again later or from another mirror (CNNLAB_MIRROR), "
                f"or place a verified copy at {dest}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _stream(url: str, out, dest: Path, *, progress: bool, desc: str) -> str:
    """Copy the response body of ``url`` into the open file ``out``; return its sha256."""
    manual = f"check the connection, or download the file yourself and place it at {dest}"
    digest = hashlib.sha256()
    received = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "cnnlab"})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=desc, disable=not progress) as bar:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise CnnlabError(f"could not download {url}: HTTP {e.code} {e.reason}; {manual}") from e
    except urllib.error.URLError as e:
        raise CnnlabError(f"could not download {url}: {e.reason}; {manual}") from e
    except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts, resets, bad URLs, short reads
        raise CnnlabError(f"could not download {url}: {e}; {manual}") from e
    if total is not None and received != total:
        raise CnnlabError(
            f"download of {url} ended after {received} of {total} bytes; {manual}")
    return digest.hexdigest()
