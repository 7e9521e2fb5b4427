"""Prompt tables: load, validate and split the (prompt id, prompt, seed) rows a study draws.

This runs when the Snakefile is parsed (in every job), so it only reads the CSV files: no torch,
no pandas type inference. Every cell is read as a string and checked here, so a seed never turns
into a float and an id like ``007`` stays a string.

A table is a CSV file with a header row. The columns used are named by ``prompts.columns``:

* ``id``: the prompt id. It becomes a path component and a Snakemake wildcard, so it must match
  :data:`ID_PATTERN` and must not contain ``..``. When ``prompts.columns.id`` is null the ids are
  derived from the row order: ``row00001`` is the first data row of the first file, counting on
  through the later files in the order listed. Derived ids (and so the splits hashed from them)
  shift when a row is inserted or removed, which is why an explicit id column is the normal case.
* ``prompt``: the text, kept exactly as written (quoted newlines included); it must not be blank.
  Long prompts are accepted; the tokenizer truncates them and generation reports that.
* ``seed``: a plain non-negative integer (digits only) no larger than :data:`SEED_MAX`.
* ``split`` (optional column): ``train``, ``val`` or ``test``; an empty cell means "not given".

More roles in ``columns`` (the classification experiment's ``target``) name more columns
that every table must have; their cells come back as strings, in a column named by the role.
Other columns are ignored. Surrounding whitespace is ignored in id, seed and split cells and in
header names. CRLF and LF line ends, and minimal or full quoting, load identically.

A row's split comes from, in order: its file's ``split`` in ``prompts.files``, its split cell,
another row of the same id that gives one, and finally a hash of the id
(:func:`assign_split` with ``prompts.split_fractions``). All rows of one id share a split. Of the
ids whose split is given as ``train``, the fraction ``prompts.val_fraction_of_train`` (chosen by
the same hash) is moved to ``val``.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
from pathlib import Path

import pandas as pd

SEED_MAX = 2**64 - 1  # torch.manual_seed accepts 0..2**64-1
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
SPLITS = ("train", "val", "test")

# The schema's defaults, so a spec that did not pass through validate_config behaves the same.
DEFAULT_COLUMNS = {"id": "prompt_id", "prompt": "prompt", "seed": "seed", "split": "split"}
ROLES = tuple(DEFAULT_COLUMNS)
DEFAULT_FRACTIONS = {"train": 0.6, "val": 0.1, "test": 0.3}
DEFAULT_VAL_FRACTION_OF_TRAIN = 0.1

_ID_RE = re.compile(ID_PATTERN)
# ASCII digits only: str.isdigit and \d also accept other scripts' digits and superscripts.
_INTEGER_RE = re.compile(r"-?[0-9]+")


class PromptTableError(ValueError):
    """A prompt table (or the prompts config) that cannot be used; the message says what to fix."""


def assign_split(prompt_id: str, fractions: dict[str, float], salt: str = "") -> str:
    """The split of ``prompt_id``: a stable hash of ``salt + prompt_id`` placed on [0, 1).

    ``fractions`` maps train, val and test to non-negative shares summing to 1, taken
    cumulatively in that order. SHA-256 (unlike ``hash()``) gives the same answer on every
    machine and Python version, and the answer depends on nothing but the id and the salt.
    """
    digest = hashlib.sha256((salt + prompt_id).encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for split in SPLITS:
        cumulative += fractions[split]
        if position < cumulative:
            return split
    # Float rounding can leave the cumulative sum just under 1; such a position belongs to the
    # last split that has a share at all, never to one configured as empty.
    return [split for split in SPLITS if fractions[split] > 0][-1]


def load_prompts(spec: dict, base_dir: str | Path = ".", key: str = "prompts") -> pd.DataFrame:
    """All rows of the tables in ``spec`` (the ``prompts`` config section, or another section
    of that shape named by ``key`` in messages), validated and split.

    Relative paths in ``spec["files"]`` resolve against ``base_dir``. Returns one row per table
    row with columns ``prompt_id`` (str), ``prompt`` (str), ``seed`` (Python int, object dtype:
    seeds may exceed int64), ``split``, ``source`` (the path as configured) and ``line`` (where
    the record starts in its file, header = line 1), then one per extra role of ``columns``,
    sorted by (prompt_id, seed).
    Raises :class:`PromptTableError` on the first problem found.
    """
    files = spec["files"]
    if not files:
        raise PromptTableError("config key 'prompts.files' lists no prompt tables; add one")
    encoding = spec.get("encoding", "utf-8")
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise PromptTableError(
            f"config key 'prompts.encoding': {encoding!r} is not a known text encoding; "
            "use a Python codec name such as utf-8, utf-8-sig or iso-8859-1"
        ) from None
    columns = {**DEFAULT_COLUMNS, **spec.get("columns", {})}
    fractions = spec.get("split_fractions", DEFAULT_FRACTIONS)
    val_of_train = spec.get("val_fraction_of_train", DEFAULT_VAL_FRACTION_OF_TRAIN)
    salt = spec.get("split_salt", "")
    _check_fractions(fractions, val_of_train)

    rows = []
    for index, entry in enumerate(files):
        file_split = entry.get("split")
        if file_split is not None and file_split not in SPLITS:
            raise PromptTableError(
                f"config key 'prompts.files[{index}].split': {file_split!r} is not a split; "
                f"use one of {', '.join(SPLITS)} or leave it out"
            )
        text = _read_text(entry["path"], Path(base_dir) / entry["path"], encoding, codec)
        rows.extend(_parse_table(entry["path"], text, columns, file_split, index, key))

    if columns["id"] is None:
        for number, row in enumerate(rows, start=1):
            row["prompt_id"] = f"row{number:05d}"
    _check_unique(rows)
    _assign_splits(rows, fractions, val_of_train, salt)

    rows.sort(key=lambda row: (row["prompt_id"], row["seed"]))
    return pd.DataFrame(
        {
            "prompt_id": [row["prompt_id"] for row in rows],
            "prompt": [row["prompt"] for row in rows],
            "seed": pd.Series([row["seed"] for row in rows], dtype=object),
            "split": [row["split"] for row in rows],
            "source": [row["source"] for row in rows],
            "line": [row["line"] for row in rows],
            **{role: [row[role] for row in rows] for role in columns if role not in ROLES},
        }
    )


def _check_fractions(fractions: dict[str, float], val_of_train: float) -> None:
    if any(fractions[split] < 0 for split in SPLITS) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise PromptTableError(
            f"config key 'prompts.split_fractions': {fractions} must be non-negative and sum to 1"
        )
    if not 0 <= val_of_train <= 1:
        raise PromptTableError(
            f"config key 'prompts.val_fraction_of_train': {val_of_train} must be between 0 and 1"
        )


def _read_text(source: str, path: Path, encoding: str, codec: str) -> str:
    """The file's text, decoded by hand so a bad byte can be reported with its line."""
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise PromptTableError(
            f"prompt table {source} {problem} (looked at {path.resolve()}); "
            "fix its path in prompts.files"
        )
    data = path.read_bytes()
    if not data:
        raise PromptTableError(
            f"prompt table {source} is empty (0 bytes); it needs a header row and data rows"
        )
    # Excel's "CSV UTF-8" starts with a byte-order mark; UTF-8 readers drop it, as pandas does.
    if data.startswith(codecs.BOM_UTF8) and codec == "utf-8":
        data = data[len(codecs.BOM_UTF8) :]
    # Checked on the bytes because a single-byte codec such as iso-8859-1 would silently turn
    # the mark into "ï»¿" glued to the first column name.
    if data.startswith(codecs.BOM_UTF8) and not _keeps_bom_out(codec):
        raise PromptTableError(
            f"prompt table {source} starts with a UTF-8 byte-order mark, so it is UTF-8, not "
            f"{encoding}; set prompts.encoding: utf-8 to read it"
        )
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise PromptTableError(
            f"prompt table {source}, line {line}: byte {data[error.start : error.start + 1]!r} "
            f"at byte offset {error.start} is not valid {encoding}; set prompts.encoding to the "
            "file's encoding"
        ) from None
    if text.startswith("\ufeff"):
        raise PromptTableError(
            f"prompt table {source} starts with a byte-order mark that {encoding} keeps as text; "
            "set prompts.encoding to utf-8-sig, utf-16 or utf-32 to match the file"
        )
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise PromptTableError(
            f"prompt table {source}, line {line}: contains a NUL character, so it is not a "
            "text CSV file (or prompts.encoding is wrong); save it as plain CSV"
        )
    # A quoted newline in a CRLF file would otherwise keep its "\r" and differ from the LF file.
    return text.replace("\r\n", "\n")


def _keeps_bom_out(codec: str) -> bool:
    """Whether decoding with ``codec`` consumes a byte-order mark instead of keeping it."""
    return codec == "utf-8-sig" or codec.startswith(("utf-16", "utf-32"))


def _parse_table(
    source: str, text: str, columns: dict, file_split: str | None, index: int, key: str
) -> list[dict]:
    records = _records(source, text)
    if not records:
        raise PromptTableError(f"prompt table {source} has no header row; it needs one")
    header_line, header = records[0]
    header = [name.strip() for name in header]
    if len(records) == 1:
        raise PromptTableError(f"prompt table {source} has a header but no data rows; add rows")

    positions = {}
    for role, name in columns.items():
        if name is None:
            continue
        if header.count(name) > 1:
            raise PromptTableError(
                f"prompt table {source}, line {header_line}: column {name!r} appears "
                f"{header.count(name)} times in the header; rename the extra ones"
            )
        if name in header:
            positions[role] = header.index(name)
        elif role != "split":
            setting = f"{key}.columns.{role}"
            raise PromptTableError(
                f"prompt table {source}: no column {name!r} (config key {setting}); "
                f"the header has {header}. Rename the column or change {setting}"
            )
    extras = [role for role in positions if role not in ROLES]

    rows = []
    for line, fields in records[1:]:
        if len(fields) != len(header):
            raise PromptTableError(
                f"prompt table {source}, line {line}: {len(fields)} fields but the header has "
                f"{len(header)}; quote fields that contain commas and give every row all columns"
            )
        where = f"prompt table {source}, line {line}"
        prompt = fields[positions["prompt"]]
        if not prompt.strip():
            raise PromptTableError(f"{where}: the prompt is empty; write one or remove the row")
        rows.append(
            {
                "prompt_id": _parse_id(fields[positions["id"]], where)
                if "id" in positions
                else None,
                "prompt": prompt,
                "seed": _parse_seed(fields[positions["seed"]], where),
                "given_split": _given_split(fields, positions, file_split, index, where),
                "source": source,
                "line": line,
                **{role: fields[positions[role]] for role in extras},
            }
        )
    return rows


def _records(source: str, text: str) -> list[tuple[int, list[str]]]:
    """(line where the record starts, fields) for each non-blank CSV record."""
    # strict: a stray quote is an error instead of silently merging the rest of the file.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records = []
    start = 1
    try:
        for fields in reader:
            if fields:
                records.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as error:
        raise PromptTableError(
            f"prompt table {source}, line {start}: not valid CSV ({error}); check the quotes "
            "of the record starting there"
        ) from None
    return records


def _parse_id(cell: str, where: str) -> str:
    prompt_id = cell.strip()
    if not _ID_RE.fullmatch(prompt_id) or ".." in prompt_id:
        raise PromptTableError(
            f"{where}: prompt id {prompt_id!r} cannot be used as a folder name; use 1 to 128 "
            "ASCII letters, digits, '_', '.' or '-', starting with a letter or digit, without '..'"
        )
    return prompt_id


def _parse_seed(cell: str, where: str) -> int:
    text = cell.strip()
    if not _INTEGER_RE.fullmatch(text):
        raise PromptTableError(
            f"{where}: seed {cell!r} is not a whole number; write it as plain digits"
        )
    try:
        seed = int(text)
    except ValueError:  # the pattern matched, so only int()'s 4300-digit limit gets here
        seed = None
    if seed is None or not 0 <= seed <= SEED_MAX:
        shown = text if len(text) <= 30 else f"{text[:20]}... ({len(text)} characters)"
        raise PromptTableError(
            f"{where}: seed {shown} is out of range; seeds must be between 0 and {SEED_MAX}"
        )
    return seed


def _given_split(
    fields: list[str], positions: dict, file_split: str | None, index: int, where: str
) -> str | None:
    cell = fields[positions["split"]].strip() if "split" in positions else ""
    if cell and cell not in SPLITS:
        raise PromptTableError(
            f"{where}: split {cell!r} is not one of {', '.join(SPLITS)}; fix it or leave it empty"
        )
    if cell and file_split is not None and cell != file_split:
        raise PromptTableError(
            f"{where}: split {cell!r} contradicts prompts.files[{index}].split {file_split!r}; "
            "make them agree or empty the cell"
        )
    return file_split or cell or None


def _check_unique(rows: list[dict]) -> None:
    first_seen = {}
    for row in rows:
        key = (row["prompt_id"], row["seed"])
        if key in first_seen:
            earlier = first_seen[key]
            raise PromptTableError(
                f"prompt table {row['source']}, line {row['line']}: prompt id "
                f"{row['prompt_id']!r} with seed {row['seed']} repeats {earlier['source']} line "
                f"{earlier['line']}; remove one row or change its seed"
            )
        first_seen[key] = row


def _assign_splits(
    rows: list[dict], fractions: dict[str, float], val_of_train: float, salt: str
) -> None:
    given = {}
    for row in rows:
        split = row.pop("given_split")
        if split is None:
            continue
        earlier = given.setdefault(row["prompt_id"], (split, row))
        if earlier[0] != split:
            raise PromptTableError(
                f"prompt table {row['source']}, line {row['line']}: prompt id "
                f"{row['prompt_id']!r} is in {split!r} here but in {earlier[0]!r} at "
                f"{earlier[1]['source']} line {earlier[1]['line']}; all seeds of an id must be "
                "in one split"
            )
    carve_val = {"train": 1 - val_of_train, "val": val_of_train, "test": 0.0}
    for row in rows:
        split = given.get(row["prompt_id"], (None,))[0]
        if split is None:
            split = assign_split(row["prompt_id"], fractions, salt)
        elif split == "train":
            split = assign_split(row["prompt_id"], carve_val, salt)
        row["split"] = split
