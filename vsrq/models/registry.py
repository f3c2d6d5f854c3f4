"""The model registry (models.toml) and where each model's weights file comes from.

Resolution order for a weights reference: a local path, a file shipped in the package, the local
Hugging Face cache, then `hf_hub_download` (never when HF_HUB_OFFLINE is set). Every failure is a
`ModelError` whose one line says which file is missing and how to get it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from vsrq.cache import cache_dir
from vsrq.errors import ModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

FLOAT_PRECISIONS = ("fp32", "fp16", "bf16")
_QUANTIZED = re.compile(r"^w[2-8]a[2-8]$")  # wXaY: the lowest weight / activation bits of any layer


def is_quantized(precision: str) -> bool:
    return bool(_QUANTIZED.match(precision))
ENTRY_KEYS = {"arch", "description", "weights", "sha256", "precision", "config", "source"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HF_REF = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)@(?P<rev>[\w./-]+?)/(?P<file>[^@]+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: what network, which weights, in which precision."""

    name: str
    arch: str
    weights: str
    precision: str
    config: dict = field(default_factory=dict)
    sha256: str | None = None
    description: str = ""
    source: str | None = None

    @property
    def is_hub(self) -> bool:
        return self.weights.startswith("hf://")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str
    filename: str

    def __str__(self) -> str:
        return f"hf://{self.repo_id}@{self.revision}/{self.filename}"


def parse_hub_ref(ref: str) -> HubRef:
    m = _HF_REF.match(ref)
    if not m:
        raise ModelError(f"bad Hub reference {ref!r}: expected hf://OWNER/REPO@REVISION/PATH")
    return HubRef(m["repo"], m["rev"], m["file"])


def packaged_registry_path() -> Path:
    return Path(str(resources.files("vsrq") / "models.toml"))


def _validate_entry(name: str, entry: dict, origin: Path) -> ModelSpec:
    where = f"{origin}: model {name!r}"
    if not _NAME.match(name):
        raise ModelError(f"{where}: bad model name (letters, digits, '.', '_', '-' only)")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise ModelError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(ENTRY_KEYS)})")
    for key in ("arch", "weights", "precision"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ModelError(f"{where}: missing or empty {key!r}")
    if entry["precision"] not in FLOAT_PRECISIONS and not is_quantized(entry["precision"]):
        raise ModelError(f"{where}: precision {entry['precision']!r} is not one of {', '.join(FLOAT_PRECISIONS)} "
                         "or wXaY (X, Y in 2..8)")
    weights = entry["weights"]
    sha = entry.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.match(sha)):
        raise ModelError(f"{where}: sha256 must be 64 lowercase hex digits")
    if weights.startswith("package:"):
        rel = weights[len("package:"):]
        if "/" in rel or "\\" in rel or rel.startswith(".") or not rel:
            raise ModelError(f"{where}: package weights must be a plain file name, got {rel!r}")
    elif weights.startswith("hf://"):
        parse_hub_ref(weights)
        if sha is None:
            raise ModelError(f"{where}: Hub weights need a sha256 to be verified against")
    config = entry.get("config", {})
    if not isinstance(config, dict):
        raise ModelError(f"{where}: config must be a table")
    return ModelSpec(
        name=name,
        arch=entry["arch"],
        weights=weights,
        precision=entry["precision"],
        config=config,
        sha256=sha,
        description=entry.get("description", ""),
        source=entry.get("source"),
    )


def read_registry(path: Path) -> tuple[dict[str, ModelSpec], str | None]:
    """Parse and validate one models.toml; returns its entries and its default model name."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelError(f"cannot read model registry {path}: {exc}") from exc
    unknown = set(data) - {"default", "models"}
    if unknown:
        raise ModelError(f"{path}: unknown top-level keys {sorted(unknown)}")
    models = {name: _validate_entry(name, entry, path) for name, entry in data.get("models", {}).items()}
    default = data.get("default")
    if default is not None and default not in models:
        raise ModelError(f"{path}: default model {default!r} is not defined")
    return models, default


def load_registry() -> tuple[dict[str, ModelSpec], str]:
    """The packaged registry, plus the user's own file named by VSRQ_MODELS (its entries win)."""
    models, default = read_registry(packaged_registry_path())
    extra = os.environ.get("VSRQ_MODELS")
    if extra:
        more, more_default = read_registry(Path(extra).expanduser())
        models.update(more)
        default = more_default or default
    if default is None:
        raise ModelError("the model registry names no default model")
    return models, default


def hf_cache_dir() -> Path:
    """The Hub cache, read from the environment at call time (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _verified_marker_cache() -> Path:
    return cache_dir() / "verified.json"


def verify_sha256(path: Path, expected: str | None, what: str) -> None:
    """Check a file's digest; a (path, size, mtime) already verified is not hashed again."""
    if expected is None:
        return
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    marker = _verified_marker_cache()
    try:
        known = json.loads(marker.read_text())
    except (OSError, ValueError):
        known = {}
    if known.get(key) == expected:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(f"{what}: {path} has sha256 {actual[:12]}..., expected {expected[:12]}... (corrupt or wrong file; delete it and fetch again)")
    known[key] = expected
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, marker)
    except OSError:
        pass  # the marker only saves time


def _resolve_hub(ref: HubRef, spec_name: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hf_cache_dir()
    try:
        return Path(hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    how = (f"fetch it on a machine with network: `hf download {ref.repo_id} {ref.filename} --revision {ref.revision}` "
           f"(cache: {cache}), or pass --model /path/to/{Path(ref.filename).name}")
    if hub_offline():
        raise ModelError(f"model {spec_name!r} needs {ref} which is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {how}")
    try:
        return Path(hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, cache_dir=cache))
    except Exception as exc:  # network, auth, missing revision: all end the same way for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"model {spec_name!r}: could not download {ref} ({reason}); {how}") from exc


def resolve_weights(spec: ModelSpec) -> Path:
    """The local path of a model's weights file, fetched if needed and verified against its sha256."""
    ref = spec.weights
    if ref.startswith("package:"):
        path = Path(str(resources.files("vsrq") / "models" / "weights" / ref[len("package:"):]))
        if not path.is_file():
            raise ModelError(f"model {spec.name!r}: packaged weights {path.name} are missing from this installation (vsrq/models/weights/); reinstall vsrq")
    elif ref.startswith("hf://"):
        path = _resolve_hub(parse_hub_ref(ref), spec.name)
    else:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ModelError(f"model {spec.name!r}: weights file {path} does not exist")
    verify_sha256(path, spec.sha256, f"model {spec.name!r}")
    return path


def model_availability(spec: ModelSpec) -> str:
    """packaged / local / cached (ready now), remote (needs a download) or missing."""
    ref = spec.weights
    if ref.startswith("package:"):
        path = Path(str(resources.files("vsrq") / "models" / "weights" / ref[len("package:"):]))
        return "packaged" if path.is_file() else "missing"
    if ref.startswith("hf://"):
        from huggingface_hub import try_to_load_from_cache

        hub = parse_hub_ref(ref)
        hit = try_to_load_from_cache(hub.repo_id, hub.filename, cache_dir=hf_cache_dir(), revision=hub.revision)
        if isinstance(hit, str):
            return "cached"
        return "missing" if hub_offline() else "remote"
    return "local" if Path(ref).expanduser().is_file() else "missing"
