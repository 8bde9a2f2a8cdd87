"""The local web app (`tunelab ui`): run directories, comparisons, the playground and human rating."""
