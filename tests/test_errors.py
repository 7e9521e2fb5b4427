"""Bad input caught early with one message naming what to fix (unit level, no Snakemake)."""

import logging
from pathlib import Path

import pytest
import yaml

from ldmprobe.core.config import ConfigError, validate_config
from ldmprobe.core.io import atomic_directory, atomic_file
from ldmprobe.core.prompts import PromptTableError, load_prompts
from ldmprobe.preflight import check_consistency
from ldmprobe.world.train import Recipe

REPO = Path(__file__).resolve().parents[1]


def demo():
    return yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


@pytest.mark.parametrize("prompt_id", ["/", "x/../y", "..", ".", "a\\b", "~", "a\tb", "é"])
def test_ids_unsafe_as_paths_are_rejected_with_their_line(tmp_path, prompt_id):
    table = tmp_path / "table.csv"
    table.write_text(f'prompt_id,prompt,seed\nok,x,1\n"{prompt_id}",y,2\n', encoding="utf-8")
    with pytest.raises(PromptTableError, match=r"table\.csv, line 3: prompt id .* folder name"):
        load_prompts({"files": [{"path": str(table)}]})


@pytest.mark.parametrize(
    "name",
    [
        "config.yaml",
        "demo.yaml",
        "world.yaml",
        "world-demo.yaml",
        "world-inversion.yaml",
        "world-latent32.yaml",
    ],
)
def test_shipped_configs_are_consistent(name):
    check_consistency(validate_config(yaml.safe_load((REPO / "config" / name).read_text())))


def test_route_b_config_is_route_a_started_from_renders():
    """config/world-inversion.yaml: config/world.yaml's study started from the inverted
    renders of its rows' scenes, every task labelled by their render, its own results."""
    from ldmprobe.labels import task_reads_record
    from ldmprobe.world.prompts import prompt_rows

    route_a = validate_config(yaml.safe_load((REPO / "config" / "world.yaml").read_text()))
    route_b = validate_config(
        yaml.safe_load((REPO / "config" / "world-inversion.yaml").read_text())
    )
    start = route_b["generation"]["start"]
    assert start == {"kind": "world-inversion", "data_seed": 1}
    assert route_b["results"] != route_a["results"]
    assert not route_b["intervention"]["enabled"]
    # Guidance 1: the inversion's own, so the sampler retraces it.
    assert route_b["generation"]["guidance_scale"] == 1.0
    for key in ("prompts", "models", "probe", "metrics", "controls", "world"):
        assert route_b[key] == route_a[key], key
    differs = {"start", "guidance_scale"}
    assert {k: v for k, v in route_b["generation"].items() if k not in differs} == {
        k: v for k, v in route_a["generation"].items() if k not in differs
    }
    tasks = route_b["labels"]["tasks"]
    assert list(tasks) == list(route_a["labels"]["tasks"])
    for task, section in tasks.items():
        assert section["options"] == {"target": task, "scene": "render"}
        assert "previews" not in section and task_reads_record(task, section)
    # Every row is the scene its seed names, of the start's data seed: the labeler's check.
    table = load_prompts(route_b["prompts"], REPO)
    rows = {row["seed"]: row for row in prompt_rows(start["data_seed"], len(table))}
    for prompt_id, seed, prompt in zip(table.prompt_id, table.seed, table.prompt, strict=True):
        assert (rows[seed]["prompt_id"], rows[seed]["prompt"]) == (prompt_id, prompt)


def test_the_latent32_config_is_the_world_study_on_the_32x32_model():
    """config/world-latent32.yaml: config/world.yaml's study (same rows, labels, probes,
    controls) on the committed 32x32-latent model, whose recipe it states as the one that made
    it (so its world section retrains that model)."""
    import json

    route_a = validate_config(yaml.safe_load((REPO / "config" / "world.yaml").read_text()))
    fine = validate_config(yaml.safe_load((REPO / "config" / "world-latent32.yaml").read_text()))
    for key in ("prompts", "generation", "labels", "probe", "metrics", "controls", "figures"):
        assert fine[key] == route_a[key], key
    assert fine["results"] != route_a["results"] and not fine["intervention"]["enabled"]
    model = REPO / fine["models"]["diffusion"]["id"]
    assert model == REPO / fine["world"]["weights_dir"] / "diffusion"
    assert json.loads((model / "unet" / "config.json").read_text())["sample_size"] == 32
    made_by = json.loads((model / "RECIPE.json").read_text())["recipe"]
    stated = json.loads(json.dumps(Recipe.from_dict(fine["world"]["diffusion"]).to_dict()))
    assert stated == made_by


def test_route_b_labels_need_route_b_generation():
    config = yaml.safe_load((REPO / "config" / "world-inversion.yaml").read_text())
    config["generation"]["start"] = {"kind": "noise"}
    with pytest.raises(
        ConfigError,
        match=r"'labels.tasks.depth.options': labeler 'world' with options .*'scene': "
        r"'render'.* generation.start 'world-inversion', but generation.start.kind is 'noise'",
    ):
        check_consistency(validate_config(config))
    config = yaml.safe_load((REPO / "config" / "world-inversion.yaml").read_text())
    config["generation"]["scheduler"] = "lms"
    with pytest.raises(ConfigError, match=r"'generation.scheduler': 'lms'.*allowed: \['ddim'\]"):
        check_consistency(validate_config(config))


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


# (config overrides as "section__key" paths, fragments the one message must contain)
BAD_CONFIGS = {
    "unknown key": (
        {"generation__stepz": 15},
        ["config key 'generation'", "'stepz' was unexpected", "allowed keys: ["],
    ),
    "unknown top-level key": ({"probes": {}}, ["'probes' was unexpected", "'probe'"]),
    "wrong type": ({"generation__steps": "15"}, ["'generation.steps': '15' is not of type"]),
    "steps out of schema range": ({"generation__steps": 0}, ["'generation.steps': 0 is less"]),
    "negative probe step": ({"probe__steps": [0, -1]}, ["'probe.steps[1]': -1 is less than"]),
    "unknown scheduler": ({"generation__scheduler": "heun"}, ["'generation.scheduler': 'heun'"]),
    "unknown task": (
        {"labels__tasks": {"normals": {"labeler": "dpt", "model": {"id": "x"}}}},
        ["'labels.tasks'", "'normals' is not allowed; allowed: ['saliency', 'depth', 'shading']"],
    ),
    "unknown labeler": (
        {"labels__tasks__depth__labeler": "midas"},
        ["'labels.tasks.depth.labeler': 'midas' is not a known labeler; allowed: [", "'dpt'"],
    ),
    "cfg half": (
        {"generation__cfg_half": "left"},
        ["'generation.cfg_half': 'left' is not allowed; allowed: ['cond', 'uncond', 'both']"],
    ),
    "probed half not stored": (
        {"probe__cfg_half": "uncond"},
        ["'probe.cfg_half': 'uncond' is not stored", "allowed: ['cond']"],
    ),
}


def with_overrides(config: dict, overrides: dict) -> dict:
    for dotted, value in overrides.items():
        section = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            section = section[key]
        section[leaf] = value
    return config


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_names_the_key_and_allowed_values(case):
    overrides, fragments = BAD_CONFIGS[case]
    with pytest.raises(ConfigError) as caught:
        check_consistency(validate_config(with_overrides(demo(), overrides)))
    for fragment in fragments:
        assert fragment in str(caught.value)


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
    from ldmprobe.backbones import backbone_of

    check_prompt_length = backbone_of(demo_pipe).prompt_length

    limit = demo_pipe.tokenizer.model_max_length
    assert limit == 77
    with caplog.at_level(logging.WARNING, logger="ldmprobe.backbones.stable_diffusion"):
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


@pytest.fixture
def store(tmp_path):
    """A small store as generation makes it: one array, one chunk per step, compressed."""
    import numpy as np

    from ldmprobe.generation.storage import create_store

    path = tmp_path / "activations.zarr"
    group = create_store(path, {"unet/cond/mid.0": ((3, 4, 8), "float16")}, {"name": "zstd"})
    for step in range(3):
        group["unet/cond/mid.0"][step] = np.full((4, 8), step + 1, dtype="float16")
    return path


def chunk_of(store: Path, step: int) -> Path:
    return store / "unet/cond/mid.0/c" / str(step) / "0" / "0"


def read(store: Path, step: int):
    from ldmprobe.generation.storage import open_store, read_chunk

    return read_chunk(open_store(store), "unet/cond/mid.0", step, store)


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda s: chunk_of(s, 1).write_bytes(chunk_of(s, 1).read_bytes()[:7]), "is corrupt"),
        (lambda s: chunk_of(s, 1).write_bytes(b"\xde\xad\xbe\xef" * 8), "is corrupt"),
        (lambda s: chunk_of(s, 1).unlink(), "chunk 1 of 'unet/cond/mid.0' is missing"),
        (lambda s: (s / "zarr.json").unlink(), "is missing or incomplete"),
        (lambda s: (s / "zarr.json").write_text('{"zarr_form'), "is corrupt: cannot open"),
        (lambda s: __import__("shutil").rmtree(s), "is missing or incomplete"),
    ],
    ids=[
        "truncated chunk",
        "garbage chunk",
        "deleted chunk",
        "no metadata",
        "bad metadata",
        "gone",
    ],
)
def test_damaged_store_names_its_path_and_rule(store, damage, fragment):
    from ldmprobe.generation.storage import StoreError

    assert float(read(store, 1)[0, 0]) == 2.0
    damage(store)
    with pytest.raises(StoreError) as caught:
        read(store, 1)
    message = str(caught.value)
    assert f"activation store {store}" in message and fragment in message
    assert (
        "a 'generate' job" in message
        and f"delete it and run snakemake again with --forcerun {store} " in message
    )


def test_pause_point_stops_only_at_the_named_point(tmp_path):
    """The crash tests' hook: a matching write stops its process after writing the marker."""
    import os
    import signal
    import subprocess
    import sys

    marker = tmp_path / "paused.txt"
    code = (
        "from ldmprobe.core.io import write_json\n"
        "write_json('a/meta.json', {})\n"
        "write_json('b/meta.json', {})\n"
        "print('not stopped')\n"
    )
    env = {
        **os.environ,
        "LDMPROBE_PAUSE_AT": "after-rename:b/*",
        "LDMPROBE_PAUSE_MARKER": str(marker),
    }
    child = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env)
    try:
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        assert marker.read_text() == f"{child.pid} after-rename b/meta.json\n"
        assert (tmp_path / "a/meta.json").is_file() and (tmp_path / "b/meta.json").is_file()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    env.pop("LDMPROBE_PAUSE_AT")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True)
    assert done.stdout == b"not stopped\n"
