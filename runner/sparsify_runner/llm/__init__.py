"""Large language models (``--use-case text-generation``): one-shot through llm-compressor.

The product's own part is the policy (``levels``: the optim level as a perplexity budget, the
candidate schemes per deployment target), the measurement (``perplexity``: held-out windows
with a bootstrap interval) and the choice (``choose``); llm-compressor's ``oneshot`` does the
compression (``compress``). ``pathway.run`` ties them together. docs/llm.md has the details.
"""
