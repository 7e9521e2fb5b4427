import numpy as np
import pytest

from ldmprobe.core.io import atomic_directory, atomic_file
from ldmprobe.generation.storage import (
    ActivationWriter,
    StoreError,
    create_store,
    dequantise,
    open_store,
    quantise,
    read_chunk,
    write_chunk,
)

CODECS = [
    {"name": "none"},
    {"name": "zstd", "level": 3},
    {"name": "blosc-zstd", "level": 3},
    {"name": "blosc-lz4", "level": 5},
]


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_per_step_chunks(tmp_path, codec):
    values = np.random.default_rng(0).standard_normal((3, 16, 8)).astype(np.float16)
    group = create_store(tmp_path / "s.zarr", {"unet/cond/up3.2": (values.shape, "float16")}, codec)
    for step in range(3):
        group["unet/cond/up3.2"][step] = values[step]
    reopened = open_store(tmp_path / "s.zarr")
    for step in range(3):
        chunk = read_chunk(reopened, "unet/cond/up3.2", step, tmp_path / "s.zarr")
        assert np.array_equal(chunk, values[step])
    assert (tmp_path / "s.zarr" / "unet/cond/up3.2" / "c" / "2").exists()


@pytest.mark.parametrize(
    ("scheme", "scale_shape"), [("int8-token", (3, 64, 1)), ("int8-channel", (3, 1, 32))]
)
def test_8bit_values_are_dequantised_on_read(tmp_path, scheme, scale_shape):
    """8-bit values and their float16 scales beside them; read_chunk returns float16 within
    half a quantisation step of the original, per token or per channel, outliers included."""
    generator = np.random.default_rng(1)
    values = generator.standard_normal((3, 64, 32)).astype(np.float16)
    values[:, :, 5] *= 40  # an outlier channel, as in trained SD activations
    values[:, 7, :] *= 40  # and an outlier token
    values[1, 9, :] = 0  # an all-zero token
    path = tmp_path / "s.zarr"
    codec = {"name": "blosc-zstd", "level": 3, "quantise": scheme}
    group = create_store(path, {"a": (values.shape, "float16"), "b": ((3, 2), "float32")}, codec)
    for step in range(3):
        write_chunk(group, "a", step, values[step])
    assert group["a"].dtype == np.int8 and group["b"].dtype == np.float32
    assert group["scales/a"].dtype == np.float16
    assert group["scales/a"].shape == scale_shape
    reopened = open_store(path)
    axis = -1 if scheme == "int8-token" else 0
    for step in range(3):
        chunk = read_chunk(reopened, "a", step, path)
        assert chunk.dtype == np.float16
        original = values[step].astype(np.float32)
        half_step = np.abs(original).max(axis=axis, keepdims=True) / 127 / 2
        error = np.abs(chunk.astype(np.float32) - original)
        # Half a step of 8 bits, plus float16's own rounding of the dequantised value.
        assert np.all(error <= half_step + np.abs(original) * 2**-10 + 1e-6)
    assert np.array_equal(read_chunk(reopened, "a", 1, path)[9], np.zeros(32, np.float16))


@pytest.mark.parametrize(
    ("scheme", "layout", "stored_shape"),
    [("int8-token", "token-major", (3, 48, 24)), ("int8-channel", "channel-major", (3, 24, 48))],
)
def test_8bit_layout_round_trips_exactly(tmp_path, scheme, layout, stored_shape):
    """int8-channel stores its values channel-major ([steps, channels, tokens]: transposed),
    int8-token token-major, each recorded in the array's ``layout``; either way read_chunk
    returns exactly quantise -> dequantise of the written [tokens, channels] values."""
    generator = np.random.default_rng(2)
    values = generator.standard_normal((3, 48, 24)).astype(np.float16)
    values[:, :, 3] *= 30  # channels of different magnitudes tell the layouts apart
    path = tmp_path / "s.zarr"
    codec = {"name": "blosc-zstd", "level": 3, "quantise": scheme}
    group = create_store(path, {"a": (values.shape, "float16")}, codec)
    for step in range(3):
        write_chunk(group, "a", step, values[step])
    reopened = open_store(path)
    assert reopened["a"].attrs["layout"] == layout
    assert reopened["a"].shape == stored_shape and reopened["a"].chunks == (1, *stored_shape[1:])
    for step in range(3):
        expected_values, expected_scale = quantise(values[step], scheme)
        stored = reopened["a"][step]
        # The stored int8 chunk is the quantised values, transposed for channel-major.
        assert np.array_equal(
            stored, expected_values.T if layout == "channel-major" else expected_values
        )
        chunk = read_chunk(reopened, "a", step, path)
        assert chunk.shape == (48, 24) and chunk.flags.c_contiguous
        assert np.array_equal(chunk, dequantise(expected_values, expected_scale))


def test_8bit_stores_without_layout_read_token_major(tmp_path):
    """A store written before the ``layout`` attribute (token-major int8-channel) still reads;
    an unknown layout is refused rather than misread."""
    values = np.random.default_rng(3).standard_normal((2, 8, 4)).astype(np.float16)
    path = tmp_path / "s.zarr"
    codec = {"name": "zstd", "level": 1, "quantise": "int8-channel"}
    group = create_store(path, {"a": (values.shape, "float16")}, codec)
    import zarr

    old = zarr.open_group(str(tmp_path / "old.zarr"), mode="w")
    old.create_array(
        "a",
        shape=values.shape,
        chunks=(1, 8, 4),
        dtype="int8",
        attributes={"quantise": "int8-channel"},
    )
    old.create_array("scales/a", shape=(2, 1, 4), chunks=(1, 1, 4), dtype="float16")
    for step in range(2):
        write_chunk(group, "a", step, values[step])
        quantised, scale = quantise(values[step], "int8-channel")
        old["a"][step] = quantised
        old["scales/a"][step] = scale
    for store in (path, tmp_path / "old.zarr"):
        chunk = read_chunk(open_store(store), "a", 1, store)
        assert np.array_equal(chunk, dequantise(*quantise(values[1], "int8-channel")))
    old["a"].attrs["layout"] = "diagonal"
    with pytest.raises(StoreError, match=r"unknown layout 'diagonal'"):
        read_chunk(open_store(tmp_path / "old.zarr"), "a", 1, tmp_path / "old.zarr")


def test_unstored_steps_are_not_written_and_say_so(tmp_path):
    """generation.store: the writer drops the steps not stored, and reading one names the key."""
    path = tmp_path / "s.zarr"
    values = np.ones((4, 4, 2), np.float16)
    group = create_store(path, {"a": (values.shape, "float16")}, {"name": "zstd"}, {"a": [1, 3]})
    writer = ActivationWriter(group, max_pending=2, stored_steps={"a": [1, 3]})
    for step in range(4):
        writer.put("a", step, values[step])
    writer.close()
    assert sorted(p.name for p in (path / "a" / "c").iterdir()) == ["1", "3"]
    reopened = open_store(path)
    assert np.array_equal(read_chunk(reopened, "a", 3, path), values[3])
    with pytest.raises(
        StoreError, match=r"does not hold step 2 .*stores steps \[1, 3\].*generation.store"
    ):
        read_chunk(reopened, "a", 2, path)


def make_store(path):
    values = np.ones((2, 4, 4), np.float16)
    group = create_store(path, {"a": (values.shape, "float16")}, {"name": "zstd", "level": 1})
    group["a"][0] = values[0]
    group["a"][1] = values[1]
    return path


def test_missing_store_names_path_and_rule(tmp_path):
    with pytest.raises(StoreError, match=r"nope.zarr.*a 'generate' job"):
        open_store(tmp_path / "nope.zarr")


def test_truncated_chunk_is_reported(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    chunk = next((store / "a" / "c" / "1").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.write_bytes(chunk.read_bytes()[:5])
    with pytest.raises(StoreError, match=r"s.zarr is corrupt: cannot read .a. step 1"):
        read_chunk(open_store(store), "a", 1, store)


def test_deleted_chunk_is_reported(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    import shutil

    shutil.rmtree(store / "a" / "c" / "0")
    with pytest.raises(StoreError, match=r"chunk 0 of 'a' is missing"):
        read_chunk(open_store(store), "a", 0, store)


def test_unknown_array_is_reported(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match=r"no array 'b'"):
        read_chunk(open_store(store), "b", 0, store)


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    with atomic_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_compressed_tables_are_the_same_bytes_every_time(tmp_path):
    import time

    import pandas as pd

    from ldmprobe.core.io import write_csv
    from ldmprobe.core.provenance import VERSION_KEY, package_version

    frame = pd.DataFrame({"layer": ["up3.2", "mid.0"], "dice": [0.5, 1 / 3]})
    write_csv(tmp_path / "a.csv.gz", frame)
    time.sleep(1.1)  # gzip's header time stamp has a resolution of one second
    write_csv(tmp_path / "b.csv.gz", frame)
    assert (tmp_path / "a.csv.gz").read_bytes() == (tmp_path / "b.csv.gz").read_bytes()
    assert (tmp_path / "a.csv.gz").read_bytes()[:2] == b"\x1f\x8b"
    # The table, then the version column write_csv stamps on every table it writes.
    read = pd.read_csv(tmp_path / "a.csv.gz", dtype={VERSION_KEY: str})
    assert list(read.columns) == [*frame.columns, VERSION_KEY]
    assert set(read[VERSION_KEY]) == {package_version()}
    pd.testing.assert_frame_equal(read.drop(columns=VERSION_KEY), frame)
