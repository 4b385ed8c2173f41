"""``--data medmnist:NAME[@SIZE]``: the official MedMNIST files, downloaded once and md5-checked."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from rlmask.data.npz import MULTI_LABEL, open_npz
from rlmask.data.source import Source
from rlmask.errors import UserError

DEFAULT_URL = "https://zenodo.org/records/10519652/files"
SIZES = (28, 64, 128, 224)

# Official md5 of the MedMNIST v3 (Zenodo record 10519652) 2D files at 28, 64, 128 and 224 px.
_OFFICIAL = {
    "pathmnist": (
        "a8b06965200029087d5bd730944a56c1",
        "55aa9c1e0525abe5a6b9d8343a507616",
        "ac42d08fb904d92c244187169d1fd1d9",
        "2c51a510bcdc9cf8ddb2af93af1eadec",
    ),
    "chestmnist": (
        "02c8a6516a18b556561a56cbdd36c4a8",
        "9de6cd0b934ebb5b7426cfba5efbae16",
        "db107e5590b27930b62dbaf558aebee3",
        "45bd33e6f06c3e8cdb481c74a89152aa",
    ),
    "dermamnist": (
        "0744692d530f8e62ec473284d019b0c7",
        "b70a2f5635c6199aeaa28c31d7202e1f",
        "2defd784463fa5243564e855ed717de1",
        "8974907d8e169bef5f5b96bc506ae45d",
    ),
    "octmnist": (
        "c68d92d5b585d8d81f7112f81e2d0842",
        "e229e9440236b774d9f0dfef9d07bdaf",
        "0a97e76651ace45c5d943ee3f65b63ae",
        "abc493b6d529d5de7569faaef2773ba3",
    ),
    "pneumoniamnist": (
        "28209eda62fecd6e6a2d98b1501bb15f",
        "8f4eceb4ccffa70c672198ea285246c6",
        "05b46931834c231683c68f40c47b2971",
        "d6a3c71de1b945ea11211b03746c1fe1",
    ),
    "retinamnist": (
        "bd4c0672f1bba3e3a89f0e4e876791e4",
        "afda852cc34dcda56f86ad2b2457dbcc",
        "e48e916a24454daf90583d4e6efb1a18",
        "eae7e3b6f3fcbda4ae613ebdcbe35348",
    ),
    "breastmnist": (
        "750601b1f35ba3300ea97c75c52ff8f6",
        "742edef2a1fd1524b2efff4bd7ba9364",
        "363e4b3f8d712e9b5de15470a2aaadf1",
        "b56378a6eefa9fed602bb16d192d4c8b",
    ),
    "bloodmnist": (
        "7053d0359d879ad8a5505303e11de1dc",
        "2b94928a2ae4916078ca51e05b6b800b",
        "adace1e0ed228fccda1f39692059dd4c",
        "b718ff6835fcbdb22ba9eacccd7b2601",
    ),
    "tissuemnist": (
        "ebe78ee8b05294063de985d821c1c34b",
        "123ece2eba09d0aa5d698fda57103344",
        "61b955355d7425a89687b06cca3ce0c2",
        "b077128c4a949f0a4eb01517f9037b9c",
    ),
    "organamnist": (
        "68e3f8846a6bd62f0c9bf841c0d9eacc",
        "2dcccc29b88e6da5a01161ef20cda288",
        "eeae80d0a227a8d099027e1b3cfd3b60",
        "50747347e05c87dd3aaf92c49f9f3170",
    ),
    "organcmnist": (
        "b9ceb9546e10131b32923c5bbeaea2b1",
        "3ce34a8724ea6f548e6db4744d03b6a9",
        "773c1f009daa3fe5d9a2a201b2a7ed94",
        "050f5e875dc056f6768abf94ec9995d1",
    ),
    "organsmnist": (
        "9ab87b696fb54e2a387ebe992d6ed5f1",
        "53a6d115339d874c25e309a994ff46d3",
        "ded0c5fa01a95dc4978b956f613e9b8e",
        "b354719e553fbbb2513d5533f52a4cb1",
    ),
}
MEDMNIST_MD5: dict[str, str] = {
    (f"{name}.npz" if size == 28 else f"{name}_{size}.npz"): md5
    for name, md5s in _OFFICIAL.items()
    for size, md5 in zip(SIZES, md5s)
}


def register_medmnist_file(filename: str, md5: str) -> None:
    """Make ``medmnist:`` accept one more file (``NAME.npz`` or ``NAME_SIZE.npz``) with its md5.

    For tests and mirrors that serve their own files; the official table is not changed otherwise.
    """
    MEDMNIST_MD5[filename] = md5.lower()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$RLMASK_CACHE``, else ``~/.cache/rlmask``."""
    return Path(cache_dir or os.environ.get("RLMASK_CACHE") or Path.home() / ".cache" / "rlmask").expanduser()


def open_medmnist(spec: str, cache_dir: str | Path | None = None, progress: bool = False) -> Source:
    """Fetch (once) and open the file named by ``medmnist:NAME[@SIZE]``."""
    name, _, size = spec.partition(":")[2].lower().partition("@")
    size = size or "28"
    filename = f"{name}.npz" if size == "28" else f"{name}_{size}.npz"
    if name in MULTI_LABEL:
        raise UserError(
            f"--data {spec}: {name} is multi-label: multi-label labels (N, {MULTI_LABEL[name]}) are not supported"
        )
    if filename not in MEDMNIST_MD5 or size not in {str(s) for s in SIZES}:
        names = sorted({re.sub(r"(_\d+)?\.npz$", "", f) for f in MEDMNIST_MD5} - set(MULTI_LABEL))
        raise UserError(
            f"--data {spec}: unknown MedMNIST dataset or size; valid names: {', '.join(names)} "
            f"(@SIZE one of {', '.join(map(str, SIZES))}, default 28)"
        )
    path = fetch(filename, MEDMNIST_MD5[filename], cache_root(cache_dir), spec, progress)
    return open_npz(path, spec, name=filename.removesuffix(".npz"))


def fetch(filename: str, md5: str, root: Path, spec: str, progress: bool = False) -> Path:
    """Path of ``filename`` in ``root``, downloaded and md5-verified when not already there.

    A verified file gets a small ``.md5`` stamp (md5, size, mtime) so later runs skip re-hashing.
    """
    path = root / filename
    stamp = path.with_name(filename + ".md5")
    if path.is_file():
        st = path.stat()
        key = f"{md5} {st.st_size} {st.st_mtime_ns}"
        if stamp.is_file() and stamp.read_text().strip() == key:
            return path
        got = _md5(path)
        if got != md5:
            raise UserError(
                f"--data {spec}: cached file {path} has md5 {got}, expected {md5}; delete it to download it again"
            )
        _try_write(stamp, key)
        return path

    base = os.environ.get("RLMASK_MEDMNIST_URL", DEFAULT_URL).rstrip("/")
    url = f"{base}/{filename}?download=1"
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=root)
    except OSError as e:
        raise UserError(f"--data {spec}: cannot write to the cache folder {root} ({e.strerror})") from None
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=filename, disable=not progress) as bar:
                        while chunk := resp.read(1 << 20):
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", None) or e
                raise UserError(
                    f"--data {spec}: cannot download {url} ({reason}); put the file in {root} or check the network"
                ) from None
        if digest.hexdigest() != md5:
            raise UserError(f"--data {spec}: md5 mismatch for {url}: expected {md5} got {digest.hexdigest()}")
        os.replace(tmp, path)  # atomic: a reader never sees a half-written file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    st = path.stat()
    _try_write(stamp, f"{md5} {st.st_size} {st.st_mtime_ns}")
    return path


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _try_write(path: Path, text: str) -> None:
    # The stamp only saves time; a read-only cache must not stop a run.
    try:
        path.write_text(text + "\n")
    except OSError:
        pass
