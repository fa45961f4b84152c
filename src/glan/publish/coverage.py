"""Coverage: how many of a run's questions drew on each class session and key concept of each
syllabus (``glan status --coverage``, and the report). Read through the run interface, from the
finished syllabi and the rows' lineage, so local and Ray runs alike."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from glan.run import Run


@dataclass
class SubjectCoverage:
    discipline: str
    subject: str
    level: str
    sessions: Counter[str] = field(default_factory=Counter)  # title -> questions
    concepts: Counter[str] = field(default_factory=Counter)  # key concept -> questions
    questions: int = 0

    @property
    def sessions_used(self) -> int:
        return sum(1 for n in self.sessions.values() if n)

    @property
    def concepts_used(self) -> int:
        return sum(1 for n in self.concepts.values() if n)


def coverage(run: Run) -> list[SubjectCoverage]:
    """Per subject with a syllabus: every session and key concept, with the questions (rows)
    that drew on it; by discipline and subject."""
    subjects: dict[tuple[str, str, str], SubjectCoverage] = {}
    for item in run.store.nodes("subject", "done"):
        key = _key(item.data)
        found = subjects.setdefault(key, SubjectCoverage(*key))
        for session in (item.result or {}).get("sessions") or []:
            found.sessions[session["title"]] += 0
            for concept in session.get("key_concepts") or []:
                found.concepts[concept] += 0
    for _, row in run.rows():
        meta = row.get("meta") or {}
        found = subjects.get(_key(meta))
        if found is None:
            continue
        found.questions += 1
        found.sessions.update(meta.get("sessions") or [])
        found.concepts.update(dict.fromkeys(meta.get("key_concepts") or [], 1))
    return sorted(subjects.values(), key=lambda s: (s.discipline, s.subject, s.level))


def _key(data: dict[str, Any]) -> tuple[str, str, str]:
    return (str(data.get("discipline")), str(data.get("subject")), str(data.get("level")))
