"""SAM 2 itself: model and weights, slice transform, features, prompts, the session."""
