"""Adapters from real diffusers pipelines (+ prompts) to search chains (:class:`search.chain.SolverChain`)."""
