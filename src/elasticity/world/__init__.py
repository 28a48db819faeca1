"""The embedded world: a small generative language with known truth (see grammar.py for its structure).

Python API (the modules import neither torch nor transformers until a tokenizer is trained):
    World.build(weights) / load_world(run_dir)           world.py        the mixture; sampling
    log_likelihood(world, text, component, prefix=...)   likelihood.py   exact log p(text | component)
    entropy_rate(world, component, n_docs, seed, count)  likelihood.py   true entropy rate with its SE
    load_oracle(run_dir) -> Oracle                       oracle.py       P(positive | text); score_detailed
    sentiment_consistency(text), consistency_report(...) consistency.py  first sentiment word vs rating
    build_world(Config(), runs_root) -> Run              command.py      writes the datasets (`elasticity world`)
"""
