"""Bit packing of integer weight codes: 2, 4 or 8 bits per value, and base-3 ternary (5 per byte).

Codes are integers in [−n, n] (n = 1 for ternary and 2 bits, 2^(k−1) − 1 for k bits) and are
stored as the unsigned ``code + n``. Every function is vectorised and lossless for any length,
including lengths that do not fill the last byte.
"""

from __future__ import annotations

import torch
from torch import Tensor

from apprentice.errors import ApprenticeError

#: Packing name -> bits per stored value (base3 stores 5 values per byte).
PACKINGS: dict[str, int] = {"2bit": 2, "4bit": 4, "8bit": 8, "base3": 0}

_POW3 = (1, 3, 9, 27, 81)  # 3**4 * 2 + ... = 242 <= 255, so five trits fit in one byte


def _levels(bits: int) -> int:
    if bits not in (2, 4, 8):
        raise ApprenticeError(f"pack bits must be 2, 4 or 8, got {bits!r}")
    return 2 ** (bits - 1) - 1


def _check_codes(codes: Tensor, n: int) -> Tensor:
    """Flatten `codes` to int32 after checking they are integers in [-n, n]."""
    flat = codes.detach().reshape(-1).cpu()
    if flat.is_floating_point():
        if not bool(torch.isfinite(flat).all()) or not torch.equal(flat, flat.round()):
            raise ApprenticeError("codes to pack must be integer values (got fractional or non-finite)")
    elif flat.dtype == torch.bool or flat.is_complex():
        raise ApprenticeError(f"codes to pack must be integers, got dtype {flat.dtype}")
    if flat.numel() and (int(flat.min()) < -n or int(flat.max()) > n):
        raise ApprenticeError(
            f"codes to pack must lie in [-{n}, {n}], got [{int(flat.min())}, {int(flat.max())}]"
        )
    return flat.to(torch.int32)


def packed_length(count: int, packing: str) -> int:
    """Bytes needed to store `count` values with `packing` ("2bit", "4bit", "8bit", "base3").

    Example:
        >>> packed_length(11, "base3"), packed_length(11, "2bit"), packed_length(11, "4bit")
        (3, 3, 6)
    """
    bits = PACKINGS.get(packing)
    if bits is None:
        raise ApprenticeError(f"unknown packing {packing!r}; choose from {sorted(PACKINGS)}")
    per_byte = 5 if bits == 0 else 8 // bits
    return -(-count // per_byte)


def pack(codes: Tensor, bits: int) -> Tensor:
    """Pack integer codes in [-n, n] (n = 2**(bits-1) - 1) into a dense uint8 tensor.

    Each code is stored unsigned as ``code + n`` in `bits` bits; value i of a byte occupies bits
    ``[i*bits, (i+1)*bits)`` (little-endian within the byte). The tail is padded with zero bits.
    Ternary codes (n = 1) pack at ``bits=2``.

    Args:
        codes: any-shape integer (or integer-valued float) tensor; it is flattened row-major.
        bits: 2, 4 or 8.

    Returns:
        1-D uint8 tensor of ``ceil(numel / (8 // bits))`` bytes.

    Example:
        >>> pack(torch.tensor([-1, 0, 1, 1, 0]), 2).tolist()   # 0 | 1<<2 | 2<<4 | 2<<6, then 1
        [164, 1]
        >>> unpack(pack(torch.tensor([-7, 3, 7]), 4), 4, 3).tolist()
        [-7, 3, 7]
    """
    n = _levels(bits)
    flat = _check_codes(codes, n) + n
    per_byte = 8 // bits
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % per_byte)])
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    return (flat.view(-1, per_byte) << shifts).sum(dim=1).to(torch.uint8)


def _check_packed(packed: Tensor, count: int, packing: str) -> Tensor:
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ApprenticeError("packed codes must be a 1-D uint8 tensor")
    if not isinstance(count, int) or count < 0:
        raise ApprenticeError(f"count of packed values must be a non-negative int, got {count!r}")
    expected = packed_length(count, packing)
    if packed.numel() != expected:
        raise ApprenticeError(
            f"{packing} packing of {count} values needs {expected} bytes, got {packed.numel()}"
        )
    return packed.to(torch.int32)


def unpack(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of `pack`: the first `count` codes as a 1-D int8 tensor in [-n, n].

    Raises:
        ApprenticeError: wrong length or dtype, or a stored value above 2n (corrupt data).
    """
    n = _levels(bits)
    data = _check_packed(packed, count, f"{bits}bit")
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    values = ((data[:, None] >> shifts) & (2**bits - 1)).reshape(-1)[:count]
    if count and int(values.max()) > 2 * n:
        raise ApprenticeError(f"corrupt {bits}-bit packed codes: stored value above {2 * n}")
    return (values - n).to(torch.int8)


def pack_ternary_base3(codes: Tensor) -> Tensor:
    """Pack ternary codes {-1, 0, +1} five to a byte: ``byte = sum_i (code_i + 1) * 3**i``.

    1.6 bits per weight instead of 2 (log2(3) = 1.585 is the bound). The tail is padded with
    trit 0 (i.e. code -1), which `unpack_ternary_base3` drops via `count`.

    Example:
        >>> pack_ternary_base3(torch.tensor([1, 0, -1, -1, 1, 0])).tolist()  # 2+1*3+0+0+2*81, 1
        [167, 1]
        >>> unpack_ternary_base3(pack_ternary_base3(torch.tensor([1, 0, -1])), 3).tolist()
        [1, 0, -1]
    """
    flat = _check_codes(codes, 1) + 1
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 5)])
    return (flat.view(-1, 5) * torch.tensor(_POW3, dtype=torch.int32)).sum(dim=1).to(torch.uint8)


def unpack_ternary_base3(packed: Tensor, count: int) -> Tensor:
    """Inverse of `pack_ternary_base3`: the first `count` codes as a 1-D int8 tensor."""
    data = _check_packed(packed, count, "base3")
    if data.numel() and int(data.max()) > 242:
        raise ApprenticeError("corrupt base-3 packed codes: byte above 242 (3**5 - 1)")
    trits = (data[:, None] // torch.tensor(_POW3, dtype=torch.int32)) % 3
    return (trits.reshape(-1)[:count] - 1).to(torch.int8)


def pack_codes(codes: Tensor, packing: str) -> Tensor:
    """Pack codes with a named packing ("base3", "2bit", "4bit", "8bit"; see `PACKINGS`)."""
    return pack_ternary_base3(codes) if packing == "base3" else pack(codes, PACKINGS[packing])


def unpack_codes(packed: Tensor, packing: str, count: int) -> Tensor:
    """Inverse of `pack_codes`: the first ``count`` codes, as int8 in [−n, n]."""
    if packing == "base3":
        return unpack_ternary_base3(packed, count)
    return unpack(packed, PACKINGS[packing], count)
