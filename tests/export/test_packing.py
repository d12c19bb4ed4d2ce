"""Tests of apprentice.export.packing: lossless 2/4/8-bit and base-3 ternary packing for every width and
length, golden bytes, and refusal of codes or buffers that do not fit."""

from __future__ import annotations

import pytest
import torch

from apprentice.errors import ApprenticeError
from apprentice.export import (
    pack,
    pack_ternary_base3,
    packed_length,
    unpack,
    unpack_ternary_base3,
)

LENGTHS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 64, 1001]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("count", LENGTHS)
def test_pack_roundtrip_every_width_and_length(bits: int, count: int) -> None:
    n = 2 ** (bits - 1) - 1
    gen = torch.Generator().manual_seed(bits * 1000 + count)
    codes = torch.randint(-n, n + 1, (count,), generator=gen)
    if count >= 2:  # make sure both extremes are exercised
        codes[0], codes[-1] = -n, n
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == -(-count // (8 // bits)) == packed_length(count, f"{bits}bit")
    out = unpack(packed, bits, count)
    assert out.dtype == torch.int8
    assert torch.equal(out.long(), codes.long())


@pytest.mark.parametrize("count", LENGTHS)
def test_base3_roundtrip_every_length(count: int) -> None:
    gen = torch.Generator().manual_seed(count)
    codes = torch.randint(-1, 2, (count,), generator=gen)
    packed = pack_ternary_base3(codes)
    assert packed.dtype == torch.uint8
    assert packed.numel() == -(-count // 5) == packed_length(count, "base3")
    assert torch.equal(unpack_ternary_base3(packed, count).long(), codes)


def test_base3_all_243_byte_values_roundtrip() -> None:
    # Every combination of five trits is one byte value 0..242 and back.
    trits = torch.cartesian_prod(*[torch.arange(3)] * 5).flip(1) - 1  # row i = digits of i
    packed = pack_ternary_base3(trits)
    assert packed.long().tolist() == list(range(243))
    assert torch.equal(unpack_ternary_base3(packed, 243 * 5).view(-1, 5).long(), trits)


def test_pack_golden_bytes() -> None:
    # Little-endian within the byte: value i at bits [i*k, (i+1)*k), stored as code + n.
    assert pack(torch.tensor([-1, 0, 1, 1, 0]), 2).tolist() == [0 | 1 << 2 | 2 << 4 | 2 << 6, 1]
    assert pack(torch.tensor([-7, 7, 0]), 4).tolist() == [0 | 14 << 4, 7]
    assert pack(torch.tensor([-127, 127]), 8).tolist() == [0, 254]
    assert pack_ternary_base3(torch.tensor([1, 1, 1, 1, 1, -1])).tolist() == [242, 0]


def test_pack_accepts_multidim_and_float_codes() -> None:
    codes = torch.randint(-7, 8, (4, 3, 3, 3)).float()
    assert torch.equal(unpack(pack(codes, 4), 4, codes.numel()).view_as(codes).float(), codes)


@pytest.mark.parametrize(
    "call",
    [
        lambda: pack(torch.tensor([2]), 2),
        lambda: pack(torch.tensor([-8]), 4),
        lambda: pack(torch.tensor([0.5]), 8),
        lambda: pack(torch.tensor([1]), 3),
        lambda: pack_ternary_base3(torch.tensor([2])),
        lambda: unpack(torch.tensor([255], dtype=torch.uint8), 2, 4),  # stored 3 > 2n
        lambda: unpack(torch.tensor([255], dtype=torch.uint8), 4, 2),  # stored 15 > 14
        lambda: unpack(torch.tensor([1, 2], dtype=torch.uint8), 4, 2),  # wrong length
        lambda: unpack(torch.tensor([1], dtype=torch.int32), 8, 1),  # wrong dtype
        lambda: unpack_ternary_base3(torch.tensor([243], dtype=torch.uint8), 5),
        lambda: packed_length(3, "3bit"),
    ],
)
def test_pack_rejects_bad_input(call) -> None:
    with pytest.raises(ApprenticeError):
        call()
