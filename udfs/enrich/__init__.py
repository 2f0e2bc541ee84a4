"""The enrich stage's core: settings, row filter, prompt templates, LLM clients,
the job-wide budget, answer cache and claims, and the batch runner both engines call."""
