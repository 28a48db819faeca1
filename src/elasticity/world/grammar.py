"""The world's three components as one PCFG with roots `$neutral`, `$positive` and `$negative`.

Structure, from shallow to deep:
- *word choice*: every slot (adjective, title, companion, food, ...) draws from a Zipf-Mandelbrot mass
  p(r) ~ (r + b)^-a over its rank-ordered list; two slots of one sentence that draw from the same list
  ("$food and $food2") never repeat a word;
- *sentence templates*: each sentence type picks a template with the same Zipf masses;
- *document latents*, chosen once at the top and visible in every sentence they touch: a review's sentiment
  (the component), its intensity (strong/mild: which adjectives, verdicts and rating numbers), its genre (the
  title, the genre word, genre-specific aspects, the recommendation), a fixed order of aspects, each present
  at most once; a neutral piece's topic, and for the town topic the town's name, repeated at the end.

Every latent is revealed by the text (the title fixes the genre, the rating fixes sentiment and intensity,
the intro fixes topic and town), and sentences of different slots never coincide, so each document has
exactly one derivation: its probability is the product of the rule probabilities used to sample it.
"""

from __future__ import annotations

from itertools import permutations

from elasticity.world import lexicon as L
from elasticity.world.pcfg import Grammar

ROOTS = ("neutral", "positive", "negative")
INTENSITIES = ("strong", "mild")
# Nonterminals that derive exactly one sentence (the oracle's per-sentence fallback scores sentences with them).
SENTENCE_PREFIXES = ("$view|", "$plotsent|", "$verdict|", "$asp|", "$rec|", "$rating|", "$intro|", "$nsent|",
                     "$nclose|")


def zipf_weights(n: int, a: float, b: float) -> list[float]:
    """Zipf-Mandelbrot masses p(r) ~ (r + b)^-a for ranks r = 1..n, normalised.

    Masses 1 and 1/2, normalised:

    >>> [round(w, 6) for w in zipf_weights(2, 1.0, 0.0)]
    [0.666667, 0.333333]
    """
    w = [(r + b) ** -a for r in range(1, n + 1)]
    total = sum(w)
    return [x / total for x in w]


class _Builder:
    """Collects rules; word lists are remembered so that templates can draw distinct pairs from them."""

    def __init__(self, a: float, b: float):
        self.a, self.b = a, b
        self.rules: dict[str, list[tuple[float, tuple[str, ...]]]] = {}
        self.lists: dict[str, list[tuple[float, tuple[str, ...]]]] = {}

    def define(self, nt: str, alts: list[tuple[float, tuple[str, ...]]]) -> str:
        if nt in self.rules:
            return nt
        merged: dict[tuple[str, ...], float] = {}
        for w, rhs in alts:
            if rhs in merged:  # two ways to the same string would make the derivation ambiguous
                raise ValueError(f"{nt}: duplicate right-hand side {' '.join(rhs)!r}")
            merged[rhs] = w
        total = sum(merged.values())
        self.rules[nt] = [(w / total, rhs) for rhs, w in merged.items()]
        return nt

    def words(self, nt: str, items: tuple[str, ...] | list[str]) -> str:
        """A slot filled from `items` (each a phrase of space-separated tokens) with Zipf masses."""
        alts = [(w, tuple(item.split())) for w, item in zip(zipf_weights(len(items), self.a, self.b), items)]
        self.lists[nt] = alts
        return self.define(nt, alts)

    def optional(self, nt: str, p: float, rhs: tuple[str, ...]) -> str:
        return self.define(nt, [(p, rhs), (1.0 - p, ())])

    def templates(self, nt: str, templates: tuple[str, ...] | list[str], slots: dict[str, str]) -> str:
        """A sentence slot: Zipf over `templates`; `$x` becomes the slot NT `slots['x']`; a `$x2` next to a
        `$x` draws a second, different word from the same list (the pair is written out inline)."""
        alts: list[tuple[float, tuple[str, ...]]] = []
        for w, tpl in zip(zipf_weights(len(templates), self.a, self.b), templates):
            tokens = tpl.split()
            pair = next((t[1:-1] for t in tokens if t.startswith("$") and t.endswith("2")), None)
            if pair is None:
                alts.append((w, tuple(slots[t[1:]] if t.startswith("$") else t for t in tokens)))
                continue
            items = self.lists[slots[pair]]
            norm = 1.0 - sum(p * p for p, _ in items)
            for (p, u), (q, v) in permutations(items, 2):
                rhs: list[str] = []
                for t in tokens:
                    if t == f"${pair}":
                        rhs.extend(u)
                    elif t == f"${pair}2":
                        rhs.extend(v)
                    else:
                        rhs.append(slots[t[1:]] if t.startswith("$") else t)
                alts.append((w * p * q / norm, tuple(rhs)))
        return self.define(nt, alts)


def _reviews(B: _Builder) -> None:
    g_weights = zipf_weights(len(L.GENRES), B.a, B.b)
    common = {name: B.words(f"${name}", getattr(L, name.upper()))
              for name in ("when", "companion", "venue", "medium", "period", "director")}
    for g in L.GENRES:
        slots = dict(common, title=B.words(f"$title|{g}", L.TITLES[g]),
                     genre=B.words(f"$genre|{g}", (L.GENRE_WORD[g][0],)),
                     genres=B.words(f"$genres|{g}", (L.GENRE_WORD[g][1],)),
                     plot=B.words(f"$plot|{g}", L.PLOTS[g]))
        view = B.templates(f"$view|{g}", L.VIEWINGS, slots)
        plot = B.templates(f"$plotsent|{g}", L.PLOT_FRAMES, slots)
        B.define(f"$opening|{g}", [(1 - L.PLOT_PROB, (view,)), (L.PLOT_PROB, (view, plot))])
        for s in ("positive", "negative"):
            rec = B.templates(f"$rec|{s}|{g}", L.RECOMMEND[s], slots)
            B.optional(f"$optrec|{s}|{g}", L.RECOMMEND_PROB, (rec,))
    for s in ("positive", "negative"):
        for i in INTENSITIES:
            adj = B.words(f"$adj|{s}|{i}", L.ADJECTIVES[(s, i)])
            adverb = B.words(f"$adverb|{i}", L.ADVERBS[i])
            B.words(f"$verdict|{s}|{i}", L.VERDICTS[(s, i)])
            nums = L.RATINGS[(s, i)]
            rating_slots = {"n": B.words(f"$n|{s}|{i}", nums),
                            "N": B.words(f"$N|{s}|{i}", tuple(n.capitalize() for n in nums))}
            B.templates(f"$rating|{s}|{i}", L.RATING_TEMPLATES, rating_slots)
            slot_phrases = dict(L.GENERAL_SLOTS)
            for g in L.GENRES:
                slot_phrases[f"genre1.{g}"], slot_phrases[f"genre2.{g}"] = L.GENRE_SLOTS[g]
            for name, phrases in slot_phrases.items():
                per_phrase = []
                for phrase in phrases:
                    be = "were" if phrase in L.PLURAL else "was"
                    tpls = [t.replace("$aspect", phrase).replace("$be", be) for t in L.ASPECT_TEMPLATES]
                    per_phrase.append(B.templates(f"$asp|{phrase}|{s}|{i}", tpls, {"adj": adj, "adverb": adverb}))
                B.define(f"$slot|{name}|{s}|{i}",
                         [(w, (nt,)) for w, nt in zip(zipf_weights(len(per_phrase), B.a, B.b), per_phrase)])
                slot = name.split(".")[0]
                B.optional(f"$opt|{name}|{s}|{i}", L.SLOT_PROB[slot], (f"$slot|{name}|{s}|{i}",))
        alts = []
        for g, wg in zip(L.GENRES, g_weights):
            for i in INTENSITIES:
                wi = L.STRONG_PROB if i == "strong" else 1 - L.STRONG_PROB
                body = [f"$verdict|{s}|{i}"]
                for slot in L.SLOT_ORDER:
                    name = f"{slot}.{g}" if slot.startswith("genre") else slot
                    body.append(f"$opt|{name}|{s}|{i}")
                B.define(f"$body|{s}|{g}|{i}", [(1.0, tuple(body))])
                B.define(f"$closing|{s}|{g}|{i}", [(1.0, (f"$optrec|{s}|{g}", f"$rating|{s}|{i}"))])
                alts.append((wg * wi, (f"$opening|{g}", f"$body|{s}|{g}|{i}", f"$closing|{s}|{g}|{i}")))
        B.define(f"${s}", alts)


def _neutral(B: _Builder) -> None:
    words = {name: B.words(f"${name}", items) for name, items in L.NEUTRAL_WORDS.items()}
    latents = {  # topic -> [(latent value, extra slots)]: the town is named twice, a film's genre shows
        "town": [(x, {"TOWN": B.words(f"$TOWN|{x}", (x,))}) for x in L.TOWNS],
        "film": [(g, {"title": f"$title|{g}", "genre": f"$genre|{g}", "period": "$period", "director": "$director"})
                 for g in L.GENRES],
    }
    topic_alts = []
    for t, wt in zip(L.TOPICS, zipf_weights(len(L.TOPICS), B.a, B.b)):
        intro, optionals, closing = L.NEUTRAL[t]
        values = latents.get(t, [("", {})])
        for v, wv in zip(values, zipf_weights(len(values), B.a, B.b)):
            value, extra = v
            key = f"{t}|{value}" if value else t
            slots = dict(words, **extra)
            rhs = [B.templates(f"$intro|{key}", intro, slots)]
            for k, (tpls, p) in enumerate(optionals):
                sent = B.templates(f"$nsent|{key}|{k}", tpls, slots)
                rhs.append(B.optional(f"$nopt|{key}|{k}", p, (sent,)))
            if closing:
                close = B.templates(f"$nclose|{key}", closing, slots)
                rhs.append(B.optional(f"$noptclose|{key}", L.NEUTRAL_CLOSING_PROB, (close,)))
            topic_alts.append((wt * wv, (B.define(f"$topic|{key}", [(1.0, tuple(rhs))]),)))
    B.define("$neutral", topic_alts)


def build_grammar(zipf_a: float = 1.1, zipf_b: float = 1.0) -> Grammar:
    """The world's grammar; `zipf_a`, `zipf_b` shape every rank-ordered list's masses (see `zipf_weights`)."""
    B = _Builder(zipf_a, zipf_b)
    _reviews(B)
    _neutral(B)
    return Grammar(B.rules)


def opening_symbol(sample_parts: list[tuple[str, int, int]]) -> int:
    """Token index where a review's opening ends (the prompt/response boundary of the SFT sets)."""
    for symbol, _, end in sample_parts:
        if symbol.startswith("$opening|"):
            return end
    raise ValueError("not a review derivation: no opening under the root")
