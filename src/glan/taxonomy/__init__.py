"""The taxonomy of human knowledge the run walks: the tree (model), editing, checking, review,
and the LLM-drafted build."""

from glan.taxonomy.model import Discipline, Taxonomy, TaxonomyError, TaxonomyNode

__all__ = ["Discipline", "Taxonomy", "TaxonomyError", "TaxonomyNode"]
