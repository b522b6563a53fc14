"""The Markdown report: the pipeline's report, and the pull request's report against a base revision."""
