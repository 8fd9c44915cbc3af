"""A self-contained demo: a local upstream that changes over time, and an app that follows it."""
