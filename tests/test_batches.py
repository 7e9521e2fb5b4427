"""Image batches: which images one generate, label or classify job handles."""

from __future__ import annotations

import pytest

from ldmprobe.core.batches import ImageBatch, batch_paths, image_batches, image_entries, table_order

KEYS = [("lemon", 1), ("car", 2), ("owl", 3), ("boat", 4), ("house", 5)]


def test_batches_are_consecutive_rows_the_last_one_shorter():
    batches = image_batches(KEYS, 2)
    assert [batch.index for batch in batches] == [0, 1, 2]
    assert [batch.keys for batch in batches] == [
        (("lemon", 1), ("car", 2)),
        (("owl", 3), ("boat", 4)),
        (("house", 5),),
    ]
    assert [batch.keys for batch in image_batches(KEYS, 1)] == [(key,) for key in KEYS]
    assert image_batches(KEYS, 16) == [ImageBatch(0, tuple(KEYS))]


def test_appended_rows_leave_existing_batches_alone():
    before = image_batches(KEYS[:4], 2)
    after = image_batches([*KEYS, ("mug", 6)], 2)
    assert after[: len(before)] == before


def test_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        image_batches(KEYS, 0)


def test_batch_paths_fill_the_image_wildcards_and_keep_the_others():
    batch = image_batches(KEYS, 2)[1]
    paths = batch_paths("results/labels/{task}/{prompt_id}/{seed}.npz", batch)
    assert paths == ["results/labels/{task}/owl/3.npz", "results/labels/{task}/boat/4.npz"]


def test_image_entries_pair_each_image_with_its_paths():
    fields = [{"seed": 1}, {"seed": 2}]
    entries = image_entries(fields, image=["a.png", "b.png"], meta=("a.json", "b.json"))
    assert entries == [
        {"seed": 1, "image": "a.png", "meta": "a.json"},
        {"seed": 2, "image": "b.png", "meta": "b.json"},
    ]
    # A per-image rule's output is one path, not a list.
    assert image_entries([{"seed": 1}], image="a.png") == [{"seed": 1, "image": "a.png"}]
    with pytest.raises(ValueError, match="1 'image' paths for 2 images"):
        image_entries(fields, image="a.png")


def test_table_order_is_the_files_then_their_rows(tmp_path):
    from ldmprobe.core.prompts import load_prompts

    (tmp_path / "b.csv").write_text("prompt_id,prompt,seed\nzebra,z,1\napple,a,2\n")
    (tmp_path / "a.csv").write_text("prompt_id,prompt,seed\nmango,m,3\n")
    files = [{"path": "b.csv"}, {"path": "a.csv"}]
    table = load_prompts({"files": files}, tmp_path)
    assert list(table.prompt_id) == ["apple", "mango", "zebra"]  # sorted by key
    assert table_order(table, files) == [("zebra", 1), ("apple", 2), ("mango", 3)]
