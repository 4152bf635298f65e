"""Built-in multiple-choice tasks for the toy world's downstream language (spec: `path: "toy:<name>"`).

They are generated from the same seeded languages as the corpus (`build_languages`), from a
separate random stream, so they are held-out samples of the downstream language:

- `next_word` (improves steadily with loss): a downstream context, then the true next word
  against three words that never follow the last word in any topic. Any progress on the
  downstream transitions shows up.
- `successor_rank` (stays near chance until the loss is low): the last word's most likely
  successor in the document's topic against its 2nd-4th most likely successors, for
  transitions that the downstream language redrew (so the base model has no prior on their
  order). All four are plausible continuations; telling the top one from the others needs the
  fine transition statistics and the topic inferred from the context, which the model only
  gets once its downstream loss is near the language's entropy.
"""

from __future__ import annotations

import numpy as np

from trainers.task_data import TaskError, TaskExample
from trainers.toyworld import ToyWorldConfig, build_languages

TOY_TASKS = ("next_word", "successor_rank")
CONTEXT_WORDS = 24


def toy_task_examples(cfg: ToyWorldConfig, name: str, n: int = 200) -> list[TaskExample]:
    if name not in TOY_TASKS:
        raise TaskError(f"unknown toy task {name!r}; choose one of {list(TOY_TASKS)}")
    upstream, downstream = build_languages(cfg)
    rng = np.random.default_rng([cfg.seed, 7, TOY_TASKS.index(name)])
    make = _next_word if name == "next_word" else _successor_rank
    examples: list[TaskExample] = []
    attempts = 0
    while len(examples) < n:
        attempts += 1
        if attempts > 100 * n:
            raise TaskError(f"toy task {name}: could not draw {n} examples from this toy world (it needs "
                            f"toy_world.successors >= 4, shift > 0 and a lexicon larger than the successor lists)")
        ex = make(upstream, downstream, rng)
        if ex is not None:
            examples.append(ex)
    return examples


def _walk(lang, topic: int, rng, words: int) -> list[int]:
    """A word-id sequence of the language in one topic (sentences joined as in the corpus)."""
    out: list[int] = []
    while len(out) < words:
        out += lang.sentence(topic, rng) + [-1]  # -1: the sentence end "."
    return out[:words]


def _next_word(upstream, lang, rng) -> TaskExample | None:
    topic = int(rng.integers(lang.succ.shape[0]))
    ids = _walk(lang, topic, rng, CONTEXT_WORDS + 1)
    *context, target = ids
    last = context[-1]
    if target < 0 or last < 0 or target not in lang.succ[topic, last]:
        return None  # a sentence end, or a noise word rather than the grammar's continuation
    followers = set(lang.succ[:, last, :].ravel().tolist())
    pool = [w for w in range(len(lang.words)) if w not in followers]
    if len(pool) < 3:
        return None
    distractors = rng.choice(pool, size=3, replace=False)
    return _example(lang, context, [target, *map(int, distractors)], rng)


def _successor_rank(upstream, lang, rng) -> TaskExample | None:
    topic = int(rng.integers(lang.succ.shape[0]))
    ids = _walk(lang, topic, rng, CONTEXT_WORDS)
    last = ids[-1]
    if last < 0:
        return None
    row = [int(x) for x in lang.succ[topic, last]]
    redrawn = row != [int(x) for x in upstream.succ[topic, last]]
    if not redrawn or len(set(row[:4])) < 4:
        return None
    return _example(lang, ids, row[:4], rng)  # row[0] has the largest Zipf weight


def _example(lang, context: list[int], candidates: list[int], rng) -> TaskExample:
    """Shuffle the candidates (the first is correct) into a TaskExample."""
    order = rng.permutation(len(candidates))
    choices = [" " + lang.words[candidates[i]] for i in order]
    return TaskExample(prompt=lang.text(context), choices=choices, answer=int(np.flatnonzero(order == 0)[0]))
