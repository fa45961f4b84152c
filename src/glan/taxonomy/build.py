"""Drafting a taxonomy with the teacher, breadth first, as the paper did (section 2.1).

Level by level, each in its own calls: one call lists the fields of human knowledge and
capabilities; then one call per field lists its sub-fields; then one call per sub-field lists its
disciplines (``depth`` sets how many levels; 3 is the paper's field > sub-field > discipline).
After each level, names that repeat across branches are merged (names compared ignoring case,
spacing and punctuation; the first one, in breadth-first order, stays) before the next level is
asked, so a repeated branch costs nothing. Every drafted node starts ``unreviewed``.

The lists are asked for as JSON at once (``response_format``), not free text then JSON as the
paper's subjects and syllabi are: a list of short names with a sentence each has no long-form
content for the JSON to spoil, and one call per node keeps the build cheap and easy to resume.

A build keeps its calls and answers in a store next to the output (``FILE.glan-build/glan.db``)
with the same design as a run directory: every reply is committed before it is used, so a build
stopped at any moment and run again sends no request whose reply is already stored.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from glan.config import ConfigError, resolve_endpoint
from glan.costs.prices import PriceTable
from glan.costs.progress import NoProgress, RunStats, StageStats
from glan.engine.local import Limits, LocalEngine
from glan.ids import stable_id, stable_int
from glan.items import Item, NewItem
from glan.languages import language_name
from glan.llm.client import OpenAIClient
from glan.llm.negotiation import StructuredOutput, stored_negotiator
from glan.llm.types import ChatRequest
from glan.prompts import Prompts, prompts_for
from glan.run.store import Store
from glan.stages.base import FlatWorkflow, Teacher, user
from glan.stages.subjects import normalise
from glan.taxonomy.edit import NodePath, write
from glan.taxonomy.model import Review, Taxonomy, TaxonomyNode

_MARKER = re.compile(r"^(?:\d{1,3}[.)]\s+|[-*•]\s+)")
STAGE = "taxonomy"
KIND = "taxonomy"
LEVELS = ("fields", "sub-fields", "sub-sub-fields")


class BuildConfig(BaseModel):
    """What a build asks for, and how."""

    model_config = ConfigDict(extra="forbid")

    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key: str | None = Field(default=None, exclude=True, repr=False)
    structured_output: StructuredOutput = "auto"
    language: str | None = None  # of the node names and descriptions; None: English
    depth: int = Field(default=3, ge=1, le=4)  # levels: 3 = field > sub-field > discipline
    max_fields: int = Field(default=10, ge=1)
    max_children: int = Field(default=8, ge=1)  # per node, below the fields
    temperature: float | None = Field(default=0.7, ge=0, le=2)
    top_p: float | None = Field(default=0.95, gt=0, le=1)
    max_tokens: int | None = Field(default=2048, gt=0)
    seed: int = 0
    send_seed: bool = True
    prompts_dir: Path | None = None
    concurrency: int = Field(default=8, ge=1)
    timeout: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=6, ge=0)
    retry_backoff: float = Field(default=1.0, ge=0)
    repair_attempts: int = Field(default=2, ge=0)

    @field_validator("language")
    @classmethod
    def _language_name(cls, value: str | None) -> str | None:
        return language_name(value) if value and value.strip() else None

    @classmethod
    def make(cls, **values: Any) -> BuildConfig:
        """From options that may be None (not given); a bad value is a ``ConfigError``."""
        try:
            return cls.model_validate({k: v for k, v in values.items() if v is not None})
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
            )
            raise ConfigError(f"invalid build option: {problems}") from None

    def signature(self, prompts: Prompts) -> str:
        """Changes when what is asked changes: the store's items are keyed by it."""
        shaping = self.model_dump(
            include={
                "model",
                "language",
                "depth",
                "max_fields",
                "max_children",
                "temperature",
                "top_p",
                "max_tokens",
                "seed",
                "send_seed",
            }
        )
        # "/2": items are rooted per level since the build runs on the shared engine; replies
        # are keyed by their request, so an older build's are still found
        return stable_id("taxonomy-build/2", shaping, prompts.version)


class DraftNode(BaseModel):
    name: str = Field(description="a few words, as in a course catalogue; no numbering")
    description: str = Field(description="one sentence on what it covers")


class DraftList(BaseModel):
    nodes: list[DraftNode]

    @field_validator("nodes")
    @classmethod
    def _named(cls, nodes: list[DraftNode]) -> list[DraftNode]:
        if not any(clean(n.name) for n in nodes):
            raise ValueError("the list needs at least one named node")
        return nodes


@dataclass
class Draft:
    path: NodePath
    description: str | None
    neighbours: list[str] = field(default_factory=list)  # its siblings' names, for the prompt
    children: list[Draft] | None = None  # None: a leaf (or not asked yet)


@dataclass
class BuildResult:
    taxonomy: Taxonomy | None  # None when some calls failed: run the same build again
    levels: list[int] = field(default_factory=list)  # nodes kept per level
    merged: list[tuple[NodePath, NodePath]] = field(default_factory=list)  # (dropped, kept)
    pruned: list[NodePath] = field(default_factory=list)  # inner nodes left without children
    failed: list[tuple[NodePath, str]] = field(default_factory=list)
    sent: int = 0  # requests sent now
    reused: int = 0  # nodes answered by an earlier (stopped) build
    tokens: tuple[int, int] = (0, 0)
    cost: float | None = 0.0  # USD at list prices; None for a model not in the price table


def clean(name: str) -> str:
    """A drafted name as a node name: one line, no '>' (the path separator), no list marker."""
    return _MARKER.sub("", " ".join(name.replace(">", "/").split())).strip()


def default_work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".glan-build")


def build(
    config: BuildConfig,
    out: Path,
    *,
    work_dir: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> BuildResult:
    """Draft a taxonomy into ``out`` (written only when every call succeeded)."""
    return asyncio.run(abuild(config, out, work_dir=work_dir, log=log))


async def abuild(
    config: BuildConfig,
    out: Path,
    *,
    work_dir: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> BuildResult:
    base_url, api_key = resolve_endpoint(config.base_url, config.api_key)
    prompts = prompts_for(config.prompts_dir)
    store = Store.open(work_dir or default_work_dir(out))
    prices = PriceTable.load()
    stats = RunStats(prices=prices, stages={STAGE: StageStats()})
    try:
        store.log_invocation(config.model_dump(mode="json"))
        store.commit()
        negotiator = stored_negotiator(config.structured_output, base_url, store)
        client = OpenAIClient.for_settings(config, base_url, api_key, negotiator=negotiator)
        async with client:
            result = await _Builder(config, prompts, store, client, stats, log).run()
    finally:
        store.close()
    spent = stats.stages[STAGE]
    result.sent = spent.requests
    result.tokens = (spent.tokens_in, spent.tokens_out)
    known = prices.cost(config.model, 0, 0) is not None
    result.cost = spent.cost if known else None
    if result.taxonomy is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write(result.taxonomy, out)  # checked, then replaced atomically
    return result


class _Builder:
    def __init__(
        self,
        config: BuildConfig,
        prompts: Prompts,
        store: Store,
        client: OpenAIClient,
        stats: RunStats,
        log: Callable[[str], None],
    ) -> None:
        self.config = config
        self.prompts = prompts
        self.store = store
        self.client = client
        self.stats = stats
        self.log = log
        self.signature = config.signature(prompts)

    async def run(self) -> BuildResult:
        config = self.config
        root = Draft(path=(), description=None)
        result = BuildResult(taxonomy=None)
        seen: dict[str, NodePath] = {}
        parents = [root]
        for level in range(config.depth):
            label = _label(level, config.depth)
            calls = f"{len(parents)} call{'s' * (len(parents) != 1)}"
            self.log(f"level {level + 1}/{config.depth}: {label} ({calls})")
            answers = await self._ask_level(parents, level, result)
            if result.failed:
                return result
            cap = config.max_fields if level == 0 else config.max_children
            parents = merge_level(parents, answers, cap, seen, result.merged)
            result.levels.append(len(parents))
        result.pruned = prune(root)
        if not root.children:
            result.failed.append(((), "nothing was left after merging repeated names"))
            return result
        result.taxonomy = Taxonomy(
            name=None,
            description=(
                f"Drafted by {config.model} with glan taxonomy build"
                + (f", in {config.language}" if config.language else "")
                + ". Every node starts unreviewed: vote with 'glan taxonomy review', apply the"
                " votes with 'glan taxonomy merge'."
            ),
            fields=[_node(child) for child in root.children or []],
        )
        return result

    async def _ask_level(
        self, parents: list[Draft], level: int, result: BuildResult
    ) -> list[list[dict[str, Any]]]:
        """One level's calls, on the shared engine (stored, resumed, retried, rate-limited)."""
        nodes = [self._item(parent, level, seq) for seq, parent in enumerate(parents)]
        stage = DraftStage(
            self.config, self.prompts, level, dict(zip((n.id for n in nodes), parents, strict=True))
        )
        engine = LocalEngine(
            _Level(stage),
            Limits.of(self.config),
            self.prompts,
            self.store,
            self.client,
            None,
            self.stats,
            NoProgress(),
        )
        engine.prepare(nodes)
        result.reused += sum(
            1 for node in nodes if (stored := self.store.get(node.id)) and stored.status == "done"
        )
        await engine.run()
        answers = []
        for node, parent in zip(nodes, parents, strict=True):
            done = self.store.get(node.id)
            if done is not None and done.status == "done":
                answers.append(done.result)
            else:
                result.failed.append((parent.path, (done and done.error) or "not asked"))
                answers.append([])
        return answers

    def _item(self, parent: Draft, level: int, seq: int) -> NewItem:
        return NewItem(
            id=stable_id(self.signature, "taxonomy", *parent.path),
            kind=KIND,
            parent_id=None,
            root=stable_id(self.signature, "level", level),
            seq=seq,
            data={"path": list(parent.path), "level": level, "description": parent.description},
        )


class DraftStage:
    """One call per node of a level: its children (fields, sub-fields or disciplines)."""

    item_kind: ClassVar[str] = KIND
    name: ClassVar[str] = STAGE
    output: ClassVar[bool] = False

    def __init__(
        self, config: BuildConfig, prompts: Prompts, level: int, drafts: dict[str, Draft]
    ) -> None:
        self.config = config
        self.prompts = prompts
        self.level = level
        self.drafts = drafts  # by item id: the nodes whose children this level asks for

    def request(self, node: Item, parent: Item) -> ChatRequest:
        config = self.config
        draft = self.drafts[node.id]
        if self.level == 0:
            text = self.prompts.render(
                "taxonomy_fields",
                count=config.max_fields,
                leaves=config.depth == 1,
                language=config.language,
            )
        else:
            text = self.prompts.render(
                "taxonomy_children",
                path=list(draft.path),
                description=draft.description,
                others=draft.neighbours,
                kind="disciplines" if self.level == config.depth - 1 else "sub-fields",
                count=config.max_children,
                language=config.language,
            )
        seed = stable_int(config.seed, "taxonomy", *draft.path, bits=31)
        return ChatRequest(
            model=config.model,
            messages=(user(text),),
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_tokens,
            seed=seed if config.send_seed else None,
        )

    async def run(self, node: Item, parent: Item, teacher: Teacher) -> Any:
        listing = await teacher.json(self.request(node, parent), DraftList)
        return [item.model_dump() for item in listing.nodes]

    def expand(self, node: Item) -> list[NewItem]:
        return []  # the next level is asked once this one is merged


class _Level(FlatWorkflow):
    """A level of the build as a workflow: one stage, nothing grows from it by itself."""

    signature_key = "expansion:taxonomy"

    def __init__(self, stage: DraftStage) -> None:
        self.stages: dict[str, Any] = {stage.item_kind: stage}

    def expansion_signature(self) -> str:
        return STAGE


def merge_level(
    parents: list[Draft],
    answers: list[list[dict[str, Any]]],
    cap: int,
    seen: dict[str, NodePath],
    merged: list[tuple[NodePath, NodePath]],
) -> list[Draft]:
    """Give each parent its drafted children (at most ``cap``), leaving out names already
    ``seen`` anywhere in the tree (noted in ``merged`` as (left out, kept)); returns the
    children of all parents, in breadth-first order."""
    children: list[Draft] = []
    for parent, listing in zip(parents, answers, strict=True):
        kept: list[Draft] = []
        for item in listing[:cap]:
            name = clean(str(item.get("name") or ""))
            if not name:
                continue
            path = (*parent.path, name)
            key = normalise(name)
            if key in seen:
                merged.append((path, seen[key]))
                continue
            seen[key] = path
            description = " ".join(str(item.get("description") or "").split()) or None
            kept.append(Draft(path=path, description=description))
        for child in kept:
            child.neighbours = [c.path[-1] for c in kept if c is not child]
        parent.children = kept
        children.extend(kept)
    return children


def prune(root: Draft) -> list[NodePath]:
    """Remove inner nodes left without children (every child merged away); returns them."""
    pruned: list[NodePath] = []

    def keep(draft: Draft) -> bool:
        if draft.children is None:
            return True
        draft.children = [child for child in draft.children if keep(child)]
        if not draft.children and draft.path:
            pruned.append(draft.path)
            return False
        return True

    keep(root)
    return pruned


def _label(level: int, depth: int) -> str:
    if level == depth - 1:
        return "disciplines" if level else "fields (each a discipline)"
    return LEVELS[min(level, len(LEVELS) - 1)]


def _node(draft: Draft) -> TaxonomyNode:
    return TaxonomyNode(
        name=draft.path[-1],
        description=draft.description,
        review=Review(state="unreviewed"),
        children=None if draft.children is None else [_node(c) for c in draft.children],
    )
