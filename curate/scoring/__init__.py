"""LLM scoring: prompt templates, reply parsing, a reply cache and model back-ends.

Nothing here imports vllm, torch or transformers at import time; back-ends import their
engine when they are built (inside a Ray actor's setup()).
"""
