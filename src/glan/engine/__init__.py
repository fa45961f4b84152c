"""Engines run the stages: scheduling, concurrency, retries, persistence and progress."""
