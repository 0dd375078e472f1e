"""Model loading and log-probs: Hugging Face models, vLLM engines."""
