"""``--local-model``: llama.cpp's server on 127.0.0.1 as the teacher while a command runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from glan.cli.common import err
from glan.config import ConfigError, GenerateConfig
from glan.llm.local_server import BUNDLED_GGUF, LocalServer


@contextmanager
def local_teacher(model: str | None, options: dict[str, Any]) -> Iterator[LocalServer | None]:
    """With ``--local-model``: llama.cpp's server on 127.0.0.1 serving that GGUF (the bundled
    SmolLM2 when none is named) is the teacher while the command runs, one request at a time
    unless --concurrency says otherwise; ``options`` are pointed at it. It is stopped however the
    command ends (Ctrl-C included)."""
    if model is None:
        yield None
        return
    if options.get("base_url"):
        raise ConfigError("--local-model and --base-url do not go together; choose one")
    # 8192 tokens of context: a stage's default max_tokens (4096) plus its prompt fit
    server = LocalServer(model or None, n_ctx=8192)
    err.print(f"starting llama.cpp's server with {server.model} ...")
    with server:
        small = SMALL_MODEL if server.model.name == BUNDLED_GGUF else ""
        err.print(
            f"local teacher: {server.alias} at {server.base_url}, ready in"
            f" {server.started_in:.1f} s{small}"
        )
        options.update(base_url=server.base_url, api_key="local")
        options["concurrency"] = options.get("concurrency") or 1
        options["model"] = options.get("model") or server.alias
        options["answer_model"] = options.get("answer_model") or options["model"]
        yield server


# Replies of the bundled 135M model, which often writes on until max_tokens: the paper's 4096
# tokens per syllabus take many minutes at its 5-20 tokens/s, and are not better for it.
BUNDLED_MAX_TOKENS = {"subjects": 256, "syllabus": 512, "question": 128, "answer": 256}


def capped_for_the_bundled_model(settings: GenerateConfig) -> GenerateConfig:
    """Each stage's max_tokens at most BUNDLED_MAX_TOKENS, unless the config file set it."""
    stages, update = settings.stages, {}
    for name, cap in BUNDLED_MAX_TOKENS.items():
        stage = getattr(stages, name)
        given = (
            "stages" in settings.model_fields_set
            and name in stages.model_fields_set
            and "max_tokens" in stage.model_fields_set
        )
        if not given:
            update[name] = stage.model_copy(
                update={"max_tokens": min(stage.max_tokens or cap, cap)}
            )
    if update:
        caps = "/".join(str(BUNDLED_MAX_TOKENS[name]) for name in BUNDLED_MAX_TOKENS)
        err.print(
            f"the bundled model's replies are capped at {caps} tokens (subjects/syllabus/question/"
            "answer); stages.NAME.max_tokens in a --config file sets them"
        )
    return settings.model_copy(update={"stages": stages.model_copy(update=update)})


SMALL_MODEL = "; a 135M model shows the pipeline working, not the quality of the data"
