"""One router per resource: jobs, batches, OpenAI images, health."""
