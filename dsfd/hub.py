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
   the URL's file name.

The cache is torch's hub cache, ``<torch.hub.get_dir()>/checkpoints``
(``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``), the folder
``torch.hub.load_state_dict_from_url`` uses. A file already there is used
without a download (a file you put there by hand too).

Downloads show a progress bar, go to a temporary file in the cache folder
that is renamed into place only once complete and checked (so an
interrupted download never leaves a half file under the final name), and
check the byte count against ``Content-Length`` and, where the table knows
them, the size and SHA-256. The loader then loads strictly (every key and
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


register_weights(
    WeightsInfo(
        name="default",
        filename="default.pth",
        description=(
            "the packaged default model: paper DSFD, mobilenet0.25 backbone started from RetinaFace's body, "
            "1.13 M parameters (WIDER val AP 0.817 / 0.781 / 0.549, see docs/models.md)"
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


def _check_file(path: Path, size: Optional[int], sha256: Optional[str], what: str) -> None:
    if size is not None and path.stat().st_size != size:
        raise WeightsDownloadError(
            f"{what}: {path} has {path.stat().st_size} bytes, expected {size}; delete it to download it again"
        )
    if sha256 is not None:
        digest = file_sha256(path)
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
        return dest
    finally:
        if tmp.exists():
            tmp.unlink()


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
            _check_file(dest, info.size, None, f"weights {info.name!r}")
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
        dest = cache_dir() / name
        if not dest.is_file():
            download(spec, dest, progress=progress, timeout=timeout, hint=_manual_hint(None, dest, spec))
        return ResolvedWeights(dest, None)
    raise FileNotFoundError(
        f"weights file not found: {spec!r} (nor is it a known weights name: {', '.join(list_weights())}; "
        "nor an http(s):// or file:// URL)"
    )
