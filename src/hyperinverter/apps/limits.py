"""What one request to the web page may cost a shared server (light to import: the CLI reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WebLimits:
    """What one request may cost a shared server. Every field is a ``hyperinverter web`` flag."""

    max_upload_mb: float = 20.0  # bytes of one upload
    max_pixels: int = 40_000_000  # pixels of one decoded photo (Pillow's own bomb limit is higher)
    detect_side: int = 2048  # photos larger than this (longest side) are downscaled before face detection
    concurrency: int = 1  # requests that run a model at once; the others wait in the queue
    queue_size: int = 32  # requests that may wait; more are refused at once with a message
    keep_seconds: int = 3600  # uploads, result files and a closed page's state are deleted after this
    max_pages: int = 64  # pages whose inversions the server keeps (the least recently used are dropped)
    batch_size: int = 8  # images one model call takes: a group photo's faces are inverted and edited this many at once

    @property
    def upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes (a MB is 2**20, as Gradio's)."""
        return int(self.max_upload_mb * 2**20)

    @property
    def transport_bytes(self) -> int:
        """The largest file Gradio takes (its ``max_file_size``, checked before any handler): twice the upload limit.
        From an API client, a file over the limit but under this reaches the page's own check, which says its size
        and the limit (at the limit, Gradio's toast said only 'File(s) exceed the maximum allowed size of 20.0 Mb:
        "big.jpg"'); a larger one is still refused before it is stored. (The page refuses both in the browser.)"""
        return 2 * self.upload_bytes
