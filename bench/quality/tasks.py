"""Conversations generated from a seed: facts stated early, distracting turns after them, a question about a fact.

Every conversation is a pure function of (task, index, seed), so a run is reproducible and any conversation can be
regenerated alone. The assistant's turns are scripted acknowledgements (fed as if generated, see runner.py) that never
repeat a fact, so what the model can know at the question is what pruning left of the user's turns.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .corpus import ACKNOWLEDGEMENTS, ATTRIBUTES, FILLER, PEOPLE, RULER_HAYSTACK, UPDATABLE

DISTRACTING_TURNS = 3
DISTRACTING_SENTENCES = 5


@dataclass(frozen=True, slots=True)
class Chat:
    task: str
    index: int
    turns: tuple[tuple[str, str], ...]  # (role, text): user and assistant alternating, an assistant reply last
    facts: tuple[str, ...]  # sentences of user turns that hold what the question needs ("kept" = all of them)
    removed: tuple[str, ...]  # the sentences taken out for the "fact removed" baseline
    question: str
    lead: str  # the answer's opening words, teacher-forced before the key ("The pass key is")
    key: str  # the answer itself: its NLL after `lead` is the measure, and a greedy reply is right when it holds it


def _number(rng: random.Random, digits: int = 5) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _reply(rng: random.Random) -> str:
    first, second = rng.sample(ACKNOWLEDGEMENTS, 2)
    return f"{first} {second}"


def _insert(rng: random.Random, sentences: list[str], fact: str) -> list[str]:
    """The fact at a random depth of the sentences (RULER's needle)."""
    at = rng.randint(0, len(sentences))
    return [*sentences[:at], fact, *sentences[at:]]


def _filler(rng: random.Random, count: int, haystack: bool) -> list[str]:
    if haystack:  # RULER: the same five sentences, repeated
        return [RULER_HAYSTACK[i % len(RULER_HAYSTACK)] for i in range(count)]
    return rng.sample(FILLER, count)


def _conversation(
    rng: random.Random, first: list[str], later: dict[int, str], haystack: bool
) -> tuple[tuple[str, str], ...]:
    """The first user turn, then DISTRACTING_TURNS user turns of filler (turn i may carry `later[i]` at a random
    depth), each answered by a scripted acknowledgement."""
    turns: list[tuple[str, str]] = [("user", " ".join(first)), ("assistant", _reply(rng))]
    for i in range(DISTRACTING_TURNS):
        sentences = _filler(rng, DISTRACTING_SENTENCES, haystack)
        if i in later:
            sentences = _insert(rng, sentences, later[i])
        turns += [("user", " ".join(sentences)), ("assistant", _reply(rng))]
    return tuple(turns)


def passkey(rng: random.Random, index: int, haystack: bool) -> Chat:
    key = _number(rng)
    fact = f"The pass key is {key}."
    intro = "There is important information hidden in this text. Find it and remember it."
    first = [intro, *_insert(rng, _filler(rng, 20 if haystack else 8, haystack), fact), "Remember it."]
    task = "passkey_ruler" if haystack else "passkey_varied"
    turns = _conversation(rng, first, {}, haystack)
    question = "What is the pass key? Answer with the number only."
    return Chat(task, index, turns, (fact,), (fact,), question, "The pass key is", key)


def multi_fact(rng: random.Random, index: int) -> Chat:
    attribute = rng.choice(sorted(ATTRIBUTES))
    people = rng.sample(PEOPLE, 4)
    values = rng.sample(ATTRIBUTES[attribute], 4)
    facts = [f"{person}'s {attribute} is {value}." for person, value in zip(people, values, strict=True)]
    asked = rng.randrange(4)
    sentences = ["Here are some things about my friends."]
    for fact, filler in zip(facts, _filler(rng, 4, haystack=False), strict=True):
        sentences += [fact, filler]
    turns = _conversation(rng, sentences, {}, haystack=False)
    question = f"What is {people[asked]}'s {attribute}? Answer with one word."
    fact, lead = facts[asked], f"{people[asked]}'s {attribute} is"
    return Chat("multi_fact", index, turns, (fact,), (fact,), question, lead, values[asked])


def _variable(rng: random.Random) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(5))


def variable_tracking(rng: random.Random, index: int) -> Chat:
    """RULER's variable tracking over turns: VAR A = value in the first turn, VAR B = VAR A and VAR C = VAR B in
    two later turns; the question asks for C, so every link must survive."""
    value = _number(rng)
    names = [_variable(rng) for _ in range(3)]
    chain = [f"VAR {names[0]} = {value}.", f"VAR {names[1]} = VAR {names[0]}.", f"VAR {names[2]} = VAR {names[1]}."]
    first = ["Keep track of the variables in what follows.", *_insert(rng, _filler(rng, 8, False), chain[0])]
    turns = _conversation(rng, first, {0: chain[1], 1: chain[2]}, haystack=False)
    question = f"What is the value of VAR {names[2]}? Answer with the number only."
    lead = f"The value of VAR {names[2]} is"
    return Chat("variable_tracking", index, turns, tuple(chain), (chain[0],), question, lead, value)


def fact_update(rng: random.Random, index: int) -> Chat:
    """A value stated first and changed by a later turn: the question asks for the current one."""
    thing = rng.choice(UPDATABLE)
    old, new = rng.sample(range(10, 100), 2)
    first = ["Some notes about my day.", *_insert(rng, _filler(rng, 8, False), f"My {thing} is {old}.")]
    update = f"Update: my {thing} has changed, it is now {new}."
    turns = _conversation(rng, first, {1: update}, haystack=False)
    question = f"What is my {thing} now? Answer with the number only."
    lead = f"Your {thing} is now"
    return Chat("fact_update", index, turns, (update,), (update,), question, lead, str(new))


TASKS: dict[str, Callable[[random.Random, int], Chat]] = {
    "passkey_ruler": lambda rng, i: passkey(rng, i, haystack=True),
    "passkey_varied": lambda rng, i: passkey(rng, i, haystack=False),
    "multi_fact": multi_fact,
    "variable_tracking": variable_tracking,
    "fact_update": fact_update,
}


def generate(task: str, index: int, seed: int) -> Chat:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return TASKS[task](random.Random(f"{seed}:{task}:{index}"), index)
