"""Bad input caught early with one message naming what to fix (unit level, no Snakemake)."""

import logging
from pathlib import Path

import pytest
import yaml

from ldmprobe.config import ConfigError, validate_config
from ldmprobe.io import atomic_directory, atomic_file
from ldmprobe.preflight import check_consistency
from ldmprobe.prompts import PromptTableError, load_prompts

REPO = Path(__file__).resolve().parents[1]


def demo():
    return yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


@pytest.mark.parametrize("prompt_id", ["/", "x/../y", "..", ".", "a\\b", "~", "a\tb", "é"])
def test_ids_unsafe_as_paths_are_rejected_with_their_line(tmp_path, prompt_id):
    table = tmp_path / "table.csv"
    table.write_text(f'prompt_id,prompt,seed\nok,x,1\n"{prompt_id}",y,2\n', encoding="utf-8")
    with pytest.raises(PromptTableError, match=r"table\.csv, line 3: prompt id .* folder name"):
        load_prompts({"files": [{"path": str(table)}]})


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_shipped_configs_are_consistent(name):
    check_consistency(validate_config(yaml.safe_load((REPO / "config" / name).read_text())))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["labels"]["tasks"]["depth"].update(labeler="midas"),
            r"'labels.tasks.depth.labeler': 'midas' is not a known labeler; allowed: \[.*'dpt'",
        ),
        (
            lambda c: c["labels"]["tasks"].update(saliency=c["labels"]["tasks"]["depth"]),
            r"'labels.tasks.saliency.labeler': labeler 'dpt' makes \['depth'\] labels",
        ),
        (
            lambda c: c["probe"].update(cfg_half="uncond"),
            r"'probe.cfg_half': 'uncond' is not stored.*allowed: \['cond'\]",
        ),
        (
            lambda c: c["generation"].update(cfg_half="both", guidance_scale=1.0),
            r"'generation.cfg_half': 'both' needs the unconditional half.*allowed: \['cond'\]",
        ),
    ],
    ids=["unknown labeler", "labeler for another task", "probed half not stored", "no cfg"],
)
def test_inconsistent_config_names_the_key_and_allowed_values(edit, message):
    config = demo()
    edit(config)
    with pytest.raises(ConfigError, match=message):
        check_consistency(validate_config(config))


def test_both_halves_stored_allow_probing_either():
    config = demo()
    config["generation"]["cfg_half"] = "both"
    config["probe"]["cfg_half"] = "uncond"
    check_consistency(validate_config(config))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("layers", "up*", r"'probe.layers': 'up\*' is not allowed; allowed: 'all' or a list of"),
        ("steps", "last", r"'probe.steps': 'last' .* 'all' or a list of integers >= 0"),
    ],
)
def test_alternatives_are_spelled_out(key, value, message):
    config = demo()
    config["probe"][key] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_prompt_length_is_measured_and_truncation_reported(demo_pipe, caplog):
    """The demo tokenizer is byte-level: a one-letter word is one token, plus start and end."""
    from ldmprobe.generation import check_prompt_length

    limit = demo_pipe.tokenizer.model_max_length
    assert limit == 77
    with caplog.at_level(logging.WARNING, logger="ldmprobe.generation"):
        fits = check_prompt_length(demo_pipe, " ".join(["a"] * (limit - 2)))
        assert not caplog.records
        too_long = check_prompt_length(demo_pipe, " ".join(["a"] * (limit - 1)))
    assert fits == {"prompt_tokens": limit, "prompt_truncated": False}
    assert too_long == {"prompt_tokens": limit + 1, "prompt_truncated": True}
    assert "78 tokens" in caplog.text and "first 77" in caplog.text


def test_a_killed_writer_leaves_nothing_the_next_write_keeps(tmp_path):
    # What SIGKILL leaves: temporaries of a file and of a directory, never renamed.
    (tmp_path / ".out.csv.tmp-abc.csv").write_text("half a tab")
    (tmp_path / ".store.zarr.tmp-def").mkdir()
    (tmp_path / ".store.zarr.tmp-def" / "chunk").write_bytes(b"\0")
    (tmp_path / ".other.csv.tmp-ghi.csv").write_text("someone else's")
    with atomic_file(tmp_path / "out.csv") as tmp:
        tmp.write_text("complete")
    with atomic_directory(tmp_path / "store.zarr") as tmp:
        (tmp / "zarr.json").write_text("{}")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".other.csv.tmp-ghi.csv", "out.csv", "store.zarr"]
