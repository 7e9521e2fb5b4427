"""The benchmarks run (on tiny sizes; timings are not checked), and what they rely on."""

from __future__ import annotations

import numpy as np
import pytest

from ldmprobe.storage import ActivationWriter, create_store


@pytest.mark.parametrize("max_pending", [0, 2])
def test_writer_writes_every_chunk_synchronously_or_from_its_thread(tmp_path, max_pending):
    values = np.random.default_rng(0).standard_normal((5, 6, 4)).astype(np.float16)
    group = create_store(tmp_path / "s.zarr", {"a": (values.shape, "float16")}, {"name": "zstd"})
    writer = ActivationWriter(group, max_pending)
    for step in range(5):
        writer.put("a", step, values[step])
        if max_pending == 0:
            # Synchronous: the chunk is in the store as soon as put returns.
            assert np.array_equal(group["a"][step], values[step])
    writer.close()
    assert np.array_equal(group["a"][:], values)


@pytest.mark.parametrize("max_pending", [0, 2])
def test_writer_reports_a_failed_write(tmp_path, max_pending):
    group = create_store(tmp_path / "s.zarr", {"a": ((2, 3), "float16")}, {"name": "none"})
    writer = ActivationWriter(group, max_pending)
    with pytest.raises(KeyError, match="nope"):
        writer.put("nope", 0, np.zeros(3, np.float16))
        writer.close()
