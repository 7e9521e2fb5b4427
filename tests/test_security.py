"""What the workflow's own code may load: no remote code, no pickles, weights from safetensors.

The checks read the syntax tree of every Python file of the package and scripts (and the text of
the rules), so a call split over lines or written with other spacing is still found. Each check
is first shown to flag a bad example, so a check that silently matches nothing fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE = sorted([*(REPO / "src" / "ldmprobe").rglob("*.py"), *(REPO / "scripts").glob("*.py")])
RULES = sorted([REPO / "Snakefile", *(REPO / "rules").glob("*.smk")])
PICKLE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
# from_pretrained on these reads configs or preprocessing settings, never weights.
NO_WEIGHTS = ("Config", "Processor", "Tokenizer", "TokenizerFast", "Scheduler", "FeatureExtractor")


def keyword(call: ast.Call, name: str):
    for item in call.keywords:
        if item.arg == name:
            return item.value
    return None


def is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def receiver(func: ast.Attribute) -> str:
    value = func.value
    return value.attr if isinstance(value, ast.Attribute) else getattr(value, "id", "")


def problems(source: str, name: str = "<example>") -> list[str]:
    """Every unsafe loading pattern in ``source``, as 'name:line: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [alias.name for alias in node.names]
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
                if node.module == "torch" and "load" in [a.name for a in node.names]:
                    found.append(f"{where}: 'from torch import load' hides torch.load's checks")
            for module in modules:
                if module.split(".")[0] in PICKLE_MODULES:
                    found.append(f"{where}: imports {module}")
        remote_code = isinstance(node, ast.keyword) and node.arg == "trust_remote_code"
        if remote_code and not (isinstance(node.value, ast.Constant) and node.value.value is False):
            found.append(f"{where}: trust_remote_code")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        method, owner = node.func.attr, receiver(node.func)
        if method == "load" and owner == "torch" and not is_true(keyword(node, "weights_only")):
            found.append(f"{where}: torch.load without weights_only=True")
        if method in ("read_pickle", "to_pickle"):
            found.append(f"{where}: {method}")
        if is_true(keyword(node, "allow_pickle")):
            found.append(f"{where}: allow_pickle=True")
        if (
            method == "from_pretrained"
            and not owner.endswith(NO_WEIGHTS)
            and not is_true(keyword(node, "use_safetensors"))
        ):
            found.append(f"{where}: {owner}.from_pretrained without use_safetensors=True")
    return found


BAD_EXAMPLES = {
    "remote code": "AutoModel.from_pretrained(p, use_safetensors=True, trust_remote_code=True)",
    "remote code by variable": "AutoModel.from_pretrained(p, use_safetensors=True, "
    "trust_remote_code=flag)",
    "torch.load bare": "import torch\nstate = torch.load(\n    path,\n    map_location='cpu')",
    "torch.load weights_only False": "torch.load(path, weights_only=False)",
    "torch.load imported": "from torch import load",
    "pickle": "import pickle",
    "pickle submodule": "from joblib.numpy_pickle import load",
    "numpy pickle": "np.load(path, allow_pickle=True)",
    "pandas pickle": "pd.read_pickle(path)",
    "weights not from safetensors": "StableDiffusionPipeline.from_pretrained(path)",
    "weights through a module": "transformers.AutoModel.from_pretrained(path)",
}


@pytest.mark.parametrize("case", list(BAD_EXAMPLES))
def test_the_checks_flag_bad_examples(case):
    assert problems(BAD_EXAMPLES[case]), case


def test_the_checks_accept_safe_loading():
    safe = (
        "torch.load(path, map_location='cpu', weights_only=True)\n"
        "AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=False)\n"
        "AutoImageProcessor.from_pretrained(path)\n"
        "np.load(path, allow_pickle=False)\n"
    )
    assert problems(safe) == []


def test_the_package_and_scripts_load_nothing_unsafely():
    assert len(CODE) > 20  # the scan sees the package, not an empty folder
    found = []
    for path in CODE:
        found += problems(path.read_text(), str(path.relative_to(REPO)))
    assert found == []


def test_the_rules_never_trust_remote_code_or_unpickle():
    for path in RULES:
        text = path.read_text()
        for word in ("trust_remote_code", "pickle", "torch.load"):
            assert word not in text, f"{path.relative_to(REPO)}: {word}"


def test_prompt_ids_become_paths_only_through_the_validated_pattern():
    """The Snakefile's prompt_id wildcard uses the same pattern load_prompts checks ids with."""
    from ldmprobe.core.prompts import ID_PATTERN

    common = (REPO / "rules" / "common.smk").read_text()
    assert "prompt_id=ID_PATTERN" in common
    assert "from ldmprobe.core.prompts import ID_PATTERN" in common
    assert ".." not in ID_PATTERN and "/" not in ID_PATTERN
