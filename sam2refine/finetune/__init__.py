"""Parameter-efficient fine-tuning of SAM 2 with simulated prompts."""
