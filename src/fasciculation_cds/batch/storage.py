"""Where a batch run's inputs and outputs live: local paths, or object storage through fsspec.

A location is a string: a local path, or a URI (`s3://bucket/export`, `abfss://...`). Cloud
file systems are optional extras; credentials come only from each cloud's own chain
(environment, profile, instance or workload identity), never from here. The non-secret options
(region, endpoint, server-side encryption) travel with the run's Settings, so that every worker
(a process here, or a Spark executor elsewhere) opens objects the same way.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import fields
from pathlib import Path, PurePosixPath
from typing import IO, Any

import orjson

from ..errors import InputError
from ..sources import (
    READ_ERRORS,
    SKIPPED_IN_FOLDERS,
    RawResource,
    declared_types,
    expand_paths,
    is_ndjson,
    resources_of,
)
from .options import MissingDependencyError, OutputError, StorageOptions
from .outputs import MERGE_BATCH_ROWS, TABLES

ENVIRONMENT = "FASCICULATION_CDS_STORAGE"  # a JSON object of StorageOptions fields
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")
# scheme -> (the module that serves it, the extra that installs it)
SCHEMES: dict[str, tuple[str, str | None]] = {
    "s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
    "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure"), "az": ("adlfs", "azure"),
    "hdfs": ("pyarrow", None),
}
_PROTOCOL = {"abfss": "abfs"}  # fsspec's name for the same file system
# what a credential looks like in an option: refused, so that none reaches a log or run.json
_SECRET = re.compile(r"key$|secret|token|password|credential|connection_string|sas",
                     re.IGNORECASE)


def storage_options(**flags: str | None) -> StorageOptions:
    """The options of the environment variable, each overridden by a flag that is given.
    Raises ValueError naming the variable or key that is wrong."""
    known = {f.name for f in fields(StorageOptions)}
    values: dict[str, str | None] = {}
    raw = os.environ.get(ENVIRONMENT)
    if raw:
        try:
            loaded = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{ENVIRONMENT}: not a JSON object ({exc.msg})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{ENVIRONMENT}: not a JSON object")
        for key, value in loaded.items():
            if key not in known:
                hint = (": credentials come only from the cloud's own chain (environment, "
                        "profile, instance identity)") if _SECRET.search(key) and \
                    key != "kms_key_id" else f" (known: {', '.join(sorted(known))})"
                raise ValueError(f"{ENVIRONMENT}: unknown option {key!r}{hint}")
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{ENVIRONMENT}: {key} must be a string")
            values[key] = value
    values.update({k: v for k, v in flags.items() if v is not None})
    return StorageOptions(**values)


_current = StorageOptions()


def use(options: StorageOptions | None) -> None:
    """The options this process opens objects with (each worker is told the run's)."""
    global _current
    _current = options or StorageOptions()


def location(raw: str | os.PathLike[str]) -> str:
    """A location from a command-line word or a Path (which turns `s3://b/x` into `s3:/b/x`):
    a URI of a supported scheme, or a local path (`file://` URIs become local paths)."""
    text = os.fspath(raw)
    match = _URI.match(text)
    if match is None:
        return text
    scheme, rest = match[1].lower(), text[match.end():].lstrip("/")
    if scheme == "file":
        return "/" + rest
    if scheme not in SCHEMES:
        raise InputError(f"{scheme}:// is not supported (supported: "
                         f"{', '.join(f'{s}://' for s in SCHEMES)}, file:// and paths)",
                         source=text)
    return f"{scheme}://{rest}"


def is_uri(where: str | os.PathLike[str]) -> bool:
    return _URI.match(os.fspath(where)) is not None


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


def name(where: str) -> str:
    """The last part of a location (a file's name)."""
    return PurePosixPath(where.split("://", 1)[-1]).name if is_uri(where) else Path(where).name


def join(base: str, *names: str) -> str:
    if is_uri(base):
        return "/".join([base.rstrip("/"), *names])
    return str(Path(base, *names))


def parent(where: str) -> str:
    if is_uri(where):
        return where.rstrip("/").rsplit("/", 1)[0]
    return str(Path(where).parent)


def _fs_options(scheme: str, options: StorageOptions) -> dict[str, Any]:
    if scheme in ("s3", "s3a"):
        extra: dict[str, Any] = {}
        if options.sse or options.kms_key_id:
            extra["ServerSideEncryption"] = options.sse or "aws:kms"
        if options.kms_key_id:
            extra["SSEKMSKeyId"] = options.kms_key_id
        settings: dict[str, Any] = {}
        if options.endpoint_url:
            settings["endpoint_url"] = options.endpoint_url
        if options.region:
            settings["client_kwargs"] = {"region_name": options.region}
        if extra:
            settings["s3_additional_kwargs"] = extra
        return settings
    if scheme in ("gs", "gcs") and options.endpoint_url:
        return {"endpoint_url": options.endpoint_url}
    return {}


def filesystem(uri: str) -> tuple[Any, str]:
    """The fsspec file system of a URI and the path within it. Raises MissingDependencyError
    naming the extra to install."""
    scheme = scheme_of(uri)
    module, extra = SCHEMES[scheme]
    try:
        fsspec = importlib.import_module("fsspec")
        importlib.import_module(module)
    except ImportError:
        install = (f"pip install 'fasciculation-cds[{extra}]'" if extra else
                   "install Hadoop's libhdfs and set HADOOP_HOME and CLASSPATH")
        raise MissingDependencyError(f"{scheme}:// needs {module}: {install}") from None
    # the URI's own parts (an Azure account, an HDFS name node) become options of the file
    # system, as fsspec reads them
    target = f"{_PROTOCOL.get(scheme, scheme)}://{uri.split('://', 1)[1]}"
    fs, path = fsspec.core.url_to_fs(target, **_fs_options(scheme, _current))
    return fs, path


def _children(where: str, fs: Any, path: str) -> list[str]:
    """Every file under a folder (a prefix), as locations under `where`, in sorted order."""
    base = path.rstrip("/")
    return [join(where, found[len(base) + 1:]) for found in sorted(fs.find(path))
            if found.startswith(base + "/")]


_CREDENTIAL_ERRORS = frozenset({"NoCredentialsError", "PartialCredentialsError",
                                "ClientAuthenticationError", "DefaultCredentialsError",
                                "RefreshError"})


def denied(exc: BaseException) -> str | None:
    """A refusal by the storage service, in words that name no secret (the service's own text
    is not repeated), or None if `exc` is not one."""
    if isinstance(exc, PermissionError) or type(exc).__name__ in _CREDENTIAL_ERRORS:
        return ("access denied: the credentials were refused or not found (they come only "
                "from the cloud's own chain: environment, profile, instance or workload "
                "identity)")
    return None


# -- inputs -----------------------------------------------------------------------------------


def open_input(where: str) -> AbstractContextManager[IO[bytes]]:
    """A file's bytes, streamed (an object is read in blocks, never whole)."""
    if not is_uri(where):
        return Path(where).open("rb")
    fs, path = filesystem(where)
    handle: AbstractContextManager[IO[bytes]] = fs.open(path, "rb", block_size=8 << 20)
    return handle


def read_bytes(where: str) -> bytes:
    """A whole (possibly gzipped) file: a Bundle or a manifest, never an NDJSON export."""
    with open_input(where) as handle:
        data = handle.read()
    return gzip.decompress(data) if where.lower().endswith(".gz") else data


def read_document(where: str, *, strict: bool) -> Iterator[RawResource | InputError]:
    """The resources of a JSON file (a Bundle or one resource) on object storage."""
    try:
        data = read_bytes(where)
    except READ_ERRORS as exc:
        raise InputError(f"cannot read: {exc or type(exc).__name__}", source=where) from None
    if not data.strip():
        raise InputError("file is empty", source=where)
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc}", source=where) from None
    yield from resources_of(document, where, strict=strict)


def sha256(where: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open_input(where) as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def size(where: str) -> int:
    try:
        if not is_uri(where):
            return Path(where).stat().st_size
        fs, path = filesystem(where)
        return int(fs.size(path) or 0)
    except OSError:
        return 0


def version(where: str) -> str:
    """What changes when a file changes: size and modification time, or an object's ETag."""
    try:
        if not is_uri(where):
            stat = Path(where).stat()
            return f"{stat.st_size}|{stat.st_mtime_ns}"
        fs, path = filesystem(where)
        info = fs.info(path)
        tag = info.get("ETag") or info.get("etag") or info.get("md5") or \
            info.get("LastModified") or info.get("mtime") or info.get("last_modified")
        return f"{info.get('size')}|{tag}"
    except OSError as exc:  # read later, and then a problem of the run
        return str(getattr(exc, "errno", None) or type(exc).__name__)


def _is_data_file(file_name: str) -> bool:
    lower = file_name.lower()
    return lower.endswith((".json", ".json.gz")) or is_ndjson(Path(file_name))


def expand(inputs: Iterable[str]) -> list[str]:
    """Files to read, in a stable order, as `sources.expand_paths` finds them on disk: folders
    (prefixes) walked, Bulk Data logs skipped, a manifest replaced by the files it lists."""
    files: list[str] = []
    for where in inputs:
        if not is_uri(where):
            files += [str(p) for p in expand_paths([where])]
            continue
        try:
            files += _expand_uri(where)
        except (InputError, MissingDependencyError):
            raise
        except Exception as exc:  # a cloud SDK's own credential errors are not OSErrors
            refused = denied(exc)
            if refused is None and not isinstance(exc, OSError):
                raise
            raise InputError(refused or f"cannot list: {exc or type(exc).__name__}",
                             source=where) from None
    return files


def _expand_uri(where: str) -> list[str]:
    fs, path = filesystem(where)
    if fs.isdir(path):
        return [child for child in _children(where, fs, path)
                if name(child).lower() not in SKIPPED_IN_FOLDERS and _is_data_file(name(child))]
    if not fs.exists(path):
        raise InputError("no such file or folder", source=where)
    if name(where).lower() == "manifest.json":
        return [found for found, _ in _manifest_files(where)]
    return [where]


def _manifest_files(manifest: str) -> list[tuple[str, str | None]]:
    """(location, declared type) of each file a Bulk Data manifest on object storage lists:
    an `output[].url` on a supported object store as it is, else (an https URL of the server
    that exported it, or a relative path) the file of that name beside the manifest."""
    try:
        document = orjson.loads(read_bytes(manifest))
    except orjson.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc}", source=manifest) from None
    if not (isinstance(document, dict) and isinstance(document.get("output"), list)
            and "transactionTime" in document):
        return [(manifest, None)]
    folder = parent(manifest)
    files = []
    for index, item in enumerate(document["output"]):
        url = item.get("url") if isinstance(item, dict) else None
        if not isinstance(url, str):
            raise InputError("manifest output has no url", source=manifest,
                             entry=f"output[{index}]")
        candidates = [join(folder, url.lstrip("./"))] if not _URI.match(url) else []
        if _URI.match(url) and scheme_of(url) in SCHEMES:
            candidates.insert(0, location(url))
        candidates.append(join(folder, url.rstrip("/").rsplit("/", 1)[-1]))
        found = next((c for c in candidates if _exists(c)), None)
        if found is None:
            raise InputError(f"manifest file not found: {url}", source=manifest,
                             entry=f"output[{index}]")
        declared = item.get("type")
        files.append((found, declared if isinstance(declared, str) else None))
    return files


def _exists(where: str) -> bool:
    if not is_uri(where):
        return Path(where).exists()
    fs, path = filesystem(where)
    return bool(fs.exists(path))


def declared(inputs: Iterable[str]) -> dict[str, str]:
    """The resource type each Bulk Data manifest says its files hold, by `key()`."""
    types: dict[str, str] = {}
    for where in inputs:
        if not is_uri(where):
            types.update({str(p): t for p, t in declared_types([where]).items()})
            continue
        fs, path = filesystem(where)
        if fs.isdir(path):
            manifests = [child for child in _children(where, fs, path)
                         if name(child).lower() == "manifest.json"]
        else:
            manifests = [where] if name(where).lower() == "manifest.json" else []
        for manifest in manifests:
            try:
                listed = _manifest_files(manifest)
            except (InputError, OSError):
                continue  # named on its own, expand() reports it; in a folder it is not data
            types.update({found: kind for found, kind in listed if kind})
    return types


def key(where: str) -> str:
    """How `declared()` names a file."""
    return where if is_uri(where) else str(Path(where).resolve())


# -- outputs ----------------------------------------------------------------------------------


def work_folder(out: str, scratch: Path | None, work: str) -> Path:
    """The run's working folder: `out/_work` for a local `--out`; for object storage, `scratch`
    (or a folder of the user's cache named after `out`), so that `--resume` finds it again."""
    if scratch is not None:
        return scratch / work
    if not is_uri(out):
        return Path(out) / work
    from platformdirs import user_cache_dir

    digest = hashlib.sha256(out.rstrip("/").encode()).hexdigest()[:16]
    return Path(user_cache_dir("fasciculation-cds")) / "batch" / f"{digest}{work}"


def output_error(exc: BaseException, out: str) -> OutputError:
    refused = denied(exc)
    if refused:
        return OutputError(f"{out}: {refused}")
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return OutputError(f"{out}: cannot write the output: {reason}")


def clear_remote(out: str, names: Iterable[str]) -> None:
    """run.json first (its presence says the outputs beside it are complete), then `names`."""
    fs, path = filesystem(out)
    for item in names:
        target = f"{path.rstrip('/')}/{item}"
        if fs.exists(target):
            fs.rm(target, recursive=True)


def upload(local: Path, out: str) -> None:
    fs, path = filesystem(out)
    target = f"{path.rstrip('/')}/{local.name}"
    if local.is_dir():
        for part in sorted(local.iterdir()):
            if part.is_file():
                fs.put_file(str(part), f"{target}/{part.name}")
        return
    fs.put_file(str(local), target)


def move_remote(source: str, out: str) -> None:
    """A folder of parts written by Spark's executors into its place (a copy and a delete on
    object stores, which cannot rename)."""
    fs, path = filesystem(source)
    _, target = filesystem(out)
    target = f"{target.rstrip('/')}/{name(source)}"
    # file by file: a recursive move would also copy the folder's own (absent) key
    for found in sorted(fs.find(path)):
        fs.copy(found, target + found[len(path.rstrip("/")):])
    fs.rm(path, recursive=True)


def write_remote(where: str, payload: bytes) -> None:
    """One object, in one request: a reader sees all of it or none."""
    fs, path = filesystem(where)
    fs.pipe_file(path, payload)


def remove_remote(where: str) -> None:
    fs, path = filesystem(where)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def remote_files(where: str, suffix: str) -> list[str]:
    """The data files of an output (one file, or a folder of parts), in name order."""
    fs, path = filesystem(where)
    if not fs.isdir(path):
        return [where]
    return [child for child in _children(where, fs, path)
            if child.endswith(suffix) and not name(child).startswith(("_", "."))]


def remote_staging(out: str, work: str) -> str:
    """Where Spark's executors write the parts of an object-storage `--out` before they are
    moved into place (the driver's working folder is not theirs to write)."""
    return join(out, work, "final")


def publish_remote(staging: Path, out: str, names: list[str], work: str) -> dict[str, str]:
    """Each output into place on object storage: uploaded from `staging`, or moved from
    `remote_staging` where Spark wrote it. run.json is not among them: it comes last."""
    placed: dict[str, str] = {}
    for item in names:
        local = staging / item
        if local.exists():
            upload(local, out)
        elif item.split(".")[0] in TABLES:  # the tables Spark's executors wrote
            move_remote(join(remote_staging(out, work), item), out)
        else:
            continue  # an output this engine does not write (Spark: no unrecognized table)
        placed[item.split(".")[0]] = join(out, item)
    remove_remote(join(out, work))
    return {table: placed[table] for table in (*TABLES, "unrecognized") if table in placed}


def iter_remote_rows(where: str, output_format: str,
                     columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The rows of an output on object storage (a file or a folder of parts), a batch at a
    time."""
    import pyarrow.parquet as pq

    fs, _ = filesystem(where)
    for file in remote_files(where, ".parquet" if output_format == "parquet" else ".json"):
        with fs.open(filesystem(file)[1], "rb") as handle:
            if output_format == "parquet":
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=MERGE_BATCH_ROWS,
                                                                 columns=columns):
                    yield from batch.to_pylist()
                continue
            for line in handle:
                if line.strip():
                    row = orjson.loads(line)
                    yield row if columns is None else {c: row.get(c) for c in columns}
