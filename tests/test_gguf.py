"""GGUF reader/writer tests. Oracle: the PyPI ``gguf`` package (llama.cpp's gguf-py) writes and
reads the same files; block layouts are checked by dequantizing with the formulas of
ggml-quants.c (shared/reference/quantized-formats.md) against gguf-py's dequantize."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from pycohere.errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedFormatError
from pycohere.io.gguf import BLOCK_DTYPES, GGML_TYPES, GGUFReader, GGUFWriter, ValueType, ggml_type

gguf = pytest.importorskip("gguf", reason="the gguf package (oracle) is not installed: pip install gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf import quants  # noqa: E402

RNG = np.random.default_rng(1234)


# --- a file written by gguf-py ---------------------------------------------------------------
METADATA = {
    "test.u8": (np.uint8(200), ValueType.UINT8),
    "test.i8": (np.int8(-100), ValueType.INT8),
    "test.u16": (np.uint16(60000), ValueType.UINT16),
    "test.i16": (np.int16(-30000), ValueType.INT16),
    "test.u32": (np.uint32(4_000_000_000), ValueType.UINT32),
    "test.i32": (np.int32(-2_000_000_000), ValueType.INT32),
    "test.u64": (np.uint64(2**63 + 5), ValueType.UINT64),
    "test.i64": (np.int64(-(2**62)), ValueType.INT64),
    "test.f32": (np.float32(0.0625), ValueType.FLOAT32),
    "test.f64": (np.float64(1e-300), ValueType.FLOAT64),
    "test.bool": (True, ValueType.BOOL),
    "test.str": ("Grüße 🦙\nline two", ValueType.STRING),
}


def _write_oracle_file(path, alignment=None):
    writer = gguf.GGUFWriter(str(path), arch="command-r")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, (value, vtype) in METADATA.items():
        writer.add_key_value(key, value, gguf.GGUFValueType(vtype))
    writer.add_array("test.strings", ["a", "", "Ġhello", "日本"])
    writer.add_array("test.ints", [1, -2, 3])
    writer.add_array("test.floats", [0.5, -1.25])
    tensors = {
        "f32": RNG.standard_normal((3, 5)).astype(np.float32),
        "f16": RNG.standard_normal((2, 3, 4)).astype(np.float16),
        "vec": RNG.standard_normal(7).astype(np.float32),
    }
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    bf16_bits = (RNG.standard_normal((4, 6)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    writer.add_tensor("bf16", bf16_bits, raw_dtype=QT.BF16)
    tensors["bf16"] = bf16_bits
    dense = RNG.standard_normal((4, 64)).astype(np.float32)
    for qtype in (QT.Q8_0, QT.Q4_0, QT.Q4_1):
        packed = quants.quantize(dense, qtype)
        writer.add_tensor(qtype.name.lower(), packed, raw_shape=packed.shape, raw_dtype=qtype)
        tensors[qtype.name.lower()] = packed
    for qtype, type_size in ((QT.Q4_K, 144), (QT.Q6_K, 210)):
        raw = RNG.integers(0, 256, size=(3, 2 * type_size), dtype=np.uint8)  # 3 rows of 2 blocks (512 values)
        _set_small_f16(raw, qtype)
        writer.add_tensor(qtype.name.lower(), raw, raw_shape=raw.shape, raw_dtype=qtype)
        tensors[qtype.name.lower()] = raw
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def _set_small_f16(raw: np.ndarray, qtype) -> None:
    """Random bytes are fine for a layout test, but keep the f16 scales finite and small."""
    blocks = raw.reshape(raw.shape[0], -1, 144 if qtype == QT.Q4_K else 210)
    offsets = (0, 2) if qtype == QT.Q4_K else (208,)
    for off in offsets:
        values = RNG.uniform(-0.1, 0.1, size=blocks.shape[:2]).astype(np.float16)
        blocks[..., off:off + 2] = values.view(np.uint8).reshape(*blocks.shape[:2], 2)


@pytest.fixture(scope="module")
def oracle_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "oracle.gguf"
    tensors = _write_oracle_file(path)
    return path, tensors


def test_metadata_matches_gguf_py(oracle_file):
    path, _ = oracle_file
    ours = GGUFReader(path)
    theirs = gguf.GGUFReader(str(path))
    assert ours.version == 3
    assert ours.alignment == 32
    assert set(ours.metadata) == {k for k in theirs.fields if not k.startswith("GGUF.")}
    for key, (value, vtype) in METADATA.items():
        assert ours.metadata_types[key] == vtype == theirs.fields[key].types[0]
        assert ours.metadata[key] == theirs.fields[key].contents() == value
    assert ours.metadata["general.architecture"] == "command-r"
    assert ours.metadata["test.strings"] == ["a", "", "Ġhello", "日本"] == theirs.fields["test.strings"].contents()
    assert ours.metadata_types["test.strings"] == (ValueType.ARRAY, ValueType.STRING)
    np.testing.assert_array_equal(ours.metadata["test.ints"], theirs.fields["test.ints"].contents())
    np.testing.assert_array_equal(ours.metadata["test.floats"], [0.5, -1.25])


def test_tensor_table_and_data_match_gguf_py(oracle_file):
    path, written = oracle_file
    ours = GGUFReader(path)
    theirs = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    assert list(ours.tensors) == list(theirs)
    for name, info in ours.tensors.items():
        ref = theirs[name]
        assert info.shape == tuple(int(d) for d in ref.shape)  # GGUF order, ne0 first
        assert info.type.id == int(ref.tensor_type)
        assert ours.data_offset + info.offset == ref.data_offset
        assert info.n_bytes == ref.n_bytes
        assert ours.raw_bytes(name).tobytes() == np.ascontiguousarray(ref.data).tobytes()
    np.testing.assert_array_equal(ours.tensor_data("f32"), written["f32"])
    assert ours.tensors["f32"].shape == (5, 3) and ours.tensors["f32"].numpy_shape == (3, 5)
    np.testing.assert_array_equal(ours.tensor_data("f16"), written["f16"])
    assert ours.tensor_data("f16").dtype == np.float16
    np.testing.assert_array_equal(ours.tensor_data("vec"), written["vec"])
    np.testing.assert_array_equal(ours.tensor_data("bf16"), written["bf16"])
    assert ours.tensor_data("bf16").dtype == np.uint16
    # quantized: rows x blocks x bytes-per-block
    assert ours.tensor_data("q8_0").shape == (4, 2, 34)
    assert ours.tensor_data("q4_k").shape == (3, 2, 144)
    assert ours.tensor_data("q6_k").shape == (3, 2, 210)


def test_views_are_zero_copy_and_read_only(oracle_file):
    path, _ = oracle_file
    reader = GGUFReader(path)
    view = reader.tensor_data("f32")
    assert np.shares_memory(view, reader._data)
    assert isinstance(reader._data, np.memmap)
    assert not view.flags.writeable
    with pytest.raises(ValueError):
        view[0, 0] = 1.0


def test_q8_0_and_q4_blocks_dequantize_like_gguf_py(oracle_file):
    path, written = oracle_file
    reader = GGUFReader(path)
    q8 = reader.tensor_blocks("q8_0")  # d * q (ggml-quants.c dequantize_row_q8_0)
    ours = (q8["d"].astype(np.float32)[..., None] * q8["qs"]).reshape(4, 64)
    np.testing.assert_array_equal(ours, quants.dequantize(written["q8_0"], QT.Q8_0))
    q4 = reader.tensor_blocks("q4_0")  # byte j: element j low nibble, element j+16 high; d * (n - 8)
    codes = np.concatenate([q4["qs"] & 0x0F, q4["qs"] >> 4], axis=-1).astype(np.float32) - 8
    np.testing.assert_array_equal((q4["d"].astype(np.float32)[..., None] * codes).reshape(4, 64),
                                  quants.dequantize(written["q4_0"], QT.Q4_0))
    q41 = reader.tensor_blocks("q4_1")  # d * n + m
    codes = np.concatenate([q41["qs"] & 0x0F, q41["qs"] >> 4], axis=-1).astype(np.float32)
    ours = q41["d"].astype(np.float32)[..., None] * codes + q41["m"].astype(np.float32)[..., None]
    np.testing.assert_allclose(ours.reshape(4, 64), quants.dequantize(written["q4_1"], QT.Q4_1), rtol=0, atol=1e-6)


def test_q6_k_block_fields_dequantize_like_gguf_py(oracle_file):
    path, written = oracle_file
    b = GGUFReader(path).tensor_blocks("q6_k")  # (3 rows, 2 blocks)
    out = np.empty(b.shape + (256,), np.float32)
    d = b["d"].astype(np.float32)
    for h in range(2):  # two halves of 128 values (reference: quantized-formats.md, Q6_K)
        ql, qh, sc = b["ql"][..., 64 * h:], b["qh"][..., 32 * h:], b["scales"][..., 8 * h:].astype(np.float32)
        for l in range(32):
            i = l // 16
            quads = (
                ((ql[..., l] & 15) | ((qh[..., l] >> 0) & 3) << 4, sc[..., i + 0]),
                ((ql[..., l + 32] & 15) | ((qh[..., l] >> 2) & 3) << 4, sc[..., i + 2]),
                ((ql[..., l] >> 4) | ((qh[..., l] >> 4) & 3) << 4, sc[..., i + 4]),
                ((ql[..., l + 32] >> 4) | ((qh[..., l] >> 6) & 3) << 4, sc[..., i + 6]),
            )
            for k, (q, s) in enumerate(quads):
                out[..., 128 * h + l + 32 * k] = d * s * (q.astype(np.float32) - 32)
    np.testing.assert_allclose(out.reshape(3, 512), quants.dequantize(written["q6_k"], QT.Q6_K), rtol=1e-6, atol=1e-7)


def test_custom_alignment(tmp_path):
    path = tmp_path / "aligned.gguf"
    written = _write_oracle_file(path, alignment=64)
    reader = GGUFReader(path)
    assert reader.alignment == 64
    assert reader.data_offset % 64 == 0
    assert all(info.offset % 64 == 0 for info in reader.tensors.values())
    np.testing.assert_array_equal(reader.tensor_data("f16"), written["f16"])


def test_type_tables_agree_with_gguf_py():
    for type_id, info in GGML_TYPES.items():
        assert gguf.GGML_QUANT_SIZES[QT(type_id)] == (info.block_size, info.type_size), info.name
        assert QT(type_id).name == info.name
    for name, dtype in BLOCK_DTYPES.items():
        assert dtype.itemsize == gguf.GGML_QUANT_SIZES[QT[name]][1]
    assert ggml_type("q4_k").id == 12 and ggml_type(14).name == "Q6_K"
    with pytest.raises(UnsupportedFormatError, match="unknown ggml tensor type"):
        ggml_type(99)


# --- our writer, read back by gguf-py ----------------------------------------------------------
def test_writer_round_trips_through_gguf_py(tmp_path):
    path = tmp_path / "ours.gguf"
    w = GGUFWriter(path)
    w.add("general.architecture", "command-r")
    w.add("command-r.block_count", 40, ValueType.UINT32)
    w.add("command-r.logit_scale", 0.0625)
    w.add("tokenizer.ggml.add_bos_token", True)
    w.add("tokenizer.ggml.tokens", ["<PAD>", "Ġa", "日本"])
    w.add("tokenizer.ggml.token_type", np.array([3, 1, 1], np.int32))
    a = RNG.standard_normal((3, 8)).astype(np.float32)
    h = RNG.standard_normal((2, 16)).astype(np.float16)
    w.add_tensor("a", a)
    w.add_tensor("h", h)
    w.write()
    theirs = gguf.GGUFReader(str(path))
    assert theirs.fields["general.architecture"].contents() == "command-r"
    assert theirs.fields["command-r.block_count"].types == [gguf.GGUFValueType.UINT32]
    assert theirs.fields["command-r.block_count"].contents() == 40
    assert theirs.fields["command-r.logit_scale"].contents() == 0.0625
    assert theirs.fields["tokenizer.ggml.add_bos_token"].contents() is True
    assert theirs.fields["tokenizer.ggml.tokens"].contents() == ["<PAD>", "Ġa", "日本"]
    assert theirs.fields["tokenizer.ggml.token_type"].contents() == [3, 1, 1]
    by_name = {t.name: t for t in theirs.tensors}
    np.testing.assert_array_equal(by_name["a"].data, a)
    np.testing.assert_array_equal(by_name["h"].data, h)
    assert [int(d) for d in by_name["a"].shape] == [8, 3]
    ours = GGUFReader(path)
    np.testing.assert_array_equal(ours.tensor_data("h"), h)


# --- bad files ------------------------------------------------------------------------------------
def _small_file(tmp_path):
    path = tmp_path / "small.gguf"
    w = GGUFWriter(path)
    w.add("general.architecture", "command-r")
    w.add("tokenizer.ggml.tokens", ["a", "b"])
    w.add_tensor("blk.0.attn_q.weight", np.ones((2, 32), np.float32))
    w.write()
    return path, path.read_bytes()


def test_truncated_files_raise_corrupt(tmp_path):
    path, data = _small_file(tmp_path)
    for cut in (0, 3, 6, 15, 30, 60, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(CorruptCheckpointError, match="truncated|not a GGUF|impossible"):
            GGUFReader(bad)


def test_truncated_tensor_data_names_the_tensor(tmp_path):
    path, data = _small_file(tmp_path)
    path.write_bytes(data[:-4])
    with pytest.raises(CorruptCheckpointError, match="blk.0.attn_q.weight.*truncated"):
        GGUFReader(path)


def test_bad_magic_version_and_missing_file(tmp_path):
    path, data = _small_file(tmp_path)
    path.write_bytes(b"GGML" + data[4:])
    with pytest.raises(CorruptCheckpointError, match="not a GGUF file"):
        GGUFReader(path)
    path.write_bytes(data[:4] + struct.pack("<I", 1) + data[8:])
    with pytest.raises(UnsupportedFormatError, match="version 1"):
        GGUFReader(path)
    path.write_bytes(data[:4] + struct.pack(">I", 3) + data[8:])
    with pytest.raises(UnsupportedFormatError, match="big-endian"):
        GGUFReader(path)
    with pytest.raises(CheckpointNotFoundError):
        GGUFReader(tmp_path / "missing.gguf")


def _tensor_type_position(data: bytes, name: str) -> int:
    at = data.index(name.encode()) + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    return at + 4 + 8 * n_dims


def test_unknown_tensor_type_names_tensor_and_type(tmp_path):
    path, data = _small_file(tmp_path)
    pos = _tensor_type_position(data, "blk.0.attn_q.weight")
    path.write_bytes(data[:pos] + struct.pack("<I", 77) + data[pos + 4:])
    with pytest.raises(UnsupportedFormatError, match=r"blk\.0\.attn_q\.weight.*type id 77"):
        GGUFReader(path)


def test_misaligned_offset_and_bad_block_row(tmp_path):
    path, data = _small_file(tmp_path)
    pos = _tensor_type_position(data, "blk.0.attn_q.weight")
    path.write_bytes(data[:pos + 4] + struct.pack("<Q", 4) + data[pos + 12:])
    with pytest.raises(CorruptCheckpointError, match="not a multiple of the alignment"):
        GGUFReader(path)
    # Q8_0 (type 8) needs rows that are a multiple of 32 values; make ne0 = 2... by writing a
    # tensor whose first dim is 2 and retyping it
    path2 = tmp_path / "rows.gguf"
    w = GGUFWriter(path2)
    w.add_tensor("t", np.ones((32, 2), np.float32))
    w.write()
    raw = path2.read_bytes()
    pos = _tensor_type_position(raw, "t")
    path2.write_bytes(raw[:pos] + struct.pack("<I", 8) + raw[pos + 4:])
    with pytest.raises(CorruptCheckpointError, match="not a multiple of its block size 32"):
        GGUFReader(path2)


def test_garbled_counts_and_strings(tmp_path):
    path, data = _small_file(tmp_path)
    path.write_bytes(data[:8] + struct.pack("<QQ", 2**40, 2**40) + data[24:])
    with pytest.raises(CorruptCheckpointError, match="impossible"):
        GGUFReader(path)
    key = b"general.architecture"
    at = data.index(key)
    path.write_bytes(data[:at] + b"\xff\xfe" + data[at + 2:])
    with pytest.raises(CorruptCheckpointError, match="not valid UTF-8"):
        GGUFReader(path)


def test_alignment_must_be_an_integer_not_a_bool(tmp_path):
    # True is an int to Python: read as an alignment of 1 it would shift the data section by up to
    # 31 bytes and every tensor would silently read the wrong bytes (gguf.cpp requires a UINT32).
    for value, vtype in ((True, ValueType.BOOL), (48, ValueType.UINT32), ("32", ValueType.STRING)):
        path = tmp_path / "aligned.gguf"
        w = GGUFWriter(path)
        w.add("general.alignment", value, vtype)
        w.add_tensor("t", np.arange(8, dtype=np.float32))
        w.write()
        with pytest.raises(CorruptCheckpointError, match="general.alignment must be a positive power of two"):
            GGUFReader(path)


def test_element_and_byte_counts_are_exact_python_ints(tmp_path):
    # Command R+'s embedding, 256000 x 12288 = 3_145_728_000 values (> 2**31), 6_291_456_000 bytes
    # in F16 (> 2**32): declared in a header-only file, the reader must compute both exactly and
    # report the truncation in bytes (nothing may wrap around in 32 or 64 bits).
    path = tmp_path / "big.gguf"
    w = GGUFWriter(path)
    w.add_tensor_info("token_embd.weight", (256000, 12288), "F16")
    w.open()
    w.abort()
    with pytest.raises(CorruptCheckpointError, match=r"'token_embd.weight' \(F16, shape \[12288, 256000\]\) needs "
                                                     r"bytes up to offset 62914\d{5} "):
        GGUFReader(path)
    assert w.file_size - 6_291_456_000 == path.stat().st_size
