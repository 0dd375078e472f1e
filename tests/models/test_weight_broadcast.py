"""Flat-buffer packing of the weight broadcast, and one real gloo broadcast between threads."""

import threading

import pytest
import torch

from rlhf.models.weight_broadcast import (
    Manifest,
    TensorSlot,
    WeightReceiver,
    WeightSender,
    manifest_of,
    new_group_id,
    node_address,
    pack,
    unpack,
)


def _weights():
    embed = torch.arange(12, dtype=torch.float32).view(4, 3)
    return {
        "embed.weight": embed,
        "norm.weight": torch.tensor([0.5, 1.5, 2.5], dtype=torch.bfloat16),
        "layer.weight": torch.arange(6, dtype=torch.float32).view(2, 3) * -1,
        "lm_head.weight": embed,  # tied to the embedding: the same tensor
        "step": torch.tensor(7, dtype=torch.int64),
    }


def test_manifest_has_one_buffer_per_dtype_and_tied_weights_once():
    manifest = manifest_of(_weights().items())
    assert [s.name for s in manifest.slots] == [
        "embed.weight",
        "norm.weight",
        "layer.weight",
        "step",
    ]
    assert manifest.sizes == {"float32": 12 + 6, "bfloat16": 3, "int64": 1}
    assert manifest.slots[2] == TensorSlot("layer.weight", "float32", (2, 3), 12)
    assert manifest.slots[3].shape == ()
    assert manifest.nbytes == 18 * 4 + 3 * 2 + 8


def test_pack_then_unpack_gives_back_every_tensor():
    weights = _weights()
    manifest = manifest_of(weights.items())
    buffers = pack(weights, manifest)
    assert [b.dtype for b in buffers] == [torch.float32, torch.bfloat16, torch.int64]
    assert buffers[0][12:].tolist() == [0.0, -1.0, -2.0, -3.0, -4.0, -5.0]
    out = dict(unpack(manifest, buffers))
    assert list(out) == ["embed.weight", "norm.weight", "layer.weight", "step"]
    for name, tensor in out.items():
        assert tensor.dtype == weights[name].dtype and tensor.shape == weights[name].shape
        assert torch.equal(tensor, weights[name]), name


def test_pack_names_a_weight_that_changed():
    weights = _weights()
    manifest = manifest_of(weights.items())
    with pytest.raises(ValueError, match="'layer.weight' is torch.float32 \\(3, 2\\)"):
        pack({**weights, "layer.weight": torch.zeros(3, 2)}, manifest)
    with pytest.raises(KeyError, match="'norm.weight'"):
        pack({k: v for k, v in weights.items() if k != "norm.weight"}, manifest)


def test_gloo_broadcast_reaches_every_receiver():
    """Rank 0 sends twice; two receivers (threads here, engines in a job) get both versions.

    The store and every rank's gloo pairs listen on the node's address alone: loopback outside
    Ray (this test alone) or in a local run; Ray's node address in a suite whose Ray is up.
    """
    import psutil

    def listening() -> set:
        connections = psutil.Process().net_connections("inet")
        return {c.laddr for c in connections if c.status == psutil.CONN_LISTEN}

    others = listening()  # e.g. Ray's own, when an earlier test started Ray in this process
    weights = _weights()
    manifest = manifest_of(weights.items())
    sender = WeightSender("gloo", timeout_s=30)
    group_id = new_group_id(1)
    received: dict[int, list] = {1: [], 2: []}

    def receive(rank: int) -> None:
        receiver = WeightReceiver()
        receiver.join((sender.host, sender.port), group_id, rank, 3, "gloo", manifest, timeout_s=30)
        for _ in range(2):
            received[rank].append({k: v.clone() for k, v in receiver.receive()})

    threads = [threading.Thread(target=receive, args=(rank,)) for rank in (1, 2)]
    for thread in threads:
        thread.start()
    sender.join(group_id, 3, manifest)
    ours = listening() - others
    assert sender.host == node_address()
    assert (sender.host, sender.port) in ours
    assert len(ours) >= 4  # the store, and the pairs of 3 ranks
    assert {address.ip for address in ours} == {sender.host}
    assert sender.send(weights) == manifest.nbytes
    second = {k: v + 1 for k, v in weights.items()}
    sender.send(second)
    for thread in threads:
        thread.join(timeout=30)
    for rank in (1, 2):
        first, last = received[rank]
        assert torch.equal(first["layer.weight"], weights["layer.weight"])
        assert torch.equal(last["norm.weight"], second["norm.weight"])
        assert torch.equal(last["step"], torch.tensor(8))


def test_manifest_is_plain_data():
    """It travels to every engine worker (pickled by Ray and vLLM)."""
    import pickle

    manifest = manifest_of(_weights().items())
    assert pickle.loads(pickle.dumps(manifest)) == manifest
    assert isinstance(manifest, Manifest)


def test_group_ids_hold_a_fresh_secret():
    first, second = new_group_id(3), new_group_id(3)
    assert first != second and first.endswith("-3") and second.startswith("rlhf-weights-")
    assert len(first.split("-")[2]) == 32  # 128 bits, hex
