#!/usr/bin/env python3
"""Writes a few small, valid GGUF files into the folder given, as seeds for fuzz_gguf: every metadata value type,
and tensors of plain and block types, with and without a general.alignment key."""
import struct
import sys
from pathlib import Path

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR_FORMAT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
                 U64: "<Q", I64: "<q", F64: "<d"}


def string(s: str) -> bytes:
    data = s.encode()
    return struct.pack("<Q", len(data)) + data


def scalar(kind: int, value) -> bytes:
    return string(value) if kind == STRING else struct.pack(SCALAR_FORMAT[kind], value)


def kv(key: str, kind: int, value, element: int = 0) -> bytes:
    out = string(key) + struct.pack("<I", kind)
    if kind == ARRAY:
        out += struct.pack("<IQ", element, len(value)) + b"".join(scalar(element, v) for v in value)
    else:
        out += scalar(kind, value)
    return out


def gguf(kvs: list, tensors: list, alignment: int = 32) -> bytes:
    """tensors: (name, shape, ggml type id, n_bytes)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    offset = 0
    for name, shape, type_id, n_bytes in tensors:
        out += string(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", type_id, offset)
        offset += -(-n_bytes // alignment) * alignment
    out += b"\0" * (-len(out) % alignment)
    for i, (_, _, _, n_bytes) in enumerate(tensors):
        out += bytes((i * 31 + j) % 251 for j in range(n_bytes)) + b"\0" * (-n_bytes % alignment)
    return out


def main() -> None:
    folder = Path(sys.argv[1])
    llama = [kv("general.architecture", STRING, "llama"), kv("llama.block_count", U32, 1),
             kv("llama.attention.head_count", U32, 2), kv("llama.rope.freq_base", F32, 10000.0)]
    every_type = [kv(f"t.{k}", k, v) for k, v in
                  [(U8, 1), (I8, -1), (U16, 2), (I16, -2), (U32, 3), (I32, -3), (F32, 0.5), (BOOL, True),
                   (STRING, "s"), (U64, 4), (I64, -4), (F64, 0.25)]]
    arrays = [kv("tokenizer.ggml.tokens", ARRAY, ["<unk>", "<s>", "a"], STRING),
              kv("tokenizer.ggml.scores", ARRAY, [0.0, -1.0, -2.0], F32),
              kv("tokenizer.ggml.token_type", ARRAY, [2, 3, 1], I32),
              kv("a.bool", ARRAY, [True, False], BOOL), kv("a.u64", ARRAY, [1, 2], U64)]
    tensors = [("token_embd.weight", [8, 3], 0, 96), ("norm", [8], 1, 16), ("q4", [32, 2], 2, 36),
               ("q4k", [256], 12, 144)]
    (folder / "seed-every-type.gguf").write_bytes(gguf(llama + every_type + arrays, tensors))
    (folder / "seed-align64.gguf").write_bytes(gguf([kv("general.alignment", U32, 64)] + llama, tensors, 64))
    (folder / "seed-no-tensors.gguf").write_bytes(gguf(arrays, []))
    (folder / "seed-4d.gguf").write_bytes(gguf(llama, [("x", [2, 2, 2, 2], 0, 64), ("y", [4, 1, 1], 30, 8)]))


if __name__ == "__main__":
    main()
