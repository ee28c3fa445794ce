"""Form bodies for the tests, written the way curl -F writes them."""

from __future__ import annotations


def multipart(boundary: str, *parts: tuple[str, str | None, str | None, bytes]) -> bytes:
    """A multipart/form-data body of (name, filename or None, content type or None, content)
    parts."""
    chunks = []
    for name, filename, content_type, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type is not None:
            head += f"Content-Type: {content_type}\r\n"
        chunks.append(head.encode() + b"\r\n" + content + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()
