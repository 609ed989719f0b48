"""Named exceptions. Every error a user can cause is one of these, with a message that says
what was wrong and what to do. They also subclass the matching built-in (ValueError,
FileNotFoundError, ...) so generic ``except`` clauses keep working."""


class PycohereError(Exception):
    """Base class of every error pycohere raises on purpose."""


# --- configuration -------------------------------------------------------------------------
class ConfigError(PycohereError, ValueError):
    """config.json is malformed or describes an impossible model."""


# --- checkpoints on disk -------------------------------------------------------------------
class CheckpointError(PycohereError):
    """A checkpoint file or folder cannot be used."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A path, file or shard that should exist does not."""


class CorruptCheckpointError(CheckpointError, ValueError):
    """A file exists but its bytes are not what its format promises (truncated, bad header...)."""


class UnsafeCheckpointError(CheckpointError, ValueError):
    """A pickle-based checkpoint (.bin/.pt/.pth/.ckpt): refused, because unpickling runs code."""


class WeightMismatchError(CheckpointError, ValueError):
    """Tensors missing, unexpected or misshaped against the manifest computed from the config."""


class UnsupportedFormatError(CheckpointError, ValueError):
    """A tensor dtype, quantization type or architecture pycohere cannot read."""


# --- inputs to the model -------------------------------------------------------------------
class InputError(PycohereError, ValueError):
    """Arguments to a forward pass or to generate() are invalid."""


class TokenIdError(InputError):
    """A token id lies outside [0, vocab_size)."""


class AttentionMaskError(InputError):
    """attention_mask does not match input_ids (shape, values)."""


class CacheError(PycohereError, ValueError):
    """A KV cache is used inconsistently (wrong model, full static cache, mismatched batch)."""


class GenerationConfigError(InputError):
    """Invalid generation / sampling parameters."""


# --- text side -----------------------------------------------------------------------------
class TokenizerError(PycohereError, ValueError):
    """Tokenizer files are missing or inconsistent, or text cannot be encoded as asked."""


class ChatTemplateError(PycohereError, ValueError):
    """Messages, tools or documents do not fit the chat template (roles, alternation, schema)."""


class ParseError(PycohereError, ValueError):
    """Model output cannot be parsed as a tool call or a grounded answer."""


# --- quantization --------------------------------------------------------------------------
class QuantizationError(PycohereError, ValueError):
    """A quantization scheme or its parameters cannot be applied."""


class BackendError(PycohereError, ValueError):
    """An unknown backend was asked for, or the asked-for backend cannot run here."""


# --- serving -------------------------------------------------------------------------------
class RequestError(InputError):
    """A request to ``pycohere serve`` is invalid. Carries the fields of OpenAI's error object
    (``param``, ``code``, ``type``) and the HTTP status the server answers with (a 4xx)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type


# --- beyond one process (pycohere.parallel) ------------------------------------------------
class MissingExtraError(PycohereError, ImportError):
    """An optional capability was asked for whose packages are not installed (``pycohere[mpi]``, ``pycohere[dask]``)."""


class ParallelError(PycohereError, RuntimeError):
    """A run over several processes or machines failed (tensor parallelism over MPI, a Dask job)."""


class ShardingError(ParallelError, ValueError):
    """The model cannot be split the asked number of ways (heads, kv heads, quantized blocks)."""


class RankFailedError(ParallelError):
    """Another rank of a tensor-parallel group failed or died; this rank stops too (the group is unusable)."""


class RankTimeoutError(RankFailedError, TimeoutError):
    """A rank of a tensor-parallel group did not answer within the timeout."""


class CheckpointMismatchError(CheckpointError, ParallelError):
    """The ranks of a tensor-parallel group opened checkpoints that differ (config, tensors or weights)."""
