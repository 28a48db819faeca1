"""The world's exact code lengths of an experiment's held-out sets: the normaliser of a compression rate.

A held-out document of the world carries its exact -log p (`nats`, written by `elasticity world` under the
distribution its file samples: a component, or the mixture). A prompt/response pair's truth is the response's
conditional probability under the component that wrote it,

    -log p(response | prompt, c) = -(log p(prompt + response | c) - log P(a document of c starts with prompt))

where c is the one component that can produce the whole document (the components' supports are disjoint).
Divided by the tokens a model predicts (`data.tokenize`: response + EOS, or text + EOS), it is the entropy rate
that a model's bits/token on the same set is compared with: their difference is the model's excess code length.
"""

from __future__ import annotations

import math

from elasticity.errors import UserError
from elasticity.world.likelihood import log_likelihood, log_likelihoods
from elasticity.world.world import World


def pair_nats(world: World, prompt: str, response: str) -> tuple[str, float]:
    """(the component that wrote prompt + response, -log p(response | prompt, component) in nats).

    Raises:
        UserError: the pair is not a document of exactly one component (it is not from this world).
    """
    lls = log_likelihoods(world, prompt + response)
    possible = [c for c, v in lls.items() if v > -math.inf]
    if len(possible) != 1:
        raise UserError(f"the pair {prompt[:40]!r}... is not a document of this world (components that can write "
                        f"it: {possible or 'none'}); normalise by the base model instead (--normaliser base)")
    c = possible[0]
    return c, log_likelihood(world, prompt, c, prefix=True) - lls[c]
