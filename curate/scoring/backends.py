"""One scorer interface, three back-ends: transformers (CPU/GPU), vLLM (GPU), OpenAI-compatible HTTP.

A back-end turns chat requests into reply strings (`generate`) and, for loss-based
cleaning, texts into per-sample mean token losses (`losses`). A reply is None when the
back-end failed for good (server error after retries, timeout); the caller records the
sample as unscored, it never guesses.

`Request.choices` asks for guided (constrained) output: the reply must be one of the
strings. vLLM does this with its structured-output engine, the transformers back-end with
a logits processor that only allows the tokens of the remaining choices, and the HTTP
back-end forwards it to servers that understand it (vLLM's `structured_outputs`/
`guided_choice`) when `options.guided` names the field. Engines are imported inside the
constructors, so importing this module never imports torch, transformers or vllm.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from packing.format import IM_END, IM_START  # ChatML's turn markers, the same the shards use

log = logging.getLogger("curate.score")

DEFAULT_MAX_NEW_TOKENS = 16  # enough for "Score: 7/10" or a domain word


@dataclasses.dataclass(frozen=True)
class Request:
    messages: list[dict[str, str]]
    choices: tuple[str, ...] | None = None


class Scorer:
    """Interface: `generate(requests) -> replies` (None = failed), optional `losses(texts)`."""

    model_name: str = ""

    def generate(self, requests: list[Request]) -> list[str | None]:
        raise NotImplementedError

    def losses(self, texts: list[str]) -> list[float | None]:
        raise NotImplementedError(f"{type(self).__name__} cannot compute per-sample losses")

    def close(self) -> None:
        """Free the engine (GPU memory, connection pools)."""


def chatml(messages: list[dict[str, str]]) -> str:
    """A ChatML prompt for tokenizers that ship no chat template (e.g. base models)."""
    body = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return body + f"{IM_START}assistant\n"


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return chatml(messages)


# ------------------------------------------------------------------------ transformers
def _choice_processor(prompt_len: int, row_choices: list[list[list[int]] | None], eos_id: int):
    """Logits processor: each row may only continue one of its choices' token sequences."""
    import torch
    from transformers import LogitsProcessor

    class ChoiceLogitsProcessor(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            mask = torch.full_like(scores, float("-inf"))
            for i, choices in enumerate(row_choices):
                if choices is None:
                    mask[i] = 0
                    continue
                done = input_ids[i, prompt_len:].tolist()
                n = len(done)
                allowed = {c[n] for c in choices if len(c) > n and c[:n] == done}
                if not allowed or any(c == done for c in choices):
                    allowed.add(eos_id)
                mask[i, sorted(allowed)] = 0
            return scores + mask

    return ChoiceLogitsProcessor()


class TransformersBackend(Scorer):
    """Hugging Face transformers: batched greedy generation, left padding, CPU or GPU."""

    def __init__(self, path: str, options: dict[str, Any] | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        options = options or {}
        self.model_name = path
        self.max_new_tokens = int(options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.max_length = int(options.get("max_length", 2048))
        self.guided = bool(options.get("guided", True))
        device = options.get("device", "auto")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        dtype = getattr(torch, options.get("dtype", "float32" if self.device == "cpu" else "bfloat16"))
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype).to(self.device)
        self.model.eval()
        self.eos_id = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.tok.pad_token_id
        self._choice_ids: dict[tuple[str, ...], list[list[int]]] = {}

    def _choices(self, choices: tuple[str, ...]) -> list[list[int]]:
        if choices not in self._choice_ids:
            self._choice_ids[choices] = [self.tok.encode(c, add_special_tokens=False) for c in choices]
        return self._choice_ids[choices]

    def generate(self, requests: list[Request]) -> list[str | None]:
        import torch

        if not requests:
            return []
        prompts = [render_chat(self.tok, r.messages) for r in requests]
        self.tok.padding_side = "left"
        enc = self.tok(prompts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
                       add_special_tokens=False).to(self.device)
        prompt_len = enc["input_ids"].shape[1]
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False,
                                  "pad_token_id": self.tok.pad_token_id, "eos_token_id": self.eos_id}
        if self.guided and any(r.choices for r in requests):
            from transformers import LogitsProcessorList

            row_choices = [self._choices(r.choices) if r.choices else None for r in requests]
            longest = max(len(c) for rc in row_choices if rc for c in rc)
            kwargs["logits_processor"] = LogitsProcessorList([_choice_processor(prompt_len, row_choices, self.eos_id)])
            if all(rc is not None for rc in row_choices):
                kwargs["max_new_tokens"] = longest + 1
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        return [self.tok.decode(seq[prompt_len:], skip_special_tokens=True).strip() for seq in out]

    def losses(self, texts: list[str]) -> list[float | None]:
        """Mean next-token negative log-likelihood of each text (nats per token)."""
        import torch

        if not texts:
            return []
        self.tok.padding_side = "right"
        enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
                       add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            logits = self.model(**enc).logits[:, :-1].float()
        targets = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        counts = mask.sum(dim=1)
        sums = (nll * mask).sum(dim=1)
        return [float(s / c) if c > 0 else None for s, c in zip(sums.tolist(), counts.tolist())]

    def close(self) -> None:
        del self.model


# ------------------------------------------------------------------------ vLLM
def _vllm_sampling(choices: tuple[str, ...] | None, max_tokens: int, temperature: float):
    from vllm import SamplingParams

    if not choices:
        return SamplingParams(temperature=temperature, max_tokens=max_tokens)
    try:  # vLLM >= 0.10: structured outputs
        from vllm.sampling_params import StructuredOutputsParams

        return SamplingParams(temperature=temperature, max_tokens=max_tokens,
                              structured_outputs=StructuredOutputsParams(choice=list(choices)))
    except ImportError:  # older vLLM: guided decoding
        from vllm.sampling_params import GuidedDecodingParams

        return SamplingParams(temperature=temperature, max_tokens=max_tokens,
                              guided_decoding=GuidedDecodingParams(choice=list(choices)))


class VLLMBackend(Scorer):
    """vLLM's offline engine: one engine per GPU actor, the whole batch in one generate() call."""

    def __init__(self, path: str, options: dict[str, Any] | None = None) -> None:
        from vllm import LLM  # optional extra `gpu`: imported only here

        options = options or {}
        self.model_name = path
        self.max_new_tokens = int(options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.temperature = float(options.get("temperature", 0.0))
        self.guided = bool(options.get("guided", True))
        engine_args = {k: options[k] for k in ("gpu_memory_utilization", "max_model_len", "dtype",
                                               "enforce_eager", "tensor_parallel_size", "max_num_seqs")
                       if k in options}
        self.llm = LLM(model=path, **engine_args)
        self.tok = self.llm.get_tokenizer()

    def generate(self, requests: list[Request]) -> list[str | None]:
        if not requests:
            return []
        prompts = [render_chat(self.tok, r.messages) for r in requests]
        params = [_vllm_sampling(r.choices if self.guided else None, self.max_new_tokens, self.temperature)
                  for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [o.outputs[0].text.strip() if o.outputs else None for o in outputs]

    def losses(self, texts: list[str]) -> list[float | None]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outputs = self.llm.generate(texts, params, use_tqdm=False)
        result: list[float | None] = []
        for o in outputs:
            lps = [entry[tok].logprob for tok, entry in zip(o.prompt_token_ids[1:], (o.prompt_logprobs or [])[1:])
                   if entry and tok in entry]
            result.append(-sum(lps) / len(lps) if lps else None)
        return result

    def close(self) -> None:
        del self.llm


# ------------------------------------------------------------------------ HTTP
class TransientError(Exception):
    """A failure worth retrying: timeout, connection reset, 429 or 5xx."""


class HTTPBackend(Scorer):
    """An OpenAI-compatible server (`vllm serve`, TGI, llama.cpp): POST {endpoint}/chat/completions.

    At most `concurrency` requests are in flight per actor (a thread pool of that size);
    each request gets `timeout_s`, and timeouts, connection errors, 429 and 5xx are retried
    `retries` times with exponential backoff and jitter. Other 4xx fail at once.
    """

    def __init__(self, endpoint: str, model: str | None, options: dict[str, Any] | None = None) -> None:
        options = options or {}
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model_name = model or "default"
        self.concurrency = int(options.get("concurrency", 8))
        self.timeout_s = float(options.get("timeout_s", 60.0))
        self.retries = int(options.get("retries", 2))
        self.backoff_s = float(options.get("backoff_s", 0.5))
        self.max_new_tokens = int(options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.temperature = float(options.get("temperature", 0.0))
        self.guided = options.get("guided") or None  # "structured_outputs" | "guided_choice" | None
        key_env = options.get("api_key_env")
        self.api_key = os.environ.get(key_env) if key_env else None
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="score-http")

    def body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_name, "messages": request.messages,
                                "temperature": self.temperature, "max_tokens": self.max_new_tokens}
        if request.choices and self.guided == "structured_outputs":
            body["structured_outputs"] = {"choice": list(request.choices)}
        elif request.choices and self.guided == "guided_choice":
            body["guided_choice"] = list(request.choices)
        return body

    def _post_once(self, payload: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            if e.code == 429 or e.code >= 500:
                raise TransientError(f"HTTP {e.code}") from None
            raise ValueError(f"HTTP {e.code}: {e.read()[:200]!r}") from None
        except (TimeoutError, socket.timeout, ConnectionError, urllib.error.URLError) as e:
            raise TransientError(f"{type(e).__name__}: {e}") from None
        return data["choices"][0]["message"]["content"] or ""

    def _post(self, request: Request) -> str | None:
        payload = json.dumps(self.body(request)).encode()
        for attempt in range(self.retries + 1):
            try:
                return self._post_once(payload)
            except TransientError as e:
                if attempt == self.retries:
                    log.warning("score: %s failed after %d attempts: %s", self.url, attempt + 1, e)
                    return None
                time.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))
            except (ValueError, KeyError, IndexError, TypeError) as e:
                log.warning("score: %s gave an unusable answer: %s", self.url, e)
                return None
        return None

    def generate(self, requests: list[Request]) -> list[str | None]:
        return list(self.pool.map(self._post, requests))

    def close(self) -> None:
        self.pool.shutdown(wait=False)


def make_scorer(backend: str, model: str | None, endpoint: str | None, options: dict[str, Any]) -> Scorer:
    if backend == "http":
        assert endpoint, "backend http needs stages.score.endpoint"
        return HTTPBackend(endpoint, model, options)
    assert model, f"backend {backend} needs stages.score.model"
    if backend == "vllm":
        return VLLMBackend(model, options)
    return TransformersBackend(model, options)
