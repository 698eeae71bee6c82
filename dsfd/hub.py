"""Named pretrained weights: one URL table, download into torch's hub cache, checks.

Everything that accepts weights (:func:`dsfd.models.load_weights`,
:class:`dsfd.Detector`, ``dsfd detect / eval / export --weights``, the
``hubconf.py`` entry points) goes through :func:`resolve_weights`, which
turns a *weights spec* into a local file:

1. an existing file path is used as it is;
2. a registered name (:data:`WEIGHTS`, case-insensitive, ``_`` = ``-``):
   ``"default"`` is the packaged model (``dsfd/weights/default.pth``), the
   others live in the cache and are downloaded on first use;
3. an ``http(s)://`` or ``file://`` URL is downloaded into the cache under
   the URL's file name with 8 hex digits of the URL's SHA-256 added
   (``model-1a2b3c4d.pth``), so that two URLs ending in the same name never
   share a cache file.

The cache is torch's hub cache, ``<torch.hub.get_dir()>/checkpoints``
(``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``), the folder
``torch.hub.load_state_dict_from_url`` uses. A file already there is used
without a download (a file you put there by hand too).

Downloads show a progress bar, go to a temporary file in the cache folder
that is renamed into place only once complete and checked (so an
interrupted download never leaves a half file under the final name), and
check the byte count against ``Content-Length`` and, where the table knows
them, the size and SHA-256. A file already in place is checked against the
table's size and SHA-256 too; its digest is remembered in a small sidecar
file (``<file>.sha256``, with the size and modification time it was
computed for), so the hash is computed once per file and again only when
its size or time changes, not on every load. The packaged default model's
size and digest come from ``dsfd/weights/default.json``, written with it. The loader then loads strictly (every key and
shape), forcing the network the name stands for. The URL of a name can be
overridden with the environment variable ``DSFD_WEIGHTS_URL_<NAME>``
(upper case, non-alphanumerics as ``_``, e.g.
``DSFD_WEIGHTS_URL_RELEASED_RESNET152``), or by passing a URL instead of the
name. Failures raise :class:`WeightsDownloadError` saying where to put the
file by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Union

__all__ = [
    "WeightsInfo",
    "ResolvedWeights",
    "WeightsDownloadError",
    "WEIGHTS",
    "register_weights",
    "list_weights",
    "weights_info",
    "weights_url",
    "url_env_var",
    "cache_dir",
    "cached_path",
    "resolve_weights",
    "download",
    "file_sha256",
    "cached_sha256",
    "url_cache_name",
    "is_url",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Where the authors link their released weights (Google Drive / Tencent Weiyun).
AUTHORS_PAGE = "https://github.com/TencentYoutuResearch/FaceDetection-DSFD"


class WeightsDownloadError(RuntimeError):
    """Named or URL weights that could not be downloaded or failed a size / hash check."""


@dataclass(frozen=True)
class WeightsInfo:
    """One named weights file.

    Attributes:
        name: the name users pass (``"released-resnet152"``).
        filename: file name in the cache (or in the package for ``packaged``).
        url: default download URL (``None``: nothing to download).
        network, backbone: the architecture the file must load into (forced,
            so a wrong file fails the strict load); ``None``: detected.
        size: exact size in bytes, when known.
        sha256: hex digest, when known.
        description: one line for ``dsfd weights``-style listings.
        manual: where to get the file by hand (shown in errors).
        packaged: the file ships inside the package (``dsfd/weights/``).
    """

    name: str
    filename: str
    url: Optional[str] = None
    network: Optional[str] = None
    backbone: Optional[str] = None
    size: Optional[int] = None
    sha256: Optional[str] = None
    description: str = ""
    manual: str = ""
    packaged: bool = False


class ResolvedWeights(NamedTuple):
    """A weights spec resolved to a local file; ``info`` is set for registered names."""

    path: Path
    info: Optional[WeightsInfo]


#: The URL table: every name dsfd knows, in one place.
WEIGHTS: Dict[str, WeightsInfo] = {}
_ALIASES: Dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_weights(info: WeightsInfo, aliases: tuple = ()) -> WeightsInfo:
    """Add (or replace) a named weights entry; returns it."""
    WEIGHTS[_key(info.name)] = info
    for a in aliases:
        _ALIASES[_key(a)] = _key(info.name)
    return info


def _packaged_record() -> Dict[str, object]:
    """``dsfd/weights/default.json`` (size and digest of the packaged file), or ``{}``."""
    try:
        with open(Path(__file__).resolve().parent / "weights" / "default.json", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


_DEFAULT_RECORD = _packaged_record()

register_weights(
    WeightsInfo(
        name="default",
        filename="default.pth",
        size=_DEFAULT_RECORD.get("bytes"),  # type: ignore[arg-type]
        sha256=_DEFAULT_RECORD.get("sha256"),  # type: ignore[arg-type]
        description=(
            "the packaged default model: paper DSFD, mobilenet0.25 backbone started from RetinaFace's body, "
            "1.13 M parameters (WIDER val AP 0.832 / 0.800 / 0.610, see docs/models.md)"
        ),
        packaged=True,
    )
)
register_weights(
    WeightsInfo(
        name="released-resnet152",
        filename="WIDERFace_DSFD_RES152.pth",
        # The copy the `face-detection` package (DSFD-Pytorch-Inference) downloads with
        # torch.hub.load_state_dict_from_url; the authors themselves only link Google Drive / Weiyun.
        url="https://folk.ntnu.no/haakohu/WIDERFace_DSFD_RES152.pth",
        network="released",
        backbone="resnet152",
        # size / sha256 unknown: no copy of the file can be reached from this project's machines to measure;
        # the strict load (every key and shape of the released network) is the check until then
        description="the authors' released single-shot DSFD, ResNet152 (WIDERFace_DSFD_RES152.pth, about 459 MB)",
        manual=f"the authors' download links in the README of {AUTHORS_PAGE}",
    ),
    aliases=("released", "widerface-dsfd-res152", "WIDERFace_DSFD_RES152.pth"),
)


def list_weights() -> List[str]:
    """Registered names."""
    return sorted(i.name for i in WEIGHTS.values())


def weights_info(name: str) -> Optional[WeightsInfo]:
    """The entry of a registered name or alias, or ``None``."""
    k = _key(name)
    return WEIGHTS.get(_ALIASES.get(k, k))


def url_env_var(name: str) -> str:
    """``DSFD_WEIGHTS_URL_<NAME>``: the environment variable overriding a name's URL."""
    return "DSFD_WEIGHTS_URL_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


def weights_url(info: WeightsInfo) -> Optional[str]:
    """The URL a name downloads from: the environment override, else the table's."""
    return os.environ.get(url_env_var(info.name)) or info.url


def cache_dir() -> Path:
    """``<torch.hub.get_dir()>/checkpoints`` (follows ``$TORCH_HOME``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _packaged_dir() -> Path:
    return Path(__file__).resolve().parent / "weights"


def cached_path(info: WeightsInfo) -> Path:
    """Where a named file lives: the package for ``packaged`` entries, else the cache."""
    return (_packaged_dir() if info.packaged else cache_dir()) / info.filename


def is_url(spec: object) -> bool:
    return isinstance(spec, str) and spec.split("://", 1)[0].lower() in ("http", "https", "file") and "://" in spec


def _human(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def cached_sha256(path: PathLike) -> str:
    """``file_sha256(path)``, remembered in ``<path>.sha256`` for the file's size and modification time.

    The sidecar is read when its size and ``mtime_ns`` match the file's and
    rewritten otherwise (silently skipped where the folder is read-only).
    """
    path = Path(path)
    st = path.stat()
    side = _sidecar(path)
    try:
        rec = json.loads(side.read_text(encoding="utf-8"))
        if rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns and len(rec.get("sha256", "")) == 64:
            return str(rec["sha256"])
    except (OSError, ValueError, AttributeError):
        pass
    digest = file_sha256(path)
    try:
        side.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}),
                        encoding="utf-8")
    except OSError:
        pass
    return digest


def _check_file(path: Path, size: Optional[int], sha256: Optional[str], what: str) -> None:
    if size is not None and path.stat().st_size != size:
        raise WeightsDownloadError(
            f"{what}: {path} has {path.stat().st_size} bytes, expected {size}; delete it to download it again"
        )
    if sha256 is not None:
        digest = cached_sha256(path)
        if digest != sha256.lower():
            raise WeightsDownloadError(
                f"{what}: {path} has SHA-256 {digest}, expected {sha256.lower()}; delete it to download it again"
            )


def file_sha256(path: "os.PathLike[str]") -> str:
    """The SHA-256 hex digest of a file (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(
    url: str,
    dest: PathLike,
    *,
    size: Optional[int] = None,
    sha256: Optional[str] = None,
    progress: bool = True,
    timeout: float = 30.0,
    hint: str = "",
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking the byte count (and ``size`` / ``sha256`` if given).

    The data goes to a temporary file next to ``dest``, renamed to ``dest``
    only when complete and checked; on any failure (network error, HTTP
    error, truncated body, wrong size or hash, Ctrl-C) the temporary file is
    removed and ``dest`` is left as it was. Raises
    :class:`WeightsDownloadError` (``hint`` is appended to its message).
    """
    from tqdm import tqdm

    from . import __version__

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    tail = f". {hint}" if hint else ""
    try:
        request = urllib.request.Request(url, headers={"User-Agent": f"dsfd/{__version__}"})
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    expected = int(length) if length and length.strip().isdigit() else None
                    with tqdm(total=expected or size, unit="B", unit_scale=True, unit_divisor=1024,
                              desc=dest.name, disable=not progress, leave=False) as bar:
                        while True:
                            chunk = response.read(1 << 20)
                            if not chunk:
                                break
                            f.write(chunk)
                            digest.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
            except urllib.error.HTTPError as e:
                raise WeightsDownloadError(f"could not download {url}: HTTP {e.code} {e.reason}{tail}") from None
            except urllib.error.URLError as e:
                raise WeightsDownloadError(f"could not download {url}: {e.reason} (offline?){tail}") from None
            except (OSError, ValueError, EOFError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                raise WeightsDownloadError(
                    f"download of {url} failed after {_human(received)}: {type(e).__name__}: {e}{tail}"
                ) from None
            f.flush()
            os.fsync(f.fileno())
        if expected is not None and received != expected:
            raise WeightsDownloadError(
                f"download of {url} is truncated: {received} of {expected} bytes{tail}"
            )
        if size is not None and received != size:
            raise WeightsDownloadError(f"download of {url} has {received} bytes, expected {size}{tail}")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise WeightsDownloadError(
                f"download of {url} has SHA-256 {digest.hexdigest()}, expected {sha256.lower()} "
                f"(corrupt or a different file){tail}"
            )
        os.replace(tmp, dest)
        st = dest.stat()
        try:  # the digest just computed, for cached_sha256
            _sidecar(dest).write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                  "sha256": digest.hexdigest()}), encoding="utf-8")
        except OSError:
            pass
        return dest
    finally:
        if tmp.exists():
            tmp.unlink()


def url_cache_name(url: str) -> str:
    """The cache file name of a URL: its file name with 8 hex digits of the URL's SHA-256 before the suffix."""
    name = Path(urllib.parse.urlparse(url).path).name
    tag = hashlib.sha256(url.encode("utf-8")).hexdigest()[:8]
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}-{tag}.{suffix}" if dot and stem else f"{name}-{tag}"


def _manual_hint(info: Optional[WeightsInfo], dest: Path, url: Optional[str]) -> str:
    where = f"from {info.manual}" if info is not None and info.manual else (f"from {url}" if url else "")
    parts = [f"To install it by hand, download {dest.name} {where} and put it at {dest}".replace("  ", " ")]
    if info is not None:
        parts.append(f"or set {url_env_var(info.name)} to a URL that serves it")
    parts.append("or pass the file's path instead (weights='/path/to/file.pth', --weights /path/to/file.pth)")
    return ", ".join(parts)


def resolve_weights(
    spec: PathLike,
    *,
    progress: bool = True,
    url: Optional[str] = None,
    timeout: float = 30.0,
) -> ResolvedWeights:
    """A weights spec (path, registered name or URL) -> a local file, downloading if needed.

    Args:
        spec: an existing file, a name of :data:`WEIGHTS` (see
            :func:`list_weights`), or an ``http(s)://`` / ``file://`` URL.
        progress: show a progress bar while downloading.
        url: download a *name* from this URL instead of the table's (or the
            ``DSFD_WEIGHTS_URL_<NAME>`` override).
        timeout: seconds of network silence before a download fails.

    Raises:
        FileNotFoundError: neither a file, nor a known name, nor a URL.
        WeightsDownloadError: the download failed or the file failed a check.
    """
    if not isinstance(spec, str):
        return ResolvedWeights(Path(os.fspath(spec)), None)
    if os.path.exists(spec):
        return ResolvedWeights(Path(spec), None)
    info = weights_info(spec)
    if info is not None:
        dest = cached_path(info)
        if dest.is_file():
            _check_file(dest, info.size, info.sha256, f"weights {info.name!r}")
            return ResolvedWeights(dest, info)
        if info.packaged:
            raise FileNotFoundError(f"the packaged weights {info.name!r} are missing from this install ({dest})")
        src = url or weights_url(info)
        if not src:
            raise WeightsDownloadError(
                f"weights {info.name!r} have no download URL. {_manual_hint(info, dest, None)}"
            )
        download(src, dest, size=info.size, sha256=info.sha256, progress=progress, timeout=timeout,
                 hint=_manual_hint(info, dest, src))
        return ResolvedWeights(dest, info)
    if is_url(spec):
        name = Path(urllib.parse.urlparse(spec).path).name
        if not name:
            raise ValueError(f"cannot name a cache file after the URL {spec!r} (no file name in its path)")
        dest = cache_dir() / url_cache_name(spec)
        if not dest.is_file():
            download(spec, dest, progress=progress, timeout=timeout, hint=_manual_hint(None, dest, spec))
        return ResolvedWeights(dest, None)
    raise FileNotFoundError(
        f"weights file not found: {spec!r} (nor is it a known weights name: {', '.join(list_weights())}; "
        "nor an http(s):// or file:// URL)"
    )
