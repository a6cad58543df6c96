#!/usr/bin/env python
# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""
Check that a converted SC-CLIP folder is complete: everything `trust_remote_code=True` loading needs is there and the
`auto_map` / `custom_pipelines` entries point to files and classes that exist.

    python scripts/check_scclip_repo.py path/to/converted-folder

Exits with 1 and names every problem found; `convert_clip_to_scclip.py` runs the same check before it uploads.
"""

import argparse
import ast
import json
import re
import sys
from pathlib import Path

import transformers
from transformers.dynamic_module_utils import get_relative_imports


PIPELINE_TASK = "zero-shot-image-segmentation"
# The auto classes each JSON file must map to remote code, so that no import of this project is needed.
REQUIRED_AUTO_MAP = {
    "config.json": ("AutoConfig", "AutoModel", "AutoProcessor"),
    "processor_config.json": ("AutoProcessor",),
}
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
# An absolute import of the project works here but not from the Hub, where the files are loose modules.
_PROJECT_IMPORT = re.compile(r"^\s*(from|import)\s+modeling_scclip\b", flags=re.MULTILINE)


def _read_json(path: Path, problems: list[str]) -> dict:
    if not path.is_file():
        problems.append(f"{path.name} is missing.")
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        problems.append(f"{path.name} is not valid JSON: {error}.")
        return {}


def _names_defined_at_top_level(module_file: Path) -> set[str]:
    """Classes, imports and assignments at a module's top level: what `getattr(module, name)` finds."""
    names = set()
    for node in ast.parse(module_file.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return names


def _check_class_reference(folder: Path, reference, where: str, problems: list[str]) -> Path | None:
    """Check a `"module.Class"` reference of an auto_map or pipeline entry; return the module file when it exists."""
    if not isinstance(reference, str) or reference.count(".") != 1 or "--" in reference:
        problems.append(f"{where} must be a 'module.Class' string of a file in this folder, got {reference!r}.")
        return None
    module_name, class_name = reference.split(".")
    module_file = folder / f"{module_name}.py"
    if not module_file.is_file():
        problems.append(f"{where} points to {module_file.name}, which is missing.")
        return None
    try:
        defined = _names_defined_at_top_level(module_file)
    except SyntaxError as error:
        problems.append(f"{module_file.name} (used by {where}) does not parse: {error}.")
        return None
    if class_name not in defined:
        problems.append(f"{where} points to {class_name}, which {module_file.name} does not define.")
    return module_file


def _check_code_closure(folder: Path, entry_files: set[Path], problems: list[str]):
    """Every file the entry modules import relatively, recursively, is in the folder and never imports the project."""
    pending, seen = sorted(entry_files), set()
    while pending:
        module_file = pending.pop()
        if module_file in seen:
            continue
        seen.add(module_file)
        if _PROJECT_IMPORT.search(module_file.read_text(encoding="utf-8")):
            problems.append(
                f"{module_file.name} imports modeling_scclip by its absolute name; remote code must use relative "
                "imports."
            )
        for module_name in get_relative_imports(module_file):
            needed = folder / f"{module_name}.py"
            if needed.is_file():
                pending.append(needed)
            else:
                problems.append(f"{needed.name} is missing (imported by {module_file.name}).")


def _check_auto_maps(folder: Path, json_files: dict[str, dict], problems: list[str]) -> set[Path]:
    code_files = set()
    references = {}
    for file_name, auto_classes in REQUIRED_AUTO_MAP.items():
        auto_map = json_files[file_name].get("auto_map", {})
        for auto_class in auto_classes:
            where = f"{file_name} auto_map[{auto_class!r}]"
            if auto_class not in auto_map:
                problems.append(f"{where} is missing.")
                continue
            references.setdefault(auto_class, set()).add(auto_map[auto_class])
            module_file = _check_class_reference(folder, auto_map[auto_class], where, problems)
            if module_file is not None:
                code_files.add(module_file)
    for auto_class, values in references.items():
        if len(values) > 1:
            problems.append(f"The auto_map entries for {auto_class} disagree: {sorted(values)}.")
    return code_files


def _check_custom_pipeline(folder: Path, config: dict, problems: list[str]) -> set[Path]:
    if not config:
        return set()
    entry = config.get("custom_pipelines", {}).get(PIPELINE_TASK)
    if entry is None:
        problems.append(f"config.json custom_pipelines has no {PIPELINE_TASK!r} entry.")
        return set()
    where = f"config.json custom_pipelines[{PIPELINE_TASK!r}]"
    model_classes = entry.get("pt", ())
    for class_name in [model_classes] if isinstance(model_classes, str) else model_classes:
        if not hasattr(transformers, class_name):
            problems.append(f"{where}['pt'] names {class_name!r}, which transformers does not have.")
    module_file = _check_class_reference(folder, entry.get("impl"), f"{where}['impl']", problems)
    return set() if module_file is None else {module_file}


def _check_files(folder: Path, config: dict, problems: list[str]):
    if config and config.get("model_type") != "scclip":
        problems.append(f"config.json has model_type {config.get('model_type')!r}, expected 'scclip'.")
    has_weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    if not has_weights:
        problems.append("model.safetensors (or model.safetensors.index.json with its shards) is missing.")
    for file_name in TOKENIZER_FILES + ("README.md",):
        if not (folder / file_name).is_file():
            problems.append(f"{file_name} is missing.")


def find_repository_problems(folder) -> list[str]:
    """
    List what keeps `folder` from loading with `trust_remote_code=True` without this project installed.

    Checks the weights, tokenizer and model card files, that `config.json` and `processor_config.json` map AutoConfig,
    AutoModel and AutoProcessor to classes defined in code files of the folder, that the zero-shot segmentation
    pipeline recorded in `custom_pipelines` exists likewise, and that every file those modules import relatively is
    present. Returns one sentence per problem; an empty list means the folder is complete.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder."]
    problems = []
    json_files = {file_name: _read_json(folder / file_name, problems) for file_name in REQUIRED_AUTO_MAP}
    _check_files(folder, json_files["config.json"], problems)
    code_files = _check_auto_maps(folder, json_files, problems)
    code_files |= _check_custom_pipeline(folder, json_files["config.json"], problems)
    _check_code_closure(folder, code_files, problems)
    return problems


class IncompleteRepositoryError(ValueError):
    """A converted folder that cannot be loaded with `trust_remote_code=True` as it is."""


def check_scclip_repository(folder):
    """Raise an [`IncompleteRepositoryError`] naming every problem [`find_repository_problems`] finds in `folder`."""
    problems = find_repository_problems(folder)
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise IncompleteRepositoryError(f"{folder} is not a complete SC-CLIP repository:\n{listing}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="A folder written by convert_clip_to_scclip.py.")
    folder = parser.parse_args(argv).folder
    try:
        check_scclip_repository(folder)
    except IncompleteRepositoryError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"{folder} is a complete SC-CLIP repository.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
