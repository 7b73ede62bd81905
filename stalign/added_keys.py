"""Config keys added after runs and data folders were first saved, with what those were built with.

One table for both kinds of old artefact: a run's saved `config.json` from before a key existed
still loads (`config.upgrade` fills the key in), and a data folder whose split summary predates
a setting it records (`layout.check_built_with`) reads as built with the same value. Add a row
whenever a key is added to the configs; `tests/test_config.py` holds every row to the configs.
"""

ADDED_KEYS = {
  "model.scan_blocks": False,
  "model.remat": False,
  "model.ff_mult": 4,
  "features.remove_dc": False,
  "loss.bank_weight": 0.0,
  "train.channel_augment": {
    "warp": 0.0,
    "eq_db": 0.0,
    "lowpass_prob": 0.0,
    "lowpass_hz": (3400.0, 4600.0),
  },
  "eval.zero_shot_templates": ("{}", "the speaker says {}", "a recording of someone saying {}"),
  "data.manifests.train": "",
  "data.manifests.valid": "",
  "data.manifests.test": "",
  "data.tfds_splits.train": "",
  "data.tfds_splits.valid": "",
  "data.tfds_splits.test": "",
  "data.fsdd_speakers.valid": (),
  "data.fsdd_speakers.test": (),
  "data.train_extra_speeds": (),
  "data.narrowband_copies": (),
  "features.frontend": "logmel",
  "features.whisper_weights": "base",
  "features.whisper_layers": 6,
  "features.whisper_min_seconds": 0.0,
  "model.whisper_tuned_layers": 0,
  "model.teacher_layers": 0,
  "model.transcript_weight": 0.0,
  "model.ctc_lm": "",
  "model.ctc_lm_weight": 0.2,
  "model.ctc_word_bonus": 1.0,
  "model.ctc_beam_width": 32,
  "train.pretrained_lr_factor": 0.1,
  # Real speech by unseen speakers: off for runs saved before it (no real_* split was built).
  "data.librispeech_dir": "../shared/data/librispeech_mini",
  "data.an4_manifest": "../shared/data/an4/manifest.jsonl",
  "data.real_sources": (),
  "data.real_held_out.valid": (),
  "data.real_held_out.test": (),
  "corpus.wordnet_sentences": 0,
  "corpus.wordnet_dir": ".venv/share/wordnet-3.0",
}
