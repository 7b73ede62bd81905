r"""The seeded sentence grammar of the synthetic corpus, and every label it implies.

The demo must train a speech encoder on a laptop CPU in minutes, so the grammar
is designed for a small model to learn from:

  * A moderate lexicon (~280 word types) recombined into many distinct
    sentences: every word is heard hundreds of times (by many voices, rates and
    pitches), yet no sentence repeats, so retrieval and classification need the
    content of the utterance rather than memorised strings.
  * Three domains with labels that follow from the grammar, for probing:
    smart-home commands (intent = action + object, with location and several
    paraphrases per intent), short statements (tense, subject/object number,
    topic) and weather/travel questions.
  * A `zero_shot` split that only contains command intents held out of every
    other split, built from words the other splits do contain, so a text prompt
    per intent (`intent_descriptions()`) tests compositional generalisation.

Every sentence is drawn from an RNG keyed by (seed, split, index), so the text
of an utterance never depends on the order of work. This module is pure text
(numpy and the standard library): evaluators and benchmarks read the intents
and sentences from here without loading the audio renderer
(`stalign.data.corpus`), which turns the sentences into speech.
"""

from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
from typing import Any

import numpy as np

from stalign import data

# Splits in the order they are drawn; the order is part of every utterance's RNG key.
_SPLITS = data.SPLITS + (data.ZERO_SHOT_SPLIT,)
_DOMAIN_WEIGHTS = {"command": 0.4, "statement": 0.4, "question": 0.2}


def number_words(n: int) -> str:
  """Spells 0..99, because transcripts must be speakable letter by letter."""
  ones = (
    "zero one two three four five six seven eight nine ten eleven twelve "
    "thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
  ).split()
  tens = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
  if n < 20:
    return ones[n]
  t, o = divmod(n, 10)
  return tens[t] + (f" {ones[o]}" if o else "")


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
  """A uniform choice by one integer draw, which the corpus plan's bytes depend on."""
  return options[int(rng.integers(len(options)))]


def _a(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


# --------------------------------------------------------------------------
# Commands. An intent is (action, object); rooms make the location label.


@dataclasses.dataclass(frozen=True)
class _Device:
  nouns: tuple[str, ...]  # Surface forms; the first one names the intent.
  actions: tuple[str, ...]
  up: str = ""  # Comparative used by "increase" ("make the fan faster").
  down: str = ""
  in_room: bool = True


_DEVICES = {
  "lights": _Device(
    ("lights", "lamps"), ("activate", "deactivate", "increase", "decrease"), "brighter", "dimmer"
  ),
  "heating": _Device(
    ("heating", "heater"),
    ("activate", "deactivate", "increase", "decrease", "set"),
    "warmer",
    "cooler",
  ),
  "air_conditioning": _Device(
    ("air conditioning", "air conditioner"), ("activate", "deactivate", "set")
  ),
  "fan": _Device(
    ("fan", "ceiling fan"), ("activate", "deactivate", "increase", "decrease"), "faster", "slower"
  ),
  "music": _Device(
    ("music", "radio"), ("activate", "deactivate", "increase", "decrease"), "louder", "quieter"
  ),
  "television": _Device(
    ("television",), ("activate", "deactivate", "increase", "decrease"), "louder", "quieter"
  ),
  "blinds": _Device(("blinds", "curtains"), ("open", "close")),
  "windows": _Device(("windows",), ("open", "close")),
  "door": _Device(("door",), ("open", "close", "lock", "unlock")),
  "alarm": _Device(("alarm",), ("set", "cancel"), in_room=False),
  "timer": _Device(("timer",), ("set", "cancel"), in_room=False),
}

ROOMS = (
  "kitchen",
  "bedroom",
  "living room",
  "bathroom",
  "hallway",
  "garage",
  "office",
  "dining room",
  "basement",
  "garden",
)

# {np} is the object noun phrase; a postposed location goes after the template.
# Templates starting with "i " take no politeness prefix.
_ACTION_TEMPLATES = {
  "activate": (
    "turn on {np}",
    "switch on {np}",
    "turn {np} on",
    "switch {np} on",
    "i want {np} on",
  ),
  "deactivate": (
    "turn off {np}",
    "switch off {np}",
    "turn {np} off",
    "shut off {np}",
    "i don't need {np} anymore",
  ),
  "increase": ("turn up {np}", "turn {np} up", "make {np} {up}", "i want {np} {up}"),
  "decrease": ("turn down {np}", "turn {np} down", "make {np} {down}", "i want {np} {down}"),
  "open": ("open {np}", "i want {np} open", "leave {np} open"),
  "close": ("close {np}", "shut {np}", "i want {np} closed"),
  "lock": ("lock {np}", "make sure {np} is locked", "i want {np} locked"),
  "unlock": ("unlock {np}", "leave {np} unlocked", "i want {np} unlocked"),
  "set": (
    "set {np} to {degrees} degrees",
    "put {np} on {degrees} degrees",
    "change {np} to {degrees} degrees",
  ),
  "cancel": ("cancel {np}", "i don't need {np} anymore"),
}
# Alarms and timers are not in rooms; their noun phrases name a time instead.
_TIMED_PHRASES = {
  "alarm": (
    "the alarm",
    "my alarm",
    "the alarm for {clock}",
    "my alarm for {clock}",
    "the {clock} alarm",
  ),
  "timer": ("the timer", "my timer", "the timer for {minutes} minutes"),
}
_SPECIAL_TEMPLATES = {
  ("set", "alarm"): (
    "set an alarm for {clock}",
    "set the alarm for {clock}",
    "i need an alarm for {clock}",
  ),
  ("set", "timer"): (
    "set a timer for {minutes} minutes",
    "start a timer for {minutes} minutes",
    "i need a timer for {minutes} minutes",
  ),
}
_PREFIXES = (
  "",
  "",
  "please",
  "could you",
  "can you",
  "would you",
  "could you please",
  "can you please",
)
_SUFFIXES = ("", "", "please", "now", "for me", "right now", "now please", "for me please")

# Kept out of train/valid/test. Each one's action and object, and hence every
# word it can produce, also occur in intents that are trained on.
HELD_OUT_INTENTS = (
  "activate_fan",
  "deactivate_heating",
  "increase_music",
  "deactivate_television",
  "set_air_conditioning",
  "open_windows",
  "close_blinds",
  "cancel_timer",
)


def _intent(action: str, obj: str) -> str:
  return f"{action}_{obj}"


def all_intents() -> tuple[str, ...]:
  """Every command intent, held-out ones included, in a fixed order."""
  return tuple(_intent(a, o) for o, d in _DEVICES.items() for a in d.actions)


def intent_descriptions() -> dict[str, str]:
  """One canonical phrase per intent, usable as a zero-shot class prompt."""
  verbs = {
    "activate": "turn on {np}",
    "deactivate": "turn off {np}",
    "increase": "make {np} {up}",
    "decrease": "make {np} {down}",
    "open": "open {np}",
    "close": "close {np}",
    "lock": "lock {np}",
    "unlock": "unlock {np}",
    "set": "set {np} to a temperature",
    "cancel": "cancel {np}",
  }
  special = {("set", "alarm"): "set an alarm", ("set", "timer"): "set a timer"}
  out = {}
  for obj, device in _DEVICES.items():
    for action in device.actions:
      template = special.get((action, obj), verbs[action])
      out[_intent(action, obj)] = template.format(
        np=f"the {device.nouns[0]}", up=device.up, down=device.down
      )
  return out


def _command(
  rng: np.random.Generator, intents: Sequence[tuple[str, str]]
) -> tuple[str, dict[str, str]]:
  action, obj = pick(rng, intents)
  device = _DEVICES[obj]
  noun = pick(rng, device.nouns)
  hour = number_words(int(rng.integers(5, 12)))
  times = dict(
    clock=pick(
      rng, (f"{hour} o'clock", f"{hour} thirty", f"{hour} fifteen", f"{hour} in the morning")
    ),
    minutes=number_words(pick(rng, (2, 3, 5, 10, 15, 20, 30))),
    degrees=number_words(int(rng.integers(20, 26))),
  )
  room = pick(rng, ROOMS) if device.in_room and rng.random() < 0.9 else None
  where = ""
  if not device.in_room:
    np_ = pick(rng, _TIMED_PHRASES[obj]).format(**times)
  elif room is None:
    np_ = f"the {noun}"
  elif rng.random() < 0.5:
    np_ = f"the {room} {noun}"
  else:
    np_, where = f"the {noun}", f" in the {room}"
  template = pick(rng, _SPECIAL_TEMPLATES.get((action, obj), _ACTION_TEMPLATES[action]))
  body = template.format(np=np_, up=device.up, down=device.down, **times) + where
  prefix = "" if body.startswith("i ") else pick(rng, _PREFIXES)
  suffix = pick(rng, _SUFFIXES)
  if "please" in prefix and "please" in suffix:
    suffix = suffix.replace("please", "").strip()
  text = " ".join(w for w in (prefix, body, suffix) if w)
  return text, dict(
    domain="command",
    topic="home",
    intent=_intent(action, obj),
    action=action,
    object=obj,
    location=room or "none",
    tense="none",
    subject_number="none",
    object_number="none",
  )


# --------------------------------------------------------------------------
# Statements: subject, verb, object, optional place and time.


@dataclasses.dataclass(frozen=True)
class _Topic:
  people: tuple[tuple[str, str], ...]  # (singular, plural)
  things: tuple[tuple[str, str], ...]
  places: tuple[str, ...]  # The last word is the location label.


# Verbs are shared by all topics: topic-specific verbs would each be heard too
# rarely in their third-person and past forms. Nouns and places carry the topic.
TOPICS = {
  "farm": _Topic(
    (("farmer", "farmers"), ("shepherd", "shepherds")),
    (("cow", "cows"), ("goat", "goats"), ("horse", "horses")),
    ("in the field", "on the farm", "near the barn"),
  ),
  "sea": _Topic(
    (("sailor", "sailors"), ("fisherman", "fishermen")),
    (("boat", "boats"), ("net", "nets"), ("crab", "crabs")),
    ("at the harbour", "on the beach"),
  ),
  "city": _Topic(
    (("driver", "drivers"), ("tourist", "tourists")),
    (("bus", "buses"), ("taxi", "taxis"), ("bicycle", "bicycles")),
    ("in the city", "near the station"),
  ),
  "school": _Topic(
    (("teacher", "teachers"), ("student", "students")),
    (("book", "books"), ("letter", "letters"), ("picture", "pictures")),
    ("in the classroom", "at the library"),
  ),
  "cooking": _Topic(
    (("baker", "bakers"), ("chef", "chefs")),
    (("cake", "cakes"), ("potato", "potatoes"), ("onion", "onions")),
    ("at the bakery", "in the restaurant"),
  ),
  "sport": _Topic(
    (("player", "players"), ("coach", "coaches")),
    (("ball", "balls"), ("medal", "medals"), ("cup", "cups")),
    ("at the stadium", "in the park"),
  ),
}
RELATIVES = (
  ("sister", "sisters"),
  ("brother", "brothers"),
  ("neighbour", "neighbours"),
  ("friend", "friends"),
)
PRONOUNS = {"he": "singular", "she": "singular", "they": "plural", "we": "plural"}
# (base, third person, past)
VERBS = (
  ("see", "sees", "saw"),
  ("find", "finds", "found"),
  ("buy", "buys", "bought"),
  ("sell", "sells", "sold"),
  ("bring", "brings", "brought"),
  ("watch", "watches", "watched"),
)
_PERSON_ADJECTIVES = ("old", "young", "tall", "happy", "tired", "busy")
_THING_ADJECTIVES = ("big", "small", "red", "blue", "green", "new")
_TIMES = {
  "past": ("yesterday", "last week", "last night", "this morning"),
  "present": ("every day", "every morning", "every week"),
  "future": ("tomorrow", "next week", "tonight", "soon"),
}


def _noun_phrase(
  rng: np.random.Generator,
  nouns: Sequence[tuple[str, str]],
  adjectives: Sequence[str],
  plural: bool,
) -> str:
  noun = pick(rng, nouns)[plural]
  adjective = pick(rng, adjectives) if rng.random() < 0.4 else ""
  head = f"{adjective} {noun}" if adjective else noun
  if plural:
    det = (
      number_words(int(rng.integers(2, 11)))
      if rng.random() < 0.4
      else pick(rng, ("the", "some", "those", "these", "my", "our", "their"))
    )
  else:
    det = pick(rng, ("the", "a", "my", "our", "his", "her", "that", "this"))
    det = _a(head) if det == "a" else det
  return f"{det} {head}"


def _statement(rng: np.random.Generator) -> tuple[str, dict[str, str]]:
  topic_name = pick(rng, tuple(TOPICS))
  topic = TOPICS[topic_name]
  tense = pick(rng, ("past", "present", "future"))
  subject_plural = bool(rng.random() < 0.5)
  object_plural = bool(rng.random() < 0.5)
  r = rng.random()
  if r < 0.15:
    subject = pick(rng, [p for p, n in PRONOUNS.items() if (n == "plural") == subject_plural])
  else:
    people = RELATIVES if r < 0.5 else topic.people
    subject = _noun_phrase(rng, people, _PERSON_ADJECTIVES, subject_plural)
  base, third, past = pick(rng, VERBS)
  verb = {"past": past, "future": f"will {base}", "present": base if subject_plural else third}[
    tense
  ]
  obj = _noun_phrase(rng, topic.things, _THING_ADJECTIVES, object_plural)
  words = [subject, verb, obj]
  place = pick(rng, topic.places) if rng.random() < 0.5 else None
  if place:
    words.append(place)
  if rng.random() < 0.4:
    when = pick(rng, _TIMES[tense])
    if rng.random() < 0.3:
      words.insert(0, when)
    else:
      words.append(when)
  number = lambda plural: "plural" if plural else "singular"
  return " ".join(words), dict(
    domain="statement",
    topic=topic_name,
    intent="none",
    action="none",
    object="none",
    location=place.split()[-1] if place else "none",
    tense=tense,
    subject_number=number(subject_plural),
    object_number=number(object_plural),
  )


# --------------------------------------------------------------------------
# Questions about the weather and travel; the tense shows in the auxiliary.

CITIES = (
  "london",
  "paris",
  "tokyo",
  "madrid",
  "berlin",
  "rome",
  "dublin",
  "cairo",
  "athens",
  "vienna",
)
# Direct questions, and indirect ones after "{ask}" with statement word order.
_QUESTIONS = {
  "weather": {
    "past": (
      "did it {rain} in {city} {when}",
      "was it {weather} in {city} {when}",
      "what was the weather like in {city} {when}",
      "{ask} if it {rained} in {city} {when}",
      "{ask} if it was {weather} in {city} {when}",
      "{ask} what the weather was like in {city} {when}",
    ),
    "present": (
      "is it {raining} in {city} {when}",
      "is it {weather} in {city} {when}",
      "what is the weather like in {city} {when}",
      "{ask} if it is {raining} in {city} {when}",
      "{ask} if it is {weather} in {city} {when}",
      "{ask} what the weather is like in {city} {when}",
    ),
    "future": (
      "will it {rain} in {city} {when}",
      "will it be {weather} in {city} {when}",
      "what will the weather be like in {city} {when}",
      "{ask} if it will {rain} in {city} {when}",
      "{ask} if it will be {weather} in {city} {when}",
      "{ask} what the weather will be like in {city} {when}",
    ),
  },
  "travel": {
    "past": (
      "when did the last {vehicle}{route} leave {when}",
      "was the {vehicle}{route} late {when}",
      "{ask} when the last {vehicle}{route} left {when}",
      "{ask} if the {vehicle}{route} was late {when}",
    ),
    "present": (
      "when does the next {vehicle}{route} leave {when}",
      "is the {vehicle}{route} late {when}",
      "{ask} when the next {vehicle}{route} leaves {when}",
      "{ask} if the {vehicle}{route} is late {when}",
    ),
    "future": (
      "when will the next {vehicle}{route} leave {when}",
      "will the {vehicle}{route} be late {when}",
      "{ask} when the next {vehicle}{route} will leave {when}",
      "{ask} if the {vehicle}{route} will be late {when}",
    ),
  },
}
_QUESTION_TIMES = {
  "past": ("yesterday", "last night", "last week", "this morning"),
  "present": ("today", "right now", "this morning", "this week"),
  "future": ("tomorrow", "tonight", "next week", "tomorrow morning"),
}


def _question(rng: np.random.Generator) -> tuple[str, dict[str, str]]:
  topic = pick(rng, tuple(_QUESTIONS))
  tense = pick(rng, ("past", "present", "future"))
  city, origin = rng.choice(len(CITIES), 2, replace=False)
  city, origin = CITIES[city], CITIES[origin]
  weather = ("rain", "rained", "raining", "snow", "snowed", "snowing")
  k = 3 * int(rng.integers(2))
  text = (
    pick(rng, ("", "", "hey", "okay"))
    + " "
    + pick(rng, _QUESTIONS[topic][tense]).format(
      city=city,
      rain=weather[k],
      rained=weather[k + 1],
      raining=weather[k + 2],
      route=f" from {origin} to {city}" if rng.random() < 0.5 else f" to {city}",
      ask=pick(rng, ("do you know", "can you tell me", "could you tell me", "tell me")),
      when=pick(rng, _QUESTION_TIMES[tense]),
      weather=" and ".join(
        rng.choice(
          ("sunny", "cold", "warm", "windy", "cloudy"), 1 + (rng.random() < 0.4), replace=False
        )
      ),
      vehicle=pick(rng, ("train", "bus", "plane", "ferry")),
    )
  )
  return text.strip(), dict(
    domain="question",
    topic=topic,
    intent="none",
    action="none",
    object="none",
    location=city,
    tense=tense,
    subject_number="none",
    object_number="none",
  )


def sample_sentence(rng: np.random.Generator, intents: Sequence[str]) -> tuple[str, dict[str, str]]:
  """Draws one sentence of any domain; commands use only `intents`."""
  pairs = _intent_pairs(intents)
  r = rng.random()
  if r < _DOMAIN_WEIGHTS["command"]:
    return _command(rng, pairs)
  if r < _DOMAIN_WEIGHTS["command"] + _DOMAIN_WEIGHTS["statement"]:
    return _statement(rng)
  return _question(rng)


def _intent_pairs(intents: Sequence[str]) -> list[tuple[str, str]]:
  wanted = set(intents)
  return [(a, o) for o, d in _DEVICES.items() for a in d.actions if _intent(a, o) in wanted]


def _length_bucket(text: str) -> int:
  n = len(text.split())
  return 0 if n <= 4 else 1 if n <= 7 else 2 if n <= 10 else 3


# --------------------------------------------------------------------------
# Every split's sentences, drawn up front.


def utterance_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
  """Independent per utterance, so nothing depends on the order of work.

  Stream 0 draws the sentence; the renderer draws the audio settings and the
  noise from the others, so changing how audio is made never changes the text.
  """
  return np.random.default_rng([seed, _SPLITS.index(split), index, stream])


def plan_sentences(
  seed: int, sizes: Mapping[str, int]
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
  """Every split's (text, labels), `sizes[split]` of each; a split left out is empty.

  Sentences are unique across the whole corpus: a draw that repeats an earlier
  sentence is redrawn from the same utterance RNG, so a split depends only on
  the seed and on its size and those of the splits drawn before it. Training
  sentences come first: the first n are the same in every corpus of a seed.
  """
  unknown = set(sizes) - set(_SPLITS)
  if unknown:
    raise ValueError(f"no corpus split {sorted(unknown)}; splits are {_SPLITS}")
  kept = [i for i in all_intents() if i not in HELD_OUT_INTENTS]
  held_out = _intent_pairs(HELD_OUT_INTENTS)
  seen = set()
  plan = {}
  for split in _SPLITS:
    sentences = []
    for index in range(sizes.get(split, 0)):
      rng = utterance_rng(seed, split, index, 0)
      for _ in range(1000):
        text, labels = (
          _command(rng, held_out) if split == data.ZERO_SHOT_SPLIT else sample_sentence(rng, kept)
        )
        if text not in seen:
          break
      else:
        raise ValueError(
          f"The grammar ran out of new sentences at {split} {index}; ask for fewer utterances."
        )
      seen.add(text)
      labels["length_bucket"] = _length_bucket(text)
      sentences.append((text, labels))
    plan[split] = sentences
  return plan
