"""Where a path or URI points, so that no command writes into a folder it reads, and one folder spelled two ways
is one folder.

`location` resolves a local path (and a `file://` URI) with os.path.realpath: symbolic links, `.`, `..`,
repeated and trailing slashes. Any other URI is normalised as text: the scheme in lower case, the query
dropped, repeated slashes, `.` and `..` segments and the trailing slash removed (`s3://b//x/` is `s3://b/x`).
"""
from __future__ import annotations

import os
import posixpath
import uuid
from typing import Iterable

from .errors import UsageError, UserError, storage_problem


def location(path: str) -> str:
    """The normalised location of a local path or a URI (see the module docstring)."""
    path = os.fspath(path)
    if "://" not in path:
        return os.path.realpath(path or ".")
    scheme, rest = path.split("://", 1)
    if scheme.lower() == "file":
        return os.path.realpath(rest or "/")
    rest = rest.split("?", 1)[0]
    return f"{scheme.lower()}://{posixpath.normpath('/' + rest).lstrip('/')}"


def relation(a: str, b: str) -> str | None:
    """How the folder `a` stands to the folder `b`: "same", "inside" (a is below b), "around" (b is below a),
    or None (apart)."""
    la, lb = location(a), location(b)
    if la == lb:
        return "same"
    if lb.startswith(la if la.endswith("/") else la + "/"):
        return "around"
    if la.startswith(lb if lb.endswith("/") else lb + "/"):
        return "inside"
    return None


def refuse_overlap(flag: str, out: str, inputs: Iterable[tuple[str, str]], allow_same: Iterable[str] = ()
                   ) -> None:
    """UsageError when the output `out` (given as `flag`) is, is inside, or holds one of the `inputs`
    ((flag, path) pairs); `allow_same` names the input flags `out` may be equal to."""
    allowed = set(allow_same)
    for in_flag, path in inputs:
        if not path:
            continue
        how = relation(out, path)
        if how is None or (how == "same" and in_flag in allowed):
            continue
        where = {"same": f"is {in_flag} {path} itself", "inside": f"is inside {in_flag} {path}",
                 "around": f"holds {in_flag} {path}"}[how]
        raise UsageError(f"{flag} {out}: {where}; a command never writes into what it reads: choose an output "
                         f"folder outside it")


def local_path(path: str) -> str | None:
    """The local path of a path or `file://` URI; None for any other URI."""
    if "://" not in path:
        return path
    scheme, rest = path.split("://", 1)
    return rest if scheme.lower() == "file" else None


def output_entries(flag: str, path: str) -> list[str]:
    """The names in the output folder `path` (a local path or a URI) before a command writes there: [] when it
    does not exist yet; a UserError naming `flag` when it is a file or lies under one."""
    local = local_path(path)
    if local is not None:
        parent = os.path.abspath(local)
        while not os.path.lexists(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            what = ("is a file, not a folder" if parent == os.path.abspath(local) else
                    f"lies under {parent}, which is a file")
            raise UserError(f"{flag} {path}: {what}")
        try:
            return sorted(os.listdir(local)) if os.path.isdir(local) else []
        except OSError as e:
            raise UserError(f"{flag} {path}: cannot read the folder ({e.strerror or e})") from None
    import pyarrow as pa
    import pyarrow.fs as pafs

    from .layout import resolve

    try:
        fs, folder = resolve(path)
        kind = fs.get_file_info(folder).type
        if kind == pafs.FileType.File:
            raise UserError(f"{flag} {path}: is a file, not a folder")
        if kind != pafs.FileType.Directory:
            return []
        return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(folder)))
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{flag} {path}: {storage_problem(e)}") from None


def prepare_local_folder(flag: str, path: str) -> None:
    """Make the local output folder `path` (and its parents) and check that a file can be written in it: a
    UserError naming `flag` when it is a file, lies under one, or cannot be written."""
    output_entries(flag, path)
    probe = os.path.join(path, f".raytrain-probe-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None


def probe_uri(flag: str, uri: str) -> None:
    """Check that an object can be written under the URI folder `uri` (an S3 bucket that takes reads but
    refuses writes fails here, not at the upload after the work): one small object, written and removed."""
    import pyarrow as pa

    from .layout import resolve

    try:
        fs, folder = resolve(uri)
        probe = posixpath.join(folder, f".raytrain-probe-{uuid.uuid4().hex[:8]}")
        with fs.open_output_stream(probe) as f:
            f.write(b"")
        fs.delete_file(probe)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{flag} {uri}: cannot write there ({storage_problem(e)})") from None
