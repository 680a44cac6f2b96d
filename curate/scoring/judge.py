"""Ask the model one question (classify, score, repetition) for many samples.

For every prompt: look in the reply cache; ask the back-end for the misses in batches;
parse each reply; ask once more for the replies that did not parse (the retry repeats
the exchange and asks for the bare answer; a back-end failure is not asked again, the
back-end has its own retries); store what parsed in the cache. A value that
is still None after the retry means "unscored" for the caller.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from curate.scoring.backends import Request, Scorer
from curate.scoring.cache import NullCache, ReplyCache, cache_key

RETRY_HINT = "Your answer could not be read. Reply with only one of: {choices}."


class Judge:
    def __init__(self, scorer: Scorer, prompt_id: str, cache: ReplyCache | NullCache, batch_size: int) -> None:
        self.scorer = scorer
        self.prompt_id = prompt_id
        self.cache = cache
        self.batch_size = batch_size
        self.calls = 0  # back-end requests made (cache misses + retries), for logs and tests

    def _generate(self, requests: list[Request]) -> list[str | None]:
        replies: list[str | None] = []
        for i in range(0, len(requests), self.batch_size):
            chunk = requests[i:i + self.batch_size]
            self.calls += len(chunk)
            replies.extend(self.scorer.generate(chunk))
        return replies

    def ask(self, task: str, prompts: list[list[dict[str, str]]], parse: Callable[[str | None], Any],
            choices: tuple[str, ...]) -> list[Any]:
        """Parsed answers in prompt order (None = no usable answer after one retry)."""
        keys = [cache_key(self.scorer.model_name, self.prompt_id, task, p) for p in prompts]
        cached = self.cache.get_many(sorted(set(keys)))
        answers: list[Any] = [json.loads(cached[k]) if k in cached else None for k in keys]
        todo = [i for i, k in enumerate(keys) if k not in cached]
        unique: dict[str, int] = {}
        for i in todo:  # identical prompts (exact duplicates) are asked once
            unique.setdefault(keys[i], i)
        order = list(unique.values())
        replies = self._generate([Request(prompts[i], choices) for i in order])
        parsed = {keys[i]: parse(r) for i, r in zip(order, replies)}
        # A None reply is a back-end failure that the back-end already retried: not asked again.
        retry = [(i, r) for i, r in zip(order, replies) if parsed[keys[i]] is None and r is not None]
        if retry:
            hint = RETRY_HINT.format(choices=", ".join(choices))
            again = self._generate([Request(prompts[i] + [{"role": "assistant", "content": r or ""},
                                                          {"role": "user", "content": hint}], choices)
                                    for i, r in retry])
            for (i, _), r in zip(retry, again):
                parsed[keys[i]] = parse(r)
        self.cache.put_many({k: json.dumps(v) for k, v in parsed.items() if v is not None})
        for i in todo:
            answers[i] = parsed[keys[i]]
        return answers
