"""Progress bars: tqdm, shown unless the caller hides them all (the CLI's ``-q``).

Every long loop of the package draws its bar through :func:`progress_bar`, so that one switch,
:func:`progress_bars`, governs them; a function's own ``progress=False`` still hides its bar.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

_shown = True


def progress_bar(iterable: Any = None, *, disable: bool | None = False, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, hidden when ``disable`` or inside ``progress_bars(False)``."""
    return tqdm(iterable, disable=True if not _shown else disable, **kwargs)


@contextlib.contextmanager
def progress_bars(shown: bool) -> Iterator[None]:
    """Show (or hide) every progress bar drawn in the block."""
    global _shown
    before, _shown = _shown, shown
    try:
        yield
    finally:
        _shown = before
