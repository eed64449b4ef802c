"""What of a Hugging Face / sentence-transformers model folder goes into a bundle, and what it is.

``keystore.bundle`` seals the files it is given and records what it is told;
it knows nothing of models. The knowledge of a model folder's layout lives
here, on the search side, next to ``manage.py model_seal``:

- which files are the model: every regular file under the folder except
  hidden entries (``.git``, ``.cache``, ``.gitattributes``: version-control
  and download-cache bookkeeping), with in-memory replacements (weights
  converted from pickle, ``search.legacy``) and files left out;
- what a complete folder needs: ``config.json``, ``tokenizer.json`` and
  safetensors or ``pytorch_model.bin`` weights;
- what the sealed table says about the model: ``config.json``'s
  ``model_type``, the sentence-transformers ``modules.json`` and
  ``config_sentence_transformers.json``, and a readable name when the
  operator gives none (the Hugging Face cache folder, the model card's title,
  the folder's name).

Only the standard library and ``keystore``: sealing needs no torch unless
weights must be converted.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from keystore.bundle import BundleError, check_file_name, seal_bundle

REQUIRED_FILES = ("config.json", "tokenizer.json")


def missing_model_files(folder: Path) -> list[str]:
    """What a folder lacks to be opened as a model: config, tokenizer, weights."""
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")) and not (folder / "pytorch_model.bin").is_file():
        missing.append("model.safetensors (or pytorch_model.bin)")
    return missing


def model_folder_files(
    src: str | os.PathLike | None, *, extra_files: Mapping[str, bytes] | None = None, skip: Iterable[str] = ()
) -> dict[str, Path | bytes]:
    """The files to seal, by name in the bundle: the folder's own (hidden ones and ``skip`` left
    out), then ``extra_files``, made in memory, added or replacing them. ``src`` may be None when
    every file is made in memory."""
    skipped = {check_file_name(name) for name in skip}
    files: dict[str, Path | bytes] = {}
    if src is not None:
        root = Path(src)
        if not root.is_dir():
            raise BundleError(f"{src} is not a folder")
        for path in root.rglob("*"):
            relative = path.relative_to(root)
            # Hidden entries are VCS and download-cache bookkeeping (.git, .cache), not the model.
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            name = relative.as_posix()
            if name not in skipped:
                files[name] = path
    for name, data in (extra_files or {}).items():
        files[check_file_name(name)] = bytes(data)
    if not files:
        raise BundleError("there is nothing to seal: the model folder is empty")
    return dict(sorted(files.items()))


def _json(source: Path | bytes | None) -> Any:
    if source is None:
        return None
    try:
        return json.loads(source.read_bytes() if isinstance(source, Path) else source)
    except (OSError, ValueError):
        return None


def model_description(files: Mapping[str, Path | bytes]) -> dict[str, Any]:
    """``model_type`` and ``sentence_transformers`` for the sealed table, read from the model's files.

    ``sentence_transformers`` is None unless the folder is a sentence-transformers
    model (it has ``modules.json``).
    """
    config = _json(files.get("config.json"))
    modules = _json(files.get("modules.json"))
    return {
        "model_type": config.get("model_type") if isinstance(config, dict) else None,
        "sentence_transformers": None if modules is None else {
            "modules": modules,
            "config": _json(files.get("config_sentence_transformers.json")),
        },
    }


def default_model_id(src: str | os.PathLike | None, files: Mapping[str, Path | bytes]) -> str | None:
    """A readable name when the operator gives none.

    config.json's ``_name_or_path`` is not used: in fine-tuned models it names the
    base model (all-MiniLM-L6-v2 says nreimers/MiniLM-L6-H384-uncased).
    """
    if src is None:
        return None
    folder = Path(src).resolve()
    for parent in (folder, *folder.parents):  # Hugging Face cache: models--org--name/snapshots/<hash>
        if parent.name.startswith("models--"):
            return parent.name[len("models--") :].replace("--", "/")
    card = files.get("README.md")
    if isinstance(card, Path):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for line in card.read_text(encoding="utf-8").splitlines():
                title = line[2:].strip() if line.startswith("# ") else ""
                if title and " " not in title:
                    return title
    return folder.name


def seal_folder(
    src: str | os.PathLike | None,
    out_path: str | os.PathLike,
    key: bytes,
    *,
    model_id: str | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    skip: Iterable[str] = (),
    **options: Any,
) -> dict[str, Any]:
    """Seal a model folder as it is (plus ``extra_files``, minus ``skip``) into ``out_path``.

    ``options`` go to ``keystore.bundle.seal_bundle``: ``chunk_size``,
    ``progress``, ``languages``, ``relevance_floor``. Pickled weights are sealed
    as they are (and the engine refuses them): ``search.legacy.seal_model_folder``
    converts them first, as ``manage.py model_seal`` does.
    """
    files = model_folder_files(src, extra_files=extra_files, skip=skip)
    return seal_bundle(
        files, out_path, key, model_id=model_id or default_model_id(src, files), **model_description(files), **options
    )
