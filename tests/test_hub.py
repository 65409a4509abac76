"""The model catalogue (``hyperinverter.catalogue``), the downloader and the ``models`` / ``download`` commands.

The network is never touched: an autouse fixture makes every ``urlopen`` (and any socket connection) fail,
and the "successful download" test serves bytes from memory. The cache is a temporary folder chosen
through ``HYPERINVERTER_CACHE``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hyperinverter import catalogue as hub
from hyperinverter import download as downloader
from hyperinverter.cli.main import main

PAYLOAD = b"pretend generator weights\n" * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
URL = "https://example.invalid/models/fake-generator.pkl"

FAKE = hub.Artifact("fake-gen", "generator", "a test entry with a direct link", "fake-generator.pkl", "MIT",
                    url=URL, source="the test suite", sha256=PAYLOAD_SHA, size_bytes=len(PAYLOAD))
# No direct link, known hash: a file that can only be placed by hand.
MANUAL = hub.Artifact("manual-gen", "generator", "a test entry without a link", "manual-generator.pkl", "MIT",
                      source="a Google Drive folder (see the README)", sha256=PAYLOAD_SHA, size_bytes=len(PAYLOAD))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Any network access raises URLError; returns the list of URLs that were attempted."""
    attempts: list[str] = []

    def no_network(url, *args, **kwargs):
        attempts.append(url if isinstance(url, str) else url.full_url)
        raise urllib.error.URLError("network disabled in tests")

    def no_socket(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(socket, "create_connection", no_socket)
    monkeypatch.setattr(socket.socket, "connect", no_socket)
    return attempts


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("HYPERINVERTER_CACHE", str(folder))
    return folder


@pytest.fixture
def fake_catalogue(monkeypatch):
    catalogue = hub.CATALOGUE + (FAKE, MANUAL)
    monkeypatch.setattr(hub, "CATALOGUE", catalogue)
    return catalogue


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- cache folder ------------------------------------------------------------------------------------------


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERINVERTER_CACHE", str(tmp_path / "here"))
    assert hub.cache_dir() == tmp_path / "here"
    monkeypatch.setenv("HYPERINVERTER_CACHE", "")
    assert hub.cache_dir() == Path.home() / ".cache" / "hyperinverter"
    monkeypatch.delenv("HYPERINVERTER_CACHE")
    assert hub.cache_dir() == Path.home() / ".cache" / "hyperinverter"


# --- hyperinverter models ----------------------------------------------------------------------------------


def test_env_describes_the_machine_for_a_bug_report(cache, capsys, monkeypatch):
    import importlib.util

    import torch

    from hyperinverter import __version__

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "av" else real_find_spec(name, *a))
    (cache / "x.pt").parent.mkdir(parents=True)
    (cache / "x.pt").write_bytes(b"")
    code, out, _ = run_cli(capsys, "env")
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines())
    assert code == 0 and rows["hyperinverter"] == __version__ and rows["torch"].startswith(torch.__version__)
    assert f"torch uses {torch.get_num_threads()} threads" in rows["cpu"] and "native bf16: " in rows["cpu"]
    assert rows["[video]"] == "not installed (pip install 'hyperinverter[video]'): MP4 interpolations"
    assert rows["model cache"] == f"{cache} (1 file(s): x.pt)"
    if not torch.cuda.is_available():
        assert rows["cuda"] == "no CUDA device"
    # A GPU machine (not lent to the tests): each device's name, memory, compute capability and bf16.
    from types import SimpleNamespace

    h200 = SimpleNamespace(name="NVIDIA H200", total_memory=143 * 2**30, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: h200)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: False)
    code, out, _ = run_cli(capsys, "env")
    assert code == 0 and "cuda:0          NVIDIA H200, 143.0 GiB, compute capability 9.0; bf16: yes" in out
    from hyperinverter.environment import OPTIONAL_PARTS

    tomllib = pytest.importorskip("tomllib")  # (Python 3.11+)
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert {part[0] for part in OPTIONAL_PARTS} == set(extras["optional-dependencies"]) - {"dev"}  # every extra shown


def test_the_declared_torch_has_every_torch_api_the_package_calls():
    # pyproject declared torch>=2.1: torch 2.1 to 2.4 installed, then the first synthesis failed on
    # torch.compiler.is_compiling, and every official checkpoint was called unreadable (the AttributeError of
    # torch.serialization.safe_globals, caught as a bad file's).
    tomllib = pytest.importorskip("tomllib")  # (Python 3.11+)
    root = Path(__file__).parents[1]
    dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_requirement,) = [d for d in dependencies if re.match(r"torch\b", d)]
    declared = tuple(int(part) for part in re.search(r">=\s*(\d+)\.(\d+)", torch_requirement).groups())
    first_release = {"torch.serialization.safe_globals": (2, 5), "torch.get_autocast_dtype": (2, 4),
                     "torch.compiler.is_compiling": (2, 3), "torch.amp.GradScaler": (2, 3)}
    source = "\n".join(p.read_text(encoding="utf-8") for p in (root / "src" / "hyperinverter").rglob("*.py"))
    for api, release in first_release.items():
        if api in source:
            assert declared >= release, f"{api} came with torch {release}; pyproject declares {torch_requirement}"


def test_the_package_runs_as_a_module():
    # `python -m hyperinverter` said "'hyperinverter' is a package and cannot be directly executed".
    import subprocess
    import sys

    from hyperinverter import __version__

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hyperinverter", *argv], capture_output=True, text=True,
                              check=False, timeout=60)

    done = run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"hyperinverter {__version__}"
    done = run("no-such-command")
    assert done.returncode == 2 and "invalid choice: 'no-such-command'" in done.stderr


def test_models_lists_every_catalogue_entry(cache, capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    lines = out.splitlines()
    for artifact in hub.CATALOGUE:
        row = [line for line in lines if line.split() and line.split()[0] == artifact.name]
        assert len(row) == 1, f"{artifact.name} is not listed exactly once:\n{out}"
        assert row[0].rstrip().endswith(artifact.filename)
        assert artifact.kind in row[0]
        if not artifact.bundled:
            assert "not present" in row[0]  # the cache is empty
    bundled = [a for a in hub.CATALOGUE if a.bundled and (hub.BUNDLED_DIR / a.filename).exists()]
    for artifact in bundled:
        assert "bundled" in next(line for line in lines if line.startswith(artifact.name))
    assert str(cache) in out  # says where the cache is


def test_models_shows_size_and_hash_where_known(cache, fake_catalogue, capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    fake_row = next(line for line in out.splitlines() if line.startswith("fake-gen "))
    assert f"{len(PAYLOAD) / 1e6:.1f} MB" in fake_row
    assert PAYLOAD_SHA[:12] in fake_row
    unknown = next(a for a in hub.CATALOGUE if not a.bundled and a.sha256 is None and a.size_bytes is None)
    unknown_row = next(line for line in out.splitlines() if line.startswith(unknown.name + " "))
    assert "unknown" in unknown_row and "?" in unknown_row
    # A bundled model's size is what it holds on disk (it showed "?").
    bundled = next(a for a in hub.CATALOGUE if a.bundled and (hub.BUNDLED_DIR / a.filename).is_dir())
    row = next(line for line in out.splitlines() if line.startswith(bundled.name + " "))
    size = sum(p.stat().st_size for p in (hub.BUNDLED_DIR / bundled.filename).rglob("*") if p.is_file())
    assert f"{size / 1e6:.1f} MB" in row and "in package" in row


def test_models_status_follows_the_cache(cache, fake_catalogue, capsys):
    cache.mkdir()
    (cache / FAKE.filename).write_bytes(PAYLOAD)
    _, out, _ = run_cli(capsys, "models")
    assert "cached" in next(line for line in out.splitlines() if line.startswith("fake-gen "))
    assert "not present" in next(line for line in out.splitlines() if line.startswith("manual-gen "))


# --- download offline --------------------------------------------------------------------------------------


def test_download_offline_explains_the_manual_route(cache, fake_catalogue, offline, capsys):
    code, out, err = run_cli(capsys, "download", "fake-gen")
    assert code == 2 and out == ""
    assert offline == [URL]  # it tried, and only through urlopen
    target = cache / FAKE.filename
    assert FAKE.filename in err and URL in err and FAKE.source in err
    assert str(target) in err
    assert "HYPERINVERTER_CACHE" in err
    assert files_in(cache) == []  # no partial or temporary file left behind


def test_download_without_a_link_explains_the_manual_route(cache, offline, capsys):
    # The real catalogue: e.g. the official FFHQ generator has no stable direct link.
    artifact = hub.get_artifact("stylegan2-ffhq-config-f")
    assert artifact.url is None
    code, _, err = run_cli(capsys, "download", artifact.name)
    assert code == 2
    assert offline == []  # nothing to fetch, so no network attempt at all
    assert artifact.filename in err and artifact.source in err and str(cache / artifact.filename) in err
    with pytest.raises(FileNotFoundError, match="by hand"):
        downloader.download(artifact.name)


def test_resolve_missing_file_names_download_command_and_path(cache, fake_catalogue):
    with pytest.raises(FileNotFoundError) as e:
        hub.resolve_model("fake-gen")
    assert "run `hyperinverter download fake-gen`" in str(e.value)  # (it has a link)
    with pytest.raises(FileNotFoundError) as e:
        hub.resolve_model("manual-gen")
    message = str(e.value)
    # Without a link, `download` would answer with the same by-hand route: only that route is given.
    assert "manual-gen is not downloaded: it has no direct download link: download manual-generator.pkl by hand" \
        in message and "hyperinverter download" not in message
    assert MANUAL.filename in message and MANUAL.source in message and str(cache / MANUAL.filename) in message


def test_a_catalogue_file_name_that_is_not_here_says_where_it_goes(cache, tmp_path, monkeypatch, capsys):
    # The README runs `--model stylegan2-ffhq-config-f.pkl`: without the file in the current folder the error only
    # listed the bundled names, not that it is a catalogue entry's file, where to get it and where to put it.
    monkeypatch.chdir(tmp_path)
    artifact = hub.get_artifact("stylegan2-ffhq-config-f")
    code, _, err = run_cli(capsys, "generate", "--model", artifact.filename, "--out", "grid.png")
    assert code == 2 and f"error: {artifact.filename}: no such model file or folder" in err
    assert artifact.name in err and artifact.source in err and str(cache / artifact.filename) in err
    # Once placed there, the message points at it instead.
    cache.mkdir()
    (cache / artifact.filename).write_bytes(b"x")
    code, _, err = run_cli(capsys, "generate", "--model", artifact.filename, "--out", "grid.png")
    assert code == 2 and f"in the cache at {cache / artifact.filename}" in err and "by hand" not in err
    # A name the catalogue does not know keeps the plain message.
    code, _, err = run_cli(capsys, "generate", "--model", "mine.pkl", "--out", "grid.png")
    assert code == 2 and "catalogue names: faces-64" in err and str(cache) not in err

# --- files placed by hand ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fake-gen", "manual-gen"])
def test_hand_placed_file_with_the_right_hash_is_accepted(cache, fake_catalogue, offline, capsys, name):
    filename = hub.get_artifact(name).filename
    cache.mkdir()
    (cache / filename).write_bytes(PAYLOAD)
    assert hub.resolve_model(name) == cache / filename
    code, out, _ = run_cli(capsys, "download", name)
    assert code == 0 and str(cache / filename) in out
    assert offline == []  # verified in place, not downloaded again
    assert (cache / filename).read_bytes() == PAYLOAD


@pytest.mark.parametrize("entry", ["resolve", "download", "cli"])
def test_hand_placed_file_with_a_wrong_hash_is_rejected(cache, fake_catalogue, offline, capsys, entry):
    bad = b"not the weights" + PAYLOAD[15:]  # same size, different content
    bad_sha = hashlib.sha256(bad).hexdigest()
    cache.mkdir()
    target = cache / MANUAL.filename
    target.write_bytes(bad)
    if entry == "cli":
        code, _, message = run_cli(capsys, "download", "manual-gen")
        assert code == 2
    else:
        with pytest.raises(ValueError) as e:
            (hub.resolve_model if entry == "resolve" else downloader.download)("manual-gen")
        message = str(e.value)
    assert bad_sha in message and PAYLOAD_SHA in message
    assert str(target) in message
    # Not left in place as valid: moved aside, listed as absent, and a second look still refuses it.
    assert not target.exists()
    assert (cache / (MANUAL.filename + ".rejected")).read_bytes() == bad
    with pytest.raises(FileNotFoundError):
        hub.resolve_model("manual-gen")
    _, out, _ = run_cli(capsys, "models")
    assert "not present" in next(line for line in out.splitlines() if line.startswith("manual-gen "))
    assert offline == []


def test_hand_placed_file_of_the_wrong_size_names_both_hashes(cache, fake_catalogue):
    cache.mkdir()
    (cache / MANUAL.filename).write_bytes(PAYLOAD[:-1])
    with pytest.raises(ValueError) as e:
        hub.resolve_model("manual-gen")
    assert hashlib.sha256(PAYLOAD[:-1]).hexdigest() in str(e.value) and PAYLOAD_SHA in str(e.value)
    assert str(len(PAYLOAD) - 1) in str(e.value) and str(len(PAYLOAD)) in str(e.value)


# --- unknown names -----------------------------------------------------------------------------------------


def test_unknown_name_lists_the_known_names(cache, capsys):
    code, _, err = run_cli(capsys, "download", "no-such-model")
    assert code == 2
    assert "no-such-model" in err
    for artifact in hub.CATALOGUE:
        assert artifact.name in err
    with pytest.raises(ValueError, match="no-such-model: unknown model; known: .*stylegan2-ffhq-config-f"):
        hub.resolve_model("no-such-model")


# --- a successful download ---------------------------------------------------------------------------------


class _Response(io.BytesIO):
    """What ``urlopen`` returns: a readable context manager."""

    def __init__(self, data: bytes, *, fail_after: int | None = None) -> None:
        super().__init__(data)
        self.fail_after = fail_after

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection dropped")
        return super().read(n if self.fail_after is None else min(max(n, 1), self.fail_after - self.tell()))


def serve(monkeypatch, data: bytes, **kwargs) -> list[str]:
    urls: list[str] = []

    def fake_urlopen(url, *args, **kw):
        urls.append(url)
        return _Response(data, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return urls


def test_download_is_written_atomically_and_verified(cache, fake_catalogue, monkeypatch, capsys):
    urls = serve(monkeypatch, PAYLOAD)
    target = cache / FAKE.filename
    moves: list[tuple[Path, Path, bytes, bool]] = []
    real_replace = os.replace

    def spy_replace(src, dst):
        src, dst = Path(src), Path(dst)
        moves.append((src, dst, src.read_bytes(), dst.exists()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)
    code, out, _ = run_cli(capsys, "download", "fake-gen")
    assert code == 0 and str(target) in out
    assert urls == [URL]
    # Exactly one move: a complete temporary file in the same folder, renamed onto a name that did not exist.
    assert len(moves) == 1
    src, dst, content, dst_existed = moves[0]
    assert dst == target and not dst_existed
    assert src.parent == target.parent and src != target and src.name.endswith(".partial")
    assert content == PAYLOAD
    assert target.read_bytes() == PAYLOAD and hub.sha256_of(target) == PAYLOAD_SHA
    assert files_in(cache) == [FAKE.filename]  # the temporary file is gone
    assert hub.resolve_model("fake-gen") == target
    # A second download finds the verified file and does not fetch again.
    assert downloader.download("fake-gen") == target and urls == [URL]


def test_a_cache_that_is_a_file_is_named_with_the_setting(cache, fake_catalogue, monkeypatch, capsys):
    serve(monkeypatch, PAYLOAD)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("notes")  # (the download said only "file exists")
    code, _, err = run_cli(capsys, "download", "fake-gen")
    assert code == 2 and err.strip() == (f"error: {cache}: is not a folder, so it cannot hold the model cache: set "
                                         "HYPERINVERTER_CACHE to a folder (by default ~/.cache/hyperinverter)")
    assert cache.read_text() == "notes"


def test_download_with_a_wrong_hash_keeps_nothing(cache, fake_catalogue, monkeypatch):
    bad = PAYLOAD[:-3] + b"xyz"
    serve(monkeypatch, bad)
    with pytest.raises(ValueError) as e:
        downloader.download("fake-gen")
    assert hashlib.sha256(bad).hexdigest() in str(e.value) and PAYLOAD_SHA in str(e.value)
    assert URL in str(e.value) and str(cache / FAKE.filename) in str(e.value)
    assert files_in(cache) == []


def test_interrupted_download_keeps_nothing(cache, fake_catalogue, monkeypatch):
    serve(monkeypatch, PAYLOAD, fail_after=len(PAYLOAD) // 2)
    with pytest.raises(FileNotFoundError) as e:
        downloader.download("fake-gen")
    assert "connection dropped" in str(e.value) and str(cache / FAKE.filename) in str(e.value)
    assert files_in(cache) == []


def test_a_killed_download_leaves_no_partial_file_behind_and_the_file_is_readable_by_all(cache, fake_catalogue,
                                                                                       monkeypatch):
    # A download killed halfway left its hidden partial file (mkstemp's random name) for good, one more each time
    # (GBs each for the full-size models), and the file it wrote had mode 0600: unreadable in a shared cache.
    cache.mkdir()
    killed = cache / f".{FAKE.filename}.0123456789abcdef-999999999.partial"  # (a pid no process has)
    killed.write_bytes(PAYLOAD[:100])
    os.utime(killed, (time.time() - 3600, time.time() - 3600))
    # One written to a moment ago: by another machine sharing the cache, whose process this one cannot see.
    elsewhere = cache / f".{FAKE.filename}.fedcba9876543210-999999998.partial"
    elsewhere.write_bytes(PAYLOAD[:100])
    users = cache / f".{FAKE.filename}.notes"
    users.write_text("mine")
    serve(monkeypatch, PAYLOAD)
    umask = os.umask(0o022)
    try:
        target = downloader.download("fake-gen")
    finally:
        os.umask(umask)
    assert files_in(cache) == sorted([FAKE.filename, users.name, elsewhere.name])
    assert target.stat().st_mode & 0o777 == 0o644


def test_bundled_models_resolve_without_the_cache(cache):
    for artifact in hub.CATALOGUE:
        if artifact.bundled and (hub.BUNDLED_DIR / artifact.filename).exists():
            assert downloader.download(artifact.name) == hub.BUNDLED_DIR / artifact.filename
    assert not cache.exists()


def test_commands_that_read_model_files_take_catalogue_names(cache, tmp_path, capsys):
    # join, convert and import-official read their inputs as paths only: `join faces-64 faces-64-sr4` said
    # "faces-64: no such model file or folder", listing faces-64 among the catalogue names.
    assert main(["join", "faces-64", "faces-64-sr4", "--out", str(tmp_path / "joined"), "-q"]) == 0
    assert "holding phase1, hyperinverter" in capsys.readouterr().out
    assert main(["convert", "faces-64-sketch", str(tmp_path / "sketch.pt"), "-q"]) == 0
    assert (tmp_path / "sketch.pt").is_file()
    for argv, missing in [
        (["hyperinverter-ffhq-d128", "--generator", "faces-64"], "hyperinverter-ffhq-d128"),
        (["hyperstyle-ffhq", "--w-encoder", "hyperstyle-faces-w-encoder"], "hyperstyle-ffhq"),
        ([str(tmp_path / "sketch.pt"), "--generator", "stylegan2-ffhq-config-f"], "stylegan2-ffhq-config-f"),
        ([str(tmp_path / "sketch.pt"), "--w-encoder", "hyperstyle-faces-w-encoder"], "hyperstyle-faces-w-encoder"),
    ]:
        capsys.readouterr()
        assert main(["import-official", *argv, "--out", str(tmp_path / "imported")]) == 2
        assert f"error: {missing} is not downloaded: it has no direct download link: download" in \
            capsys.readouterr().err
    assert not (tmp_path / "imported").exists()
