"""A synthetic world: fictional entities written as wiki-18 passages, with 1-hop and 2-hop questions.

Every fact is invented (names are built from random syllables), so no model can answer the
questions from memory: the only way to the answer is to search the corpus. The generator is
deterministic given `(num_passages, seed)` and fast (20k passages in about a second).

Entities and the facts their passage states (one passage per entity, title = entity name):

    country       founded (year), capital (city)
    city          country, founded (year), population, mayor (person)
    organization  industry, founded (year), founder (person), headquarters (city)
    person        occupation, birthplace (city), birth_year, employer (organization)

A 1-hop question asks one fact of its subject ("Where was Kalor Venthis born?"); a 2-hop
question chains two facts and names only the subject ("Who is the mayor of the city where Kalor
Venthis was born?"), so the answer is in a different passage than the one the question points
to. The passage of the subject never states the 2-hop answer.

Train and test tasks have disjoint subject entities (each entity is in the test split with
probability `test_fraction`). Every subject gets one 1-hop and one 2-hop question.

Tasks are JSON dicts: `{"id", "question", "golden_answers": [str], "hops": 1|2, "subject",
"relations": [str, ...], "passage_ids": [str, ...]}`; `passage_ids` are the corpus ids of the
passages on the reasoning chain (first = the subject's passage). Corpus rows are wiki-18 rows:
`{"id": str, "contents": "\\"Title\\"\\ntext"}`.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Any

# Bump when the generated text changes, so cached worlds/indexes are rebuilt.
WORLD_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Facts: one sentence template per (kind, relation); `{s}` is the subject name, `{o}` the value.
# ---------------------------------------------------------------------------------------------

FACTS: dict[str, dict[str, str]] = {
    "country": {
        "founded": "{s} was founded in {o}.",
        "capital": "The capital of {s} is {o}.",
    },
    "city": {
        "country": "{s} is a city in {o}.",
        "founded": "{s} was founded in {o}.",
        "population": "{s} has a population of {o}.",
        "mayor": "The mayor of {s} is {o}.",
    },
    "organization": {
        "industry": "{s} is an organization active in {o}.",
        "founded": "{s} was founded in {o}.",
        "founder": "{s} was founded by {o}.",
        "headquarters": "{s} is headquartered in {o}.",
    },
    "person": {
        "occupation": "{s} is a {o}.",
        "birthplace": "{s} was born in the city of {o}.",
        "birth_year": "{s} was born in the year {o}.",
        "employer": "{s} works for {o}.",
    },
}

# Relations whose value is another entity (the bridge of a 2-hop question), with its kind.
ENTITY_RELATIONS = {
    "capital": "city",
    "country": "country",
    "mayor": "person",
    "founder": "person",
    "headquarters": "city",
    "birthplace": "city",
    "employer": "organization",
}

ONE_HOP: dict[str, dict[str, str]] = {
    "country": {
        "founded": "In what year was {s} founded?",
        "capital": "What is the capital of {s}?",
    },
    "city": {
        "country": "In which country is {s}?",
        "founded": "In what year was {s} founded?",
        "mayor": "Who is the mayor of {s}?",
    },
    "organization": {
        "founded": "In what year was {s} founded?",
        "founder": "Who founded {s}?",
        "headquarters": "Where is {s} headquartered?",
    },
    "person": {
        "birthplace": "Where was {s} born?",
        "birth_year": "In what year was {s} born?",
        "employer": "Which organization does {s} work for?",
    },
}

TWO_HOP: dict[str, dict[tuple[str, str], str]] = {
    "country": {
        ("capital", "mayor"): "Who is the mayor of the capital of {s}?",
        ("capital", "founded"): "In what year was the capital of {s} founded?",
    },
    "city": {
        ("country", "capital"): "What is the capital of the country where {s} is located?",
        ("mayor", "birth_year"): "In what year was the mayor of {s} born?",
        ("mayor", "employer"): "Which organization does the mayor of {s} work for?",
    },
    "organization": {
        ("founder", "birthplace"): "Where was the founder of {s} born?",
        ("founder", "birth_year"): "In what year was the founder of {s} born?",
        ("headquarters", "country"): "In which country is the headquarters of {s}?",
        ("headquarters", "mayor"): "Who is the mayor of the city where {s} is headquartered?",
    },
    "person": {
        ("birthplace", "country"): "In which country was {s} born?",
        ("birthplace", "mayor"): "Who is the mayor of the city where {s} was born?",
        ("employer", "founder"): "Who founded the organization that {s} works for?",
        ("employer", "headquarters"): "In which city is the organization that {s} works for headquartered?",
        ("employer", "founded"): "In what year was the organization that {s} works for founded?",
    },
}

# Sentences without facts, to make passages read like encyclopedia entries. `{s}` = subject.
FILLERS: dict[str, list[str]] = {
    "country": [
        "{s} is known for its terraced hills and long coastline.",
        "The economy of {s} rests on trade, fishing and light industry.",
        "{s} is a parliamentary republic with a bicameral legislature.",
        "Much of the interior of {s} is covered by forest.",
    ],
    "city": [
        "The old town of {s} is known for its covered markets.",
        "{s} is connected to the coast by a regional railway.",
        "A university and several museums are located in {s}.",
        "{s} hosts a music festival every summer.",
    ],
    "organization": [
        "{s} publishes an annual report on its activities.",
        "{s} has offices in several regions.",
        "{s} is governed by a board of directors.",
        "{s} funds scholarships for young researchers.",
    ],
    "person": [
        "{s} has received several awards for their work.",
        "{s} is known for a series of public lectures.",
        "Early in their career {s} studied abroad.",
        "{s} has written two books about their profession.",
    ],
}

OCCUPATIONS = [
    "cartographer", "botanist", "architect", "composer", "engineer", "historian", "painter",
    "physician", "astronomer", "sculptor", "novelist", "economist", "geologist", "chemist",
    "translator", "photographer", "jurist", "linguist", "mathematician", "diplomat",
]
INDUSTRIES = [
    "shipbuilding", "publishing", "textiles", "mining", "banking", "agriculture", "aviation",
    "pharmaceuticals", "glassmaking", "insurance", "telecommunications", "forestry",
]
ORG_SUFFIXES = [
    "Institute", "Guild", "Company", "Foundation", "Works", "Society", "Trust", "Collective",
    "Syndicate", "Laboratories", "Holdings", "Consortium",
]

_ONSETS = "b br c d dr f g gr h j k kr l m n p r s sh st t th tr v w z".split()
_VOWELS = "a e i o u a e i o u ae ai ia io ou y".split()
_CODAS = ["", "", "l", "n", "r", "s", "th", "x", "nd", "rk", "st", "m", "v"]

# Words that must not be names (template words would make BM25 and answer parsing ambiguous).
_RESERVED = {w.lower() for t in list(FACTS.values()) + list(ONE_HOP.values()) for s in t.values()
             for w in re.findall(r"[A-Za-z]+", s)}
_RESERVED |= {w.lower() for group in FILLERS.values() for s in group for w in re.findall(r"[A-Za-z]+", s)}
_RESERVED |= {w.lower() for w in OCCUPATIONS + INDUSTRIES + ORG_SUFFIXES}


@dataclasses.dataclass
class Entity:
    """One fictional entity. `facts` maps relation -> value (entity ids for entity relations)."""

    id: int
    kind: str
    name: str
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    test: bool = False


@dataclasses.dataclass(frozen=True)
class World:
    """A generated world.

    Attributes:
        corpus: wiki-18 rows `{"id", "contents"}`, one per entity, `id` = str(entity index).
        train_tasks: tasks whose subjects are train entities.
        test_tasks: tasks whose subjects are held-out entities.
        num_passages: requested size; seed: generator seed.
    """

    corpus: list[dict[str, str]]
    train_tasks: list[dict[str, Any]]
    test_tasks: list[dict[str, Any]]
    num_passages: int
    seed: int


class _NameMaker:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def word(self, min_syll: int = 2, max_syll: int = 3) -> str:
        while True:
            n = self.rng.randint(min_syll, max_syll)
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n))
            w += self.rng.choice(_CODAS)
            if len(w) >= 5 and w not in self.used and w not in _RESERVED:
                self.used.add(w)
                return w.capitalize()


def _counts(num_passages: int) -> dict[str, int]:
    if num_passages < 20:
        raise ValueError(f"num_passages must be >= 20 for a world with every entity kind, got {num_passages}")
    countries = max(2, round(num_passages * 0.01))
    cities = max(4, round(num_passages * 0.15))
    orgs = max(4, round(num_passages * 0.15))
    return {"country": countries, "city": cities, "organization": orgs,
            "person": num_passages - countries - cities - orgs}


def _value_text(entities: list[Entity], relation: str, value: Any) -> str:
    return entities[value].name if relation in ENTITY_RELATIONS else str(value)


def passage_text(entities: list[Entity], e: Entity, rng: random.Random) -> str:
    sentences = [FACTS[e.kind][r].format(s=e.name, o=_value_text(entities, r, v)) for r, v in e.facts.items()]
    fillers = rng.sample(FILLERS[e.kind], 2)
    sentences.insert(1, fillers[0].format(s=e.name))
    sentences.append(fillers[1].format(s=e.name))
    return " ".join(sentences)


def build_world(num_passages: int = 20_000, seed: int = 0, test_fraction: float = 0.1) -> World:
    """Generates a world of `num_passages` passages (one per entity) and its tasks."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = random.Random(seed)
    names = _NameMaker(rng)
    counts = _counts(num_passages)
    first_names = [names.word(2, 2) for _ in range(max(20, counts["person"] // 30))]

    entities: list[Entity] = []
    by_kind: dict[str, list[int]] = {}
    for kind, n in counts.items():
        ids = by_kind.setdefault(kind, [])
        for _ in range(n):
            if kind == "person":
                name = f"{rng.choice(first_names)} {names.word()}"
            elif kind == "organization":
                name = f"{names.word()} {rng.choice(ORG_SUFFIXES)}"
            else:
                name = names.word()
            ids.append(len(entities))
            entities.append(Entity(id=len(entities), kind=kind, name=name, test=rng.random() < test_fraction))

    countries, cities, orgs, people = (by_kind[k] for k in ("country", "city", "organization", "person"))
    mayors = rng.sample(people, len(cities))
    for i, c in enumerate(cities):
        entities[c].facts = {
            "country": countries[i % len(countries)] if i < len(countries) else rng.choice(countries),
            "founded": rng.randint(1100, 1900),
            "population": rng.randint(5_000, 2_000_000),
            "mayor": mayors[i],
        }
    for k, c in enumerate(countries):  # the first cities were assigned one per country: their capitals
        entities[c].facts = {"founded": rng.randint(1500, 1990), "capital": cities[k]}
    for o in orgs:
        entities[o].facts = {
            "industry": rng.choice(INDUSTRIES),
            "founded": rng.randint(1800, 2015),
            "founder": rng.choice(people),
            "headquarters": rng.choice(cities),
        }
    for p in people:
        entities[p].facts = {
            "occupation": rng.choice(OCCUPATIONS),
            "birthplace": rng.choice(cities),
            "birth_year": rng.randint(1900, 2000),
            "employer": rng.choice(orgs),
        }

    corpus = [{"id": str(e.id), "contents": f'"{e.name}"\n{passage_text(entities, e, rng)}'} for e in entities]
    train, test = [], []
    for e in entities:
        split = test if e.test else train
        r1 = rng.choice(sorted(ONE_HOP[e.kind]))
        split.append(_task(entities, e, (r1,), ONE_HOP[e.kind][r1]))
        # A 2-hop question whose answer the subject's own passage already states (e.g. the
        # mayor of one's birthplace is oneself) is really 1-hop: take another chain.
        chains = sorted(TWO_HOP[e.kind])
        rng.shuffle(chains)
        text = corpus[e.id]["contents"]
        for chain in chains:
            task = _task(entities, e, chain, TWO_HOP[e.kind][chain])
            if not re.search(rf"\b{re.escape(task['golden_answers'][0])}\b", text):
                split.append(task)
                break
    return World(corpus=corpus, train_tasks=train, test_tasks=test, num_passages=num_passages, seed=seed)


def _task(entities: list[Entity], e: Entity, chain: tuple[str, ...], template: str) -> dict[str, Any]:
    node, path = e, [str(e.id)]
    for r in chain[:-1]:
        node = entities[node.facts[r]]
        path.append(str(node.id))
    answer = _value_text(entities, chain[-1], node.facts[chain[-1]])
    return {
        "id": f"{'test' if e.test else 'train'}-{e.id}-{len(chain)}hop",
        "question": template.format(s=e.name),
        "golden_answers": [answer],
        "hops": len(chain),
        "subject": e.name,
        "relations": list(chain),
        "passage_ids": path,
    }


def parse_fact(contents: str, relation: str) -> str | None:
    """Reads `relation` of a passage's own entity from its wiki-18 `contents`, or None.

    The inverse of the passage templates, used by scripted policies: e.g.
    `parse_fact('"Drelmouth"\\nDrelmouth is a city in Vastoria. ...', "country") == "Vastoria"`.
    """
    title, _, text = contents.partition("\n")
    subject = title.strip().strip('"')
    for templates in FACTS.values():
        template = templates.get(relation)
        if template is None:
            continue
        pattern = re.escape(template).replace(re.escape("{s}"), re.escape(subject))
        pattern = pattern.replace(re.escape("{o}"), r"([^.]+?)") + r"(?:\s|$)"
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None
