"""flowlib._integrity: the one checksum of a file's tensors, and the checks made on reading.

The checksum must see every change of a tensor (a flipped byte, a dtype, a shape, a key moved)
and nothing else (dict order, strides, plain values), so writers and readers agree on it
wherever the file was saved.
"""

from __future__ import annotations

import io

import pytest
import torch

from flowlib._checks import FlowInputError
from flowlib._integrity import (
    CHECKSUM_KEY,
    IntegrityError,
    file_sha256,
    nonfinite_tensors,
    require_finite,
    state_checksum,
    verify_checksum,
    with_checksum,
)


def _blob() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"format": "x/1", "step": 7, "state_dict": {"a.weight": torch.randn(3, 4, generator=g),
                                                       "a.bias": torch.randn(3, generator=g),
                                                       "initialised": torch.tensor(True)},
            "rng": [torch.arange(5, dtype=torch.uint8), (torch.tensor(2.5, dtype=torch.float64),)]}


def test_checksum_is_deterministic_and_ignores_order_strides_and_plain_values():
    blob = _blob()
    reordered = {k: blob[k] for k in reversed(list(blob))}
    reordered["state_dict"] = {k: v for k, v in reversed(list(blob["state_dict"].items()))}
    reordered["step"] = 8
    reordered["state_dict"]["a.weight"] = blob["state_dict"]["a.weight"].t().contiguous().t()
    assert not reordered["state_dict"]["a.weight"].is_contiguous()
    assert state_checksum(blob) == state_checksum(reordered)
    assert state_checksum(blob) == state_checksum(with_checksum(blob))  # the checksum skips itself


def test_checksum_survives_a_save_and_load():
    blob = with_checksum(_blob())
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    verify_checksum(loaded, "run.pt", "load", "delete it")


@pytest.mark.parametrize("change", ["byte", "dtype", "shape", "key", "move", "drop"])
def test_every_change_of_a_tensor_changes_the_checksum(change):
    blob = _blob()
    before = state_checksum(blob)
    sd = blob["state_dict"]
    if change == "byte":  # one bit of one float
        sd["a.bias"].view(torch.int32)[1] ^= 1
    elif change == "dtype":
        sd["a.bias"] = sd["a.bias"].view(torch.int32)
    elif change == "shape":
        sd["a.weight"] = sd["a.weight"].reshape(4, 3)
    elif change == "key":
        sd["a.weight2"] = sd.pop("a.weight")
    elif change == "move":  # same key, same bytes, another place in the tree
        blob["other"] = blob.pop("state_dict")
    else:
        blob["rng"].pop()
    assert state_checksum(blob) != before


def test_verify_names_the_file_and_what_to_do():
    blob = with_checksum(_blob())
    blob["state_dict"]["a.bias"][0] += 1e-6
    with pytest.raises(IntegrityError, match=r"load_pretrained: the tensors of glow\.pt do not"
                       r" match.*re-install"):
        verify_checksum(blob, "glow.pt", "load_pretrained", "re-install flowlib")
    assert issubclass(IntegrityError, FlowInputError)


def test_a_file_without_checksum_passes_unless_required():
    blob = _blob()
    verify_checksum(blob, "old.pt", "load", "x")
    with pytest.raises(IntegrityError, match=r"old\.pt records no checksum"):
        verify_checksum(blob, "old.pt", "load", "x", required=True)
    blob[CHECKSUM_KEY] = 12345  # not a checksum at all
    with pytest.raises(IntegrityError):
        verify_checksum(blob, "old.pt", "load", "x")


def test_non_finite_weights_are_named():
    blob = _blob()
    assert nonfinite_tensors(blob) == []
    blob["state_dict"]["a.weight"][1, 2] = float("nan")
    blob["rng"][1] = (torch.tensor(float("-inf"), dtype=torch.float64),)
    assert nonfinite_tensors(blob) == ["rng/1/0", "state_dict/a.weight"]
    with pytest.raises(IntegrityError, match=r"nice\.pt holds non-finite values .* "
                       r"rng/1/0, state_dict/a\.weight"):
        require_finite(blob, "nice.pt", "load_pretrained", "re-install flowlib")


def test_file_sha256(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
