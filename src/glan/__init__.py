"""glan: GLAN instruction-tuning data almost from scratch."""
