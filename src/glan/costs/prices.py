"""What tokens cost: a user-editable price table (USD per million tokens), online and batch.

Prompt tokens a server read from its prefix cache (``usage.prompt_tokens_details.cached_tokens``)
are billed at the model's ``cached_input`` rate, its ``input`` rate when the table gives none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from glan.config import ConfigError, problems, yaml_problem
from glan.run.store import Store


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)  # None: the input rate

    @property
    def cached(self) -> float:
        """USD per million prompt tokens read from the provider's prefix cache."""
        return self.input if self.cached_input is None else self.cached_input


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_discount: float = Field(default=0.5, gt=0, le=1)
    models: dict[str, Price] = {}

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """The bundled table, or the user's file."""
        if path is None:
            text = resources.files("glan").joinpath("data/prices.yaml").read_text("utf-8")
            source = "the bundled price table"
        else:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as error:
                raise ConfigError(f"cannot read price table {path}: {error.strerror}") from None
            source = str(path)
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{source} is not valid YAML: {yaml_problem(error)}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{source} is not a valid price table: it must be a mapping such as"
                " 'models: {gpt-4o: {input: 2.5, output: 10}}' (USD per million tokens)"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ConfigError(f"{source} is not a valid price table: {problems(error)}") from None

    def price(self, model: str) -> Price | None:
        """The price of ``model``, or of the longest listed name it starts with."""
        if model in self.models:
            return self.models[model]
        prefixes = [name for name in self.models if model.startswith(name)]
        return self.models[max(prefixes, key=len)] if prefixes else None

    def cost(
        self, model: str, tokens_in: int, tokens_out: int, batch: bool = False, cached: int = 0
    ) -> float | None:
        """USD, or None for a model the table does not know. ``cached``: how many of the
        ``tokens_in`` the server read from its prefix cache."""
        price = self.price(model)
        if price is None:
            return None
        cached = max(0, min(cached, tokens_in))
        usd = (
            (tokens_in - cached) * price.input + cached * price.cached + tokens_out * price.output
        ) / 1e6
        return usd * self.batch_discount if batch else usd


# (stage, model, batch, calls, tokens in, tokens out, cached tokens in), as Store.usage gives it
Usage = tuple[str, str, bool, int, int, int, int]


@dataclass
class StageSpend:
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    tokens_cached: int = 0  # of tokens_in, read from the provider's prefix cache

    @property
    def cached_share(self) -> float:
        """The share of prompt tokens read from the provider's prefix cache."""
        return self.tokens_cached / self.tokens_in if self.tokens_in else 0.0


def spend_by_stage(
    usage: Iterable[Usage], table: PriceTable | None = None
) -> dict[str, StageSpend]:
    """Calls, tokens and USD per stage of usage rows, from one store or several sources (a Ray
    run's glan.db and its Parquet calls); models missing from the table count as free."""
    table = table or PriceTable.load()
    spent: dict[str, StageSpend] = {}
    for stage, model, batch, calls, tokens_in, tokens_out, cached in usage:
        entry = spent.setdefault(stage, StageSpend())
        entry.calls += calls
        entry.tokens_in += tokens_in
        entry.tokens_out += tokens_out
        entry.tokens_cached += cached
        entry.cost += table.cost(model, tokens_in, tokens_out, batch, cached) or 0.0
    return spent


def total_spent(usage: Iterable[Usage], table: PriceTable) -> float:
    """USD of every reply of ``usage``; models missing from the table count as free."""
    return sum(spend.cost for spend in spend_by_stage(usage, table).values())


def cost_by_stage(store: Store, table: PriceTable | None = None) -> dict[str, float]:
    """USD spent per stage so far; models missing from the table count as free."""
    return {stage: spend.cost for stage, spend in spend_by_stage(store.usage(), table).items()}
