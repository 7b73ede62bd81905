r"""Embedded synthetic speech-text corpus: a seeded grammar spoken by espeak-ng.

The demo must train a speech encoder on a laptop CPU in minutes, so the corpus
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

Audio: each utterance is synthesised in-process (`stalign.data.espeak`, 22.05
kHz), resampled to 16 kHz with speed perturbation folded into the same resampling
step, mixed with white or pink noise at a random SNR, and written as PCM16.

Layout of `out_dir` (`build_corpus`):
  audio/{split}/{id}.wav   16 kHz mono PCM16, each written atomically.
  {split}.jsonl            one utterance per line: id, audio_filepath (relative
                           to out_dir; `read_manifest` resolves it), duration,
                           text, labels.
  config.json              the corpus config this folder is built from.
  summary.json             counts, hours, speed and lexical statistics; written
                           last, so its presence marks a complete build.

Determinism: the whole plan (sentences, voices, augmentation) is drawn in the
parent from RNGs keyed by (seed, split, index). espeak-ng output also depends
on what the process synthesised before (see `stalign.data.espeak`), so audio
is rendered in fixed chunks of consecutive utterances, each in a freshly forked
process with its own pristine instance of the library. Same config, same bytes,
whatever the number of workers or their scheduling.

Resuming: a chunk whose wavs all exist is skipped; any other chunk is rendered
again from its start (which reproduces the wavs it already had).
"""
import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from absl import logging
import ml_collections
import numpy as np
import soundfile as sf
import soxr
import tqdm

from stalign.data import espeak

SPLITS = ("train", "valid", "test", "zero_shot")
SAMPLE_RATE = 16_000

# Config fields this module reads beyond those in configs/demo.py.
DEFAULT_VOICES = (
    "en-us", "en-us+f2", "en-us+m3", "en-us-nyc", "en-us-nyc+m7", "en",
    "en+f4", "en+m2", "en-gb-x-rp", "en-gb-x-rp+f3", "en-gb-x-rp+m4",
    "en-gb-scotland", "en-gb-scotland+f1", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
    "en-029")
DEFAULT_CHUNK_SIZE = 64  # Utterances per task; part of what the audio depends on.

_DOMAIN_WEIGHTS = {"command": 0.4, "statement": 0.4, "question": 0.2}


def number_words(n: int) -> str:
  """Spells 0..99, because transcripts must be speakable letter by letter."""
  ones = ("zero one two three four five six seven eight nine ten eleven twelve "
          "thirteen fourteen fifteen sixteen seventeen eighteen nineteen").split()
  tens = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
  if n < 20:
    return ones[n]
  t, o = divmod(n, 10)
  return tens[t] + (f" {ones[o]}" if o else "")


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
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
    "lights": _Device(("lights", "lamps"),
                      ("activate", "deactivate", "increase", "decrease"),
                      "brighter", "dimmer"),
    "heating": _Device(("heating", "heater"),
                       ("activate", "deactivate", "increase", "decrease", "set"),
                       "warmer", "cooler"),
    "air_conditioning": _Device(("air conditioning", "air conditioner"),
                                ("activate", "deactivate", "set")),
    "fan": _Device(("fan", "ceiling fan"),
                   ("activate", "deactivate", "increase", "decrease"),
                   "faster", "slower"),
    "music": _Device(("music", "radio"),
                     ("activate", "deactivate", "increase", "decrease"),
                     "louder", "quieter"),
    "television": _Device(("television",),
                          ("activate", "deactivate", "increase", "decrease"),
                          "louder", "quieter"),
    "blinds": _Device(("blinds", "curtains"), ("open", "close")),
    "windows": _Device(("windows",), ("open", "close")),
    "door": _Device(("door",), ("open", "close", "lock", "unlock")),
    "alarm": _Device(("alarm",), ("set", "cancel"), in_room=False),
    "timer": _Device(("timer",), ("set", "cancel"), in_room=False),
}

ROOMS = ("kitchen", "bedroom", "living room", "bathroom", "hallway", "garage",
         "office", "dining room", "basement", "garden")

# {np} is the object noun phrase; a postposed location goes after the template.
# Templates starting with "i " take no politeness prefix.
_ACTION_TEMPLATES = {
    "activate": ("turn on {np}", "switch on {np}", "turn {np} on",
                 "switch {np} on", "i want {np} on"),
    "deactivate": ("turn off {np}", "switch off {np}", "turn {np} off",
                   "shut off {np}", "i don't need {np} anymore"),
    "increase": ("turn up {np}", "turn {np} up", "make {np} {up}",
                 "i want {np} {up}"),
    "decrease": ("turn down {np}", "turn {np} down", "make {np} {down}",
                 "i want {np} {down}"),
    "open": ("open {np}", "i want {np} open", "leave {np} open"),
    "close": ("close {np}", "shut {np}", "i want {np} closed"),
    "lock": ("lock {np}", "make sure {np} is locked", "i want {np} locked"),
    "unlock": ("unlock {np}", "leave {np} unlocked", "i want {np} unlocked"),
    "set": ("set {np} to {degrees} degrees", "put {np} on {degrees} degrees",
            "change {np} to {degrees} degrees"),
    "cancel": ("cancel {np}", "i don't need {np} anymore"),
}
# Alarms and timers are not in rooms; their noun phrases name a time instead.
_TIMED_PHRASES = {"alarm": ("the alarm", "my alarm", "the alarm for {clock}",
                            "my alarm for {clock}", "the {clock} alarm"),
                  "timer": ("the timer", "my timer",
                            "the timer for {minutes} minutes")}
_SPECIAL_TEMPLATES = {
    ("set", "alarm"): ("set an alarm for {clock}", "set the alarm for {clock}",
                       "i need an alarm for {clock}"),
    ("set", "timer"): ("set a timer for {minutes} minutes",
                       "start a timer for {minutes} minutes",
                       "i need a timer for {minutes} minutes"),
}
_PREFIXES = ("", "", "please", "could you", "can you", "would you",
             "could you please", "can you please")
_SUFFIXES = ("", "", "please", "now", "for me", "right now", "now please",
             "for me please")

# Kept out of train/valid/test. Each one's action and object, and hence every
# word it can produce, also occur in intents that are trained on.
HELD_OUT_INTENTS = ("activate_fan", "deactivate_heating", "increase_music",
                    "deactivate_television", "set_air_conditioning",
                    "open_windows", "close_blinds", "cancel_timer")


def _intent(action: str, obj: str) -> str:
  return f"{action}_{obj}"


def all_intents() -> tuple[str, ...]:
  return tuple(_intent(a, o) for o, d in _DEVICES.items() for a in d.actions)


def intent_descriptions() -> dict[str, str]:
  """One canonical phrase per intent, usable as a zero-shot class prompt."""
  verbs = {"activate": "turn on {np}", "deactivate": "turn off {np}",
           "increase": "make {np} {up}", "decrease": "make {np} {down}",
           "open": "open {np}", "close": "close {np}", "lock": "lock {np}",
           "unlock": "unlock {np}", "set": "set {np} to a temperature",
           "cancel": "cancel {np}"}
  special = {("set", "alarm"): "set an alarm", ("set", "timer"): "set a timer"}
  out = {}
  for obj, device in _DEVICES.items():
    for action in device.actions:
      template = special.get((action, obj), verbs[action])
      out[_intent(action, obj)] = template.format(
          np=f"the {device.nouns[0]}", up=device.up, down=device.down)
  return out


def _command(rng: np.random.Generator,
             intents: Sequence[tuple[str, str]]) -> tuple[str, dict[str, str]]:
  action, obj = _pick(rng, intents)
  device = _DEVICES[obj]
  noun = _pick(rng, device.nouns)
  hour = number_words(int(rng.integers(5, 12)))
  times = dict(
      clock=_pick(rng, (f"{hour} o'clock", f"{hour} thirty", f"{hour} fifteen",
                        f"{hour} in the morning")),
      minutes=number_words(_pick(rng, (2, 3, 5, 10, 15, 20, 30))),
      degrees=number_words(int(rng.integers(20, 26))))
  room = _pick(rng, ROOMS) if device.in_room and rng.random() < 0.9 else None
  where = ""
  if not device.in_room:
    np_ = _pick(rng, _TIMED_PHRASES[obj]).format(**times)
  elif room is None:
    np_ = f"the {noun}"
  elif rng.random() < 0.5:
    np_ = f"the {room} {noun}"
  else:
    np_, where = f"the {noun}", f" in the {room}"
  template = _pick(rng, _SPECIAL_TEMPLATES.get((action, obj),
                                               _ACTION_TEMPLATES[action]))
  body = template.format(np=np_, up=device.up, down=device.down,
                         **times) + where
  prefix = "" if body.startswith("i ") else _pick(rng, _PREFIXES)
  suffix = _pick(rng, _SUFFIXES)
  if "please" in prefix and "please" in suffix:
    suffix = suffix.replace("please", "").strip()
  text = " ".join(w for w in (prefix, body, suffix) if w)
  return text, dict(domain="command", topic="home",
                    intent=_intent(action, obj), action=action, object=obj,
                    location=room or "none", tense="none",
                    subject_number="none", object_number="none")


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
    "farm": _Topic((("farmer", "farmers"), ("shepherd", "shepherds")),
                   (("cow", "cows"), ("goat", "goats"), ("horse", "horses")),
                   ("in the field", "on the farm", "near the barn")),
    "sea": _Topic((("sailor", "sailors"), ("fisherman", "fishermen")),
                  (("boat", "boats"), ("net", "nets"), ("crab", "crabs")),
                  ("at the harbour", "on the beach")),
    "city": _Topic((("driver", "drivers"), ("tourist", "tourists")),
                   (("bus", "buses"), ("taxi", "taxis"),
                    ("bicycle", "bicycles")),
                   ("in the city", "near the station")),
    "school": _Topic((("teacher", "teachers"), ("student", "students")),
                     (("book", "books"), ("letter", "letters"),
                      ("picture", "pictures")),
                     ("in the classroom", "at the library")),
    "cooking": _Topic((("baker", "bakers"), ("chef", "chefs")),
                      (("cake", "cakes"), ("potato", "potatoes"),
                       ("onion", "onions")),
                      ("at the bakery", "in the restaurant")),
    "sport": _Topic((("player", "players"), ("coach", "coaches")),
                    (("ball", "balls"), ("medal", "medals"), ("cup", "cups")),
                    ("at the stadium", "in the park")),
}
RELATIVES = (("sister", "sisters"), ("brother", "brothers"),
             ("neighbour", "neighbours"), ("friend", "friends"))
PRONOUNS = {"he": "singular", "she": "singular", "they": "plural",
            "we": "plural"}
# (base, third person, past)
VERBS = (("see", "sees", "saw"), ("find", "finds", "found"),
         ("buy", "buys", "bought"), ("sell", "sells", "sold"),
         ("bring", "brings", "brought"), ("watch", "watches", "watched"))
_PERSON_ADJECTIVES = ("old", "young", "tall", "happy", "tired", "busy")
_THING_ADJECTIVES = ("big", "small", "red", "blue", "green", "new")
_TIMES = {"past": ("yesterday", "last week", "last night", "this morning"),
          "present": ("every day", "every morning", "every week"),
          "future": ("tomorrow", "next week", "tonight", "soon")}


def _noun_phrase(rng: np.random.Generator, nouns: Sequence[tuple[str, str]],
                 adjectives: Sequence[str], plural: bool) -> str:
  noun = _pick(rng, nouns)[plural]
  adjective = _pick(rng, adjectives) if rng.random() < 0.4 else ""
  head = f"{adjective} {noun}" if adjective else noun
  if plural:
    det = (number_words(int(rng.integers(2, 11))) if rng.random() < 0.4 else
           _pick(rng, ("the", "some", "those", "these", "my", "our", "their")))
  else:
    det = _pick(rng, ("the", "a", "my", "our", "his", "her", "that", "this"))
    det = _a(head) if det == "a" else det
  return f"{det} {head}"


def _statement(rng: np.random.Generator) -> tuple[str, dict[str, str]]:
  topic_name = _pick(rng, tuple(TOPICS))
  topic = TOPICS[topic_name]
  tense = _pick(rng, ("past", "present", "future"))
  subject_plural = bool(rng.random() < 0.5)
  object_plural = bool(rng.random() < 0.5)
  r = rng.random()
  if r < 0.15:
    subject = _pick(rng, [p for p, n in PRONOUNS.items()
                          if (n == "plural") == subject_plural])
  else:
    people = RELATIVES if r < 0.5 else topic.people
    subject = _noun_phrase(rng, people, _PERSON_ADJECTIVES, subject_plural)
  base, third, past = _pick(rng, VERBS)
  verb = {"past": past, "future": f"will {base}",
          "present": base if subject_plural else third}[tense]
  obj = _noun_phrase(rng, topic.things, _THING_ADJECTIVES, object_plural)
  words = [subject, verb, obj]
  place = _pick(rng, topic.places) if rng.random() < 0.5 else None
  if place:
    words.append(place)
  if rng.random() < 0.4:
    when = _pick(rng, _TIMES[tense])
    if rng.random() < 0.3:
      words.insert(0, when)
    else:
      words.append(when)
  number = lambda plural: "plural" if plural else "singular"
  return " ".join(words), dict(
      domain="statement", topic=topic_name, intent="none", action="none",
      object="none", location=place.split()[-1] if place else "none",
      tense=tense, subject_number=number(subject_plural),
      object_number=number(object_plural))


# --------------------------------------------------------------------------
# Questions about the weather and travel; the tense shows in the auxiliary.

CITIES = ("london", "paris", "tokyo", "madrid", "berlin", "rome", "dublin",
          "cairo", "athens", "vienna")
# Direct questions, and indirect ones after "{ask}" with statement word order.
_QUESTIONS = {
    "weather": {
        "past": ("did it {rain} in {city} {when}",
                 "was it {weather} in {city} {when}",
                 "what was the weather like in {city} {when}",
                 "{ask} if it {rained} in {city} {when}",
                 "{ask} if it was {weather} in {city} {when}",
                 "{ask} what the weather was like in {city} {when}"),
        "present": ("is it {raining} in {city} {when}",
                    "is it {weather} in {city} {when}",
                    "what is the weather like in {city} {when}",
                    "{ask} if it is {raining} in {city} {when}",
                    "{ask} if it is {weather} in {city} {when}",
                    "{ask} what the weather is like in {city} {when}"),
        "future": ("will it {rain} in {city} {when}",
                   "will it be {weather} in {city} {when}",
                   "what will the weather be like in {city} {when}",
                   "{ask} if it will {rain} in {city} {when}",
                   "{ask} if it will be {weather} in {city} {when}",
                   "{ask} what the weather will be like in {city} {when}"),
    },
    "travel": {
        "past": ("when did the last {vehicle}{route} leave {when}",
                 "was the {vehicle}{route} late {when}",
                 "{ask} when the last {vehicle}{route} left {when}",
                 "{ask} if the {vehicle}{route} was late {when}"),
        "present": ("when does the next {vehicle}{route} leave {when}",
                    "is the {vehicle}{route} late {when}",
                    "{ask} when the next {vehicle}{route} leaves {when}",
                    "{ask} if the {vehicle}{route} is late {when}"),
        "future": ("when will the next {vehicle}{route} leave {when}",
                   "will the {vehicle}{route} be late {when}",
                   "{ask} when the next {vehicle}{route} will leave {when}",
                   "{ask} if the {vehicle}{route} will be late {when}"),
    },
}
_QUESTION_TIMES = {"past": ("yesterday", "last night", "last week",
                            "this morning"),
                   "present": ("today", "right now", "this morning",
                               "this week"),
                   "future": ("tomorrow", "tonight", "next week",
                              "tomorrow morning")}


def _question(rng: np.random.Generator) -> tuple[str, dict[str, str]]:
  topic = _pick(rng, tuple(_QUESTIONS))
  tense = _pick(rng, ("past", "present", "future"))
  city, origin = rng.choice(len(CITIES), 2, replace=False)
  city, origin = CITIES[city], CITIES[origin]
  weather = ("rain", "rained", "raining", "snow", "snowed", "snowing")
  k = 3 * int(rng.integers(2))
  text = _pick(rng, ("", "", "hey", "okay")) + " " + _pick(
      rng, _QUESTIONS[topic][tense]).format(
      city=city, rain=weather[k], rained=weather[k + 1],
      raining=weather[k + 2],
      route=f" from {origin} to {city}" if rng.random() < 0.5 else f" to {city}",
      ask=_pick(rng, ("do you know", "can you tell me", "could you tell me",
                      "tell me")),
      when=_pick(rng, _QUESTION_TIMES[tense]),
      weather=" and ".join(rng.choice(
          ("sunny", "cold", "warm", "windy", "cloudy"), 1 + (rng.random() < 0.4),
          replace=False)),
      vehicle=_pick(rng, ("train", "bus", "plane", "ferry")))
  return text.strip(), dict(domain="question", topic=topic, intent="none",
                    action="none", object="none", location=city, tense=tense,
                    subject_number="none", object_number="none")


def sample_sentence(rng: np.random.Generator,
                    intents: Sequence[str]) -> tuple[str, dict[str, str]]:
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
  return [(a, o) for o, d in _DEVICES.items() for a in d.actions
          if _intent(a, o) in wanted]


# --------------------------------------------------------------------------
# The plan: every utterance's text, labels and audio settings, drawn up front.


@dataclasses.dataclass(frozen=True)
class Utterance:
  split: str
  index: int
  text: str
  labels: dict[str, Any]

  @property
  def id(self) -> str:
    return f"{self.split}-{self.index:06d}"

  @property
  def audio_filepath(self) -> str:
    return os.path.join("audio", self.split, f"{self.id}.wav")


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
  """Independent per utterance, so nothing depends on the order of work."""
  return np.random.default_rng([seed, SPLITS.index(split), index, stream])


def _split_size(config: ml_collections.ConfigDict, split: str) -> int:
  return int(config[f"num_{split}"])


def _bucket(value: float, lo: float, hi: float) -> str:
  """Thirds of the configured range, so buckets are balanced by design."""
  third = min(int(3 * (value - lo) / (hi - lo)), 2) if hi > lo else 1
  return ("low", "medium", "high")[third]


def _length_bucket(text: str) -> int:
  n = len(text.split())
  return 0 if n <= 4 else 1 if n <= 7 else 2 if n <= 10 else 3


def _audio_labels(rng: np.random.Generator,
                  config: ml_collections.ConfigDict) -> dict[str, Any]:
  aug = config.augment
  rate = int(rng.integers(config.rate[0], config.rate[1] + 1))
  pitch = int(rng.integers(config.pitch[0], config.pitch[1] + 1))
  noisy = bool(rng.random() < aug.noise_prob)
  return dict(
      voice=_pick(rng, tuple(config.get("voices", DEFAULT_VOICES))),
      rate=rate,
      rate_bucket={"low": "slow", "medium": "medium", "high": "fast"}[
          _bucket(rate, *config.rate)],
      pitch=pitch,
      pitch_bucket=_bucket(pitch, *config.pitch),
      speed=round(float(rng.uniform(*aug.speed)), 3),
      noise_snr_db=(round(float(rng.uniform(*aug.noise_snr_db)), 1)
                    if noisy else None),
      noise_type=_pick(rng, ("white", "pink")) if noisy else "none")


def plan_corpus(config: ml_collections.ConfigDict) -> dict[str, list[Utterance]]:
  """Draws every utterance (text, labels, audio settings) without audio.

  Sentences are unique across the whole corpus: a draw that repeats an earlier
  sentence is redrawn from the same utterance RNG, so the result depends only
  on the seed and the split sizes.
  """
  kept = [i for i in all_intents() if i not in HELD_OUT_INTENTS]
  held_out = _intent_pairs(HELD_OUT_INTENTS)
  seen = set()
  plan = {}
  for split in SPLITS:
    utterances = []
    for index in range(_split_size(config, split)):
      rng = _rng(config.seed, split, index, 0)
      for _ in range(1000):
        text, labels = (_command(rng, held_out) if split == "zero_shot" else
                        sample_sentence(rng, kept))
        if text not in seen:
          break
      else:
        raise ValueError(f"The grammar ran out of new sentences at {split} "
                         f"{index}; ask for fewer utterances.")
      seen.add(text)
      labels["length_bucket"] = _length_bucket(text)
      labels.update(_audio_labels(_rng(config.seed, split, index, 1), config))
      utterances.append(Utterance(split, index, text, labels))
    plan[split] = utterances
  return plan


# --------------------------------------------------------------------------
# Audio rendering, in worker processes.


def _noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
  """Unit-power white or pink (1/f power) noise."""
  noise = rng.standard_normal(n)
  if colour == "pink":
    spectrum = np.fft.rfft(noise)
    spectrum[0] = 0.0
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    noise = np.fft.irfft(spectrum, n)
  return (noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


def _render(utt: Utterance, seed: int) -> np.ndarray:
  """The utterance's 16 kHz PCM16 samples."""
  labels = utt.labels
  wave = espeak.synthesize(utt.text, labels["voice"], labels["rate"],
                           labels["pitch"])
  # Resampling to 16 kHz / speed and playing at 16 kHz speeds up by `speed`.
  wave = soxr.resample(wave, espeak.SAMPLE_RATE, SAMPLE_RATE / labels["speed"])
  if labels["noise_snr_db"] is not None:
    noise = _noise(_rng(seed, utt.split, utt.index, 2), len(wave),
                   labels["noise_type"])
    gain = np.sqrt(np.mean(wave**2) / 10 ** (labels["noise_snr_db"] / 10))
    wave = wave + gain * noise
  peak = np.max(np.abs(wave))
  if peak > 0.99:
    wave = wave * (0.99 / peak)
  return np.round(wave * 32767).astype(np.int16)


def _write_wav(path: str, pcm: np.ndarray):
  """Atomic, so an interrupted build never leaves a truncated file behind."""
  tmp = f"{path}.{os.getpid()}.tmp"
  sf.write(tmp, pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")
  os.replace(tmp, path)


def _render_chunk(task: tuple[int, str, list[Utterance]]) -> tuple[int, float]:
  """Renders one chunk in a fresh process; returns (utterances, seconds)."""
  seed, out_dir, utterances = task
  seconds = 0.0
  for utt in utterances:
    pcm = _render(utt, seed)
    _write_wav(os.path.join(out_dir, utt.audio_filepath), pcm)
    seconds += len(pcm) / SAMPLE_RATE
  return len(utterances), seconds


def _chunks(plan: dict[str, list[Utterance]],
            size: int) -> Iterator[list[Utterance]]:
  for utterances in plan.values():
    for start in range(0, len(utterances), size):
      yield utterances[start:start + size]


def _render_all(chunks: list[list[Utterance]], seed: int, out_dir: str,
                workers: int) -> float:
  """Renders `chunks` on `workers` processes; returns seconds of audio."""
  # One fresh process per chunk (maxtasksperchild=1), so the audio depends on
  # the chunk alone. Fork, not spawn: children must not re-import the caller's
  # main module (and JAX) once per chunk.
  ctx = multiprocessing.get_context("fork")
  seconds = 0.0
  with ctx.Pool(min(workers, len(chunks)), maxtasksperchild=1) as pool, \
      tqdm.tqdm(total=sum(map(len, chunks)), unit="utt",
                desc="synthesising corpus") as bar:
    tasks = [(seed, out_dir, chunk) for chunk in chunks]
    for count, chunk_seconds in pool.imap_unordered(_render_chunk, tasks):
      seconds += chunk_seconds
      bar.update(count)
  return seconds


# --------------------------------------------------------------------------
# Statistics for summary.json.


def _wildcards(words: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
  for i in range(len(words)):
    yield words[:i] + ("*",) + words[i + 1:]


def _deletions(words: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
  for i in range(len(words)):
    yield words[:i] + words[i + 1:]


def _near_duplicates(texts: Sequence[str],
                     reference: Sequence[str]) -> dict[str, float]:
  """Fractions of `texts` equal to, or one word edit from, a reference text.

  Hash lookups of every one-word substitution and deletion replace an
  all-pairs edit distance, which would take minutes for the demo sizes.
  """
  ref = {tuple(t.split()) for t in reference}
  substituted = {k for words in ref for k in _wildcards(words)}
  shortened = {k for words in ref for k in _deletions(words)}
  exact = near = 0
  for text in texts:
    words = tuple(text.split())
    exact += words in ref
    near += (words in ref or words in shortened
             or any(k in substituted for k in _wildcards(words))
             or any(k in ref for k in _deletions(words)))
  n = max(len(texts), 1)
  return {"exact": exact / n, "within_one_word": near / n}


def _lexicon_stats(texts: dict[str, list[str]]) -> dict[str, Any]:
  train_counts: dict[str, int] = {}
  for text in texts["train"]:
    for word in text.split():
      train_counts[word] = train_counts.get(word, 0) + 1
  all_words = {w for split in texts.values() for t in split for w in t.split()}
  frequencies = sorted(train_counts.values()) or [0]
  return {
      "word_types": len(all_words),
      "train_word_types": len(train_counts),
      "train_tokens": sum(frequencies),
      "median_train_word_frequency": float(np.median(frequencies)),
      "min_train_word_frequency": frequencies[0],
      "words_unseen_in_train": {
          split: sorted({w for t in texts[split] for w in t.split()}
                        - train_counts.keys())
          for split in SPLITS if split != "train"},
  }


def _summary(manifests: dict[str, list[dict[str, Any]]],
             settings: dict[str, Any], wall: float, rendered_seconds: float,
             rendered: int) -> dict[str, Any]:
  texts = {s: [m["text"] for m in manifests[s]] for s in SPLITS}
  seconds = {s: sum(m["duration"] for m in manifests[s]) for s in SPLITS}
  total = sum(seconds.values())
  domains = {s: {} for s in SPLITS}
  for split in SPLITS:
    for m in manifests[split]:
      d = m["labels"]["domain"]
      domains[split][d] = domains[split].get(d, 0) + 1
  descriptions = intent_descriptions()
  return {
      "counts": {s: len(manifests[s]) for s in SPLITS},
      "hours": {**{s: seconds[s] / 3600 for s in SPLITS},
                "total": total / 3600},
      "mean_duration_seconds": total / max(sum(map(len, texts.values())), 1),
      "domains": domains,
      "wall_seconds": wall,
      "rendered_utterances": rendered,
      # Audio rendered by this call per second of its wall time.
      "real_time_factor": rendered_seconds / wall,
      "distinct_sentences": len({t for ts in texts.values() for t in ts}),
      "lexicon": _lexicon_stats(texts),
      "near_duplicates_of_train": {
          s: _near_duplicates(texts[s], texts["train"])
          for s in SPLITS if s != "train"},
      "held_out_intents": {i: descriptions[i] for i in HELD_OUT_INTENTS},
      "intent_descriptions": descriptions,
      "config": settings,
  }


# --------------------------------------------------------------------------
# Building and reading.


def _settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What the output depends on, defaults filled in, as JSON would read it."""
  settings = config.to_dict()
  settings.pop("workers", None)  # Output is identical for any worker count.
  settings.setdefault("voices", list(DEFAULT_VOICES))
  settings.setdefault("chunk_size", DEFAULT_CHUNK_SIZE)
  return json.loads(json.dumps(settings))


def _write_json(path: str, obj: Any, lines: bool = False):
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    if lines:
      f.writelines(json.dumps(o) + "\n" for o in obj)
    else:
      json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def _claim(out_dir: str, settings: dict[str, Any]):
  """Refuses to mix files of two different configs in one folder."""
  path = os.path.join(out_dir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) != settings:
        raise ValueError(
            f"{out_dir} holds a corpus built from another config (see "
            f"{path}); delete it or build into another folder.")
  else:
    _write_json(path, settings)


def build_corpus(config: ml_collections.ConfigDict,
                 out_dir: str) -> dict[str, Any]:
  """Builds (or finishes, or just returns) the corpus in `out_dir`.

  Args:
    config: the `corpus` part of the experiment config (configs/demo.py).
    out_dir: where the audio, manifests and summary go; see module docstring.

  Returns:
    The contents of `out_dir/summary.json`.
  """
  settings = _settings(config)
  os.makedirs(out_dir, exist_ok=True)
  _claim(out_dir, settings)
  summary_path = os.path.join(out_dir, "summary.json")
  if os.path.exists(summary_path):
    logging.info("Corpus in %s is complete.", out_dir)
    with open(summary_path) as f:
      return json.load(f)

  start = time.time()
  plan = plan_corpus(config)
  for split in SPLITS:
    os.makedirs(os.path.join(out_dir, "audio", split), exist_ok=True)
  chunks = [c for c in _chunks(plan, settings["chunk_size"])
            if not all(os.path.exists(os.path.join(out_dir, u.audio_filepath))
                       for u in c)]
  workers = config.workers or os.cpu_count()
  rendered = sum(map(len, chunks))
  logging.info("Synthesising %d of %d utterances into %s on %d processes.",
               rendered, sum(map(len, plan.values())), out_dir, workers)
  rendered_seconds = (_render_all(chunks, config.seed, out_dir, workers)
                      if chunks else 0.0)

  manifests = {}
  for split, utterances in plan.items():
    manifests[split] = [dict(
        id=u.id, audio_filepath=u.audio_filepath,
        duration=sf.info(os.path.join(out_dir, u.audio_filepath)).frames
        / SAMPLE_RATE,
        text=u.text, labels=u.labels) for u in utterances]
    _write_json(os.path.join(out_dir, f"{split}.jsonl"), manifests[split],
                lines=True)
  wall = time.time() - start
  summary = _summary(manifests, settings, wall, rendered_seconds, rendered)
  _write_json(summary_path, summary)
  logging.info("Corpus: %.2f h of audio; rendered %.0f s in %.1f s "
               "(real-time factor %.0f).", summary["hours"]["total"],
               rendered_seconds, wall, summary["real_time_factor"])
  return summary


def read_manifest(out_dir: str, split: str) -> list[dict[str, Any]]:
  """Manifest entries of `split`, with `audio_filepath` made absolute."""
  with open(os.path.join(out_dir, f"{split}.jsonl")) as f:
    entries = [json.loads(line) for line in f]
  root = os.path.abspath(out_dir)
  for entry in entries:
    entry["audio_filepath"] = os.path.join(root, entry["audio_filepath"])
  return entries
