"""The GLAN stages. Each knows its domain and nothing about I/O: it builds requests, asks an
injected ``Teacher`` and turns replies into results and child items."""

from glan.stages.answers import AnswerStage
from glan.stages.base import Stage, Teacher
from glan.stages.questions import QuestionStage
from glan.stages.subjects import SubjectsStage
from glan.stages.syllabus import SyllabusStage

__all__ = ["AnswerStage", "QuestionStage", "Stage", "SubjectsStage", "SyllabusStage", "Teacher"]
