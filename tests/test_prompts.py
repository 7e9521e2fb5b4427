import random
from pathlib import Path

import pandas as pd
import pytest

from ldmprobe.core.prompts import SEED_MAX, PromptTableError, assign_split, load_prompts

REFERENCE = Path(__file__).resolve().parents[1] / "config" / "reference-prompts"
HEADER = b"prompt_id,prompt,seed\n"
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def spec(*files, **settings):
    """A prompts config section; ``files`` are paths or (path, split) pairs."""
    entries = [
        {"path": str(f)} if not isinstance(f, tuple) else {"path": str(f[0]), "split": f[1]}
        for f in files
    ]
    return {
        "files": entries,
        "encoding": "utf-8",
        "columns": {"id": "prompt_id", "prompt": "prompt", "seed": "seed", "split": "split"},
        "split_fractions": FRACTIONS,
        "val_fraction_of_train": 0.0,
        "split_salt": "",
    } | settings


def write(tmp_path, data: bytes, name="table.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def load_bytes(tmp_path, data: bytes, **settings) -> pd.DataFrame:
    return load_prompts(spec(write(tmp_path, data), **settings))


# (case, file bytes, line the message must name or None, text the message must contain)
BAD_TABLES = [
    ("empty file", b"", None, "empty"),
    ("blank lines only", b"\n\n", None, "no header"),
    ("header only", HEADER, None, "no data rows"),
    ("missing column", b"prompt_id,text,seed\na,x,1\n", None, "prompts.columns.prompt"),
    ("empty prompt", HEADER + b"a,x,1\nb,,2\n", 3, "prompt is empty"),
    ("blank prompt", HEADER + b'a,x,1\nb,"  \t ",2\n', 3, "prompt is empty"),
    ("duplicate id and seed", HEADER + b"a,x,1\na,y,1\n", 3, "line 2"),
    ("duplicate via leading zero", HEADER + b"a,x,7\na,y,007\n", 3, "line 2"),
    ("float seed", HEADER + b"a,x,12.5\n", 2, "whole number"),
    ("word seed", HEADER + b"a,x,abc\n", 2, "whole number"),
    ("exponent seed", HEADER + b"a,x,1e3\n", 2, "whole number"),
    ("empty seed", HEADER + b"a,x,\n", 2, "whole number"),
    ("plus sign seed", HEADER + b"a,x,+5\n", 2, "whole number"),
    ("non-ascii digits seed", HEADER + "a,x,\u0661\u0662\n".encode(), 2, "whole number"),
    ("negative seed", HEADER + b"a,x,-1\n", 2, "between 0 and"),
    ("seed too large", HEADER + f"a,x,{SEED_MAX + 1}\n".encode(), 2, "between 0 and"),
    ("seed past int() digit limit", HEADER + b"a,x," + b"9" * 5000 + b"\n", 2, "5000 characters"),
    ("id with parent dir", HEADER + b"a,x,1\n../x,y,1\n", 3, "folder name"),
    ("id with slash", HEADER + b"a/b,x,1\n", 2, "folder name"),
    ("id with space", HEADER + b"a b,x,1\n", 2, "folder name"),
    ("empty id", HEADER + b",x,1\n", 2, "folder name"),
    ("id with double dot", HEADER + b"a..b,x,1\n", 2, "folder name"),
    ("id starting with dot", HEADER + b".a,x,1\n", 2, "folder name"),
    ("id too long", HEADER + b"a" * 129 + b",x,1\n", 2, "folder name"),
    ("undecodable byte", HEADER + b"a,x,1\nb,caf\xe9,2\n", 3, "prompts.encoding"),
    ("bad split value", b"prompt_id,prompt,seed,split\na,x,1,train\nb,y,2,dev\n", 3, "'dev'"),
    ("too many fields", HEADER + b"a,x,1\nb,y,z,2\n", 3, "4 fields"),
    ("too few fields", HEADER + b"a,x,1\nb,2\n", 3, "2 fields"),
    ("nul byte", HEADER + b"a,x,1\nb,y\x00,2\n", 3, "NUL"),
    ("unterminated quote", HEADER + b'a,x,1\nb,"y,2\nc,z,3\n', 3, "not valid CSV"),
    ("text after closing quote", HEADER + b'a,"x"y,1\n', 2, "not valid CSV"),
]


@pytest.mark.parametrize(
    ("data", "line", "fragment"),
    [case[1:] for case in BAD_TABLES],
    ids=[case[0] for case in BAD_TABLES],
)
def test_bad_table_names_file_and_line(tmp_path, data, line, fragment):
    with pytest.raises(PromptTableError) as caught:
        load_bytes(tmp_path, data)
    message = str(caught.value)
    assert "table.csv" in message
    assert fragment in message
    if line is not None:
        assert f"line {line}:" in message


def test_undecodable_byte_reports_offset(tmp_path):
    with pytest.raises(PromptTableError, match=r"line 3: .*byte offset 33"):
        load_bytes(tmp_path, HEADER + b"a,x,1\nb,caf\xe9,2\n")


@pytest.mark.parametrize("encoding", ["iso-8859-1", "cp1252"])
def test_utf8_bom_is_rejected_under_a_single_byte_encoding(tmp_path, encoding):
    with pytest.raises(PromptTableError, match="so it is UTF-8.*prompts.encoding: utf-8"):
        load_bytes(tmp_path, b"\xef\xbb\xbf" + HEADER + b"a,x,1\n", encoding=encoding)


@pytest.mark.parametrize("encoding", ["utf-8", "UTF8", "utf-8-sig"])
def test_utf8_bom_is_dropped_under_utf8(tmp_path, encoding):
    """Excel's "CSV UTF-8" writes a byte-order mark; pandas drops it under utf-8, and so do we."""
    with_bom = load_bytes(tmp_path, b"\xef\xbb\xbf" + HEADER + b"a,x,1\n", encoding=encoding)
    without = load_bytes(tmp_path, HEADER + b"a,x,1\n", encoding=encoding)
    pd.testing.assert_frame_equal(with_bom, without)
    assert list(with_bom.columns[:2]) == ["prompt_id", "prompt"]


def test_utf16_with_bom_loads(tmp_path):
    text = "prompt_id,prompt,seed\na,caf\u00e9,1\n"
    frame = load_bytes(tmp_path, text.encode("utf-16"), encoding="utf-16")
    assert frame.prompt.tolist() == ["caf\u00e9"]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(PromptTableError, match=r"absent\.csv does not exist"):
        load_prompts(spec(tmp_path / "absent.csv"))


def test_directory_is_not_a_table(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(PromptTableError, match=r"folder\.csv is not a file"):
        load_prompts(spec(tmp_path / "folder.csv"))


def test_missing_column_lists_the_header(tmp_path):
    with pytest.raises(PromptTableError, match=r"no column 'seed'.*'prompt_id', 'prompt', 'sd'"):
        load_bytes(tmp_path, b"prompt_id,prompt,sd\na,x,1\n")


def test_duplicate_across_files_names_both(tmp_path):
    first = write(tmp_path, HEADER + b"a,x,1\n", "first.csv")
    second = write(tmp_path, HEADER + b"b,y,1\na,z,1\n", "second.csv")
    with pytest.raises(PromptTableError, match=r"second\.csv, line 3: .*first\.csv line 2"):
        load_prompts(spec(first, second))


def test_bad_file_level_split(tmp_path):
    path = write(tmp_path, HEADER + b"a,x,1\n")
    with pytest.raises(PromptTableError, match=r"prompts\.files\[0\]\.split.*'dev'"):
        load_prompts(spec((path, "dev")))


def test_file_split_contradicted_by_split_cell(tmp_path):
    path = write(tmp_path, b"prompt_id,prompt,seed,split\na,x,1,train\nb,y,2,test\n")
    with pytest.raises(PromptTableError, match=r"table\.csv, line 3: .*contradicts"):
        load_prompts(spec((path, "train")))


def test_one_id_in_two_splits_names_both_rows(tmp_path):
    first = write(tmp_path, HEADER + b"a,x,1\n", "first.csv")
    second = write(tmp_path, HEADER + b"a,x,2\n", "second.csv")
    with pytest.raises(PromptTableError, match=r"second\.csv, line 2: .*first\.csv line 2"):
        load_prompts(spec((first, "train"), (second, "test")))


def test_unknown_encoding(tmp_path):
    with pytest.raises(PromptTableError, match="prompts.encoding"):
        load_bytes(tmp_path, HEADER + b"a,x,1\n", encoding="no-such-codec")


def test_fractions_must_sum_to_one(tmp_path):
    with pytest.raises(PromptTableError, match="prompts.split_fractions"):
        load_bytes(tmp_path, HEADER + b"a,x,1\n", split_fractions={"train": 1, "val": 1, "test": 0})


# One table written several ways; the quoted newline is in every variant so lines agree.
ACCEPTED_VARIANTS = {
    "minimal quoting": (
        b'prompt_id,prompt,seed,split\nlemon,"a lemon, on a table",101,train\n'
        b'007,"two\nlines",42,\nowl,"say ""hoot""",7,test\n'
    ),
    "full quoting": (
        b'"prompt_id","prompt","seed","split"\n"lemon","a lemon, on a table","101","train"\n'
        b'"007","two\nlines","42",""\n"owl","say ""hoot""","7","test"\n'
    ),
    "crlf": (
        b'prompt_id,prompt,seed,split\r\nlemon,"a lemon, on a table",101,train\r\n'
        b'007,"two\r\nlines",42,\r\nowl,"say ""hoot""",7,test\r\n'
    ),
    "padding, extra columns, no final newline": (
        b'note, prompt_id ,prompt,seed,split\n,lemon,"a lemon, on a table", 101 ,train\n'
        b'x, 007,"two\nlines",42,\nyz,owl,"say ""hoot""",7,test'
    ),
}


@pytest.mark.parametrize("variant", list(ACCEPTED_VARIANTS))
def test_accepted_variants_load_identically(tmp_path, variant):
    got = load_prompts(spec(write(tmp_path, ACCEPTED_VARIANTS[variant], "t.csv")))
    expected = load_prompts(
        spec(write(tmp_path, ACCEPTED_VARIANTS["minimal quoting"], "expected.csv"))
    )
    assert got.drop(columns="source").equals(expected.drop(columns="source"))
    assert got.prompt_id.tolist() == ["007", "lemon", "owl"]
    assert got.prompt.tolist() == ["two\nlines", "a lemon, on a table", 'say "hoot"']
    assert got.seed.tolist() == [42, 101, 7]
    assert got.line.tolist() == [3, 2, 5]
    assert got.split.tolist()[1:] == ["train", "test"]


def test_frame_columns_and_types(tmp_path):
    long_prompt = "a very long prompt " * 500
    data = HEADER + f'b,"{long_prompt}",{SEED_MAX}\na,x,3\na,x,1\n'.encode()
    frame = load_bytes(tmp_path, data)
    assert list(frame.columns) == ["prompt_id", "prompt", "seed", "split", "source", "line"]
    assert frame[["prompt_id", "seed"]].values.tolist() == [["a", 1], ["a", 3], ["b", SEED_MAX]]
    assert all(type(seed) is int for seed in frame.seed)
    assert frame.prompt.iloc[2] == long_prompt
    assert set(frame.source) == {str(tmp_path / "table.csv")}


def test_relative_paths_resolve_against_base_dir(tmp_path):
    write(tmp_path, HEADER + b"a,x,1\n")
    frame = load_prompts(spec("table.csv"), base_dir=tmp_path)
    assert frame.source.tolist() == ["table.csv"]


def test_split_is_independent_of_row_order(tmp_path):
    rows = [f"id{n},prompt {n},{seed}\n" for n in range(200) for seed in (1, 2, 3)]
    forward = load_bytes(tmp_path, HEADER + "".join(rows).encode())
    random.Random(0).shuffle(rows)
    shuffled = load_bytes(tmp_path, HEADER + "".join(rows).encode())
    pd.testing.assert_frame_equal(forward.drop(columns="line"), shuffled.drop(columns="line"))
    assert (forward.groupby("prompt_id").split.nunique() == 1).all()
    assert set(forward.split) == {"train", "val", "test"}


def test_split_cell_applies_to_all_seeds_of_an_id(tmp_path):
    data = b"prompt_id,prompt,seed,split\na,x,1,\na,x,2,test\na,x,3,\n"
    assert load_bytes(tmp_path, data).split.tolist() == ["test"] * 3


def test_hash_split_matches_fractions():
    counts = {"train": 0, "val": 0, "test": 0}
    for n in range(10_000):
        counts[assign_split(f"prompt-{n}", FRACTIONS)] += 1
    for split, fraction in FRACTIONS.items():
        assert abs(counts[split] / 10_000 - fraction) < 0.02


def test_hash_split_is_stable_and_salted():
    ids = [f"prompt-{n}" for n in range(200)]
    splits = [assign_split(i, FRACTIONS) for i in ids]
    assert splits == [assign_split(i, dict(FRACTIONS)) for i in ids]
    assert splits != [assign_split(i, FRACTIONS, salt="other") for i in ids]
    # Pinned so that a change of hash, which would reshuffle every study's splits, is noticed.
    assert splits[:10] == ["val"] + ["train"] * 7 + ["test"] * 2
    assert assign_split("lemon", {"train": 0, "val": 0, "test": 1}) == "test"
    assert assign_split("lemon", {"train": 1, "val": 0, "test": 0}) == "train"


def test_val_fraction_of_train_moves_given_train_ids_only(tmp_path):
    rows = "".join(f"id{n},p,1\n" for n in range(1000)).encode()
    train = write(tmp_path, HEADER + rows, "train.csv")
    test = write(tmp_path, HEADER + rows.replace(b"id", b"t"), "test.csv")
    frame = load_prompts(spec((train, "train"), (test, "test"), val_fraction_of_train=0.25))
    from_train = frame[frame.source == str(train)].split.value_counts()
    assert abs(from_train["val"] / 1000 - 0.25) < 0.05
    assert set(frame[frame.source == str(test)].split) == {"test"}


def test_null_id_column_derives_ids_from_row_order(tmp_path):
    first = write(tmp_path, b"prompt,seed\nx,5\ny,5\n", "first.csv")
    second = write(tmp_path, b"prompt,seed\nz,5\n", "second.csv")
    columns = {"id": None, "prompt": "prompt", "seed": "seed"}
    frame = load_prompts(spec(first, (second, "test"), columns=columns))
    assert frame.prompt_id.tolist() == ["row00001", "row00002", "row00003"]
    assert frame.prompt.tolist() == ["x", "y", "z"]
    assert frame.split.iloc[2] == "test"


@pytest.fixture(scope="module")
def reference_dir() -> Path:
    if not (REFERENCE / "train_split_prompts_seeds.csv").is_file():
        pytest.fail(f"the reference prompt tables are missing from {REFERENCE}")
    return REFERENCE


def reference_spec(reference_dir, encoding):
    return spec(
        (reference_dir / "train_split_prompts_seeds.csv", "train"),
        (reference_dir / "test_split_prompts_seeds.csv", "test"),
        encoding=encoding,
        columns={"id": "prompt_inds", "prompt": "prompts", "seed": "seeds"},
    )


def test_reference_tables_load(reference_dir):
    frame = load_prompts(reference_spec(reference_dir, "utf-8"))
    assert len(frame) == 617
    assert frame.split.value_counts().to_dict() == {"test": 371, "train": 246}
    assert frame.prompt.str.contains('"').any()


def test_reference_config_reads_the_shipped_tables():
    """config/config.yaml runs after git clone: its prompt tables are in the repository."""
    from ldmprobe.core.config import load_config

    repo = REFERENCE.parents[1]
    config = load_config(repo / "config" / "config.yaml")
    frame = load_prompts(config["prompts"], repo)
    assert len(frame) == 617 and frame.split.value_counts()["train"] > 200


def test_reference_tables_as_iso_8859_1_are_mojibake(reference_dir):
    utf8 = load_prompts(reference_spec(reference_dir, "utf-8"))
    latin = load_prompts(reference_spec(reference_dir, "iso-8859-1"))
    assert latin[["prompt_id", "seed", "split"]].equals(utf8[["prompt_id", "seed", "split"]])
    differs = latin.prompt != utf8.prompt
    assert differs.sum() == 39
    assert latin.prompt.str.contains("\u00c2\u00ae").any()
