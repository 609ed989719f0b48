"""The generation side of the server: one worker thread runs the queued requests one at a time through
``model.generate``, reusing the KV cache of the longest shared prompt prefix, and reports each token.

Nothing here knows HTTP. A ``Job`` is handed to :meth:`Engine.submit`; the worker calls
``job.emit(event)`` with a :class:`Token` per generated token and a :class:`Finished` at the end (or an
exception). Generation runs the unmodified loop of ``GenerationMixin``: the per-token hook is its
streamer (``put`` after each step; raising there is how a cancelled request stops), and logprobs come
from a pass-through logits processor, which the loop calls with each step's float32 logits before the
sampling warpers (so they are the model's own distribution, as vLLM's default).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..errors import CacheError, RequestError
from ..generation.stopping import TokenBytes

log = logging.getLogger("pycohere.serve")


@dataclass
class Token:
    id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)   # (token id, logprob), best first


@dataclass
class Finished:
    prompt_tokens: int
    cached_tokens: int          # prompt tokens whose KV came from the prompt cache
    completion_tokens: int
    hit_eos: bool
    seconds: float


class Cancelled(Exception):
    """Raised inside the generation loop (from the streamer) when the client went away."""


@dataclass
class Job:
    ids: list[int]
    generate_kwargs: dict
    emit: object                # callable(event): called from the worker thread
    top_logprobs: int | None = None   # None: no logprobs
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


class _StepHook:
    """The loop's streamer and (when logprobs are asked for) a pass-through logits processor."""

    def __init__(self, job: Job):
        self.job, self.prompt_seen, self.scores, self.count = job, False, None, 0

    def __call__(self, ids, scores):           # logits processor: remember, change nothing
        self.scores = scores[0]
        return scores

    def put(self, value) -> None:
        if not self.prompt_seen:                # the first put is the prompt (transformers' protocol)
            self.prompt_seen = True
            return
        if self.job.cancelled.is_set():
            raise Cancelled()
        token = Token(int(np.asarray(value).reshape(-1)[0]))
        if self.job.top_logprobs is not None and self.scores is not None:
            lp = log_softmax(self.scores)
            token.logprob = float(lp[token.id])
            k = self.job.top_logprobs
            if k:
                best = np.argpartition(-lp, k - 1)[:k]
                best = best[np.argsort(-lp[best], kind="stable")]
                token.top = [(int(i), float(lp[i])) for i in best]
        self.count += 1
        self.job.emit(token)

    def end(self) -> None:
        pass


class PromptCache:
    """KV caches of recent sequences (prompt + answer), keyed by their token ids; ``take`` hands out the
    one sharing the longest prefix with a new prompt, cropped to that prefix (llama.cpp's
    ``cache_prompt``, mlx-lm's ``LRUPromptCache``). Least recently used entries go first."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self.entries: OrderedDict[int, tuple[np.ndarray, object]] = OrderedDict()
        self._next = 0

    def take(self, ids: list[int]):
        """(cache holding a prefix of ids, its length), or (None, 0). At least one prompt token is left
        for the forward (generate needs it to produce the first logits)."""
        if not self.entries:
            return None, 0
        target = np.asarray(ids)
        best, best_len = None, 0
        for key, (seq, _) in self.entries.items():
            n = min(len(seq), len(target))
            diff = np.flatnonzero(seq[:n] != target[:n])
            common = int(diff[0]) if diff.size else n
            if common > best_len:
                best, best_len = key, common
        reuse = min(best_len, len(ids) - 1)
        if best is None or reuse < 1:
            return None, 0
        _, cache = self.entries.pop(best)
        try:
            cache.crop(reuse)
        except CacheError:    # a sliding-window layer moved past the prefix: recompute
            return None, 0
        return cache, reuse

    def put(self, seq, cache) -> None:
        if self.capacity <= 0:
            return
        self.entries[self._next] = (np.asarray(seq, dtype=np.int64), cache)
        self._next += 1
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)


class Metrics:
    """Counters for /metrics; updated by the worker and the app, read as Prometheus text."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {}          # (endpoint, status) -> count
        self.prompt_tokens = self.cached_tokens = self.completion_tokens = 0
        self.generation_seconds = 0.0
        self.cancelled = self.generations = 0
        self.processing = 0

    def count_request(self, endpoint: str, status: int) -> None:
        with self.lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1

    def render(self, queue_depth: int) -> str:
        """Prometheus text exposition format 0.0.4."""
        with self.lock:
            rate = self.completion_tokens / self.generation_seconds if self.generation_seconds else 0.0
            rows = [
                ("pycohere_requests_total", "counter", "HTTP requests answered, by endpoint and status",
                 [({"endpoint": e, "status": str(s)}, n) for (e, s), n in sorted(self.requests.items())]),
                ("pycohere_prompt_tokens_total", "counter", "prompt tokens of finished generations",
                 [({}, self.prompt_tokens)]),
                ("pycohere_prompt_cache_tokens_total", "counter", "prompt tokens reused from the prompt cache",
                 [({}, self.cached_tokens)]),
                ("pycohere_completion_tokens_total", "counter", "tokens generated", [({}, self.completion_tokens)]),
                ("pycohere_generation_seconds_total", "counter", "seconds spent generating",
                 [({}, self.generation_seconds)]),
                ("pycohere_tokens_per_second", "gauge", "generated tokens per second of generation time",
                 [({}, rate)]),
                ("pycohere_generations_total", "counter", "generations run to the end", [({}, self.generations)]),
                ("pycohere_generations_cancelled_total", "counter", "generations stopped because the client left",
                 [({}, self.cancelled)]),
                ("pycohere_queue_depth", "gauge", "requests waiting for the worker", [({}, queue_depth)]),
                ("pycohere_requests_processing", "gauge", "requests being generated", [({}, self.processing)]),
            ]
        out = []
        for name, kind, help_, samples in rows:
            out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
            for labels, value in samples:
                lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
                out.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")
        return "\n".join(out) + "\n"


class Engine:
    """Owns the model and tokenizer; runs jobs on one worker thread, in arrival order."""

    def __init__(self, model, tokenizer, model_name: str, max_queue: int = 64, prompt_cache_size: int = 4):
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.context_length = int(model.config.max_position_embeddings)
        self.token_bytes = TokenBytes(tokenizer)
        self.metrics = Metrics()
        self.prompt_cache = PromptCache(prompt_cache_size)
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.created = int(time.time())
        self._thread = threading.Thread(target=self._work, name="pycohere-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise RequestError(f"the server is busy: {self.queue.maxsize} requests are already waiting; retry later",
                               status=503, type="server_error", code="server_busy") from None

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            if job.cancelled.is_set():
                with self.metrics.lock:
                    self.metrics.cancelled += 1
                continue
            with self.metrics.lock:
                self.metrics.processing += 1
            try:
                job.emit(self.run(job))
            except Cancelled:
                with self.metrics.lock:
                    self.metrics.cancelled += 1
            except Exception as exc:   # reported to that request; the worker keeps serving
                log.exception("generation failed")
                job.emit(exc)
            finally:
                with self.metrics.lock:
                    self.metrics.processing -= 1

    def run(self, job: Job) -> Finished:
        """Generate for one job on this thread (the worker calls it; so can a benchmark)."""
        hook = _StepHook(job)
        cache, reused = self.prompt_cache.take(job.ids)
        t0 = time.perf_counter()
        out = self.model.generate([job.ids], streamer=hook, past_key_values=cache, return_dict_in_generate=True,
                                  logits_processor=[hook] if job.top_logprobs is not None else None,
                                  tokenizer=self.tokenizer, **job.generate_kwargs)
        seconds = time.perf_counter() - t0
        seq = out.sequences[0]
        # the cache holds every token but the last one (it was never fed back)
        self.prompt_cache.put(seq[:-1], out.past_key_values)
        n = len(seq) - len(job.ids)
        eos = job.generate_kwargs.get("eos_token_id")
        hit_eos = bool(n) and int(seq[-1]) in (eos if isinstance(eos, list) else [eos])
        with self.metrics.lock:
            m = self.metrics
            m.prompt_tokens += len(job.ids)
            m.cached_tokens += reused
            m.completion_tokens += n
            m.generation_seconds += seconds
            m.generations += 1
        return Finished(len(job.ids), reused, n, hit_eos, seconds)
