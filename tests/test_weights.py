"""The ImageNet weights download path, exercised against a loopback HTTP server."""

import hashlib
import http.server
import socket
import threading
from functools import partial

import pytest
import torch
import torchvision

from pneumo_fastai.errors import WeightsError
from pneumo_fastai.weights import (
    WEIGHTS_URL_ENV,
    body_state_dict,
    download_state_dict,
    hub_cache_file,
    imagenet_state_dict,
    read_state_dict,
)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A random ResNet34 state dict served on 127.0.0.1 under torchvision's naming scheme (for
    the module: the tests only download from it)."""
    folder = tmp_path_factory.mktemp("www")
    blob = folder / "tmp.pth"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet34().state_dict(), blob)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    good = folder / f"resnet34-{digest[:8]}.pth"
    blob.rename(good)
    (folder / "resnet34-00000000.pth").write_bytes(good.read_bytes())  # hash prefix mismatch
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_Quiet, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", good
    server.shutdown()


@pytest.fixture(autouse=True)
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch_home" / "hub"))
    yield
    torch.hub.set_dir(old)


def test_download_fetches_checks_the_hash_and_fills_the_hub_cache(served, monkeypatch):
    base, good = served
    url = f"{base}/{good.name}"
    monkeypatch.setenv(WEIGHTS_URL_ENV, url)
    state = imagenet_state_dict(progress=False)
    expected = torch.load(good, weights_only=True)
    assert torch.equal(state["layer4.2.conv2.weight"], expected["layer4.2.conv2.weight"])
    assert hub_cache_file(url).is_file()


def test_a_cached_file_is_used_without_the_network(served, monkeypatch):
    base, good = served
    url = f"{base}/{good.name}"
    download_state_dict(url, progress=False)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    # same file name behind an address where nothing listens: only the cache can answer
    state = download_state_dict(f"http://127.0.0.1:{port}/{good.name}", progress=False)
    assert "conv1.weight" in state


def test_a_hash_mismatch_is_refused(served):
    base, _ = served
    with pytest.raises(WeightsError):
        download_state_dict(f"{base}/resnet34-00000000.pth", progress=False)
    assert not hub_cache_file(f"{base}/resnet34-00000000.pth").exists()


def test_offline_error_names_all_three_ways_out():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(WeightsError) as e:
        download_state_dict(f"http://127.0.0.1:{port}/resnet34-b627a593.pth", progress=False)
    message = str(e.value)
    assert "--weights PATH" in message and "hub cache" in message and "--no-pretrained" in message


def test_local_file_errors_are_clear(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a loadable"):
        read_state_dict(junk)


def test_body_keys_follow_fastai_body_order():
    keys = body_state_dict(torchvision.models.resnet34().state_dict())
    assert "0.weight" in keys and "1.running_mean" in keys and "7.2.conv2.weight" in keys
    assert not any(k.startswith(("fc", "8")) for k in keys)
