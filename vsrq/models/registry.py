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
ENTRY_KEYS = {"arch", "description", "weights", "sha256", "precision", "config", "source", "fetch", "files"}
FILE_KEYS = {"weights", "sha256", "fetch"}
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
    fetch: str | None = None  # how to get the weights where the reference alone does not say (not on the Hub)
    files: dict[str, FileRef] = field(default_factory=dict)  # further parts of a model (a VAE, text embeddings)

    @property
    def is_hub(self) -> bool:
        return self.weights.startswith("hf://")

    def all_files(self) -> dict[str, FileRef]:
        """Every file the model needs, the main weights first."""
        return {"weights": FileRef("weights", self.weights, self.sha256, self.fetch), **self.files}


@dataclass(frozen=True)
class FileRef:
    """One file a model needs: where it comes from, its digest, and how to fetch it by hand."""

    role: str
    ref: str
    sha256: str | None = None
    fetch: str | None = None


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
    _validate_ref(where, weights, sha, entry.get("fetch"))
    config = entry.get("config", {})
    if not isinstance(config, dict):
        raise ModelError(f"{where}: config must be a table")
    files = {}
    if not isinstance(entry.get("files", {}), dict):
        raise ModelError(f"{where}: files must be a table of role = {{ weights = ..., sha256 = ... }}")
    for role, part in (entry.get("files") or {}).items():
        if not isinstance(part, dict) or set(part) - FILE_KEYS or not isinstance(part.get("weights"), str) or not part["weights"]:
            raise ModelError(f"{where}: files.{role} must be a table with 'weights' and optional 'sha256', 'fetch'")
        _validate_ref(f"{where}: files.{role}", part["weights"], part.get("sha256"), part.get("fetch"))
        files[role] = FileRef(role, part["weights"], part.get("sha256"), part.get("fetch"))
    return ModelSpec(
        name=name,
        arch=entry["arch"],
        weights=weights,
        precision=entry["precision"],
        config=config,
        sha256=sha,
        description=entry.get("description", ""),
        source=entry.get("source"),
        fetch=entry.get("fetch"),
        files=files,
    )


def _validate_ref(where: str, ref: str, sha: object, fetch: object) -> None:
    if sha is not None and not (isinstance(sha, str) and _SHA256.match(sha)):
        raise ModelError(f"{where}: sha256 must be 64 lowercase hex digits")
    if fetch is not None and not isinstance(fetch, str):
        raise ModelError(f"{where}: fetch must be a string")
    for prefix in ("package:", "cache:"):
        if ref.startswith(prefix):
            rel = ref[len(prefix):]
            if rel.startswith(("/", ".")) or "\\" in rel or ".." in rel.split("/") or not rel or (prefix == "package:" and "/" in rel):
                kind = "a plain file name" if prefix == "package:" else "a relative path inside the vsrq cache"
                raise ModelError(f"{where}: {prefix[:-1]} weights must be {kind}, got {rel!r}")
    if ref.startswith("hf://"):
        parse_hub_ref(ref)
        if sha is None:
            raise ModelError(f"{where}: Hub weights need a sha256 to be verified against")


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


def _fetch_hint(ref: str, fetch: str | None, local: Path | None) -> str:
    """How to get one file by hand, in a few words."""
    if ref.startswith("hf://"):
        hub = parse_hub_ref(ref)
        return (f"`hf download {hub.repo_id} {hub.filename} --revision {hub.revision}` (cache: {hf_cache_dir()})"
                + (f"; {fetch}" if fetch else ""))
    return f"put it at {local}" + (f" ({fetch})" if fetch else "")


def _hub_cached(ref: HubRef) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, cache_dir=hf_cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None


def _download(ref: HubRef, spec_name: str, hint: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, cache_dir=hf_cache_dir()))
    except Exception as exc:  # network, auth, missing revision: all end the same way for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"model {spec_name!r}: could not download {ref} ({reason}); fetch it on a machine with network: {hint}") from exc


def local_path(ref: str) -> Path | None:
    """Where a non-Hub reference lives on this machine (None for hf://)."""
    if ref.startswith("package:"):
        return Path(str(resources.files("vsrq") / "models" / "weights" / ref[len("package:"):]))
    if ref.startswith("cache:"):
        return cache_dir() / ref[len("cache:"):]
    if ref.startswith("hf://"):
        return None
    return Path(ref).expanduser()


def find_local(part: FileRef) -> Path | None:
    """A file of a model if it is on this machine already (never downloads, not verified)."""
    path = local_path(part.ref)
    if path is None:
        path = _hub_cached(parse_hub_ref(part.ref))
    return path if path is not None and path.is_file() else None


def resolve_files(spec: ModelSpec) -> dict[str, Path]:
    """Local paths of every file of a model (role -> path), fetched if needed and verified.

    All missing files are named in one error, each with how to get it, so a user with no network
    learns the whole list at once instead of one file per attempt.
    """
    found: dict[str, Path] = {}
    missing: list[tuple[FileRef, str]] = []
    for role, part in spec.all_files().items():
        path = find_local(part)
        if path is not None:
            found[role] = path
        elif part.ref.startswith("package:"):
            raise ModelError(f"model {spec.name!r}: packaged weights {local_path(part.ref).name} are missing from this installation (vsrq/models/weights/); reinstall vsrq")
        else:
            missing.append((part, _fetch_hint(part.ref, part.fetch, local_path(part.ref))))
    hub_missing = [(p, h) for p, h in missing if p.ref.startswith("hf://")]
    if missing and (len(hub_missing) < len(missing) or hub_offline()):
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "not all of them can be downloaded"
        names = "; ".join(f"{p.role}: {p.ref} -> {h}" for p, h in missing)
        raise ModelError(f"model {spec.name!r} needs {len(missing)} file(s) that are not here ({why}): {names}"
                         + (f"; or pass --model /path/to/{Path(spec.weights).name}" if len(spec.all_files()) == 1 else ""))
    for part, hint in hub_missing:
        found[part.role] = _download(parse_hub_ref(part.ref), spec.name, hint)
    for role, part in spec.all_files().items():
        verify_sha256(found[role], part.sha256, f"model {spec.name!r}" + ("" if role == "weights" else f" ({role})"))
    return found


def resolve_weights(spec: ModelSpec) -> Path:
    """The local path of a model's main weights file (see resolve_files for models of several files)."""
    return resolve_files(spec)["weights"]


def model_availability(spec: ModelSpec) -> str:
    """packaged / local / cached (ready now), remote (needs a download) or missing, over all its files."""
    states = []
    for part in spec.all_files().values():
        path = local_path(part.ref)
        if path is not None:
            kind = "packaged" if part.ref.startswith("package:") else "local"
            states.append(kind if path.is_file() else "missing")
            continue
        from huggingface_hub import try_to_load_from_cache

        hub = parse_hub_ref(part.ref)
        hit = try_to_load_from_cache(hub.repo_id, hub.filename, cache_dir=hf_cache_dir(), revision=hub.revision)
        states.append("cached" if isinstance(hit, str) else ("missing" if hub_offline() else "remote"))
    for state in ("missing", "remote", "cached", "local"):
        if state in states:
            return state
    return "packaged"
