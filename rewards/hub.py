"""Finding a checkpoint file: a local path, or ``owner/repo/path/in/repo`` on the Hugging Face hub.

Users with internet name hub files; offline users (and the tests) pass local paths. Either way the same
loader code runs after this.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["resolve_file"]


def resolve_file(spec: str | Path, what: str = "checkpoint") -> Path:
    """A local file, or a hub file ``owner/repo/filename`` downloaded (cached) with ``huggingface_hub``.

    Raises ``FileNotFoundError`` naming both readings when neither works.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise FileNotFoundError(f"{what} {str(spec)!r} is a directory; expected a file")
    parts = str(spec).split("/")
    if len(parts) < 3 or not all(parts):
        raise FileNotFoundError(
            f"{what} {str(spec)!r} is neither a local file nor a hub file 'owner/repo/file'"
        )
    from huggingface_hub import hf_hub_download

    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as error:  # offline, missing repo or file: one message with both readings
        raise FileNotFoundError(
            f"{what} {str(spec)!r}: no such local file, and hub file {filename!r} of {repo_id!r} "
            f"could not be fetched ({type(error).__name__}: {error})"
        ) from error
