"""The whitelisting NVIDIA pickle reader: exact round trips, and nothing from the file ever runs."""

import builtins
import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from hyperinverter.convert.nvidia_pickle import PickledNetwork, UnsafePickleError, load_nvidia_pickle
from hyperinverter.errors import CheckpointError
from hyperinverter.io.checkpoints import load_weights_only
from nvidia_pickle_writer import (
    FakePersistent,
    build_network,
    fake_nvidia_modules,
    write_nvidia_pickle,
    write_pti_checkpoint,
)

# --- a tiny network with everything state_dict() has to deal with -------------------------------------


class _Layer(torch.nn.Module):
    def __init__(self, out_f: int, in_f: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_f, in_f))
        self.bias = torch.nn.Parameter(torch.randn(out_f))
        f = torch.tensor([1.0, 3, 3, 1])
        self.register_buffer("resample_filter", torch.outer(f, f) / 64)
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.register_buffer("unused", None)


class _Mapping(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc0 = _Layer(4, 3)
        self.fc1 = _Layer(4, 4)
        self.register_buffer("w_avg", torch.arange(10.0)[3:7])  # a view with a storage offset


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.const = torch.nn.Parameter(torch.randn(3, 5).t())  # non-contiguous
        self.noise_strength = torch.nn.Parameter(torch.tensor(0.25))  # 0-dim
        self.register_buffer("noise_const", torch.randn(4, 4).half())
        self.register_buffer("counter", torch.tensor([7], dtype=torch.int64))
        self.conv1 = _Layer(2, 4)


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mapping = _Mapping()
        self.synthesis = torch.nn.Module()
        self.synthesis.b4 = _Block()
        self.synthesis.b8 = _Block()


INIT_KWARGS = {
    "z_dim": 3,
    "c_dim": 0,
    "mapping_kwargs": {"num_layers": 2, "lr_multiplier": np.float64(0.01), "w_avg_beta": 0.995},
    "synthesis_kwargs": {"channel_base": 256, "conv_clamp": None, "resample_filter": [1, 3, 3, 1]},
}


@pytest.fixture(scope="module")
def net() -> _Net:
    torch.manual_seed(0)
    return _Net().eval().requires_grad_(False)


def _spec(module: torch.nn.Module, class_name: str = "Generator", init_kwargs: dict | None = None) -> tuple:
    buffers = {name for name, _ in module.named_buffers()}
    return (class_name, INIT_KWARGS if init_kwargs is None else init_kwargs, module.state_dict(), buffers)


def _non_persistent(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    persistent = set(module.state_dict())
    return {name: b for name, b in module.named_buffers() if name not in persistent}


def _assert_same_state(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(loaded) == list(expected)  # same keys, same order
    for key, value in expected.items():
        got = loaded[key]
        assert type(got) is torch.Tensor, key  # plain tensors, not Parameters
        assert not got.requires_grad and got.device.type == "cpu"
        assert got.dtype == value.dtype and got.shape == value.shape, key
        assert torch.equal(got, value), key


# --- round trips --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_round_trip_is_exact(tmp_path, net, protocol):
    path = tmp_path / "network-snapshot.pkl"
    assert _non_persistent(net)  # the fixture really has non-persistent buffers
    write_nvidia_pickle(
        path,
        {"G": _spec(net), "D": _spec(net.mapping, "Discriminator", {"c_dim": 0}), "G_ema": _spec(net)},
        extra={"progress": {"cur_nimg": np.int64(1000)}},
        non_persistent_buffers={"G_ema": _non_persistent(net)},
        protocol=protocol,
    )
    nets = load_nvidia_pickle(path)

    assert set(nets) == {"G", "D", "G_ema"}
    g = nets["G_ema"]
    assert isinstance(g, PickledNetwork) and g.class_name == "Generator"
    _assert_same_state(g.state_dict, net.state_dict())
    _assert_same_state(nets["G"].state_dict, net.state_dict())
    _assert_same_state(nets["D"].state_dict, net.mapping.state_dict())
    assert "synthesis.b4.conv1.scratch" not in g.state_dict
    assert g.state_dict["synthesis.b4.const"].stride() == net.synthesis.b4.const.stride()

    assert g.init_kwargs == {
        "z_dim": 3,
        "c_dim": 0,
        "mapping_kwargs": {"num_layers": 2, "lr_multiplier": 0.01, "w_avg_beta": 0.995},
        "synthesis_kwargs": {"channel_base": 256, "conv_clamp": None, "resample_filter": [1, 3, 3, 1]},
    }
    assert type(g.init_kwargs) is dict and type(g.init_kwargs["mapping_kwargs"]) is dict
    assert type(g.init_kwargs["mapping_kwargs"]["lr_multiplier"]) is float
    assert nets["D"].class_name == "Discriminator" and nets["D"].init_kwargs == {"c_dim": 0}


def test_only_g_ema_and_persistent_augment_pipe(tmp_path, net):
    path = tmp_path / "g_ema_only.pkl"
    augment = ("AugmentPipe", {"xflip": 1}, {"p": torch.zeros([])}, set())
    write_nvidia_pickle(path, {"G_ema": _spec(net), "augment_pipe": augment})
    nets = load_nvidia_pickle(path)
    assert set(nets) == {"G_ema"}
    _assert_same_state(nets["G_ema"].state_dict, net.state_dict())


def test_tensor_with_python_attributes_uses_rebuild_from_type(tmp_path, net):
    tagged = torch.arange(6.0).reshape(2, 3)
    tagged.note = "python attribute"  # makes torch pickle it through _rebuild_from_type_v2
    assert b"_rebuild_from_type_v2" in pickle.dumps(tagged)
    path = tmp_path / "tagged.pkl"
    write_nvidia_pickle(path, {"G_ema": _spec(net, init_kwargs={"probe": tagged})})
    probe = load_nvidia_pickle(path)["G_ema"].init_kwargs["probe"]
    assert type(probe) is torch.Tensor and torch.equal(probe, tagged) and not hasattr(probe, "note")


# --- nothing from the file runs ----------------------------------------------------------------------


class _Payload:
    """Would create ``marker`` if unpickled by the stock pickle module."""

    def __init__(self, kind: str, marker) -> None:
        self.kind, self.marker = kind, str(marker)

    def __reduce__(self):
        if self.kind == "os.system":
            return (os.system, (f"touch {self.marker}",))
        if self.kind == "eval":
            return (builtins.eval, (f"open({self.marker!r}, 'w').close()",))
        return (subprocess.call, (["touch", self.marker],))


PAYLOAD_GLOBALS = {
    "os.system": f"{os.system.__module__}.system",  # posix.system on Linux
    "eval": "builtins.eval",
    "subprocess": "subprocess.call",
}


@pytest.mark.parametrize("kind", sorted(PAYLOAD_GLOBALS))
@pytest.mark.parametrize("where", ["top", "init_kwargs"])
def test_malicious_globals_are_refused_and_never_run(tmp_path, net, kind, where):
    marker = tmp_path / "pwned"
    payload = _Payload(kind, marker)
    path = tmp_path / "evil.pkl"
    if where == "top":
        with open(path, "wb") as f:
            pickle.dump({"G_ema": payload}, f)
    else:
        write_nvidia_pickle(path, {"G_ema": _spec(net, init_kwargs={"z_dim": 3, "evil": payload})})
    expected = f"evil.pkl: refusing to load '{PAYLOAD_GLOBALS[kind]}': not an allowed global"  # <file>: <cause>
    with pytest.raises(UnsafePickleError, match=expected) as caught:
        load_nvidia_pickle(path)
    assert caught.value.source == str(path)
    assert not marker.exists()
    # the payload is live: stock unpickling would have run it
    pickle.loads(pickle.dumps(payload))
    assert marker.exists()


def test_malicious_storage_record_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    blob = io.BytesIO()
    torch.save(_Payload("os.system", marker), blob, _use_new_zipfile_serialization=False)

    class StorageGadget:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (blob.getvalue(),))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"G_ema": StorageGadget()}, f)
    with pytest.raises(UnsafePickleError, match="system"):
        load_nvidia_pickle(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_module_src_is_never_executed(tmp_path, net):
    marker = tmp_path / "pwned"
    source = f"open({str(marker)!r}, 'w').write('module_src ran')\nclass Generator: pass\n"
    path = tmp_path / "network.pkl"
    write_nvidia_pickle(path, {"G_ema": _spec(net)}, module_src=source)
    nets = load_nvidia_pickle(path)
    assert not marker.exists()
    assert nets["G_ema"].module_src == source  # kept as text only
    _assert_same_state(nets["G_ema"].state_dict, net.state_dict())


class _FromType:
    """``_rebuild_from_type_v2(func, new_type, args, state)`` with arbitrary (already whitelisted) parts."""

    def __init__(self, func, new_type, args) -> None:
        self.func, self.new_type, self.args = func, new_type, args

    def __reduce__(self):
        return (torch._tensor._rebuild_from_type_v2, (self.func, self.new_type, self.args, {}))


@pytest.mark.parametrize(
    "gadget, message",
    [
        (_FromType(collections.OrderedDict, torch.Tensor, ()), "inner function"),
        (_FromType(torch.storage._load_from_bytes, torch.Tensor, (b"",)), "inner function"),
        (_FromType(torch.Tensor, torch.Tensor, ([1.0],)), "inner function"),
        (_FromType(torch._utils._rebuild_tensor_v2, collections.OrderedDict, ()), "only torch.Tensor"),
    ],
)
def test_rebuild_from_type_only_wraps_tensor_rebuilds(tmp_path, net, gadget, message):
    path = tmp_path / "gadget.pkl"
    write_nvidia_pickle(path, {"G_ema": _spec(net, init_kwargs={"x": gadget})})
    with pytest.raises(UnsafePickleError, match=f"_rebuild_from_type_v2.*{message}"):
        load_nvidia_pickle(path)


class _TensorGadget:
    """A tensor record with chosen geometry, and optionally a pickle BUILD state applied to it."""

    def __init__(self, size, stride, offset=0, build_state=None) -> None:
        self.size, self.stride, self.offset, self.build_state = size, stride, offset, build_state

    def __reduce__(self):
        storage = torch.zeros(4).storage()
        args = (storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args, self.build_state)


@pytest.mark.parametrize(
    "gadget, error, message",
    [
        (_TensorGadget((1000,), (1,)), CheckpointError, "reaches past its storage"),
        (_TensorGadget((2,), (1,), offset=3), CheckpointError, "reaches past its storage"),
        (_TensorGadget((2,), (-1,), offset=3), CheckpointError, "invalid tensor geometry"),
        # views that repeat the storage's values: a few bytes that declared a weight of 10**10 values (40 GB)
        (_TensorGadget((10**5, 10**5), (0, 0)), CheckpointError, "more values than the 4 its storage holds"),
        (_TensorGadget((3, 2), (1, 1)), CheckpointError, "more values than the 4 its storage holds"),
        # BUILD on a tensor would call Tensor.__setstate__ -> set_(), an unchecked re-view of memory
        (_TensorGadget((2,), (1,), build_state=(torch.zeros(1), 0, (10**6,), (1,))), UnsafePickleError,
         "state"),
    ],
)
def test_tensor_records_are_bounds_checked(tmp_path, net, gadget, error, message):
    path = tmp_path / "geometry.pkl"
    write_nvidia_pickle(path, {"G_ema": _spec(net, init_kwargs={"x": gadget})})
    with pytest.raises(error, match=message):
        load_nvidia_pickle(path)


class _NumpyGadget:
    """A numpy record that asks for memory its file does not hold (pickle names only whitelisted globals)."""

    def __init__(self, reduce) -> None:
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce



@pytest.mark.parametrize(
    "reduce, message",
    [
        # 60 bytes that asked for a 10 GB array (held by its init_kwargs, then turned into a list of ints)
        ((np.ndarray.__reduce__(np.zeros(0))[0], (np.ndarray, (10**10,), b"b")), "numpy array record"),
        # an object array whose list is short: numpy 2.4's __setstate__ crashed the process (segmentation fault)
        ((np.ndarray.__reduce__(np.zeros(0))[0], (np.ndarray, (0,), b"b"),
          (1, (10,), np.dtype(object), False, [])), "not a plain numeric array"),
        # a scalar without its bytes: numpy fills a zero value of the dtype's size (2 GB)
        ((np.float64(0).__reduce__()[0], (np.dtype("V2000000000"),)),
         "numpy scalar record"),
    ],
)
def test_numpy_records_never_allocate_what_the_file_does_not_hold(tmp_path, net, reduce, message):
    path = tmp_path / "numpy.pkl"
    write_nvidia_pickle(path, {"G_ema": _spec(net, init_kwargs={"z_dim": 3, "x": _NumpyGadget(reduce)})})
    with pytest.raises(CheckpointError, match=f"numpy.pkl: .*{message}"):
        load_nvidia_pickle(path)


def test_numpy_values_in_init_kwargs_still_load(tmp_path, net):
    path = tmp_path / "numpy.pkl"
    kwargs = {"z_dim": 3, "scale": np.float32(0.5), "flags": np.bool_(True), "table": np.arange(6.0).reshape(2, 3)}
    write_nvidia_pickle(path, {"G_ema": _spec(net, init_kwargs=kwargs)})
    got = load_nvidia_pickle(path)["G_ema"].init_kwargs
    assert got == {"z_dim": 3, "scale": 0.5, "flags": True, "table": [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]}


@pytest.mark.parametrize("where", ["modules", "init_kwargs"])
def test_networks_nested_too_deeply_are_refused(tmp_path, net, where):
    path = tmp_path / "deep.pkl"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # (the test's pickler recurses; the reader must not)
    try:
        _write_deep(path, net, where)
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError, match="deep.pkl: 'G_ema' nests its modules or arguments too deeply"):
        load_nvidia_pickle(path)


def _write_deep(path, net, where: str) -> None:
    if where == "modules":  # 3,000 modules, each the only child of the one before
        node = build_network(*_spec(net))
        for _ in range(3000):
            node = FakePersistent("Module", {"_parameters": {}, "_buffers": {}, "_modules": {"m": node}}, "")
        with fake_nvidia_modules(), open(path, "wb") as f:
            pickle.dump({"G_ema": node}, f)
    else:
        nested: list = []
        for _ in range(3000):
            nested = [nested]
        write_nvidia_pickle(path, {"G_ema": _spec(net, init_kwargs={"z_dim": 3, "x": nested})})


def test_persistent_ids_are_refused_in_plain_pickles(tmp_path):
    class IdPickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", "FloatStorage", "0", "cpu", 1) if obj == "ref" else None

    with open(tmp_path / "pid.pkl", "wb") as f:
        IdPickler(f).dump({"G_ema": "ref"})
    with pytest.raises(UnsafePickleError, match="persistent id"):
        load_nvidia_pickle(tmp_path / "pid.pkl")


def test_unsupported_persistence_version(tmp_path, net):
    node = build_network(*_spec(net))
    node.meta["version"] = 5
    with fake_nvidia_modules(), open(tmp_path / "v5.pkl", "wb") as f:
        pickle.dump({"G_ema": node}, f)
    with pytest.raises(CheckpointError, match="persistence version 5"):
        load_nvidia_pickle(tmp_path / "v5.pkl")


# --- wrong files ---------------------------------------------------------------------------------------


def test_missing_g_ema_names_the_keys(tmp_path, net):
    path = tmp_path / "no_g_ema.pkl"
    write_nvidia_pickle(path, {"G": _spec(net), "D": _spec(net.mapping, "Discriminator", {})})
    expected = r"no_g_ema\.pkl: has no 'G_ema'.*'D'.*'G'.*'augment_pipe'.*'training_set_kwargs'"
    with pytest.raises(ValueError, match=expected):
        load_nvidia_pickle(path)


def test_non_pickle_and_broken_files(tmp_path, net):
    (tmp_path / "notes.pkl").write_text("not a pickle at all\n")
    with pytest.raises(ValueError, match=r"notes\.pkl: is not a pickle file"):
        load_nvidia_pickle(tmp_path / "notes.pkl")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pkl: is empty"):
        load_nvidia_pickle(tmp_path / "empty.pkl")
    with open(tmp_path / "list.pkl", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match=r"list\.pkl: holds a list, not a dict"):
        load_nvidia_pickle(tmp_path / "list.pkl")
    write_nvidia_pickle(tmp_path / "full.pkl", {"G_ema": _spec(net)})
    data = (tmp_path / "full.pkl").read_bytes()
    (tmp_path / "truncated.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pkl: is not a readable NVIDIA network pickle"):
        load_nvidia_pickle(tmp_path / "truncated.pkl")
    with pytest.raises(FileNotFoundError):
        load_nvidia_pickle(tmp_path / "missing.pkl")


# --- PTI zip archives -------------------------------------------------------------------------------


def test_pti_zip_archive_loads_the_same_state(tmp_path, net):
    path = tmp_path / "model_run_image.pt"
    write_pti_checkpoint(path, _spec(net))
    assert zipfile.is_zipfile(path)
    nets = load_nvidia_pickle(path)
    assert set(nets) == {"G_ema"}
    assert nets["G_ema"].class_name == "Generator"
    _assert_same_state(nets["G_ema"].state_dict, net.state_dict())
    assert nets["G_ema"].init_kwargs["mapping_kwargs"]["lr_multiplier"] == 0.01


def test_zip_archive_holding_a_dict_of_networks(tmp_path, net):
    path = tmp_path / "nets.pt"
    with fake_nvidia_modules():
        torch.save({"G_ema": build_network(*_spec(net)), "D": build_network(*_spec(net.mapping))}, path)
    nets = load_nvidia_pickle(path)
    assert set(nets) == {"G_ema", "D"}
    _assert_same_state(nets["D"].state_dict, net.mapping.state_dict())


def test_zip_archive_errors(tmp_path, net):
    marker = tmp_path / "pwned"
    torch.save({"G_ema": _Payload("os.system", marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match="system"):
        load_nvidia_pickle(tmp_path / "evil.pt")
    assert not marker.exists()

    torch.save({"g_ema": net.state_dict(), "latent_avg": torch.zeros(4)}, tmp_path / "rosinality.pt")
    with pytest.raises(ValueError, match=r"has no 'G_ema'.*'g_ema', 'latent_avg'"):
        load_nvidia_pickle(tmp_path / "rosinality.pt")

    # drop one tensor record from a valid archive
    write_pti_checkpoint(tmp_path / "full.pt", _spec(net))
    with zipfile.ZipFile(tmp_path / "full.pt") as src, zipfile.ZipFile(tmp_path / "broken.pt", "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data/0"):
                dst.writestr(info, src.read(info))
    with pytest.raises(CheckpointError, match=r"storage record '.*data/0' is missing"):
        load_nvidia_pickle(tmp_path / "broken.pt")


def _zip_bomb(source, target, record_suffix: str) -> None:
    """``source`` with the record ending in ``record_suffix`` padded by 20 MB of zeros and deflated (20 kB)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(record_suffix):
                dst.writestr(zipfile.ZipInfo(info.filename), data + bytes(20 << 20), zipfile.ZIP_DEFLATED)
            else:
                dst.writestr(info, data)


@pytest.mark.parametrize("record", ["/data/0", "/data.pkl"])
def test_zip_records_larger_than_the_file_are_refused_before_they_are_read(tmp_path, net, record):
    # A 3 MB archive made of one such record was decompressed whole, 3 GB, before its size was compared
    # (6 GB resident); torch.load does the same with the .pt files read through load_weights_only.
    write_pti_checkpoint(tmp_path / "full.pt", _spec(net))
    _zip_bomb(tmp_path / "full.pt", tmp_path / "bomb.pt", record)
    assert (tmp_path / "bomb.pt").stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match="bomb.pt: its records declare [0-9,]+ bytes, far more than the whole "
                       "file holds"):
        load_nvidia_pickle(tmp_path / "bomb.pt")
    torch.save({"g_ema": net.state_dict()}, tmp_path / "plain.pt")
    assert set(load_weights_only(tmp_path / "plain.pt")["g_ema"]) == set(net.state_dict())
    _zip_bomb(tmp_path / "plain.pt", tmp_path / "bomb2.pt", record)
    with pytest.raises(CheckpointError, match="bomb2.pt: its records declare .* far more than the whole file"):
        load_weights_only(tmp_path / "bomb2.pt")
    # A bomb split over many records, each under the file's size, is counted whole (it passed record by record);
    # TorchScript's deflated code is not a bomb (the FID Inception weights are such an archive).
    from hyperinverter.io.checkpoints import check_zip_records

    with zipfile.ZipFile(tmp_path / "split.pt", "w") as archive:
        for i in range(40):
            archive.writestr(f"split/data/{i}", bytes(1 << 20), zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(tmp_path / "split.pt") as archive, pytest.raises(CheckpointError, match="far more"):
        check_zip_records(archive, tmp_path / "split.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    with zipfile.ZipFile(tmp_path / "scripted.pt") as archive:
        assert {i.compress_type for i in archive.infolist()} > {zipfile.ZIP_STORED}  # (it deflates its code)
        check_zip_records(archive, tmp_path / "scripted.pt")
