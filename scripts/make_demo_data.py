"""Generate the built-in demo data: ``core/data/demo_data/pool.jsonl`` and ``core/data/demo_data/targets.jsonl``.

    python scripts/make_demo_data.py           # (re)write the two shipped files
    python scripts/make_demo_data.py --check   # regenerate in memory; exit 1 if the shipped files differ

The pool looks like a real instruction-tuning mix: Alpaca records from seven domains (math word problems,
Python code, summarization, geography, grammar rewrites, unit conversion, creative writing) in which the
target skill -- grade-school math word problems solved step by step -- is a minority (about 14 %).  The
targets are more problems of that skill, in chat "messages" form, made with a different seed and partly
from templates the pool never uses.  Gradient-based selection should rank the pool's math rows first.

Everything is written by this script: templates, names, facts and numbers.  Generation is deterministic
(each domain draws from its own ``random.Random`` seeded with a string, never the global RNG), and every
arithmetic result is computed in code.  ``_pool_records`` / ``_target_records`` keep the private answer-check
fields (``_answer``, ``_check``, ``_template``) that ``tests/test_demo.py`` checks the shipped files against:
math answers against the computed value, code answers by running them, conversions against the computed number.
The shipped files are those fields stripped (``demo_pool`` / ``demo_targets``).  Standard library only; the
package reads the shipped files through ``core.data.demo`` and never imports this script.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data.demo import ANSWER_PREFIX, DOMAINS, TARGET_DOMAIN  # the names the app and tests share

MATH_SHARE = 0.1375  # 44 of the default 320 rows
OUT_DIR = Path(__file__).resolve().parent.parent / "core" / "data" / "demo_data"
POOL_FILE = "pool.jsonl"
TARGETS_FILE = "targets.jsonl"

Record = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# shared vocabulary
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Person:
    name: str
    female: bool

    @property
    def he(self) -> str:
        return "she" if self.female else "he"

    @property
    def He(self) -> str:  # noqa: N802 - reads naturally in templates
        return "She" if self.female else "He"

    @property
    def him(self) -> str:
        return "her" if self.female else "him"

    @property
    def his(self) -> str:
        return "her" if self.female else "his"

    @property
    def His(self) -> str:  # noqa: N802
        return "Her" if self.female else "His"


_PEOPLE = tuple(
    _Person(name, female)
    for name, female in (
        ("Maya", True), ("Liam", False), ("Aisha", True), ("Diego", False), ("Priya", True), ("Kenji", False),
        ("Sofia", True), ("Omar", False), ("Chloe", True), ("Mateo", False), ("Fatima", True), ("Noah", False),
        ("Zara", True), ("Ethan", False), ("Amara", True), ("Lucas", False), ("Hana", True), ("Samuel", False),
        ("Leila", True), ("Tomas", False), ("Grace", True), ("Ravi", False), ("Elena", True), ("Kwame", False),
        ("Ingrid", True), ("Jonah", False), ("Mei", True), ("Andre", False), ("Nadia", True), ("Felix", False),
    )
)
_SURNAMES = (
    "Alvarez", "Chen", "Okafor", "Novak", "Patel", "Haddad", "Kowalski", "Nakamura", "Osei", "Lindqvist",
    "Romero", "Fischer", "Mensah", "Sato", "Duarte", "Byrne", "Moreau", "Ivanova", "Quinn", "Abiodun",
)
# Fictional towns, so no generated news item makes a claim about a real place.
_TOWNS = (
    "Riverton", "Maple Grove", "Eastbrook", "Lakeside", "Fairview", "Cedar Falls", "Port Allen", "Millbrook",
    "Ashford", "Brookhaven", "Westfield", "Pine Hollow", "Stonebridge", "Harlow Bay",
)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)
_SEASONS = ("spring", "summer", "fall", "winter")


def _person(rng: random.Random, *exclude: _Person) -> _Person:
    while True:
        person = rng.choice(_PEOPLE)
        if person not in exclude:
            return person


def _full_name(rng: random.Random, female: bool | None = None) -> tuple[str, _Person]:
    while True:
        person = rng.choice(_PEOPLE)
        if female is None or person.female == female:
            return f"{person.name} {rng.choice(_SURNAMES)}", person


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _title(text: str) -> str:
    small = {"a", "an", "and", "of", "the", "to", "in", "on", "for", "with"}
    words = text.split()
    return " ".join(w if (i and w in small) else _cap(w) for i, w in enumerate(words))


def _plural(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def _fmt(x: float) -> str:
    """A number as a person would write it: 12, 12.5, 3.14 (two decimals at most)."""
    if abs(x - round(x)) < 1e-9:
        return str(int(round(x)))
    return f"{x:.2f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------------------------------
# math word problems (pool and targets)
# --------------------------------------------------------------------------------------------------

MathResult = tuple[str, list[str], int]


@dataclass(frozen=True)
class _MathTemplate:
    name: str
    group: str
    make: Callable[[random.Random], MathResult]
    target_only: bool = False


_SHOP_ITEMS = (
    ("notebooks", 2, 5), ("packs of markers", 3, 7), ("movie tickets", 8, 12), ("sandwiches", 4, 9),
    ("potted plants", 5, 12), ("comic books", 3, 8), ("bags of apples", 3, 6), ("paperback novels", 6, 11),
    ("cans of tennis balls", 3, 5),
)


def _m_change(rng: random.Random) -> MathResult:
    p = _person(rng)
    items, lo, hi = rng.choice(_SHOP_ITEMS)
    qty = rng.randint(3, 8)
    price = rng.randint(lo, hi)
    total = qty * price
    bill = next(b for b in (10, 20, 50, 100) if b > total)
    change = bill - total
    question = (f"{p.name} buys {qty} {items} for ${price} each and pays with a ${bill} bill. "
                f"How much change does {p.he} get back?")
    steps = [f"The {items} cost {qty} × ${price} = ${total}.",
             f"{p.name} pays with ${bill}, so the change is ${bill} - ${total} = ${change}."]
    return question, steps, change


def _m_savings(rng: random.Random) -> MathResult:
    p = _person(rng)
    thing = rng.choice(("bike", "telescope", "guitar", "tablet", "skateboard", "camera", "keyboard", "tent"))
    weekly = rng.choice((5, 6, 8, 10, 12, 15, 20, 25))
    weeks = rng.randint(3, 12)
    saved = rng.randint(2, 12) * 5
    price = saved + weekly * weeks
    still = price - saved
    question = (f"{p.name} wants to buy a {thing} that costs ${price}. {p.He} has already saved ${saved} "
                f"and puts away ${weekly} every week. How many weeks will it take {p.him} to have enough money?")
    steps = [f"{p.name} still needs ${price} - ${saved} = ${still}.",
             f"Saving ${weekly} a week, that takes {still} ÷ {weekly} = {weeks} weeks."]
    return question, steps, weeks


_VEHICLES = (("train", 60, 120), ("bus", 40, 70), ("cyclist", 12, 25), ("delivery truck", 50, 80), ("ferry", 20, 35))


def _m_distance(rng: random.Random) -> MathResult:
    vehicle, lo, hi = rng.choice(_VEHICLES)
    speed = rng.randint(lo, hi)
    h1 = rng.randint(2, 4)
    h2 = rng.choice([h for h in range(2, 10) if h != h1])
    d1 = speed * h1
    answer = speed * h2
    question = (f"A {vehicle} travels {d1} kilometers in {h1} hours. At the same speed, how many kilometers "
                f"will it travel in {h2} hours?")
    steps = [f"The {vehicle}'s speed is {d1} ÷ {h1} = {speed} kilometers per hour.",
             f"In {h2} hours it travels {speed} × {h2} = {answer} kilometers."]
    return question, steps, answer


_MACHINES = (
    ("A bakery's oven bakes", "loaves of bread"), ("A packing machine fills", "boxes of cereal"),
    ("An office printer prints", "flyers"), ("A juice press fills", "bottles of juice"),
    ("A pottery kiln fires", "mugs"),
)


def _m_batches(rng: random.Random) -> MathResult:
    machine, things = rng.choice(_MACHINES)
    per = rng.choice((6, 8, 10, 12, 15, 20, 24))
    every = rng.choice((5, 10, 12, 15, 20, 30))
    hours = rng.randint(2, 6)
    minutes = hours * 60
    batches = minutes // every
    answer = batches * per
    question = f"{machine} {per} {things} every {every} minutes. How many {things} does it make in {hours} hours?"
    steps = [f"{hours} hours is {hours} × 60 = {minutes} minutes.",
             f"In {minutes} minutes there are {minutes} ÷ {every} = {batches} batches.",
             f"Each batch has {per} {things}, so the total is {batches} × {per} = {answer} {things}."]
    return question, steps, answer


_FRACTION_WORDS = {2: ("half", "Half"), 3: ("one third", "One third"), 4: ("one quarter", "One quarter"),
                   5: ("one fifth", "One fifth"), 6: ("one sixth", "One sixth")}


def _m_fraction_left(rng: random.Random) -> MathResult:
    p = _person(rng)
    friend = _person(rng, p)
    things = rng.choice(("stickers", "marbles", "baseball cards", "seashells", "beads", "stamps"))
    k = rng.choice((2, 3, 4, 5, 6))
    given = rng.randint(4, 12)
    total = k * given
    remain = total - given
    used = rng.randint(2, remain - 2)
    left = remain - used
    verb, verbing, where = rng.choice((("uses", "using", "on a scrapbook page"),
                                       ("loses", "losing", "on the way home"),
                                       ("trades away", "trading away", "at school")))
    word, word_cap = _FRACTION_WORDS[k]
    question = (f"{p.name} has {total} {things}. {p.He} gives {word} of them to {friend.name} and then {verb} "
                f"{used} more {where}. How many {things} does {p.name} have left?")
    steps = [f"{word_cap} of {total} is {total} ÷ {k} = {given}, so {p.name} gives {given} {things} to {friend.name}.",
             f"That leaves {total} - {given} = {remain} {things}.",
             f"After {verbing} {used} more, {p.name} has {remain} - {used} = {left} {things}."]
    return question, steps, left


_GROUPS = (
    ("There are {n} students in a class.", "walk to school", "take the bus", "How many students take the bus?"),
    ("A running club has {n} members.", "run in the morning", "run in the evening",
     "How many members run in the evening?"),
    ("An orchard has {n} trees.", "are apple trees", "are pear trees", "How many pear trees are there?"),
    ("A library shelf holds {n} books.", "are novels", "are nonfiction", "How many nonfiction books are there?"),
    ("At a lunch meeting, {n} guests ordered food.", "chose pasta", "chose salad", "How many guests chose salad?"),
)


def _m_fraction_group(rng: random.Random) -> MathResult:
    b = rng.choice((3, 4, 5, 6, 8))
    a = rng.choice([a for a in range(1, b) if math.gcd(a, b) == 1])
    unit = rng.randint(3, 9)
    n = b * unit
    part = a * unit
    rest = n - part
    intro, first, second, ask = rng.choice(_GROUPS)
    question = f"{intro.format(n=n)} {a}/{b} of them {first}, and the rest {second}. {ask}"
    steps = [f"First find {a}/{b} of {n}: {n} ÷ {b} = {unit}, and {a} × {unit} = {part}.",
             f"So {part} of them {first}.",
             f"The rest is {n} - {part} = {rest}."]
    return question, steps, rest


_SALE_ITEMS = ("jacket", "bicycle", "desk lamp", "backpack", "pair of headphones", "coffee maker", "board game",
               "winter coat", "suitcase")


def _m_discount(rng: random.Random) -> MathResult:
    p = _person(rng)
    item = rng.choice(_SALE_ITEMS)
    price = rng.randint(2, 15) * 20
    pct = rng.choice((10, 15, 20, 25, 30, 40, 50))
    discount = price * pct // 100
    sale = price - discount
    question = (f"A {item} normally costs ${price}. This week it is {pct}% off. How much does {p.name} pay "
                f"if {p.he} buys it this week?")
    steps = [f"The discount is {pct}% of ${price}, which is {price} × {pct} ÷ 100 = ${discount}.",
             f"The sale price is ${price} - ${discount} = ${sale}."]
    return question, steps, sale


def _m_baking(rng: random.Random) -> MathResult:
    p = _person(rng)
    food = rng.choice(("cookies", "muffins", "cupcakes", "dinner rolls", "brownies"))
    trays = rng.randint(2, 6)
    per = rng.choice((6, 8, 9, 10, 12))
    total = trays * per
    size = rng.choice((4, 5, 6))
    eaten = total % size or size
    bags = (total - eaten) // size
    container = rng.choice(("bags", "boxes", "tins"))
    question = (f"{p.name} bakes {trays} trays of {food} with {per} on each tray. {p.His} family eats {eaten} "
                f"of them, and {p.name} packs the rest into {container} of {size}. How many {container} does "
                f"{p.he} fill?")
    steps = [f"{p.name} bakes {trays} × {per} = {total} {food}.",
             f"After the family eats {eaten}, there are {total} - {eaten} = {total - eaten} left.",
             f"Packing {size} per {container[:-1] if container != 'boxes' else 'box'}, "
             f"{p.he} fills {total - eaten} ÷ {size} = {bags} {container}."]
    return question, steps, bags


_RATIOS = (
    ("A lemonade recipe uses {a} cups of lemon juice for every {b} cups of water.", "cups of lemon juice",
     "cups of water"),
    ("A gardener mixes {a} scoops of compost with every {b} scoops of soil.", "scoops of compost", "scoops of soil"),
    ("To get the right shade of sky blue, a painter mixes {a} cans of blue paint with every {b} cans of white "
     "paint.", "cans of blue paint", "cans of white paint"),
    ("A trail mix recipe uses {a} cups of peanuts for every {b} cups of raisins.", "cups of peanuts",
     "cups of raisins"),
    ("To make mortar, a builder uses {a} buckets of cement for every {b} buckets of sand.", "buckets of cement",
     "buckets of sand"),
)


def _m_ratio(rng: random.Random) -> MathResult:
    p = _person(rng)
    a, b = rng.choice(((1, 2), (1, 3), (2, 3), (3, 2), (2, 5), (3, 4), (3, 5), (4, 3), (5, 2)))
    m = rng.randint(2, 8)
    intro, first, second = rng.choice(_RATIOS)
    used = a * m
    answer = b * m
    question = f"{intro.format(a=a, b=b)} If {p.name} uses {used} {first}, how many {second} does {p.he} need?"
    steps = [f"The ratio is {a} to {b}. {used} {first} is {used} ÷ {a} = {m} times the {a} in the ratio.",
             f"So {p.name} needs {m} times as much of the second ingredient: {b} × {m} = {answer} {second}."]
    return question, steps, answer


def _m_fence(rng: random.Random) -> MathResult:
    length = rng.randint(6, 25)
    width = rng.randint(3, length - 1)
    cost = rng.choice((3, 4, 5, 6, 8, 10, 12))
    perimeter = 2 * (length + width)
    total = perimeter * cost
    what = rng.choice(("vegetable garden", "dog run", "playground", "chicken yard", "tennis practice area"))
    question = (f"A rectangular {what} is {length} meters long and {width} meters wide. Fencing costs ${cost} per "
                f"meter. How much will it cost to put a fence all the way around it?")
    steps = [f"The perimeter is 2 × ({length} + {width}) = 2 × {length + width} = {perimeter} meters.",
             f"The fence costs {perimeter} × ${cost} = ${total}."]
    return question, steps, total


def _m_average(rng: random.Random) -> MathResult:
    p = _person(rng)
    subject = rng.choice(("math quizzes", "spelling tests", "science quizzes", "history tests"))
    while True:
        scores = [rng.randint(72, 98) for _ in range(4)]
        target = rng.randint(82, 92)
        need = 5 * target - sum(scores)
        if 60 <= need <= 100:
            break
    a, b, c, d = scores
    total = 5 * target
    so_far = sum(scores)
    question = (f"{p.name} scored {a}, {b}, {c} and {d} on {p.his} first four {subject}. What score does {p.he} "
                f"need on the fifth one to have an average of exactly {target}?")
    steps = [f"An average of {target} over 5 {subject} means a total of 5 × {target} = {total} points.",
             f"So far {p.name} has {a} + {b} + {c} + {d} = {so_far} points.",
             f"{p.He} needs {total} - {so_far} = {need} points on the fifth one."]
    return question, steps, need


def _m_weekly_minutes(rng: random.Random) -> MathResult:
    p = _person(rng)
    activity = rng.choice(("practices the piano", "reads", "jogs", "studies Spanish", "practices drawing"))
    weekday = rng.choice((15, 20, 25, 30, 40, 45))
    weekend = rng.choice((30, 45, 50, 60, 75, 90))
    a = 5 * weekday
    b = 2 * weekend
    question = (f"{p.name} {activity} for {weekday} minutes each weekday and {weekend} minutes each day on the "
                f"weekend. How many minutes does {p.he} spend on it in one week?")
    steps = [f"On the 5 weekdays: 5 × {weekday} = {a} minutes.",
             f"On the 2 weekend days: 2 × {weekend} = {b} minutes.",
             f"In total: {a} + {b} = {a + b} minutes."]
    return question, steps, a + b


def _m_ages(rng: random.Random) -> MathResult:
    older_p = _person(rng)
    younger_p = _person(rng, older_p)
    young = rng.randint(4, 30)
    diff = rng.randint(2, 12)
    old = young + diff
    total = young + old
    ask_older = rng.random() < 0.5
    asked = older_p if ask_older else younger_p
    question = (f"{older_p.name} is {diff} years older than {younger_p.name}. Together their ages add up to "
                f"{total}. How old is {asked.name}?")
    steps = [f"Let {younger_p.name}'s age be x. Then {older_p.name} is x + {diff}, so x + (x + {diff}) = {total}.",
             f"That means 2x = {total} - {diff} = {total - diff}, so x = {total - diff} ÷ 2 = {young}."]
    if ask_older:
        steps.append(f"{older_p.name} is {young} + {diff} = {old} years old.")
    return question, steps, old if ask_older else young


# --- templates used only for targets -------------------------------------------------------------


def _m_tickets(rng: random.Random) -> MathResult:
    venue = rng.choice(("zoo", "science museum", "aquarium", "water park", "planetarium"))
    adult = rng.randint(10, 25)
    child = rng.randint(5, adult - 3)
    adults = rng.randint(1, 3)
    children = rng.randint(2, 5)
    a = adults * adult
    c = children * child
    question = (f"Tickets to the {venue} cost ${adult} for adults and ${child} for children. How much does it cost "
                f"for {_plural(adults, 'adult')} and {children} children to visit?")
    steps = [f"The adult tickets cost {adults} × ${adult} = ${a}.",
             f"The children's tickets cost {children} × ${child} = ${c}.",
             f"Altogether that is ${a} + ${c} = ${a + c}."]
    return question, steps, a + c


def _m_reading(rng: random.Random) -> MathResult:
    p = _person(rng)
    p1 = rng.choice((10, 12, 15, 20, 25))
    d1 = rng.randint(2, 5)
    p2 = p1 + rng.choice((5, 10, 15))
    d2 = rng.randint(2, 6)
    first = p1 * d1
    rest = p2 * d2
    pages = first + rest
    question = (f"{p.name} is reading a {pages}-page book. {p.He} reads {p1} pages a day for the first {d1} days, "
                f"then speeds up to {p2} pages a day. How many more days does it take {p.him} to finish the book?")
    steps = [f"In the first {d1} days {p.he} reads {d1} × {p1} = {first} pages.",
             f"That leaves {pages} - {first} = {rest} pages.",
             f"At {p2} pages a day, that takes {rest} ÷ {p2} = {d2} more days."]
    return question, steps, d2


def _m_pizza(rng: random.Random) -> MathResult:
    p = _person(rng)
    while True:
        pizzas = rng.randint(2, 4)
        slices = rng.choice((6, 8, 10, 12))
        total = pizzas * slices
        dens = [d for d in (2, 3, 4, 5, 6, 8) if total % d == 0]
        if len(dens) < 2:
            continue
        a, b = rng.sample(dens, 2)
        eaten_a, eaten_b = total // a, total // b
        left = total - eaten_a - eaten_b
        if left > 0:
            break
    question = (f"For a party, {p.name} orders {pizzas} pizzas, each cut into {slices} slices. The kids eat 1/{a} "
                f"of all the slices and the adults eat 1/{b} of them. How many slices are left?")
    steps = [f"There are {pizzas} × {slices} = {total} slices.",
             f"The kids eat {total} ÷ {a} = {eaten_a} slices and the adults eat {total} ÷ {b} = {eaten_b} slices.",
             f"Together they eat {eaten_a} + {eaten_b} = {eaten_a + eaten_b} slices, which leaves "
             f"{total} - {eaten_a + eaten_b} = {left} slices."]
    return question, steps, left


def _m_sales_growth(rng: random.Random) -> MathResult:
    store, items = rng.choice((("bookstore", "books"), ("bakery", "loaves of bread"), ("flower shop", "bouquets"),
                               ("bike shop", "helmets"), ("garden center", "seed packets")))
    monday = rng.randint(2, 12) * 20
    pct = rng.choice((10, 15, 20, 25, 30, 40, 50))
    extra = monday * pct // 100
    tuesday = monday + extra
    question = (f"A {store} sold {monday} {items} on Monday. On Tuesday it sold {pct}% more than on Monday. "
                f"How many {items} did it sell on the two days combined?")
    steps = [f"{pct}% of {monday} is {monday} × {pct} ÷ 100 = {extra}.",
             f"On Tuesday it sold {monday} + {extra} = {tuesday} {items}.",
             f"Over both days: {monday} + {tuesday} = {monday + tuesday} {items}."]
    return question, steps, monday + tuesday


def _m_legs(rng: random.Random) -> MathResult:
    two = rng.choice(("chickens", "ducks", "geese", "turkeys"))
    four = rng.choice(("cows", "goats", "sheep", "pigs", "horses"))
    n2 = rng.randint(5, 30)
    n4 = rng.randint(3, 20)
    a, b = 2 * n2, 4 * n4
    question = f"A farm has {n2} {two} and {n4} {four}. How many legs do these animals have altogether?"
    steps = [f"Each of the {two} has 2 legs: {n2} × 2 = {a} legs.",
             f"Each of the {four} has 4 legs: {n4} × 4 = {b} legs.",
             f"Altogether: {a} + {b} = {a + b} legs."]
    return question, steps, a + b


def _m_buses(rng: random.Random) -> MathResult:
    every = rng.choice((10, 12, 15, 20, 30))
    start = rng.randint(5, 7)
    end = start + rng.randint(2, 4)
    minutes = (end - start) * 60
    more = minutes // every
    question = (f"A bus leaves the station every {every} minutes, starting at {start}:00 a.m. How many buses leave "
                f"from {start}:00 a.m. to {end}:00 a.m., counting both the {start}:00 bus and the {end}:00 bus?")
    steps = [f"From {start}:00 to {end}:00 is {end - start} hours, which is {end - start} × 60 = {minutes} minutes.",
             f"{minutes} ÷ {every} = {more}, so {more} buses leave after the first one.",
             f"Counting the {start}:00 bus too, that is {more} + 1 = {more + 1} buses."]
    return question, steps, more + 1


def _m_wages(rng: random.Random) -> MathResult:
    p = _person(rng)
    job = rng.choice(("babysitting", "walking dogs", "tutoring", "mowing lawns", "washing cars"))
    rate = rng.randint(8, 16)
    sat = rng.randint(2, 6)
    sun = rng.randint(1, 5)
    hours = sat + sun
    earned = rate * hours
    spent = rng.randint(5, earned - 5)
    left = earned - spent
    treat = rng.choice(("a new book", "concert tickets", "art supplies", "a video game", "a gift for a friend"))
    question = (f"{p.name} earns ${rate} an hour {job}. {p.He} works {sat} hours on Saturday and {sun} hours on "
                f"Sunday, then spends ${spent} on {treat}. How much money does {p.he} have left?")
    steps = [f"{p.name} works {sat} + {sun} = {hours} hours.",
             f"{p.He} earns {hours} × ${rate} = ${earned}.",
             f"After spending ${spent}, {p.he} has ${earned} - ${spent} = ${left} left."]
    return question, steps, left


def _m_tiles(rng: random.Random) -> MathResult:
    while True:
        length = rng.randint(4, 15)
        width = rng.randint(3, length)
        area = length * width
        sizes = [s for s in (2, 3, 4, 5, 6, 8) if area % s == 0]
        if sizes:
            size = rng.choice(sizes)
            break
    place = rng.choice(("patio", "kitchen floor", "bathroom floor", "garden path", "hallway floor"))
    boxes = area // size
    question = (f"A rectangular {place} is {length} meters long and {width} meters wide. One box of tiles covers "
                f"{size} square meters. How many boxes of tiles are needed to cover it exactly?")
    steps = [f"The area is {length} × {width} = {area} square meters.",
             f"Each box covers {size} square meters, so {area} ÷ {size} = {boxes} boxes are needed."]
    return question, steps, boxes


_MATH_TEMPLATES: tuple[_MathTemplate, ...] = (
    _MathTemplate("change", "money", _m_change),
    _MathTemplate("savings", "money", _m_savings),
    _MathTemplate("distance", "rates", _m_distance),
    _MathTemplate("batches", "rates", _m_batches),
    _MathTemplate("fraction_left", "fractions", _m_fraction_left),
    _MathTemplate("fraction_group", "fractions", _m_fraction_group),
    _MathTemplate("discount", "percent", _m_discount),
    _MathTemplate("baking", "multi_step", _m_baking),
    _MathTemplate("ratio", "ratios", _m_ratio),
    _MathTemplate("fence", "geometry", _m_fence),
    _MathTemplate("average", "averages", _m_average),
    _MathTemplate("weekly_minutes", "time", _m_weekly_minutes),
    _MathTemplate("ages", "algebra", _m_ages),
    _MathTemplate("tickets", "money", _m_tickets, target_only=True),
    _MathTemplate("reading", "rates", _m_reading, target_only=True),
    _MathTemplate("pizza", "fractions", _m_pizza, target_only=True),
    _MathTemplate("sales_growth", "percent", _m_sales_growth, target_only=True),
    _MathTemplate("legs", "multi_step", _m_legs, target_only=True),
    _MathTemplate("buses", "time", _m_buses, target_only=True),
    _MathTemplate("wages", "money", _m_wages, target_only=True),
    _MathTemplate("tiles", "geometry", _m_tiles, target_only=True),
)

_SOLVE_INSTRUCTIONS = (
    "Solve this word problem step by step.",
    "Work through the following problem and give the final answer.",
    "Answer the math question below, showing each step.",
    "Solve the problem and explain your reasoning.",
)


def _solution(rng: random.Random, steps: list[str], answer: int) -> str:
    if rng.random() < 0.4:
        lines = [f"Step {i}: {step}" for i, step in enumerate(steps, 1)]
    else:
        lines = list(steps)
    return "\n".join(lines + [f"{ANSWER_PREFIX} {answer}."])


def _math_pool_templates() -> list[Callable[[random.Random], Record]]:
    def wrap(t: _MathTemplate) -> Callable[[random.Random], Record]:
        def make(rng: random.Random) -> Record:
            question, steps, answer = t.make(rng)
            if rng.random() < 0.3:
                instruction, input_text = rng.choice(_SOLVE_INSTRUCTIONS), question
            else:
                instruction, input_text = question, ""
            return {"instruction": instruction, "input": input_text, "output": _solution(rng, steps, answer),
                    "_answer": answer, "_group": t.group, "_template": t.name}
        return make

    return [wrap(t) for t in _MATH_TEMPLATES if not t.target_only]


# --------------------------------------------------------------------------------------------------
# python code
# --------------------------------------------------------------------------------------------------

_WORDS = ("banana", "Encyclopedia", "rhythm", "Queue", "education", "sky", "AEIOU", "programming", "Ukulele",
          "strength", "audio", "crypt")
_SENTENCES = ("the quick brown fox", "data beats opinions", "keep it simple", "hello big wide world",
              "practice makes progress", "read the docs first")
_CODE_INTROS = ("Here is a simple implementation:", "Here's one way to write it:", "Sure! Here is a Python function "
                "that does this:", "You can do this with a short function:", "Here is a clear, readable version:")


def _fill(code: str, subs: dict[str, Any]) -> str:
    for key, value in subs.items():
        code = code.replace(f"__{key}__", str(value))
    return code


def _example(fn: str, case: tuple[tuple, Any]) -> str:
    args, expected = case
    return f"For example, `{fn}({', '.join(repr(a) for a in args)})` returns `{expected!r}`."


def _rand_ints(rng: random.Random, n: int, lo: int = -5, hi: int = 30) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


def _fib_ref(n: int) -> int:
    seq = [0, 1]
    while len(seq) <= n:
        seq.append(seq[-1] + seq[-2])
    return seq[n]


def _fizz_ref(n: int) -> list[str]:
    return [("Fizz" * (i % 3 == 0) + "Buzz" * (i % 5 == 0)) or str(i) for i in range(1, n + 1)]


def _most_common_ref(text: str) -> str | None:
    best, best_count = None, 0
    for ch in text:
        if ch != " " and text.count(ch) > best_count:
            best, best_count = ch, text.count(ch)
    return best


def _sorted_unique(rng: random.Random, n: int) -> list[int]:
    return sorted(rng.sample(range(1, 60), n))


_PALINDROMES = ("A man, a plan, a canal: Panama", "Was it a car or a cat I saw?", "Step on no pets",
                "No lemon, no melon", "Never odd or even")
_NOT_PALINDROMES = ("Hello, world", "Python", "Palindrome", "Open the door")
_ANAGRAMS = (("listen", "silent"), ("Dormitory", "dirty room"), ("stone", "tones"), ("night", "thing"),
             ("The eyes", "They see"), ("Astronomer", "Moon starer"))
_NOT_ANAGRAMS = (("hello", "world"), ("rat", "car"), ("apple", "apply"), ("night", "nights"))
_FREQ_TEXTS = ("The cat and the hat.", "Red fish, blue fish, one fish, two fish.", "To be, or not to be.",
               "Rain, rain, go away; come again another day.")
_LONG_WORD_LISTS = (["sun", "planet", "moon", "asteroid", "comet"], ["apple", "fig", "banana", "kiwi", "cherry"],
                    ["go", "python", "rust", "javascript", "c"], ["cat", "giraffe", "elephant", "ox", "zebra"])

# Each task: names (function), args (parameter-name tuples), asks (instructions), code, explain, cases.
_CODE_TASKS: tuple[dict[str, Any], ...] = (
    dict(
        names=("count_vowels", "vowel_count", "num_vowels"), args=(("text",), ("s",), ("word",)),
        asks=("Write a Python function `{fn}` that counts how many vowels are in a string.",
              "Create a function called `{fn}` that returns the number of vowels (a, e, i, o, u) in a string, "
              "ignoring case.",
              "How can I count the vowels in a string in Python? Please write a function named `{fn}`."),
        code='def __fn__(__a0__):\n    vowels = "aeiou"\n    return sum(1 for ch in __a0__.lower() if ch in vowels)',
        explain="Lowercasing `{a0}` first means capital vowels are counted too; the generator expression adds 1 "
                "for every character found in the vowel string.",
        cases=lambda rng, k: [((w,), sum(c in "aeiou" for c in w.lower())) for w in rng.sample(_WORDS, 3)],
    ),
    dict(
        names=("is_palindrome", "check_palindrome"), args=(("text",), ("s",), ("phrase",)),
        asks=("Write a Python function `{fn}` that checks whether a string is a palindrome, ignoring spaces, "
              "punctuation and capitalization.",
              "Implement `{fn}` in Python. It should return True if the input reads the same forwards and "
              "backwards once non-alphanumeric characters are removed and case is ignored."),
        code="def __fn__(__a0__):\n    cleaned = [ch.lower() for ch in __a0__ if ch.isalnum()]\n"
             "    return cleaned == cleaned[::-1]",
        explain="The function keeps only letters and digits, lowercases them, and compares the list with its "
                "reverse (`[::-1]`).",
        cases=lambda rng, k: [((s,), True) for s in rng.sample(_PALINDROMES, 2)]
        + [((s,), False) for s in rng.sample(_NOT_PALINDROMES, 2)],
    ),
    dict(
        names=("factorial", "compute_factorial"), args=(("n",), ("number",)),
        asks=("Write an iterative Python function `{fn}` that returns n! for a non-negative integer.",
              "Implement `{fn}` without recursion. It should raise a ValueError for negative input."),
        code="def __fn__(__a0__):\n    if __a0__ < 0:\n        raise ValueError(\"factorial is not defined for "
             "negative numbers\")\n    result = 1\n    for i in range(2, __a0__ + 1):\n        result *= i\n"
             "    return result",
        explain="The loop multiplies `result` by every integer from 2 up to `{a0}`. Because `result` starts at 1, "
                "`{fn}(0)` and `{fn}(1)` correctly return 1.",
        cases=lambda rng, k: [((n,), math.factorial(n)) for n in rng.sample((0, 1, 4, 5, 6, 7, 10), 3)],
    ),
    dict(
        names=("fibonacci", "nth_fibonacci", "fib"), args=(("n",), ("index",)),
        asks=("Write a Python function `{fn}` that returns the n-th Fibonacci number, where `{fn}(0)` is 0 and "
              "`{fn}(1)` is 1.",
              "Give me an efficient (non-recursive) Python function `{fn}` for Fibonacci numbers."),
        code="def __fn__(__a0__):\n    a, b = 0, 1\n    for _ in range(__a0__):\n        a, b = b, a + b\n"
             "    return a",
        explain="The function keeps only the last two numbers of the sequence and shifts them forward `{a0}` "
                "times, so it runs in linear time and constant memory.",
        cases=lambda rng, k: [((n,), _fib_ref(n)) for n in rng.sample(range(0, 25), 4)],
    ),
    dict(
        names=("reverse_words", "reverse_sentence"), args=(("sentence",), ("text",)),
        asks=("Write a Python function `{fn}` that reverses the order of the words in a sentence.",
              "I need a function `{fn}` that turns 'one two three' into 'three two one'."),
        code='def __fn__(__a0__):\n    return " ".join(reversed(__a0__.split()))',
        explain="`split()` breaks the sentence into words (and ignores extra spaces), `reversed` flips their "
                "order, and `\" \".join` glues them back together.",
        cases=lambda rng, k: [((s,), " ".join(s.split()[::-1])) for s in rng.sample(_SENTENCES, 3)],
    ),
    dict(
        names=("sum_multiples", "sum_divisible"), args=(("numbers",), ("values",)),
        params=lambda rng: {"K": rng.randint(2, 7)},
        asks=("Write a Python function `{fn}` that takes a list of integers and returns the sum of the numbers "
              "that are divisible by {K}.",
              "Create `{fn}`: given a list of ints, add up only the multiples of {K}."),
        code="def __fn__(__a0__):\n    return sum(n for n in __a0__ if n % __K__ == 0)",
        explain="`n % {K} == 0` is true exactly when `n` is a multiple of {K}, so only those values are passed to "
                "`sum`. An empty list gives 0.",
        cases=lambda rng, k: [((xs,), sum(x for x in xs if x % k["K"] == 0))
                              for xs in (_rand_ints(rng, 6), _rand_ints(rng, 5), [])],
    ),
    dict(
        names=("find_max", "largest", "max_value"), args=(("values",), ("numbers",), ("items",)),
        asks=("Write a Python function `{fn}` that returns the largest number in a list without using the "
              "built-in `max`.",
              "Without calling max(), implement `{fn}` to find the biggest element of a non-empty list."),
        code="def __fn__(__a0__):\n    if not __a0__:\n        raise ValueError(\"the list is empty\")\n"
             "    largest = __a0__[0]\n    for value in __a0__[1:]:\n        if value > largest:\n"
             "            largest = value\n    return largest",
        explain="Starting from the first element (rather than 0) keeps the function correct for lists of negative "
                "numbers; an empty list raises a ValueError.",
        cases=lambda rng, k: [((xs,), sorted(xs)[-1]) for xs in (_rand_ints(rng, 5), _rand_ints(rng, 4, -40, -2))],
    ),
    dict(
        names=("celsius_to_fahrenheit", "c_to_f"), args=(("celsius",), ("degrees",)),
        asks=("Write a Python function `{fn}` that converts a temperature from Celsius to Fahrenheit.",
              "Implement `{fn}(celsius)` using the formula F = C × 9/5 + 32."),
        code="def __fn__(__a0__):\n    return __a0__ * 9 / 5 + 32",
        explain="It applies F = C × 9/5 + 32 directly; using `/` keeps the result a float.",
        cases=lambda rng, k: [((c,), c * 1.8 + 32) for c in rng.sample((0, 100, -40, 37, 25, -10), 3)],
    ),
    dict(
        names=("fahrenheit_to_celsius", "f_to_c"), args=(("fahrenheit",), ("degrees",)),
        asks=("Write a Python function `{fn}` that converts Fahrenheit to Celsius.",
              "Implement `{fn}` using C = (F - 32) × 5/9."),
        code="def __fn__(__a0__):\n    return (__a0__ - 32) * 5 / 9",
        explain="Subtract 32 first, then multiply by 5/9; the parentheses matter because multiplication would "
                "otherwise happen before the subtraction.",
        cases=lambda rng, k: [((f,), (f - 32) / 1.8) for f in rng.sample((32, 212, -40, 98.6, 50, 77), 3)],
    ),
    dict(
        names=("remove_duplicates", "dedupe", "unique_in_order"), args=(("items",), ("values",)),
        asks=("Write a Python function `{fn}` that removes duplicates from a list while keeping the original "
              "order.",
              "How do I drop repeated items from a list but keep the first occurrence of each, in order? Write "
              "`{fn}`."),
        code="def __fn__(__a0__):\n    seen = set()\n    result = []\n    for item in __a0__:\n"
             "        if item not in seen:\n            seen.add(item)\n            result.append(item)\n"
             "    return result",
        explain="The set makes membership checks fast, while the `result` list preserves the order in which items "
                "first appear.",
        cases=lambda rng, k: [((xs,), list(dict.fromkeys(xs))) for xs in (_rand_ints(rng, 8, 1, 5),
                                                                           list("mississippi"))],
    ),
    dict(
        names=("word_frequencies", "count_words"), args=(("text",),),
        asks=("Write a Python function `{fn}` that returns a dictionary mapping each word in a text to how many "
              "times it appears. Ignore case and surrounding punctuation.",
              "Create `{fn}(text)` that counts word frequencies, treating 'The' and 'the' as the same word."),
        code="import string\n\n\ndef __fn__(__a0__):\n    counts = {}\n    for word in __a0__.lower().split():\n"
             "        word = word.strip(string.punctuation)\n        if word:\n"
             "            counts[word] = counts.get(word, 0) + 1\n    return counts",
        explain="Each word is lowercased and stripped of punctuation such as commas and periods before it is "
                "counted with `dict.get`.",
        cases=lambda rng, k: [((t,), _word_freq_ref(t)) for t in rng.sample(_FREQ_TEXTS, 2)],
    ),
    dict(
        names=("is_prime", "check_prime"), args=(("n",), ("number",)),
        asks=("Write a Python function `{fn}` that returns True if a number is prime.",
              "Implement a simple primality test `{fn}` that only checks divisors up to the square root."),
        code="def __fn__(__a0__):\n    if __a0__ < 2:\n        return False\n    i = 2\n    while i * i <= __a0__:\n"
             "        if __a0__ % i == 0:\n            return False\n        i += 1\n    return True",
        explain="Numbers below 2 are not prime. Any factor larger than the square root pairs with one smaller "
                "than it, so checking `i * i <= {a0}` is enough.",
        cases=lambda rng, k: [((n,), n > 1 and all(n % d for d in range(2, n)))
                              for n in rng.sample((0, 1, 2, 9, 13, 21, 29, 49, 97, 100), 4)],
    ),
    dict(
        names=("flatten", "flatten_once"), args=(("nested",), ("lists",)),
        asks=("Write a Python function `{fn}` that flattens a list of lists by one level.",
              "Turn [[1, 2], [3], [4, 5]] into [1, 2, 3, 4, 5] with a function called `{fn}`."),
        code="def __fn__(__a0__):\n    return [item for sublist in __a0__ for item in sublist]",
        explain="The nested list comprehension reads left to right: for each sublist, take each item.",
        cases=lambda rng, k: [((xs,), sum(xs, [])) for xs in ([[1, 2], [3], [4, 5]],
                                                               [_rand_ints(rng, 2), [], _rand_ints(rng, 3)])],
    ),
    dict(
        names=("gcd", "greatest_common_divisor"), args=(("a", "b"), ("x", "y")),
        asks=("Write a Python function `{fn}` that computes the greatest common divisor of two integers using "
              "Euclid's algorithm.",
              "Implement Euclid's algorithm as `{fn}({a0}, {a1})`."),
        code="def __fn__(__a0__, __a1__):\n    while __a1__:\n        __a0__, __a1__ = __a1__, __a0__ % __a1__\n"
             "    return abs(__a0__)",
        explain="Each step replaces the pair with (`{a1}`, remainder of `{a0}` ÷ `{a1}`); when the remainder "
                "reaches 0, the other number is the GCD.",
        cases=lambda rng, k: [((a, b), math.gcd(a, b)) for a, b in ((48, 18), (rng.randint(10, 99), rng.randint(10, 99)),
                                                                     (17, 5), (0, 9))],
    ),
    dict(
        names=("chunk", "split_into_chunks", "batched"), args=(("items", "size"), ("values", "n")),
        asks=("Write a Python function `{fn}` that splits a list into pieces of a given size (the last piece may "
              "be shorter).",
              "Create `{fn}({a0}, {a1})` that groups a list into consecutive chunks of length {a1}."),
        code="def __fn__(__a0__, __a1__):\n    if __a1__ < 1:\n        raise ValueError(\"size must be at least 1\")\n"
             "    return [__a0__[i:i + __a1__] for i in range(0, len(__a0__), __a1__)]",
        explain="`range(0, len({a0}), {a1})` gives the start of every chunk, and slicing never goes past the end, "
                "so the final chunk is simply shorter.",
        cases=lambda rng, k: [((list(range(1, n + 1)), s), [list(range(1, n + 1))[i:i + s] for i in range(0, n, s)])
                              for n, s in ((7, 3), (rng.randint(4, 10), rng.randint(2, 4)))],
    ),
    dict(
        names=("merge_sorted", "merge_lists"), args=(("left", "right"), ("a", "b")),
        asks=("Write a Python function `{fn}` that merges two already sorted lists into one sorted list without "
              "calling `sort`.",
              "Implement the merge step of merge sort as `{fn}({a0}, {a1})`."),
        code="def __fn__(__a0__, __a1__):\n    merged = []\n    i = j = 0\n"
             "    while i < len(__a0__) and j < len(__a1__):\n        if __a0__[i] <= __a1__[j]:\n"
             "            merged.append(__a0__[i])\n            i += 1\n        else:\n"
             "            merged.append(__a1__[j])\n            j += 1\n    merged.extend(__a0__[i:])\n"
             "    merged.extend(__a1__[j:])\n    return merged",
        explain="Two indexes walk through the lists, always taking the smaller front element; whatever remains in "
                "either list is already sorted and is appended at the end.",
        cases=lambda rng, k: [((a, b), sorted(a + b)) for a, b in ((sorted(_rand_ints(rng, 4)), sorted(_rand_ints(rng, 3))),
                                                                     ([], [1, 2]))],
    ),
    dict(
        names=("second_largest", "runner_up"), args=(("numbers",), ("values",)),
        asks=("Write a Python function `{fn}` that returns the second largest distinct value in a list, or None "
              "if there isn't one.",
              "Implement `{fn}`: [4, 9, 9, 2] should give 4, and [5, 5] should give None."),
        code="def __fn__(__a0__):\n    distinct = sorted(set(__a0__), reverse=True)\n"
             "    return distinct[1] if len(distinct) >= 2 else None",
        explain="Converting to a set removes repeated values, so ties for first place don't count twice.",
        cases=lambda rng, k: [(([4, 9, 9, 2],), 4), (([5, 5],), None)]
        + [((xs,), (sorted(set(xs))[-2] if len(set(xs)) > 1 else None)) for xs in (_rand_ints(rng, 6),)],
    ),
    dict(
        names=("running_total", "cumulative_sum"), args=(("numbers",), ("values",)),
        asks=("Write a Python function `{fn}` that returns the running totals of a list of numbers.",
              "Given [1, 2, 3, 4], `{fn}` should return [1, 3, 6, 10]. Write it in Python."),
        code="def __fn__(__a0__):\n    totals = []\n    current = 0\n    for n in __a0__:\n        current += n\n"
             "        totals.append(current)\n    return totals",
        explain="`current` holds the sum so far, and its value after each step is appended to `totals`.",
        cases=lambda rng, k: [((xs,), [sum(xs[:i + 1]) for i in range(len(xs))]) for xs in (_rand_ints(rng, 5), [])],
    ),
    dict(
        names=("long_words", "words_longer_than"), args=(("words",),),
        params=lambda rng: {"K": rng.randint(3, 6)},
        asks=("Write a Python function `{fn}` that takes a list of words and returns only the words longer than "
              "{K} characters.",
              "Filter a list of strings so that only those with more than {K} letters remain. Call the function "
              "`{fn}`."),
        code="def __fn__(__a0__):\n    return [word for word in __a0__ if len(word) > __K__]",
        explain="The list comprehension keeps the original order and drops every word of {K} characters or fewer.",
        cases=lambda rng, k: [((ws,), list(filter(lambda w: len(w) > k["K"], ws)))
                              for ws in rng.sample(_LONG_WORD_LISTS, 2)],
    ),
    dict(
        names=("binary_search", "find_index"), args=(("items", "target"), ("sorted_values", "value")),
        asks=("Write a binary search function `{fn}` in Python that returns the index of a target in a sorted "
              "list, or -1 if it is not there.",
              "Implement `{fn}({a0}, {a1})` using binary search."),
        code="def __fn__(__a0__, __a1__):\n    low, high = 0, len(__a0__) - 1\n    while low <= high:\n"
             "        mid = (low + high) // 2\n        if __a0__[mid] == __a1__:\n            return mid\n"
             "        if __a0__[mid] < __a1__:\n            low = mid + 1\n        else:\n            high = mid - 1\n"
             "    return -1",
        explain="Each comparison halves the part of the list that can still contain `{a1}`, so the search takes "
                "O(log n) steps.",
        cases=lambda rng, k: _binary_search_cases(rng),
    ),
    dict(
        names=("clamp", "limit"), args=(("value", "low", "high"), ("x", "minimum", "maximum")),
        asks=("Write a Python function `{fn}` that restricts a number to a range: values below the lower bound "
              "become the lower bound, values above the upper bound become the upper bound.",
              "Implement `{fn}({a0}, {a1}, {a2})`."),
        code="def __fn__(__a0__, __a1__, __a2__):\n    return max(__a1__, min(__a0__, __a2__))",
        explain="`min` caps the value at `{a2}`, then `max` raises it to at least `{a1}`.",
        cases=lambda rng, k: [((v, 0, 10), (0 if v < 0 else 10 if v > 10 else v)) for v in (-5, 7, 42)],
    ),
    dict(
        names=("are_anagrams", "is_anagram"), args=(("first", "second"), ("a", "b")),
        asks=("Write a Python function `{fn}` that checks whether two strings are anagrams, ignoring spaces and "
              "capitalization.",
              "Implement `{fn}({a0}, {a1})`: 'Dormitory' and 'dirty room' should count as anagrams."),
        code="def __fn__(__a0__, __a1__):\n    def normalize(text):\n"
             "        return sorted(text.replace(\" \", \"\").lower())\n\n"
             "    return normalize(__a0__) == normalize(__a1__)",
        explain="Sorting the letters gives the same result for any two anagrams; spaces are removed and case is "
                "ignored first.",
        cases=lambda rng, k: [(pair, True) for pair in rng.sample(_ANAGRAMS, 2)]
        + [(pair, False) for pair in rng.sample(_NOT_ANAGRAMS, 2)],
    ),
    dict(
        names=("digit_sum", "sum_of_digits"), args=(("n",), ("number",)),
        asks=("Write a Python function `{fn}` that returns the sum of the digits of an integer (negative numbers "
              "included).",
              "Create `{fn}` so that `{fn}(-472)` returns 13."),
        code="def __fn__(__a0__):\n    return sum(int(d) for d in str(abs(__a0__)))",
        explain="`abs` drops the minus sign, and turning the number into a string lets us loop over its digits.",
        cases=lambda rng, k: [((n,), _digit_sum_ref(n)) for n in (-472, rng.randint(100, 99999), 0)],
    ),
    dict(
        names=("is_leap_year", "leap_year"), args=(("year",),),
        asks=("Write a Python function `{fn}` that returns True for leap years in the Gregorian calendar.",
              "Implement `{fn}(year)`: years divisible by 4 are leap years, except centuries not divisible by 400."),
        code="def __fn__(__a0__):\n    return __a0__ % 4 == 0 and (__a0__ % 100 != 0 or __a0__ % 400 == 0)",
        explain="A year divisible by 4 is a leap year unless it is a century year; century years are leap years "
                "only when divisible by 400, so 2000 is one and 1900 is not.",
        cases=lambda rng, k: [((y,), y % 400 == 0 or (y % 4 == 0 and y % 100 != 0))
                              for y in rng.sample((1900, 2000, 2023, 2024, 2100, 1996), 4)],
    ),
    dict(
        names=("fizzbuzz", "fizz_buzz"), args=(("n",), ("limit",)),
        asks=("Write a Python function `{fn}` that returns the FizzBuzz sequence from 1 to n as a list of strings.",
              "Implement FizzBuzz as a function `{fn}(n)` that returns a list instead of printing."),
        code="def __fn__(__a0__):\n    result = []\n    for i in range(1, __a0__ + 1):\n        if i % 15 == 0:\n"
             "            result.append(\"FizzBuzz\")\n        elif i % 3 == 0:\n            result.append(\"Fizz\")\n"
             "        elif i % 5 == 0:\n            result.append(\"Buzz\")\n        else:\n"
             "            result.append(str(i))\n    return result",
        explain="The check for 15 comes first; otherwise numbers divisible by both 3 and 5 would stop at the "
                "\"Fizz\" branch.",
        cases=lambda rng, k: [((n,), _fizz_ref(n)) for n in (5, 15, rng.randint(16, 30))],
    ),
    dict(
        names=("most_common_char", "most_frequent_char"), args=(("text",), ("s",)),
        asks=("Write a Python function `{fn}` that returns the most frequent character in a string, ignoring "
              "spaces. If there is a tie, return the character that appears first.",
              "Find the character that occurs most often in a string (spaces don't count). Write `{fn}`."),
        code="def __fn__(__a0__):\n    counts = {}\n    for ch in __a0__:\n        if ch != \" \":\n"
             "            counts[ch] = counts.get(ch, 0) + 1\n    if not counts:\n        return None\n"
             "    return max(counts, key=counts.get)",
        explain="Dictionaries remember insertion order and `max` returns the first maximum it sees, so ties go to "
                "the character that appears first. An empty or all-space string returns None.",
        cases=lambda rng, k: [((t,), _most_common_ref(t)) for t in rng.sample(_SENTENCES, 2) + ["   "]],
    ),
    dict(
        names=("transpose", "transpose_matrix"), args=(("matrix",), ("grid",)),
        asks=("Write a Python function `{fn}` that transposes a matrix given as a list of lists.",
              "How do I swap rows and columns of a 2D list in Python? Write `{fn}`."),
        code="def __fn__(__a0__):\n    return [list(row) for row in zip(*__a0__)]",
        explain="`zip(*{a0})` pairs up the first elements of every row, then the second elements, and so on; each "
                "of those tuples becomes a row of the result.",
        cases=lambda rng, k: [(([[1, 2, 3], [4, 5, 6]],), [[1, 4], [2, 5], [3, 6]]), (([[7]],), [[7]])],
    ),
    dict(
        names=("average", "mean"), args=(("numbers",), ("values",)),
        asks=("Write a Python function `{fn}` that returns the average of a list of numbers, or 0.0 for an empty "
              "list.",),
        code="def __fn__(__a0__):\n    if not __a0__:\n        return 0.0\n    return sum(__a0__) / len(__a0__)",
        explain="Checking for an empty list first avoids a ZeroDivisionError.",
        cases=lambda rng, k: [(([2, 4, 9],), 5.0), (([],), 0.0), ((xs := _rand_ints(rng, 4),), sum(xs) / 4)],
    ),
    dict(
        names=("title_case", "capitalize_words"), args=(("text",), ("sentence",)),
        asks=("Write a Python function `{fn}` that capitalizes the first letter of every word in a sentence and "
              "leaves the other letters unchanged.",),
        code="def __fn__(__a0__):\n    return \" \".join(word[:1].upper() + word[1:] for word in __a0__.split())",
        explain="Unlike `str.title()`, this leaves the rest of each word alone, so a name like 'McDonald' keeps its "
                "inner capital instead of becoming 'Mcdonald'.",
        cases=lambda rng, k: [((s,), " ".join(w[0].upper() + w[1:] for w in s.split())) for s in rng.sample(_SENTENCES, 2)],
    ),
)


def _word_freq_ref(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for raw in text.split():
        w = raw.lower().strip(string.punctuation)
        if w:
            out[w] = out.get(w, 0) + 1
    return out


def _digit_sum_ref(n: int) -> int:
    n, total = abs(n), 0
    while n:
        n, d = divmod(n, 10)
        total += d
    return total


def _binary_search_cases(rng: random.Random) -> list[tuple[tuple, Any]]:
    items = _sorted_unique(rng, 7)
    missing = next(v for v in range(1, 70) if v not in items)
    present = rng.choice(items)
    return [((items, present), items.index(present)), ((items, missing), -1), (([], 3), -1)]


_BUGFIX_TASKS: tuple[dict[str, Any], ...] = (
    dict(
        names=("sum_to_n", "total_up_to"), args=(("n",),),
        asks=("This function should return the sum of the numbers from 1 to n, but `{fn}(3)` returns 3 instead "
              "of 6. Fix it.",
              "Find and fix the bug in this Python function, which is meant to add up 1 + 2 + ... + n."),
        buggy="def __fn__(__a0__):\n    total = 0\n    for i in range(__a0__):\n        total += i\n    return total",
        fixed="def __fn__(__a0__):\n    total = 0\n    for i in range(1, __a0__ + 1):\n        total += i\n"
              "    return total",
        explain="`range({a0})` produces 0, 1, ..., {a0} - 1, so the loop adds 0 and never adds `{a0}` itself. "
                "`range(1, {a0} + 1)` covers exactly 1 through {a0}:",
        cases=lambda rng, k: [((n,), n * (n + 1) // 2) for n in (3, rng.randint(5, 50), 0)],
    ),
    dict(
        names=("average", "mean_score"), args=(("scores",), ("numbers",)),
        asks=("My average function returns 1 for [1, 2, 2] instead of 1.666... What's wrong?",
              "Fix the bug in this function that computes the mean of a list."),
        buggy="def __fn__(__a0__):\n    return sum(__a0__) // len(__a0__)",
        fixed="def __fn__(__a0__):\n    return sum(__a0__) / len(__a0__)",
        explain="`//` is floor division, so the result is rounded down to a whole number. Use true division `/` "
                "instead:",
        cases=lambda rng, k: [(([1, 2, 2],), 5 / 3), ((xs := _rand_ints(rng, 4, 1, 20),), sum(xs) / 4)],
    ),
    dict(
        names=("add_item", "append_tag"), args=(("item",), ("tag",)),
        asks=("Why does this function keep items from previous calls? The second call `{fn}('b')` returns "
              "['a', 'b'] instead of ['b'].",
              "Find the bug: this function is supposed to return a new one-element list when no list is given."),
        buggy="def __fn__(__a0__, items=[]):\n    items.append(__a0__)\n    return items",
        fixed="def __fn__(__a0__, items=None):\n    if items is None:\n        items = []\n    items.append(__a0__)\n"
              "    return items",
        explain="Default values are created once, when the function is defined, so every call without an "
                "argument shares the same list. Use `None` as the default and create a fresh list inside:",
        cases=lambda rng, k: [(("a",), ["a"]), (("b",), ["b"])],
    ),
    dict(
        names=("squares", "square_all"), args=(("numbers",), ("values",)),
        asks=("This function always returns None. What did I do wrong?",
              "Fix this Python function so that it returns the squares of the input numbers."),
        buggy="def __fn__(__a0__):\n    result = [x * x for x in __a0__]",
        fixed="def __fn__(__a0__):\n    result = [x * x for x in __a0__]\n    return result",
        explain="The function builds the list but never returns it, and a Python function without a `return` "
                "statement returns None. Add the return:",
        cases=lambda rng, k: [((xs,), [x ** 2 for x in xs]) for xs in (_rand_ints(rng, 4), [])],
    ),
    dict(
        names=("largest", "biggest"), args=(("numbers",), ("values",)),
        asks=("My function returns 0 for [-3, -7, -1] instead of -1. Can you fix it?",
              "Find the bug in this max function."),
        buggy="def __fn__(__a0__):\n    best = 0\n    for n in __a0__:\n        if n > best:\n            best = n\n"
              "    return best",
        fixed="def __fn__(__a0__):\n    best = __a0__[0]\n    for n in __a0__[1:]:\n        if n > best:\n"
              "            best = n\n    return best",
        explain="Starting `best` at 0 means no negative number can ever beat it. Start from the first element "
                "instead:",
        cases=lambda rng, k: [(([-3, -7, -1],), -1), ((xs := _rand_ints(rng, 5),), sorted(xs)[-1])],
    ),
    dict(
        names=("is_palindrome",), args=(("word",), ("text",)),
        asks=("This palindrome check says 'Racecar' is not a palindrome. How do I fix it?",),
        buggy="def __fn__(__a0__):\n    return __a0__ == __a0__[::-1]",
        fixed="def __fn__(__a0__):\n    lowered = __a0__.lower()\n    return lowered == lowered[::-1]",
        explain="The comparison is case-sensitive, so 'R' and 'r' don't match. Lowercase the word before "
                "comparing:",
        cases=lambda rng, k: [(("Racecar",), True), (("Level",), True), (("Python",), False)],
    ),
)

_EXPLAIN_TASKS: tuple[dict[str, Any], ...] = (
    dict(
        names=("even_squares", "process", "transform"), args=(("numbers",), ("data",)),
        code="def __fn__(__a0__):\n    return [n * n for n in __a0__ if n % 2 == 0]",
        explain="`{fn}` goes through `{a0}`, keeps only the even numbers (`n % 2 == 0`), and returns a new list "
                "with the square of each one. Odd numbers are skipped, and the original list is not changed.",
        cases=lambda rng, k: [((xs,), [x * x for x in xs if x % 2 == 0]) for xs in (_rand_ints(rng, 5, 1, 12),)],
    ),
    dict(
        names=("word_lengths", "build_index", "helper"), args=(("words",), ("items",)),
        code="def __fn__(__a0__):\n    return {word: len(word) for word in __a0__}",
        explain="This is a dictionary comprehension: for every word in `{a0}` it creates an entry whose key is the "
                "word and whose value is its length. If a word appears twice, it simply ends up as one key.",
        cases=lambda rng, k: [((ws,), {w: len(w) for w in ws}) for ws in (rng.sample(_WORDS, 3),)],
    ),
    dict(
        names=("pair_up", "combine", "make_lookup"), args=(("keys", "values"), ("names", "scores")),
        code="def __fn__(__a0__, __a1__):\n    return dict(zip(__a0__, __a1__))",
        explain="`zip` pairs the first element of `{a0}` with the first of `{a1}`, the second with the second, and "
                "so on; `dict` turns those pairs into a dictionary. If one list is longer, its extra items are "
                "ignored.",
        cases=lambda rng, k: [((["ann", "bo", "cy"], [3, 1, 2]), {"ann": 3, "bo": 1, "cy": 2})],
    ),
    dict(
        names=("sort_by_length", "arrange", "order_words"), args=(("words",), ("items",)),
        code="def __fn__(__a0__):\n    return sorted(__a0__, key=len)",
        explain="`sorted` returns a new list ordered by the value of `key`, here each word's length, from shortest "
                "to longest. The sort is stable, so words of equal length keep their original order.",
        cases=lambda rng, k: [((ws,), sorted(ws, key=lambda w: len(w))) for ws in (rng.sample(_WORDS, 4),)],
    ),
    dict(
        names=("find_all", "positions", "locate"), args=(("items", "target"), ("values", "x")),
        code="def __fn__(__a0__, __a1__):\n    return [i for i, item in enumerate(__a0__) if item == __a1__]",
        explain="`enumerate` yields each position together with its element, and the comprehension keeps the "
                "positions whose element equals `{a1}`. The result is a list of every index where `{a1}` occurs "
                "(empty if it never does).",
        cases=lambda rng, k: [((xs, 2), [i for i in range(len(xs)) if xs[i] == 2]) for xs in (_rand_ints(rng, 8, 1, 4),)],
    ),
    dict(
        names=("strip_vowels", "compress", "shorten"), args=(("text",), ("word",)),
        code="def __fn__(__a0__):\n    return \"\".join(ch for ch in __a0__ if ch not in \"aeiouAEIOU\")",
        explain="It builds a new string containing every character of `{a0}` except vowels, in either case. "
                "Spaces, digits and punctuation are kept.",
        cases=lambda rng, k: [((w,), "".join(c for c in w if c.lower() not in "aeiou")) for w in (rng.choice(_WORDS),)],
    ),
)

_EXPLAIN_ASKS = ("Explain what this Python function does.", "What does the following code do?",
                 "Can you walk me through this function?", "Describe the behavior of this code in plain English.")


def _code_subs(rng: random.Random, task: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    fn = rng.choice(task["names"])
    args = rng.choice(task["args"])
    params = task["params"](rng) if "params" in task else {}
    subs: dict[str, Any] = {"fn": fn, **{f"a{i}": a for i, a in enumerate(args)}, **params}
    return subs, params


def _code_write_template(task: dict[str, Any]) -> Callable[[random.Random], Record]:
    def make(rng: random.Random) -> Record:
        subs, params = _code_subs(rng, task)
        code = _fill(task["code"], subs)
        cases = task["cases"](rng, params)
        output = (f"{rng.choice(_CODE_INTROS)}\n\n```python\n{code}\n```\n\n{task['explain'].format(**subs)} "
                  f"{_example(subs['fn'], cases[0])}")
        return {"instruction": rng.choice(task["asks"]).format(**subs), "input": "", "output": output,
                "_check": {"where": "output", "function": subs["fn"], "cases": cases}}
    return make


def _code_fix_template(task: dict[str, Any]) -> Callable[[random.Random], Record]:
    def make(rng: random.Random) -> Record:
        subs, params = _code_subs(rng, task)
        cases = task["cases"](rng, params)
        output = (f"{task['explain'].format(**subs)}\n\n```python\n{_fill(task['fixed'], subs)}\n```\n\n"
                  f"{_example(subs['fn'], cases[0])}")
        return {"instruction": rng.choice(task["asks"]).format(**subs),
                "input": f"```python\n{_fill(task['buggy'], subs)}\n```", "output": output,
                "_check": {"where": "output", "function": subs["fn"], "cases": cases}}
    return make


def _code_explain_template(task: dict[str, Any]) -> Callable[[random.Random], Record]:
    def make(rng: random.Random) -> Record:
        subs, params = _code_subs(rng, task)
        cases = task["cases"](rng, params)
        output = f"{task['explain'].format(**subs)}\n\n{_example(subs['fn'], cases[0])}"
        return {"instruction": rng.choice(_EXPLAIN_ASKS), "input": f"```python\n{_fill(task['code'], subs)}\n```",
                "output": output, "_check": {"where": "input", "function": subs["fn"], "cases": cases}}
    return make


def _python_templates() -> list[Callable[[random.Random], Record]]:
    return ([_code_write_template(t) for t in _CODE_TASKS] + [_code_fix_template(t) for t in _BUGFIX_TASKS]
            + [_code_explain_template(t) for t in _EXPLAIN_TASKS])


# --------------------------------------------------------------------------------------------------
# summarization
# --------------------------------------------------------------------------------------------------


@dataclass
class _Story:
    text: str
    one: str
    headline: str | None
    bullets: list[str]


def _s_bike_lanes(rng: random.Random) -> _Story:
    city = rng.choice(_TOWNS)
    km = rng.choice((3, 4, 5, 6, 8, 12))
    street = rng.choice(("Main Street", "River Road", "Oak Avenue", "Harbor Boulevard", "Station Road"))
    yes = rng.randint(5, 8)
    no = 9 - yes
    cost = rng.choice(("1.2", "2.5", "3.8", "4.1", "6"))
    season, year = rng.choice(_SEASONS), rng.choice((2026, 2027))
    spaces = rng.randint(3, 8) * 10
    day = rng.choice(_WEEKDAYS)
    text = (f"The {city} city council voted {yes} to {no} on {day} to build {km} kilometers of protected bike lanes "
            f"along {street}. The project will cost about ${cost} million and is expected to be finished by "
            f"{season} {year}. Supporters said the lanes would make cycling safer for commuters and students, while "
            f"several shop owners worried about losing parking in front of their stores. In response, the council "
            f"promised to add {spaces} parking spaces on nearby side streets.")
    one = (f"{city}'s city council approved {km} kilometers of protected bike lanes on {street}, a ${cost} million "
           f"project due by {season} {year}, and will add {spaces} parking spaces nearby to ease shop owners' "
           f"concerns.")
    return _Story(text, one, f"{city} Approves {km} km of Protected Bike Lanes on {street}", [
        f"The {city} city council voted {yes}-{no} to build {km} km of protected bike lanes on {street}.",
        f"The project will cost about ${cost} million and should be finished by {season} {year}.",
        f"To address shop owners' parking worries, {spaces} spaces will be added on side streets."])


_COMPANIES = (("Northwind Outdoor", "outdoor gear", "lightweight tents"),
              ("Brightleaf Foods", "packaged snacks", "plant-based snack bars"),
              ("Kestrel Audio", "headphones and speakers", "wireless earbuds"),
              ("Bluepeak Bikes", "bicycles", "electric bikes"),
              ("Harborline Furniture", "home furniture", "modular sofas"))


def _s_earnings(rng: random.Random) -> _Story:
    company, products, line = rng.choice(_COMPANIES)
    revenue = rng.randint(80, 900)
    pct = rng.randint(6, 28)
    quarter = rng.choice(("first", "second", "third", "fourth"))
    profit = rng.randint(4, 40)
    before = profit + rng.randint(2, 10)
    ceo, _ = _full_name(rng)
    city = rng.choice(_TOWNS)
    text = (f"{company}, a maker of {products}, reported revenue of ${revenue} million for the {quarter} quarter, up "
            f"{pct}% from the same period last year. The company said strong demand for its {line} drove most of "
            f"the growth. However, higher shipping costs cut into profits, which fell to ${profit} million from "
            f"${before} million a year earlier. Chief executive {ceo} said the company plans to open a new warehouse "
            f"in {city} next year to lower delivery costs.")
    one = (f"{company}'s {quarter}-quarter revenue rose {pct}% to ${revenue} million on strong demand for its "
           f"{line}, but higher shipping costs cut profit to ${profit} million, so it plans a new warehouse in "
           f"{city}.")
    return _Story(text, one, f"{company} Revenue Up {pct}%, but Shipping Costs Squeeze Profit", [
        f"{quarter.capitalize()}-quarter revenue rose {pct}% to ${revenue} million, driven by its {line}.",
        f"Higher shipping costs pushed profit down from ${before} million to ${profit} million.",
        f"The company will open a warehouse in {city} next year to cut delivery costs."])


_UNIVERSITIES = ("Eastbrook University", "the University of Westfield", "Lakeside Medical College",
                 "the Ashford Institute of Technology")


def _s_sleep_study(rng: random.Random) -> _Story:
    uni = rng.choice(_UNIVERSITIES)
    n = rng.randint(120, 900)
    weeks = rng.choice((6, 8, 10, 12, 16))
    pct = rng.randint(12, 35)
    age = rng.choice((50, 55, 60, 65))
    text = (f"Researchers at {uni} followed {n} adults for {weeks} weeks to study how sleep affects memory. "
            f"Participants who slept at least seven hours a night remembered {pct}% more words on a recall test than "
            f"those who slept less than six hours. The effect was strongest in people over {age}. The team says the "
            f"findings add to evidence that sleep helps the brain store new information, but cautions that the study "
            f"shows an association, not proof of cause and effect.")
    one = (f"A {weeks}-week study of {n} adults at {uni} found that people who slept at least seven hours recalled "
           f"{pct}% more words than those who slept under six, especially people over {age}, though it does not "
           f"prove cause and effect.")
    return _Story(text, one, "Study Links Longer Sleep to Better Memory", [
        f"{_cap(uni)} tracked {n} adults for {weeks} weeks.",
        f"People sleeping seven or more hours recalled {pct}% more words than those sleeping under six.",
        f"The effect was strongest after age {age}, but the study shows association, not causation."])


def _s_library(rng: random.Random) -> _Story:
    city = rng.choice(_TOWNS)
    months = rng.randint(8, 20)
    rooms = rng.randint(4, 12)
    cost = rng.choice(("3.5", "4.2", "5.8", "7.1", "9.6"))
    year = rng.choice((2021, 2022, 2023))
    visitors = f"{rng.randint(6, 30) * 100:,}"
    librarian, _ = _full_name(rng)
    day = rng.choice(_WEEKDAYS)
    text = (f"After {months} months of renovation, the {city} Public Library reopened on {day} with a larger "
            f"children's section, {rooms} quiet study rooms and a makerspace with 3D printers. The ${cost} million "
            f"project was paid for mostly by a bond that local voters approved in {year}. Head librarian {librarian} "
            f"said more than {visitors} people came through the doors on the first day. The library will now stay "
            f"open until 9 p.m. on weekdays.")
    one = (f"The {city} Public Library reopened after a {months}-month, ${cost} million renovation that added a "
           f"bigger children's section, {rooms} study rooms and a makerspace, drawing more than {visitors} visitors "
           f"on its first day.")
    return _Story(text, one, f"{city} Library Reopens With Makerspace and Longer Hours", [
        f"The {city} Public Library reopened after {months} months of renovation.",
        f"The ${cost} million project added a bigger children's section, {rooms} study rooms and a makerspace.",
        f"More than {visitors} people visited on day one, and weekday hours now run until 9 p.m."])


def _s_robotics(rng: random.Random) -> _Story:
    city, city2 = rng.sample(_TOWNS, 2)
    school = rng.choice((f"{city} High School", f"{rng.choice(_SURNAMES)} Middle School"))
    n = rng.randint(5, 14)
    nick = rng.choice(("Sparky", "Gizmo", "The Beetle", "Bolt", "Tin Can", "Rover"))
    seconds = rng.randint(40, 150)
    teams = rng.randint(12, 40)
    months = rng.randint(3, 7)
    season = rng.choice(_SEASONS)
    day = rng.choice(_WEEKDAYS)
    text = (f"A team of {n} students from {school} won first place at the regional robotics competition on {day}. "
            f"Their robot, nicknamed \"{nick}\", finished the obstacle course in {seconds} seconds, beating {teams} "
            f"other teams. The students spent about {months} months designing and building it after school. With "
            f"the win, the team qualifies for the national championship in {city2} this {season}.")
    one = (f"{school}'s {n}-student robotics team won the regional competition when its robot \"{nick}\" finished "
           f"the obstacle course in {seconds} seconds, earning a spot at the national championship in {city2}.")
    return _Story(text, one, f"{school} Robotics Team Wins Regional Title", [
        f"{n} students from {school} won the regional robotics competition.",
        f"Their robot \"{nick}\" finished the course in {seconds} seconds, ahead of {teams} other teams.",
        f"The team now goes to the national championship in {city2} this {season}."])


def _s_storm(rng: random.Random) -> _Story:
    region = rng.choice((f"the {rng.choice(_TOWNS)} area", "the northern coast", "the river valley",
                         "the eastern suburbs"))
    wind = rng.randint(70, 130)
    rain = rng.randint(30, 110)
    homes = f"{rng.randint(3, 40) * 500:,}"
    day = rng.choice(_WEEKDAYS)
    text = (f"A strong storm swept through {region} overnight, bringing winds of up to {wind} kilometers per hour and "
            f"about {rain} millimeters of rain. Around {homes} homes lost power, and several roads were closed "
            f"because of fallen trees. Utility crews expect to restore electricity to most customers by {day} "
            f"evening. No serious injuries were reported.")
    one = (f"An overnight storm with winds up to {wind} km/h and about {rain} mm of rain cut power to around {homes} "
           f"homes in {region} and closed roads, but no serious injuries were reported and most power should be "
           f"back by {day} evening.")
    return _Story(text, one, f"Storm Leaves {homes} Homes Without Power", [
        f"Winds reached {wind} km/h and about {rain} mm of rain fell overnight in {region}.",
        f"Around {homes} homes lost power and fallen trees closed several roads.",
        f"Most power should be restored by {day} evening; no serious injuries were reported."])


_RECALLS = (("electric kettle", "the automatic shut-off switch can fail and let the kettle overheat"),
            ("space heater", "a faulty thermostat can cause it to overheat"),
            ("children's water bottle", "the lid can crack into small pieces that pose a choking hazard"),
            ("phone charger", "the casing can overheat and melt during use"),
            ("folding step stool", "a hinge can snap under weight"))


def _s_recall(rng: random.Random) -> _Story:
    brand = rng.choice(("HomeCraft", "Zephyr", "Brightway", "Nordhaven", "Everline"))
    product, defect = rng.choice(_RECALLS)
    units = f"{rng.randint(12, 250) * 1000:,}"
    i = rng.randint(0, 8)
    m1, m2 = _MONTHS[i], _MONTHS[i + rng.randint(2, 3)]
    reports = rng.randint(5, 80)
    text = (f"{brand} is recalling about {units} {product}s sold between {m1} and {m2} last year because {defect}. "
            f"The company said it has received {reports} reports of the problem but is not aware of any injuries. "
            f"Customers should stop using the {product} right away and can return it to any store that sells "
            f"{brand} products for a full refund.")
    one = (f"{brand} is recalling about {units} {product}s because {defect}; owners should stop using them and "
           f"return them for a full refund.")
    return _Story(text, one, f"{brand} Recalls {units} {_title(product)}s Over Safety Defect", [
        f"{brand} is recalling about {units} {product}s sold between {m1} and {m2} last year.",
        f"The problem: {defect}. There have been {reports} reports but no known injuries.",
        "Owners should stop using the product and return it for a full refund."])


def _s_cleanup(rng: random.Random) -> _Story:
    volunteers = rng.randint(40, 300)
    park = rng.choice(("Riverside Park", f"{rng.choice(_SURNAMES)} Park", "Willow Creek Park", "Harbor Green"))
    bags = rng.randint(60, 400)
    trees = rng.randint(10, 80)
    organizer, who = _full_name(rng)
    month = rng.choice(_MONTHS[6:10])
    text = (f"More than {volunteers} volunteers gathered at {park} on Saturday for the annual spring cleanup. In four "
            f"hours they collected {bags} bags of litter and planted {trees} young trees along the riverbank. "
            f"Organizer {organizer} said the group found less plastic than last year, which {who.he} credited to the "
            f"new recycling bins installed around the park. The next cleanup is planned for {month}.")
    one = (f"More than {volunteers} volunteers collected {bags} bags of litter and planted {trees} trees at {park}, "
           f"finding less plastic than last year thanks to new recycling bins.")
    return _Story(text, one, f"Volunteers Haul {bags} Bags of Litter From {park}", [
        f"More than {volunteers} volunteers cleaned up {park}, collecting {bags} bags of litter.",
        f"They also planted {trees} young trees along the riverbank.",
        f"Less plastic was found than last year, credited to new recycling bins; the next cleanup is in {month}."])


_EXHIBITS = (("the ocean", "a walk-through model of a coral reef"),
             ("space exploration", "a full-size replica of a lunar lander"),
             ("dinosaurs", "a life-size model of a Triceratops"),
             ("the human body", "a giant model heart that visitors can walk through"),
             ("weather", "a booth that simulates hurricane-force winds"))


def _s_museum(rng: random.Random) -> _Story:
    city = rng.choice(_TOWNS)
    topic, feature = rng.choice(_EXHIBITS)
    displays = rng.randint(12, 40)
    a1 = rng.choice((5, 6, 7, 8))
    a2 = a1 + rng.choice((5, 6, 7))
    adult = rng.randint(12, 22)
    child = adult - rng.randint(4, 8)
    month = rng.choice(_MONTHS)
    text = (f"The {city} Museum of Science opened a new exhibit about {topic} this week. It features {displays} "
            f"interactive displays, including {feature}. The exhibit is aimed at children aged {a1} to {a2}, but "
            f"museum staff say adults have been just as eager to try the displays. Tickets cost ${adult} for adults "
            f"and ${child} for children, and the exhibit runs until the end of {month}.")
    one = (f"The {city} Museum of Science has opened a hands-on exhibit about {topic} with {displays} interactive "
           f"displays, including {feature}, running until the end of {month}.")
    return _Story(text, one, f"New {_title(topic.replace('the ', ''))} Exhibit Opens at {city} Museum of Science", [
        f"The {city} Museum of Science opened an exhibit about {topic} with {displays} interactive displays.",
        f"Highlights include {feature}; it targets ages {a1} to {a2} but appeals to adults too.",
        f"Tickets are ${adult} for adults and ${child} for children, through the end of {month}."])


def _s_email(rng: random.Random) -> _Story:
    sender, _ = _full_name(rng)
    day = rng.choice(("Monday", "Tuesday", "Wednesday", "Friday"))
    time = rng.choice(("9:30 a.m.", "10 a.m.", "1:30 p.m.", "2 p.m.", "3:15 p.m."))
    event = rng.choice(("regional sales conference", "all-day safety training", "client workshop"))
    room = rng.choice(("Conference Room B", "the third-floor meeting room", "the library annex"))
    project = rng.choice(("website redesign", "spring catalog", "mobile app", "customer portal"))
    text = (f"Hi team,\n\nThursday's project meeting has been moved to {day} at {time} because several of us will be "
            f"at the {event} on Thursday. We will still meet in {room}. Please bring your updated task lists, since "
            f"we will be finalizing the schedule for the {project} launch. Let me know if the new time doesn't work "
            f"for you.\n\nThanks,\n{sender}")
    one = (f"{sender} has moved Thursday's project meeting to {day} at {time} in {room} because of the {event}, and "
           f"everyone should bring updated task lists to finalize the {project} launch schedule.")
    return _Story(text, one, None, [
        f"Thursday's meeting is moved to {day} at {time} because of the {event}.",
        f"The location is unchanged: {room}.",
        f"Bring updated task lists; the team will finalize the {project} launch schedule."])


_STOPS = ("the university campus", "the downtown train station", "the airport", "Riverside Hospital",
          "the Westgate shopping district", "the harbor ferry terminal")


def _s_bus_route(rng: random.Random) -> _Story:
    city = rng.choice(_TOWNS)
    route = rng.randint(12, 95)
    p1, p2 = rng.sample(_STOPS, 2)
    freq = rng.choice((8, 10, 12, 15))
    riders = f"{rng.randint(15, 60) * 100:,}"
    old = rng.randint(45, 80)
    new = old - rng.randint(15, 30)
    month = rng.choice(_MONTHS)
    text = (f"Starting in {month}, the {city} transit agency will run a new bus route, Route {route}, connecting "
            f"{p1} with {p2}. Buses will arrive every {freq} minutes during rush hour and every {2 * freq} minutes "
            f"at other times. The agency expects about {riders} people to ride the route each day. Officials say it "
            f"will cut the trip between the two areas from about {old} minutes to {new} minutes.")
    one = (f"In {month}, {city} will launch bus Route {route} between {p1} and {p2}, running every {freq} minutes at "
           f"rush hour and cutting the trip from about {old} to {new} minutes.")
    return _Story(text, one, f"New Bus Route {route} Will Cut Travel Times in {city}", [
        f"Route {route} will link {p1} and {p2} starting in {month}.",
        f"Buses come every {freq} minutes at rush hour and every {2 * freq} minutes otherwise.",
        f"About {riders} daily riders are expected, and the trip drops from about {old} to {new} minutes."])


def _s_bees(rng: random.Random) -> _Story:
    city = rng.choice(_TOWNS)
    years = rng.randint(2, 5)
    org = rng.choice((f"the {city} Naturalists' Society", f"researchers from {rng.choice(_UNIVERSITIES)}"))
    species = rng.randint(30, 90)
    pct = rng.randint(25, 60)
    text = (f"A {years}-year survey by {org} found that community gardens in {city} support {species} species of "
            f"wild bees, about {pct}% more than nearby lawns and parks. Gardens with a wide mix of flowering plants "
            f"attracted the most species, while gardens dominated by a single crop attracted the fewest. The "
            f"researchers recommend that residents plant native flowers and avoid pesticides to help pollinators.")
    one = (f"A {years}-year survey found that {city}'s community gardens host {species} wild bee species, about "
           f"{pct}% more than nearby lawns and parks, and recommends native flowers and no pesticides to help "
           f"pollinators.")
    return _Story(text, one, "Community Gardens Are Bee Hotspots, Survey Finds", [
        f"Community gardens in {city} support {species} wild bee species, about {pct}% more than lawns and parks.",
        "Gardens with many kinds of flowers drew the most species; single-crop gardens drew the fewest.",
        "Researchers advise planting native flowers and avoiding pesticides."])


def _s_app_update(rng: random.Random) -> _Story:
    app = rng.choice(("Notewise", "Jotter", "Inkwell", "Memo Lane"))
    version = f"{rng.randint(2, 6)}.{rng.randint(0, 9)}"
    pct = rng.randint(20, 60)
    text = (f"Version {version} of {app}, a popular note-taking app, adds an offline mode, so notes can be edited "
            f"without an internet connection and will sync once the device reconnects. The update also introduces a "
            f"dark theme and makes search about {pct}% faster. A bug that sometimes caused images to disappear from "
            f"shared notes has been fixed. The update is free for all existing users.")
    one = (f"{app} {version} adds offline editing with automatic syncing, a dark theme and {pct}% faster search, and "
           f"fixes a bug that removed images from shared notes.")
    return _Story(text, one, f"{app} {version} Brings Offline Mode and Dark Theme", [
        "Notes can now be edited offline and sync automatically when the device reconnects.",
        f"The update adds a dark theme and makes search about {pct}% faster.",
        "A bug that made images vanish from shared notes is fixed; the update is free."])


def _s_marathon(rng: random.Random) -> _Story:
    city = rng.choice(_TOWNS)
    runners = f"{rng.randint(30, 140) * 100:,}"
    temp = rng.randint(26, 33)
    man, man_p = _full_name(rng, female=False)
    woman, _ = _full_name(rng, female=True)
    t1 = f"2:{rng.randint(8, 25):02d}:{rng.randint(0, 59):02d}"
    t2 = f"2:{rng.randint(24, 40):02d}:{rng.randint(0, 59):02d}"
    treated = rng.randint(10, 90)
    text = (f"About {runners} runners took part in the {city} Marathon on Sunday despite temperatures near {temp} "
            f"degrees Celsius. {man} won the men's race in {t1}, while {woman} took the women's title in {t2}. "
            f"Organizers added extra water stations along the course because of the heat, and medical teams treated "
            f"{treated} runners for minor heat-related problems.")
    one = (f"{man} and {woman} won the men's and women's races at the {city} Marathon, where about {runners} runners "
           f"faced temperatures near {temp}°C and {treated} were treated for minor heat problems.")
    return _Story(text, one, f"{man.split()[1]} and {woman.split()[1]} Win a Hot {city} Marathon", [
        f"About {runners} runners raced the {city} Marathon in heat near {temp}°C.",
        f"{man} won the men's race in {t1}; {woman} won the women's race in {t2}.",
        f"Extra water stations were added, and {treated} runners were treated for minor heat problems."])


_STORIES = (_s_bike_lanes, _s_earnings, _s_sleep_study, _s_library, _s_robotics, _s_storm, _s_recall, _s_cleanup,
            _s_museum, _s_email, _s_bus_route, _s_bees, _s_app_update, _s_marathon)
_SUMMARY_ASKS = {
    "one": ("Summarize the following paragraph in one sentence.", "Give a one-sentence summary of the text below.",
            "Write a brief summary of this passage.", "TL;DR the following text in a single sentence.",
            "Condense this into one sentence."),
    "headline": ("Write a short headline for this news story.", "Suggest a headline for the following article.",
                 "Give this news item a concise title."),
    "bullets": ("Summarize the key points of the text below as a bulleted list.",
                "List the main points of this passage in three bullet points.",
                "Pull out the three most important facts from the following text."),
}


def _summary_template(frame: Callable[[random.Random], _Story]) -> Callable[[random.Random], Record]:
    def make(rng: random.Random) -> Record:
        story = frame(rng)
        kinds = ["one", "one", "bullets"] + (["headline"] if story.headline else [])
        kind = rng.choice(kinds)
        if kind == "one":
            output = story.one
        elif kind == "headline":
            output = story.headline
        else:
            output = "\n".join(f"- {b}" for b in story.bullets)
        return {"instruction": rng.choice(_SUMMARY_ASKS[kind]), "input": story.text, "output": output}
    return make


# --------------------------------------------------------------------------------------------------
# geography
# --------------------------------------------------------------------------------------------------

# country, capital, continent sentence, currency, ISO code, capital latitude, a fact about the capital
_COUNTRIES = (
    ("France", "Paris", "in Europe", "the euro", "EUR", 48.9, "Paris sits on the Seine River."),
    ("Germany", "Berlin", "in Europe", "the euro", "EUR", 52.5, "Berlin is also Germany's largest city."),
    ("Italy", "Rome", "in Europe", "the euro", "EUR", 41.9, "Rome lies on the Tiber River."),
    ("Spain", "Madrid", "in Europe", "the euro", "EUR", 40.4, "Madrid lies near the geographic center of the "
     "country."),
    ("Portugal", "Lisbon", "in Europe", "the euro", "EUR", 38.7, "Lisbon sits where the Tagus River meets the "
     "Atlantic Ocean."),
    ("Ireland", "Dublin", "in Europe", "the euro", "EUR", 53.3, "Dublin lies on the east coast at the mouth of the "
     "River Liffey."),
    ("Greece", "Athens", "in Europe", "the euro", "EUR", 38.0, "Athens is home to the Acropolis."),
    ("Austria", "Vienna", "in Europe", "the euro", "EUR", 48.2, "Vienna lies on the Danube River."),
    ("Finland", "Helsinki", "in Europe", "the euro", "EUR", 60.2, "Helsinki lies on the Gulf of Finland."),
    ("Norway", "Oslo", "in Europe", "the Norwegian krone", "NOK", 59.9, "Oslo sits at the head of the Oslofjord."),
    ("Sweden", "Stockholm", "in Europe", "the Swedish krona", "SEK", 59.3, "Stockholm is built on islands where "
     "Lake Mälaren meets the Baltic Sea."),
    ("Poland", "Warsaw", "in Europe", "the Polish złoty", "PLN", 52.2, "Warsaw lies on the Vistula River."),
    ("Iceland", "Reykjavík", "in Europe", "the Icelandic króna", "ISK", 64.1, "Reykjavík is the northernmost "
     "capital of a sovereign state."),
    ("Switzerland", "Bern", "in Europe", "the Swiss franc", "CHF", 46.9, "The Swiss officially call Bern the "
     "\"federal city\"; Zurich is the largest city."),
    ("the United Kingdom", "London", "in Europe", "the pound sterling", "GBP", 51.5, "London stands on the River "
     "Thames."),
    ("Japan", "Tokyo", "in Asia", "the Japanese yen", "JPY", 35.7, "Tokyo is on Honshu, Japan's largest island."),
    ("China", "Beijing", "in Asia", "the renminbi (yuan)", "CNY", 39.9, "Beijing is in the north of the country."),
    ("India", "New Delhi", "in Asia", "the Indian rupee", "INR", 28.6, "New Delhi is part of the larger National "
     "Capital Territory of Delhi."),
    ("South Korea", "Seoul", "in Asia", "the South Korean won", "KRW", 37.6, "Seoul lies on the Han River."),
    ("Thailand", "Bangkok", "in Asia", "the Thai baht", "THB", 13.8, "Bangkok lies on the Chao Phraya River."),
    ("Vietnam", "Hanoi", "in Asia", "the Vietnamese đồng", "VND", 21.0, "Hanoi lies on the Red River in the north "
     "of the country."),
    ("the Philippines", "Manila", "in Asia", "the Philippine peso", "PHP", 14.6, "Manila is on the island of "
     "Luzon."),
    ("Nepal", "Kathmandu", "in Asia", "the Nepalese rupee", "NPR", 27.7, "Kathmandu lies in the Kathmandu Valley "
     "in the Himalayan foothills."),
    ("Mongolia", "Ulaanbaatar", "in Asia", "the Mongolian tögrög", "MNT", 47.9, "Ulaanbaatar is often called the "
     "coldest national capital in the world."),
    ("Saudi Arabia", "Riyadh", "in Asia", "the Saudi riyal", "SAR", 24.7, "Riyadh lies in the center of the Arabian "
     "Peninsula."),
    ("Egypt", "Cairo", "mostly in Africa, although its Sinai Peninsula lies in Asia", "the Egyptian pound", "EGP",
     30.0, "Cairo lies on the Nile, just south of the Nile Delta."),
    ("Kenya", "Nairobi", "in Africa", "the Kenyan shilling", "KES", -1.3, "Nairobi sits on a plateau about 1,800 "
     "meters above sea level."),
    ("Nigeria", "Abuja", "in Africa", "the Nigerian naira", "NGN", 9.1, "Abuja replaced Lagos as the capital in "
     "1991."),
    ("Ghana", "Accra", "in Africa", "the Ghanaian cedi", "GHS", 5.6, "Accra lies on the coast of the Gulf of "
     "Guinea."),
    ("Morocco", "Rabat", "in Africa", "the Moroccan dirham", "MAD", 34.0, "Rabat is on the Atlantic coast, while "
     "Casablanca is the largest city."),
    ("Ethiopia", "Addis Ababa", "in Africa", "the Ethiopian birr", "ETB", 9.0, "Addis Ababa hosts the headquarters "
     "of the African Union."),
    ("Canada", "Ottawa", "in North America", "the Canadian dollar", "CAD", 45.4, "Ottawa lies on the Ottawa River "
     "in the province of Ontario."),
    ("Mexico", "Mexico City", "in North America", "the Mexican peso", "MXN", 19.4, "Mexico City was built on the "
     "site of the Aztec capital, Tenochtitlan."),
    ("the United States", "Washington, D.C.", "in North America", "the US dollar", "USD", 38.9, "Washington, D.C. "
     "is a federal district and not part of any state."),
    ("Cuba", "Havana", "in North America, in the Caribbean", "the Cuban peso", "CUP", 23.1, "Havana lies on Cuba's "
     "north coast."),
    ("Brazil", "Brasília", "in South America", "the Brazilian real", "BRL", -15.8, "Brasília is a planned city that "
     "became the capital in 1960."),
    ("Argentina", "Buenos Aires", "in South America", "the Argentine peso", "ARS", -34.6, "Buenos Aires lies on the "
     "Río de la Plata."),
    ("Chile", "Santiago", "in South America", "the Chilean peso", "CLP", -33.4, "Santiago sits in a valley between "
     "the Andes and Chile's Coastal Range."),
    ("Peru", "Lima", "in South America", "the Peruvian sol", "PEN", -12.0, "Lima lies on the Pacific coast."),
    ("Colombia", "Bogotá", "in South America", "the Colombian peso", "COP", 4.7, "Bogotá sits high in the Andes, "
     "at about 2,600 meters."),
    ("Australia", "Canberra", "in Oceania", "the Australian dollar", "AUD", -35.3, "Canberra, not Sydney, is the "
     "capital; it was purpose-built for the role."),
    ("New Zealand", "Wellington", "in Oceania", "the New Zealand dollar", "NZD", -41.3, "Wellington lies at the "
     "southern tip of the North Island."),
    ("Turkey", "Ankara", "in both Europe and Asia, with most of its land (including Ankara) in Asia",
     "the Turkish lira", "TRY", 39.9, "Ankara, not Istanbul, is the capital."),
    ("Russia", "Moscow", "in both Europe and Asia; Moscow is in the European part", "the Russian ruble", "RUB",
     55.8, "Moscow lies on the Moskva River."),
)

_GEO_FACTS = (
    (("What is the largest ocean on Earth?", "Which ocean is the biggest?"),
     "The Pacific Ocean is the largest ocean on Earth. It covers about 165 million square kilometers, roughly a "
     "third of the planet's surface and more than all of the land combined."),
    (("What is the highest mountain in the world?", "Which mountain has the highest peak above sea level?"),
     "Mount Everest is the highest mountain above sea level, at about 8,849 meters. It is in the Himalayas, on the "
     "border between Nepal and China."),
    (("What is the largest country in the world by area?", "Which country covers the most land?"),
     "Russia is the largest country by area, at about 17.1 million square kilometers. It stretches across "
     "Eastern Europe and northern Asia and spans eleven time zones."),
    (("What is the smallest country in the world?", "Which country has the smallest area?"),
     "Vatican City is the smallest country in the world. It covers less than half a square kilometer and is "
     "entirely surrounded by the city of Rome."),
    (("Where is the deepest point in the ocean?", "What is the deepest known part of the ocean?"),
     "The deepest known point is the Challenger Deep, at the southern end of the Mariana Trench in the western "
     "Pacific Ocean. It is nearly 11,000 meters deep."),
    (("What is the largest hot desert in the world?", "Which desert is the biggest hot desert?"),
     "The Sahara, which stretches across North Africa, is the largest hot desert, covering about 9 million square "
     "kilometers. If cold deserts are counted, Antarctica is larger."),
    (("What is the largest lake in the world by area?", "Which lake has the biggest surface area?"),
     "The Caspian Sea is the largest lake by surface area, at about 371,000 square kilometers. Its water is "
     "salty, so the largest freshwater lake by area is Lake Superior in North America."),
    (("Which lake holds the most fresh water?", "Where is the deepest lake in the world?"),
     "Lake Baikal in Siberia, Russia, is the deepest lake in the world, at about 1,640 meters, and holds more "
     "fresh water than any other lake: roughly a fifth of the world's unfrozen surface fresh water."),
    (("What is the longest river in Europe?", "Which European river is the longest?"),
     "The Volga is Europe's longest river, at about 3,500 kilometers. It flows through western Russia and empties "
     "into the Caspian Sea."),
    (("What is the highest mountain in Africa?", "Which is the tallest peak in Africa?"),
     "Mount Kilimanjaro in Tanzania is Africa's highest mountain, at about 5,895 meters. It is a dormant volcano "
     "that stands on its own rather than as part of a range."),
    (("What is the highest mountain in South America?", "Which peak is the tallest in the Americas?"),
     "Aconcagua, in the Andes of Argentina, is the highest mountain in South America and in the whole Western "
     "Hemisphere, at about 6,961 meters."),
    (("What is the largest island in the world?", "Which island is the biggest?"),
     "Greenland is the world's largest island, at about 2.2 million square kilometers. Australia is larger, but "
     "it is usually classed as a continent."),
    (("Which river carries the most water?", "Which river has the greatest flow?"),
     "The Amazon carries more water than any other river, discharging roughly a fifth of all the fresh water that "
     "rivers deliver to the oceans."),
    (("What is the lowest point on land?", "Where is the lowest place on dry land?"),
     "The shore of the Dead Sea, between Jordan and Israel and the West Bank, is the lowest land on Earth, more "
     "than 430 meters below sea level."),
    (("What strait separates Europe from Africa?", "Where are Europe and Africa closest to each other?"),
     "The Strait of Gibraltar separates Spain in Europe from Morocco in Africa. At its narrowest it is only about "
     "14 kilometers wide, and it connects the Atlantic Ocean with the Mediterranean Sea."),
    (("Which South American countries does the equator pass through?",
      "The equator crosses which countries in South America?"),
     "In South America the equator passes through three countries: Ecuador, Colombia and Brazil. Ecuador is "
     "named after it."),
    (("Which mountains are traditionally used as the boundary between Europe and Asia?",
      "What mountain range divides Europe from Asia?"),
     "The Ural Mountains, which run roughly north to south through western Russia, are traditionally used as "
     "part of the boundary between Europe and Asia."),
    (("What is the longest mountain range on land?", "Which continental mountain range is the longest?"),
     "The Andes are the longest continental mountain range, stretching about 7,000 kilometers along the western "
     "side of South America."),
    (("What is the largest continent?", "Which continent is the biggest?"),
     "Asia is the largest continent, covering about 30 percent of Earth's land area. It is also the most "
     "populous, home to roughly 60 percent of the world's people."),
)

_CAPITAL_ASKS = ("What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?")
_CURRENCY_ASKS = ("What currency is used in {c}?", "What is the official currency of {c}?",
                  "Which currency would I use in {c}?")
_CONTINENT_ASKS = ("On which continent is {c}?", "Which continent is {c} located on?", "Where in the world is {c}?")


def _country_name(c: str, start: bool = False) -> str:
    return _cap(c) if start else c


def _geo_capital(rng: random.Random) -> Record:
    country, capital, _, _, _, _, fact = rng.choice(_COUNTRIES)
    output = f"The capital of {country} is {capital}. {fact}"
    return {"instruction": rng.choice(_CAPITAL_ASKS).format(c=country), "input": "", "output": output}


def _geo_capital_reverse(rng: random.Random) -> Record:
    country, capital, where, _, _, _, fact = rng.choice(_COUNTRIES)
    ask = rng.choice(("{k} is the capital of which country?", "Which country has {k} as its capital?"))
    output = f"{capital} is the capital of {country}, which is {where.split(';')[0]}. {fact}"
    return {"instruction": ask.format(k=capital), "input": "", "output": output}


def _geo_currency(rng: random.Random) -> Record:
    country, capital, _, currency, code, _, _ = rng.choice(_COUNTRIES)
    if currency == "the euro":
        output = (f"{_cap(country)} uses the euro (EUR), the currency it shares with the other members of the "
                  f"eurozone.")
    else:
        output = f"The currency of {country} is {currency}. Its international currency code is {code}."
    return {"instruction": rng.choice(_CURRENCY_ASKS).format(c=country), "input": "", "output": output}


def _geo_continent(rng: random.Random) -> Record:
    country, capital, where, _, _, _, _ = rng.choice(_COUNTRIES)
    output = f"{_cap(country)} is {where}. Its capital is {capital}."
    return {"instruction": rng.choice(_CONTINENT_ASKS).format(c=country), "input": "", "output": output}


def _lat(lat: float) -> str:
    return f"{abs(round(lat))}° {'N' if lat >= 0 else 'S'}"


def _geo_latitude(rng: random.Random) -> Record:
    while True:
        a, b = rng.sample(_COUNTRIES, 2)
        if abs(a[5] - b[5]) >= 5:
            break
    north, south = (a, b) if a[5] > b[5] else (b, a)
    ask = rng.choice(("Which capital is farther north, {x} or {y}?", "Is {x} north or south of {y}?"))
    if "Is" in ask:
        verdict = "north" if a is north else "south"
        first = f"{a[1]} is {verdict} of {b[1]}."
    else:
        first = f"{north[1]} is farther north."
    output = (f"{first} {north[1]} lies at about {_lat(north[5])}, while {south[1]} is at about {_lat(south[5])}.")
    return {"instruction": ask.format(x=a[1], y=b[1]), "input": "", "output": output}


def _geo_fact(rng: random.Random) -> Record:
    asks, answer = rng.choice(_GEO_FACTS)
    return {"instruction": rng.choice(asks), "input": "", "output": answer}


# --------------------------------------------------------------------------------------------------
# grammar and rewriting
# --------------------------------------------------------------------------------------------------

_GRAMMAR_ASKS = ("Correct the grammar in the following sentence.", "Fix any grammatical errors in this sentence.",
                 "Proofread this sentence and correct the mistake.",
                 "Rewrite the sentence below so that it is grammatically correct.")


def _grammar_output(rng: random.Random, correct: str, why: str) -> str:
    style = rng.randrange(3)
    if style == 0:
        return f"{correct}\n\n{why}"
    if style == 1:
        return f"Corrected sentence: {correct}\n\nWhat changed: {why}"
    return f"Here is the corrected sentence:\n\n{correct}\n\n{why}"


def _error_subject_verb(rng: random.Random) -> tuple[str, str, str]:
    subject = rng.choice(("My sister", "Our neighbor", "The manager", "My grandfather", rng.choice(_PEOPLE).name))
    base, third = rng.choice((("walk", "walks"), ("drive", "drives"), ("go", "goes"), ("run", "runs"),
                              ("cycle", "cycles")))
    place = rng.choice(("library", "gym", "park", "market", "office", "river"))
    day = rng.choice(("morning", "evening", "Saturday", "weekend"))
    wrong = f"{subject} {base} to the {place} every {day}."
    right = f"{subject} {third} to the {place} every {day}."
    why = f"\"{subject}\" is a singular subject, so the verb needs the -s form: \"{third}\" instead of \"{base}\"."
    return wrong, right, why


def _error_plural_subject(rng: random.Random) -> tuple[str, str, str]:
    noun, prep, adj = rng.choice((("cookies", "in the jar", "stale"), ("books", "on the top shelf", "dusty"),
                                  ("keys", "on the hook", "missing"), ("flowers", "in the garden", "beautiful"),
                                  ("results", "of the survey", "surprising")))
    wrong = f"The {noun} {prep} is {adj}."
    right = f"The {noun} {prep} are {adj}."
    why = (f"The subject is \"{noun}\", which is plural; \"{prep}\" only describes it. A plural subject takes "
           f"\"are\", not \"is\".")
    return wrong, right, why


def _error_each(rng: random.Random) -> tuple[str, str, str]:
    group, thing = rng.choice((("students", "a locker"), ("players", "a number on the jersey"),
                               ("rooms", "a view of the lake"), ("volunteers", "a name tag")))
    wrong = f"Each of the {group} have {thing}."
    right = f"Each of the {group} has {thing}."
    why = f"The subject is \"each\", which is singular even though \"{group}\" is plural, so the verb is \"has\"."
    return wrong, right, why


def _error_their(rng: random.Random) -> tuple[str, str, str]:
    who, things = rng.choice((("The hikers", "tents"), ("The students", "backpacks"), ("My cousins", "bikes"),
                              ("The musicians", "instruments"), ("The players", "water bottles")))
    where = rng.choice(("in the car", "at the station", "by the door", "on the bus"))
    wrong = f"{who} left there {things} {where}."
    right = f"{who} left their {things} {where}."
    why = "\"Their\" shows possession (the things belong to them). \"There\" refers to a place."
    return wrong, right, why


def _error_its(rng: random.Random) -> tuple[str, str, str]:
    subject, rest = rng.choice((("The dog", "wagged it's tail"), ("The company", "announced it's new logo"),
                                ("The bird", "built it's nest in the gutter"), ("The team", "celebrated it's win"),
                                ("The tree", "lost all of it's leaves")))
    wrong = f"{subject} {rest}."
    right = f"{subject} {rest.replace(chr(39), '')}."
    why = "\"Its\" is the possessive form. \"It's\" is a contraction of \"it is\" or \"it has\"."
    return wrong, right, why


def _error_youre(rng: random.Random) -> tuple[str, str, str]:
    wrong, right = rng.choice((
        ("Your going to love the {x} at this restaurant.", "You're going to love the {x} at this restaurant."),
        ("Let me know if your free on {d}.", "Let me know if you're free on {d}."),
        ("I think your right about the {x}.", "I think you're right about the {x}."),
    ))
    x = rng.choice(("soup", "desserts", "fresh bread", "noodles"))
    d = rng.choice(_WEEKDAYS)
    why = "\"You're\" is short for \"you are\", which is what the sentence means. \"Your\" shows possession."
    return wrong.format(x=x, d=d), right.format(x=x, d=d), why


def _error_fewer(rng: random.Random) -> tuple[str, str, str]:
    things, event = rng.choice((("people", "concert"), ("cars", "parking lot"), ("mistakes", "final draft"),
                                ("students", "meeting"), ("birds", "feeder")))
    prep = "in the" if event in ("parking lot", "final draft") else "at the"
    wrong = f"There were less {things} {prep} {event} this year."
    right = f"There were fewer {things} {prep} {event} this year."
    why = f"Use \"fewer\" with things you can count, like {things}; \"less\" is for amounts you can't count."
    return wrong, right, why


def _error_than(rng: random.Random) -> tuple[str, str, str]:
    a, adj, b = rng.choice((("The train", "faster", "the bus"), ("This jacket", "warmer", "my old one"),
                            ("The lake", "colder", "the pool"), ("My new phone", "lighter", "the old one"),
                            ("The second test", "easier", "the first")))
    wrong = f"{a} is {adj} then {b}."
    right = f"{a} is {adj} than {b}."
    why = "Comparisons use \"than\". \"Then\" is about time or sequence (\"first this, then that\")."
    return wrong, right, why


_IRREGULAR = (("buyed", "bought", "a new bike"), ("catched", "caught", "a huge fish"),
              ("teached", "taught", "the class how to juggle"), ("bringed", "brought", "homemade bread to the party"),
              ("runned", "ran", "five kilometers before breakfast"), ("writed", "wrote", "a letter to the mayor"),
              ("drawed", "drew", "a map of the neighborhood"), ("throwed", "threw", "the ball over the fence"))


def _error_irregular(rng: random.Random) -> tuple[str, str, str]:
    bad, good, obj = rng.choice(_IRREGULAR)
    p = rng.choice(_PEOPLE)
    when = rng.choice(("Yesterday", "Last week", "On Sunday", "Last summer"))
    wrong = f"{when}, {p.name} {bad} {obj}."
    right = f"{when}, {p.name} {good} {obj}."
    why = f"The verb is irregular: its past tense is \"{good}\", not \"{bad}\"."
    return wrong, right, why


def _error_could_of(rng: random.Random) -> tuple[str, str, str]:
    modal = rng.choice(("could", "should", "would"))
    done, cond = rng.choice((("caught the early train", "left ten minutes sooner"),
                             ("won the game", "practiced more"), ("finished the project", "started on Monday"),
                             ("seen the meteor shower", "stayed up later")))
    wrong = f"We {modal} of {done} if we had {cond}."
    right = f"We {modal} have {done} if we had {cond}."
    why = (f"\"{modal.capitalize()} of\" is a mishearing of \"{modal}'ve\". The correct form is \"{modal} have\" "
           f"followed by the past participle.")
    return wrong, right, why


def _error_me_and(rng: random.Random) -> tuple[str, str, str]:
    p = rng.choice(_PEOPLE)
    verb = rng.choice(("went to the beach", "walked to the museum", "built a treehouse", "cooked dinner"))
    when = rng.choice(("on Saturday", "after school", "last night", "yesterday"))
    wrong = f"Me and {p.name} {verb} {when}."
    right = f"{p.name} and I {verb} {when}."
    why = ("\"I\" is the subject form of the pronoun, so it is used when you are doing the action; it is also "
           "polite to name the other person first.")
    return wrong, right, why


def _error_comparative(rng: random.Random) -> tuple[str, str, str]:
    thing, bad, good, other = rng.choice((("new laptop", "more faster", "faster", "the old one"),
                                          ("recipe", "more easier", "easier", "the one I used before"),
                                          ("route", "more better", "better", "the highway"),
                                          ("store", "more cheaper", "cheaper", "the one downtown")))
    wrong = f"This {thing} is {bad} than {other}."
    right = f"This {thing} is {good} than {other}."
    why = f"\"{_cap(good)}\" is already a comparative, so adding \"more\" doubles it up."
    return wrong, right, why


def _grammar_fix_template(error: Callable[[random.Random], tuple[str, str, str]]) -> Callable[[random.Random], Record]:
    def make(rng: random.Random) -> Record:
        wrong, right, why = error(rng)
        return {"instruction": rng.choice(_GRAMMAR_ASKS), "input": wrong,
                "output": _grammar_output(rng, right, why)}
    return make


# agent, verb (past), participle, object, object is plural
_ACTIONS = (
    ("the chef", "prepared", "prepared", "the soup", False), ("the mechanic", "repaired", "repaired", "the truck", False),
    ("the committee", "approved", "approved", "the budget", False),
    ("the students", "painted", "painted", "the mural", False),
    ("the storm", "damaged", "damaged", "the old barn", False), ("a young architect", "designed", "designed",
                                                                  "the bridge", False),
    ("the gardener", "planted", "planted", "the roses", True), ("the children", "built", "built",
                                                                 "the sandcastle", False),
    ("the author", "wrote", "written", "the novel", False), ("the company", "hired", "hired",
                                                              "two new engineers", True),
    ("the dog", "chewed", "chewed", "my slippers", True), ("the museum", "bought", "bought", "the painting", False),
    ("the editor", "rejected", "rejected", "the article", False), ("the volunteers", "cleaned", "cleaned",
                                                                    "the beach", False),
)


def _rewrite_passive(rng: random.Random) -> Record:
    agent, past, participle, obj, plural = rng.choice(_ACTIONS)
    when = rng.choice(("", " yesterday", " last week", " in March"))
    be = "were" if plural else "was"
    active = f"{_cap(agent)} {past} {obj}{when}."
    passive = f"{_cap(obj)} {be} {participle} by {agent}{when}."
    ask = rng.choice(("Rewrite this sentence in the passive voice.", "Change the sentence below to passive voice.",
                      "Convert this active sentence into the passive voice."))
    output = (f"{passive}\n\nIn the passive voice, the object (\"{obj}\") becomes the subject, the verb becomes "
              f"\"{be} {participle}\", and the original subject moves into a \"by\" phrase.")
    return {"instruction": ask, "input": active, "output": output}


def _rewrite_active(rng: random.Random) -> Record:
    agent, past, participle, obj, plural = rng.choice(_ACTIONS)
    when = rng.choice(("", " yesterday", " last month", " on Friday"))
    be = "were" if plural else "was"
    passive = f"{_cap(obj)} {be} {participle} by {agent}{when}."
    active = f"{_cap(agent)} {past} {obj}{when}."
    ask = rng.choice(("Rewrite this sentence in the active voice.", "Make this sentence active instead of passive.",
                      "Change the following sentence to active voice."))
    output = (f"{active}\n\nThe doer of the action, \"{agent}\", is now the subject, which makes the sentence "
              f"shorter and more direct.")
    return {"instruction": ask, "input": passive, "output": output}


_PRESENT_TO_PAST = (("walks", "walked", "the dog"), ("drinks", "drank", "a cup of green tea"),
                    ("reads", "read", "the newspaper"), ("feeds", "fed", "the cat"), ("rides", "rode", "a bike to work"),
                    ("writes", "wrote", "in a journal"), ("makes", "made", "pancakes"), ("sings", "sang", "in the shower"),
                    ("catches", "caught", "the 7:15 bus"), ("teaches", "taught", "a yoga class"))


def _rewrite_past(rng: random.Random) -> Record:
    p = rng.choice(_PEOPLE)
    present, past, rest = rng.choice(_PRESENT_TO_PAST)
    when = rng.choice(("every morning", "before breakfast", "on weekends", "after dinner"))
    ask = rng.choice(("Rewrite this sentence in the past tense.", "Change the verb in this sentence to the past "
                      "tense."))
    note = (f"\"{past.capitalize()}\" is the past tense of \"{present[:-2] if present.endswith('ches') else present[:-1]}\""
            + (", an irregular verb." if not past.endswith("ed") else "."))
    return {"instruction": ask, "input": f"{p.name} {present} {rest} {when}.",
            "output": f"{p.name} {past} {rest} {when}.\n\n{note}"}


_FORMAL = (
    ("hey, can u send me the {x} asap? thx", "Hello, could you please send me the {x} as soon as possible? Thank you.",
     ("report", "slides", "budget spreadsheet", "meeting notes"),
     "I added a greeting, spelled out the abbreviations (\"u\", \"asap\", \"thx\") and phrased the request politely."),
    ("gonna be late to the {x}, traffic is crazy. start w/o me", "I apologize, but I will be late because of heavy traffic. "
     "Please start the {x} without me.", ("meeting", "presentation", "call"),
     "I replaced the slang (\"gonna\", \"crazy\", \"w/o\") with standard wording and added an apology."),
    ("the {x} is broken AGAIN. somebody pls fix it", "The {x} appears to be out of order again. Could someone please "
     "arrange for it to be repaired?", ("printer", "coffee machine", "projector", "elevator"),
     "I removed the all-caps and the abbreviation \"pls\", and turned the demand into a polite request."),
    ("can't make it {x}, sorry!!", "Unfortunately, I will not be able to attend on {x}. I apologize for any "
     "inconvenience.", _WEEKDAYS,
     "I used full words instead of the contraction, removed the extra exclamation marks and expanded the apology."),
    ("thx for the help w/ the {x}, u saved me", "Thank you very much for your help with the {x}. I truly appreciate "
     "it.", ("presentation", "move", "grant application", "tax forms"),
     "I spelled out the abbreviations and replaced the casual \"you saved me\" with a more formal expression of "
     "thanks."),
    ("whats the deal with the {x}? nobody told me anything", "Could you please give me an update on the {x}? I have "
     "not yet received any information about it.", ("new schedule", "budget changes", "office move"),
     "I turned the blunt question into a polite request and stated the problem neutrally."),
    ("lemme know if ur free {x} to chat about the project", "Please let me know whether you are available on {x} to "
     "discuss the project.", _WEEKDAYS,
     "I replaced \"lemme\" and \"ur\" with full words and used \"discuss\" instead of \"chat about\"."),
)


def _rewrite_formal(rng: random.Random) -> Record:
    casual, formal, fills, note = rng.choice(_FORMAL)
    x = rng.choice(fills)
    ask = rng.choice(("Rewrite this message in a more formal, professional tone.",
                      "Make the following message sound professional.", "Rewrite this text so it is suitable for a "
                      "work email."))
    return {"instruction": ask, "input": casual.format(x=x), "output": f"{formal.format(x=x)}\n\n{note}"}


def _grammar_templates() -> list[Callable[[random.Random], Record]]:
    errors = (_error_subject_verb, _error_plural_subject, _error_each, _error_their, _error_its, _error_youre,
              _error_fewer, _error_than, _error_irregular, _error_could_of, _error_me_and, _error_comparative)
    return [_grammar_fix_template(e) for e in errors] + [_rewrite_passive, _rewrite_active, _rewrite_past,
                                                         _rewrite_formal]


# --------------------------------------------------------------------------------------------------
# unit conversion
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Conversion:
    src: str  # plural unit name
    dst: str
    src_abbr: str
    dst_abbr: str
    factor: float
    divide: bool  # show the rule as "divide by factor" (result = value / factor)
    lo: float
    hi: float
    contexts: tuple[str, ...]


_CONVERSIONS = (
    _Conversion("kilometers", "miles", "km", "mi", 0.621371, False, 2, 100,
                ("I ran {v} kilometers this morning. How many miles is that?",
                 "A road sign says the next town is {v} km away. How far is that in miles?")),
    _Conversion("miles", "kilometers", "mi", "km", 1.609344, False, 2, 60,
                ("My commute is {v} miles each way. How many kilometers is that?",)),
    _Conversion("kilograms", "pounds", "kg", "lb", 2.20462, False, 2, 90,
                ("My suitcase weighs {v} kg. What is that in pounds?",)),
    _Conversion("pounds", "kilograms", "lb", "kg", 0.453592, False, 3, 200,
                ("A recipe calls for a {v}-pound turkey. How many kilograms is that?",
                 "My dog weighs {v} pounds. What is that in kilograms?")),
    _Conversion("centimeters", "inches", "cm", "in", 2.54, True, 5, 200,
                ("My phone screen is {v} cm tall. How many inches is that?",)),
    _Conversion("inches", "centimeters", "in", "cm", 2.54, False, 2, 80,
                ("A TV screen measures {v} inches diagonally. How many centimeters is that?",)),
    _Conversion("feet", "meters", "ft", "m", 0.3048, False, 3, 300,
                ("The ceiling is {v} feet high. How many meters is that?",)),
    _Conversion("meters", "feet", "m", "ft", 0.3048, True, 2, 150,
                ("A diving board is {v} meters above the water. How high is that in feet?",)),
    _Conversion("liters", "US gallons", "L", "gal", 3.78541, True, 4, 120,
                ("A car's fuel tank holds {v} liters. How many US gallons is that?",)),
    _Conversion("US gallons", "liters", "gal", "L", 3.78541, False, 2, 40,
                ("An aquarium holds {v} US gallons. How many liters is that?",)),
    _Conversion("ounces", "grams", "oz", "g", 28.3495, False, 2, 32,
                ("A recipe calls for {v} ounces of chocolate. How many grams is that?",)),
    _Conversion("meters per second", "kilometers per hour", "m/s", "km/h", 3.6, False, 2, 40,
                ("A cyclist is moving at {v} m/s. What is that in km/h?",)),
    _Conversion("kilometers per hour", "meters per second", "km/h", "m/s", 3.6, True, 10, 150,
                ("A car is driving at {v} km/h. How many meters does it travel per second?",)),
    _Conversion("square meters", "square feet", "m²", "sq ft", 10.7639, False, 10, 150,
                ("An apartment is {v} square meters. How many square feet is that?",)),
)

_CONVERT_ASKS = ("Convert {v} {src} to {dst}.", "How many {dst} are in {v} {src}?", "What is {v} {src} in {dst}?")


def _convert_value(rng: random.Random, lo: float, hi: float) -> float:
    v = rng.randint(int(lo), int(hi))
    if rng.random() < 0.25:
        v += 0.5
    return v


def _convert_template(conv: _Conversion) -> Callable[[random.Random], Record]:
    def make(rng: random.Random) -> Record:
        v = _convert_value(rng, conv.lo, conv.hi)
        exact = v / conv.factor if conv.divide else v * conv.factor
        result = round(exact, 2)
        sign = "=" if abs(result - exact) < 1e-9 else "≈"
        vs, rs, fs = _fmt(v), _fmt(result), _fmt(conv.factor)
        roll = rng.random()
        if roll < 0.3 and conv.contexts:
            instruction, input_text = rng.choice(conv.contexts).format(v=vs), ""
        elif roll < 0.5:
            instruction, input_text = f"Convert the following measurement to {conv.dst}.", f"{vs} {conv.src_abbr}"
        else:
            instruction, input_text = rng.choice(_CONVERT_ASKS).format(v=vs, src=conv.src, dst=conv.dst), ""
        op = "÷" if conv.divide else "×"
        rule = (f"To convert {conv.src} to {conv.dst}, {'divide' if conv.divide else 'multiply'} by {fs}"
                + (f" (1 {conv.dst_abbr} = {fs} {conv.src_abbr})." if conv.divide else
                   f" (1 {conv.src_abbr} = {fs} {conv.dst_abbr})."))
        about = "exactly" if sign == "=" else "about"
        output = (f"{rule}\n\n{vs} {conv.src_abbr} {op} {fs} {sign} {rs} {conv.dst_abbr}\n\n"
                  f"So {vs} {conv.src} is {about} {rs} {conv.dst}.")
        return {"instruction": instruction, "input": input_text, "output": output, "_answer": result}
    return make


def _convert_temperature(rng: random.Random) -> Record:
    to_f = rng.random() < 0.5
    if to_f:
        c = rng.randint(-20, 45)
        step = c * 9 / 5
        f = step + 32
        ask = rng.choice((f"Convert {c}°C to Fahrenheit.", f"It's {c}°C outside. What is that in Fahrenheit?",
                          f"What is {c} degrees Celsius in degrees Fahrenheit?"))
        output = (f"Use °F = °C × 9/5 + 32.\n\n{c} × 9/5 = {_fmt(step)}, and {_fmt(step)} + 32 = {_fmt(f)}\n\n"
                  f"So {c}°C is {_fmt(f)}°F.")
        return {"instruction": ask, "input": "", "output": output, "_answer": round(f, 2)}
    f = rng.choice(list(range(-4, 106)) + [325, 350, 375, 400, 425, 450])
    diff = f - 32
    c = diff * 5 / 9
    oven = f >= 300
    ask = (f"My oven recipe says to bake at {f}°F. What is that in Celsius?" if oven and rng.random() < 0.6
           else rng.choice((f"Convert {f}°F to Celsius.", f"What is {f} degrees Fahrenheit in Celsius?")))
    sign = "=" if abs(round(c, 1) - c) < 1e-9 else "≈"
    output = (f"Use °C = (°F - 32) × 5/9.\n\n{f} - 32 = {diff}, and {diff} × 5/9 {sign} {_fmt(round(c, 1))}\n\n"
              f"So {f}°F is {'about ' if sign == '≈' else ''}{_fmt(round(c, 1))}°C.")
    return {"instruction": ask, "input": "", "output": output, "_answer": round(c, 1)}


def _convert_time(rng: random.Random) -> Record:
    hours = rng.randint(2, 48)
    if rng.random() < 0.5:
        minutes = hours * 60
        ask = rng.choice((f"How many minutes are in {hours} hours?", f"Convert {hours} hours to minutes."))
        output = f"There are 60 minutes in an hour.\n\n{hours} × 60 = {minutes}\n\nSo {hours} hours is {minutes} minutes."
        return {"instruction": ask, "input": "", "output": output, "_answer": minutes}
    seconds = hours * 3600
    ask = rng.choice((f"How many seconds are in {hours} hours?", f"Convert {hours} hours to seconds."))
    output = (f"An hour has 60 × 60 = 3,600 seconds.\n\n{hours} × 3,600 = {seconds:,}\n\nSo {hours} hours is "
              f"{seconds:,} seconds.")
    return {"instruction": ask, "input": "", "output": output, "_answer": seconds}


def _unit_templates() -> list[Callable[[random.Random], Record]]:
    return [_convert_template(c) for c in _CONVERSIONS] + [_convert_temperature, _convert_temperature, _convert_time]


# --------------------------------------------------------------------------------------------------
# creative writing
# --------------------------------------------------------------------------------------------------

_HAIKU = {
    "autumn leaves": ("Red maple leaves fall\nspinning slowly to the ground\nthe wind hums softly",
                      "Crisp leaves underfoot\nthe old oak lets go of gold\none branch at a time"),
    "the ocean": ("Waves fold into foam\nthe tide draws lines in the sand\nthen erases them",
                  "Gulls ride the salt wind\nfar out, a single white sail\nleans into the blue"),
    "a rainy morning": ("Rain taps the window\ncoffee steam curls in the light\nthe street shines like glass",
                        "Gray clouds at sunrise\numbrellas bloom on the street\npuddles hold the sky"),
    "a city at night": ("Neon signs flicker\na late train hums past the bridge\nthe city still wakes",
                        "Windows glow like stars\nstacked high in the tall towers\nno one sees the moon"),
    "a cup of tea": ("Steam rises slowly\ngreen leaves unfurl in the cup\nthe afternoon waits",
                     "Warm cup in cold hands\nthe kettle sings its last note\nwinter steps outside"),
    "a mountain sunrise": ("Peaks catch the first light\npink snow above sleeping pines\nthe valley still dark",
                           "Cold air, thin and clear\nthe sun climbs over the ridge\nand the eagles wake"),
    "a garden in spring": ("Tulips push through earth\na bee drifts from bloom to bloom\nthe morning smells green",
                           "Seeds planted last week\nnow small green hands reach upward\nasking for the sun"),
    "a sleeping cat": ("Cat in a sunbeam\none ear twitches at a sound\nthen back into dreams",
                       "Curled on the warm rug\nthe cat ignores the whole world\nexcept the food bowl"),
    "the first snow": ("First snow in the night\nthe whole street is quiet now\nfootprints lead nowhere",
                       "Soft flakes on my sleeve\neach one gone before I look\nwinter says hello"),
    "a road trip": ("Open road ahead\nold songs and gas station snacks\nthe map stays folded",
                    "Mile markers blur past\nfields of wheat roll to the sky\nwe sing out of tune"),
    "friendship": ("Two cups on the porch\nwe talk until the stars come\nthen sit in silence",
                   "Years and miles apart\none phone call and we are back\nlaughing like children"),
    "the moon": ("Full moon on the lake\na silver path crosses it\nthe frogs sing along",
                 "Thin crescent moon hangs\nabove the sleeping rooftops\nkeeping watch alone"),
}
_HAIKU_ASKS = ("Write a haiku about {t}.", "Compose a haiku about {t}.")


def _cw_haiku(rng: random.Random) -> Record:
    topic = rng.choice(sorted(_HAIKU))
    i = rng.randrange(2)
    return {"instruction": _HAIKU_ASKS[i].format(t=topic), "input": "", "output": _HAIKU[topic][i]}


_SCARY = (
    ("a babysitter", "The babysitter texted that the kids were finally asleep upstairs. Then I remembered we had "
     "dropped the kids off at their grandmother's that afternoon."),
    ("a staircase", "Every night I count the stairs up to my apartment, and every night there are thirteen. "
     "Tonight, with my arms full of groceries, I counted fourteen."),
    ("a smart speaker", "The speaker on my kitchen counter lit up and said, \"Sorry, I didn't catch that.\" I live "
     "alone, and I hadn't said a word."),
    ("a jigsaw puzzle", "I finally finished the thrift-store puzzle that turned out to be a picture of my own "
     "living room. In the very last piece, there is a face at the window behind my couch."),
    ("a lighthouse", "The last entry in the keeper's log reads, \"The light is working perfectly tonight.\" The "
     "lighthouse has been dark for forty years, yet every sailor in the harbor saw it shine last night."),
    ("a reflection", "I waved at my reflection in a shop window as I walked past. It waited a moment before "
     "waving back."),
    ("a nightlight", "During the power cut, my daughter asked if she could keep her nightlight on. I reminded her "
     "we don't own a nightlight, and she pointed at the soft glow coming from under her bed."),
    ("an old house", "The note taped inside the attic door said, \"Don't let it in after dark.\" This morning I "
     "found a second note in the same handwriting, taped to the inside of my bedroom window."),
)


def _cw_scary(rng: random.Random) -> Record:
    topic, story = rng.choice(_SCARY)
    ask = rng.choice(("Write a two-sentence horror story about {t}.", "Tell me a creepy two-sentence story involving "
                      "{t}."))
    return {"instruction": ask.format(t=topic), "input": "", "output": story}


_SETTINGS = (
    ("a lighthouse on a rocky island", "the lighthouse", "The great lamp turned slowly overhead",
     "waves slammed against the rocks below"),
    ("a night market in a crowded city", "the night market", "Lanterns swayed above the noodle stalls",
     "vendors shouted prices over the hiss of hot oil"),
    ("a research station in Antarctica", "the research station", "Frost crept across the inside of the windows",
     "the wind howled against the metal walls"),
    ("a small bakery in a mountain village", "the bakery", "Flour hung in the air like fine snow",
     "the bell above the door jingled"),
    ("a generation ship halfway to a distant star", "the ship", "The corridors glowed a soft, artificial blue",
     "the engines hummed somewhere deep below the decks"),
    ("an old library that never closes", "the library", "Dust drifted through the beams of the reading lamps",
     "pages rustled in aisles that should have been empty"),
    ("a desert town at the edge of a salt flat", "the town", "Heat shimmered over the white ground",
     "a loose sign creaked in the hot wind"),
    ("a houseboat on a slow river", "the houseboat", "The deck rocked gently underfoot",
     "frogs called from the reeds along the bank"),
)
_OBJECTS = ("a brass key tied with red string", "a sealed envelope with no name on it", "a pocket watch, still "
            "ticking", "a map with one street circled in red ink", "a child's drawing of a door")
_MESSAGES = ("Don't open the north door.", "We are already inside.", "You have nine hours. Start counting.",
             "Look up.", "Stop looking for us.")


def _cw_story_opening(rng: random.Random) -> Record:
    where, the, detail, sound = rng.choice(_SETTINGS)
    p = rng.choice(_PEOPLE)
    genre = rng.choice(("mystery", "science fiction", "fantasy", "adventure", "cozy"))
    if genre == "mystery":
        obj = rng.choice(_OBJECTS)
        text = (f"{p.name} noticed it on {p.his} third day at {the}: {obj}, sitting where nothing had been the night "
                f"before. {detail}, {sound}, and nobody else seemed to see it. When {p.he} asked, everyone "
                f"swore they had never seen it before. By the end of the week, {p.name} had stopped asking who left "
                f"it there and started asking why.")
    elif genre == "science fiction":
        msg = rng.choice(_MESSAGES)
        text = (f"The message reached {the} at exactly 3:14 a.m., and it was addressed to {p.name} by name. That "
                f"should have been impossible; no one outside knew {p.he} was there. {detail} as {p.he} read it "
                f"twice, then a third time, while {sound}. It said only: \"{msg}\"")
    elif genre == "fantasy":
        creature = rng.choice(("river spirit", "wind", "old stone", "fox with silver eyes"))
        relative = rng.choice(("brother", "sister", "grandmother", "best friend"))
        text = (f"At {the}, everyone knew the oldest rule: never answer when the {creature} calls your name. "
                f"{p.name} had kept that rule all {p.his} life. But tonight, as {sound}, the voice that called to "
                f"{p.him} sounded exactly like {p.his} {relative}, who had been gone since spring. {detail}, and "
                f"{p.name} opened {p.his} mouth to answer.")
    elif genre == "adventure":
        coins = rng.choice(("twelve", "twenty", "forty"))
        text = (f"The map had cost {p.name} {p.his} last {coins} coins, and the trader who sold it had laughed as "
                f"{p.he} walked away. Now, standing at the edge of {the}, {p.he} finally understood the joke. "
                f"{detail}, {sound}, and the X on the map pointed straight down.")
    else:
        season = rng.choice(("spring", "autumn", "winter"))
        text = (f"On the first morning of {season}, {p.name} arrived at {the} an hour before anyone else, just as "
                f"{p.he} had every year. {detail}, and somewhere nearby {sound}. {p.He} made a pot of coffee, "
                f"opened the notebook where {p.he} wrote down small good things, and wrote the first one of the "
                f"season: the quiet.")
    ask = rng.choice(("Write the opening paragraph of a {g} story set in {w}.",
                      "Write a short {g} story opening that takes place in {w}."))
    return {"instruction": ask.format(g=genre, w=where), "input": "", "output": text}


_PRODUCTS = (
    ("reusable water bottle", "Trailhead", "Cold water, all day, anywhere.",
     ("Double-walled steel keeps drinks cold for 24 hours or hot for 12.", "The leak-proof lid has a sturdy carry "
      "loop.", "It fits standard cup holders, so it goes from car to trail with you."),
     "Fill it once in the morning and forget about it until dinner."),
    ("pair of noise-cancelling headphones", "Hushline", "Your own quiet, on demand.",
     ("Adaptive noise cancelling tunes out traffic, engines and open-plan chatter.", "A single charge lasts up to 30 "
      "hours.", "Soft memory-foam cushions stay comfortable through long flights."),
     "Put them on, press one button, and the world goes quiet."),
    ("standing desk", "Elevate", "Sit, stand, and keep working.",
     ("A quiet motor moves the desk between sitting and standing height in seconds.", "Three memory presets save "
      "your favorite heights.", "The steel frame stays steady even at full height."),
     "Your back will thank you by Friday."),
    ("hiking backpack", "Ridgeway", "Built for long days on the trail.",
     ("A ventilated back panel keeps you cool on steep climbs.", "Side pockets hold two water bottles within easy "
      "reach.", "The built-in rain cover tucks away in the bottom pocket."),
     "Pack it once and spend the day looking at the view, not your gear."),
    ("ceramic teapot", "Stillwater", "Slow down for a proper cup.",
     ("The removable stainless-steel infuser works with loose leaf tea.", "The glazed ceramic body holds heat for "
      "a second cup.", "It holds four cups and is dishwasher safe."),
     "Brew a pot, pour a cup, and take ten minutes for yourself."),
    ("LED desk lamp", "Lumen", "The right light for every task.",
     ("Five brightness levels and three color temperatures adapt from reading to late-night work.", "A USB port in "
      "the base charges your phone.", "The flexible neck points light exactly where you need it."),
     "Less eye strain, more done."),
    ("cast-iron skillet", "Hearthstone", "One pan for a lifetime of meals.",
     ("It comes pre-seasoned and ready to cook.", "Cast iron holds heat evenly for a perfect sear.", "It moves "
      "from stovetop to oven to campfire."),
     "Treat it well and it will still be cooking for your grandchildren."),
    ("pair of running shoes", "Stride", "Light on your feet, mile after mile.",
     ("A responsive foam midsole returns energy with every step.", "The breathable knit upper keeps feet cool.",
      "A durable rubber outsole grips on wet pavement."),
     "Lace up and find out how far you can go."),
)


def _cw_product(rng: random.Random) -> Record:
    product, brand, tagline, features, closing = rng.choice(_PRODUCTS)
    order = list(features)
    rng.shuffle(order)
    output = f"{brand}: {tagline}\n\n{' '.join(order)} {closing}"
    if rng.random() < 0.5:
        name = product.replace("pair of ", "")
        return {"instruction": f"Write a short product description for a {product}.", "input": "",
                "output": output.replace(f"{brand}: ", f"The {brand} {name}: ", 1)}
    notes = "; ".join(f.rstrip(".").lower() for f in features)
    return {"instruction": "Write a short, persuasive product description using these notes.",
            "input": f"Product: {brand} {product.replace('pair of ', '')}\nNotes: {notes}", "output": output}


_THANKS = (
    ("the handmade scarf", "I've worn it almost every day since the weather turned cold, and the color goes with "
     "everything I own."),
    ("helping me move into my new apartment", "I honestly don't know how I would have gotten that couch up three "
     "flights of stairs without you."),
    ("the wonderful birthday dinner", "The food was delicious, and it meant so much to celebrate with the people I "
     "love most."),
    ("watering my plants while I was away", "I came home to a healthier jungle than the one I left, and the basil "
     "has never looked better."),
    ("recommending that novel", "I finished it in two evenings and have been thinking about the ending ever since."),
    ("covering my shift last Friday", "It let me be there for my sister's graduation, which I would have hated to "
     "miss."),
    ("your advice before my job interview", "I used your tip about preparing questions of my own, and I got the "
     "job!"),
)
_THANKS_CLOSINGS = ("I owe you one, and I hope I can return the favor soon.", "You're a true friend.",
                    "Let's get coffee soon, my treat.", "Thank you again for being so thoughtful.")


def _cw_thanks(rng: random.Random) -> Record:
    occasion, detail = rng.choice(_THANKS)
    to = rng.choice(_PEOPLE)
    sender = _person(rng, to)
    output = (f"Dear {to.name},\n\nThank you so much for {occasion}. {detail} {rng.choice(_THANKS_CLOSINGS)}\n\n"
              f"{rng.choice(('With gratitude', 'Warmly', 'Thanks again', 'Love'))},\n{sender.name}")
    ask = rng.choice(("Write a short thank-you note to {n} for {o}.", "Help me write a thank-you message to my "
                      "friend {n} for {o}."))
    return {"instruction": ask.format(n=to.name, o=occasion), "input": "", "output": output}


_EVENTS = (
    ("birthday picnic", "There will be sandwiches, lemonade and far too much cake. Bring a blanket if you have one!"),
    ("board game night", "Bring your favorite game, or just bring yourself; there will be snacks and friendly "
     "competition."),
    ("housewarming party", "Come see the new place, meet the neighbors and help us break in the kitchen."),
    ("book club's first meeting", "We'll be talking about how to pick our first book, so come with a suggestion or "
     "two."),
    ("garden party", "Expect fresh lemonade, music and plenty of shade under the apple trees."),
)


def _cw_invitation(rng: random.Random) -> Record:
    event, line = rng.choice(_EVENTS)
    day = rng.choice(("Saturday", "Sunday", "Friday evening"))
    time = rng.choice(("2 p.m.", "4 p.m.", "6:30 p.m.", "7 p.m."))
    host = rng.choice(_PEOPLE)
    place = rng.choice(("my place", "Riverside Park", "the community hall", "our backyard"))
    output = (f"You're invited!\n\nJoin me for a {event} on {day} at {time} at {place}. {line} Please let me know by "
              f"Thursday if you can make it.\n\nHope to see you there,\n{host.name}")
    ask = "Write a short, friendly invitation to a {e} on {d} at {t} at {p}."
    return {"instruction": ask.format(e=event, d=day, t=time, p=place), "input": "", "output": output}


_ENCOURAGE = (
    ("starting a new job next week", "It's completely normal to feel nervous. They chose you for a reason, and "
     "nobody expects you to know everything on day one. Ask questions, take notes and be kind to yourself."),
    ("studying for a big exam", "You've put in the work, and it shows. Take short breaks, get a good night's "
     "sleep before the exam, and trust what you've learned."),
    ("training for their first 10K race", "Every run you've done is already a win. On race day, start slower than "
     "you think you need to and enjoy the crowd. Crossing that finish line is going to feel amazing."),
    ("nervous about a piano recital", "The audience is on your side; they came because they want to hear you "
     "play. If you slip, keep going. Nobody remembers a wrong note, but they'll remember the music."),
    ("looking for work after being laid off", "Losing a job says nothing about your worth. Take it one "
     "application at a time, lean on the people who care about you, and remember how much you have to offer."),
    ("learning to code and feeling stuck", "Feeling stuck is part of learning to program; every developer has been "
     "there. Take a break, then try explaining the problem out loud. You're closer than you think."),
)


def _cw_encourage(rng: random.Random) -> Record:
    situation, body = rng.choice(_ENCOURAGE)
    friend = rng.choice(_PEOPLE)
    opener = rng.choice(("Hey {n},", "Hi {n}!", "{n},"))
    closer = rng.choice(("I'm cheering for you!", "I believe in you.", "You've got this."))
    output = f"{opener.format(n=friend.name)} {body} {closer}"
    ask = rng.choice(("Write a short encouraging message for my friend {n}, who is {s}.",
                      "My friend {n} is {s}. Write a few supportive words I can send."))
    return {"instruction": ask.format(n=friend.name, s=situation), "input": "", "output": output}


def _creative_templates() -> list[Callable[[random.Random], Record]]:
    return [_cw_haiku, _cw_scary, _cw_story_opening, _cw_story_opening, _cw_product, _cw_thanks, _cw_invitation,
            _cw_encourage]


# --------------------------------------------------------------------------------------------------
# assembly
# --------------------------------------------------------------------------------------------------


def _domain_templates(domain: str) -> list[Callable[[random.Random], Record]]:
    if domain == "math_word_problems":
        return _math_pool_templates()
    if domain == "python_code":
        return _python_templates()
    if domain == "summarization":
        return [_summary_template(frame) for frame in _STORIES]
    if domain == "geography_qa":
        return [_geo_capital, _geo_capital, _geo_capital_reverse, _geo_currency, _geo_continent, _geo_latitude,
                _geo_fact, _geo_fact]
    if domain == "grammar_rewrite":
        return _grammar_templates()
    if domain == "unit_conversion":
        return _unit_templates()
    if domain == "creative_writing":
        return _creative_templates()
    raise ValueError(f"unknown demo domain {domain!r}")


def _domain_counts(n_rows: int) -> dict[str, int]:
    """Math gets ~13.75 %; the rest is split as evenly as possible over the other domains."""
    others = DOMAINS[1:]
    math_rows = min(n_rows, max(1, round(n_rows * MATH_SHARE))) if n_rows else 0
    rest = n_rows - math_rows
    counts = {"math_word_problems": math_rows}
    for i, domain in enumerate(others):
        counts[domain] = rest // len(others) + (1 if i < rest % len(others) else 0)
    return counts


def _generate(domain: str, count: int, rng: random.Random,
              templates: list[Callable[[random.Random], Record]],
              taken: set[tuple[str, str]] | None = None) -> list[Record]:
    """``count`` rows cycling through the shuffled templates, so every template is used about equally.

    A draw whose (instruction, input) or output repeats an earlier row is redrawn from the same template;
    a template that keeps repeating itself is skipped for this round.
    """
    rows: list[Record] = []
    seen_pairs: set[tuple[str, str]] = set(taken or ())
    seen_outputs: set[str] = set()
    queue: list[int] = []
    misses = 0
    while len(rows) < count:
        if not queue:
            queue = list(range(len(templates)))
            rng.shuffle(queue)
        index = queue.pop()
        for _ in range(40):
            record = templates[index](rng)
            pair = (record["instruction"], record["input"])
            if pair not in seen_pairs and record["output"] not in seen_outputs:
                break
        else:
            misses += 1
            if misses > 20 * len(templates):
                raise ValueError(f"cannot make {count} distinct {domain} rows; ask for fewer")
            continue
        seen_pairs.add(pair)
        seen_outputs.add(record["output"])
        record.setdefault("_template", f"{domain}:{index}")
        rows.append(record)
    return rows


def _public(record: Record) -> Record:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _pool_records(n_rows: int = 320, seed: int = 0) -> list[Record]:
    """The pool with its private check fields (``_answer``, ``_check``, ``_template``...) still attached."""
    if n_rows < 0:
        raise ValueError("n_rows must be >= 0")
    rows: list[Record] = []
    for domain, count in _domain_counts(n_rows).items():
        rng = random.Random(f"g2is-demo-pool:{seed}:{domain}")
        for k, record in enumerate(_generate(domain, count, rng, _domain_templates(domain))):
            rows.append({"id": f"demo-{domain}-{k}", "source": domain, "instruction": record.pop("instruction"),
                         "input": record.pop("input"), "output": record.pop("output"), **record})
    random.Random(f"g2is-demo-order:{seed}").shuffle(rows)
    return rows


def _target_records(n_rows: int = 16, seed: int = 1) -> list[Record]:
    """Targets with ``_answer`` and ``_template`` attached.  Target-only templates are used first, and no
    problem of the default pool is repeated."""
    if n_rows < 0:
        raise ValueError("n_rows must be >= 0")
    rng = random.Random(f"g2is-demo-targets:{seed}")
    own = [t for t in _MATH_TEMPLATES if t.target_only]
    shared = [t for t in _MATH_TEMPLATES if not t.target_only]
    pool_math = [r for r in _pool_records() if r["source"] == TARGET_DOMAIN]
    pool_questions = {r["instruction"] for r in pool_math} | {r["input"] for r in pool_math}
    rows: list[Record] = []
    seen: set[str] = set()
    queue: list[_MathTemplate] = []
    while len(rows) < n_rows:
        if not queue:
            a, b = own[:], shared[:]
            rng.shuffle(a)
            rng.shuffle(b)
            queue = b + a  # popped from the end: target-only templates first
        template = queue.pop()
        for _ in range(40):
            question, steps, answer = template.make(rng)
            if question not in seen and question not in pool_questions:
                break
        else:
            continue
        seen.add(question)
        user = question if rng.random() < 0.75 else f"{question} Show your work."
        rows.append({"source": TARGET_DOMAIN, "group": template.group,
                     "messages": [{"role": "user", "content": user},
                                  {"role": "assistant", "content": _solution(rng, steps, answer)}],
                     "_answer": answer, "_template": template.name})
    rng.shuffle(rows)
    return [{"id": f"target-math-{k}", **row} for k, row in enumerate(rows)]


def demo_pool(n_rows: int = 320, seed: int = 0) -> list[dict]:
    """A deterministic mixed instruction pool of Alpaca records.

    Each row is ``{"id": "demo-<domain>-<k>", "source": <domain>, "instruction", "input", "output"}`` (``input``
    is "" when unused).  About 13.75 % of the rows are ``math_word_problems``; the rest are split evenly over the
    other ``DOMAINS``.  Rows are shuffled so domains interleave.
    """
    return [_public(r) for r in _pool_records(n_rows, seed)]


def demo_targets(n_rows: int = 16, seed: int = 1) -> list[dict]:
    """Target examples of the skill to select for: grade-school math word problems solved step by step.

    Each row is ``{"id": "target-math-<k>", "source": "math_word_problems", "group": <kind>, "messages": [user,
    assistant]}``; the assistant's solution ends with "So the answer is N.", as in the pool's math rows.
    """
    return [_public(r) for r in _target_records(n_rows, seed)]


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def demo_files() -> dict[str, bytes]:
    """The two shipped files' exact bytes, by file name: the pool (Alpaca) and the targets (chat messages)."""
    return {POOL_FILE: _jsonl_bytes(demo_pool()), TARGETS_FILE: _jsonl_bytes(demo_targets())}


def write_files(directory: str | os.PathLike = OUT_DIR) -> list[Path]:
    """Write the files into ``directory`` (atomically replacing existing ones); returns their paths."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in demo_files().items():
        path = folder / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def check_files(directory: str | os.PathLike = OUT_DIR) -> list[str]:
    """Names of the files in ``directory`` that are missing or differ from what this script generates."""
    folder = Path(directory)
    return [name for name, data in demo_files().items()
            if not (folder / name).is_file() or (folder / name).read_bytes() != data]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the built-in demo data files.")
    parser.add_argument("--check", action="store_true",
                        help="regenerate in memory and exit 1 if the shipped files differ")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"folder of the files (default: {OUT_DIR})")
    args = parser.parse_args(argv)
    if args.check:
        stale = check_files(args.out)
        for name in stale:
            print(f"{args.out / name} differs from the generator's output; run python scripts/make_demo_data.py",
                  file=sys.stderr)
        if not stale:
            print(f"demo data in {args.out} is up to date")
        return 1 if stale else 0
    for path in write_files(args.out):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
