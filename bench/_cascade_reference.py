"""Transcribe-then-embed server, run by cascade.py in a torch interpreter.

faster-whisper (CTranslate2) transcribes each clip as users run it
(`transcribe(path, beam_size=1, language="en")`, segments joined, no VAD, every
clip padded to Whisper's 30 s window), then sentence-transformers embeds the
transcripts. It lives in its own process so torch never enters stalign's venv,
and stays up so the parent can interleave it with stalign's own model: both
then see the same machine load. It imports nothing from stalign.

Protocol: argv = whisper_dir st_model_dir threads compute_types (comma-separated).
After loading one WhisperModel per compute type and the sentence-transformers
model it prints one JSON line of versions. Then each stdin line is a JSON
request, answered by one JSON line:

  {"op": "embed", "texts": [...], "out": "x.npy"}   untimed (the gallery)
  {"op": "cascade", "compute_type": "int8", "paths": [...], "out": "x.npy"}
      -> {"transcripts": [...], "transcribe_s": ..., "embed_s": ...}
"""

import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import ctranslate2  # noqa: E402
import faster_whisper  # noqa: E402
import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402


def main():
  whisper_dir, st_dir, threads, compute_types = sys.argv[1:]
  torch.set_num_threads(int(threads))
  whisper = {
    ct: faster_whisper.WhisperModel(
      whisper_dir, device="cpu", compute_type=ct, cpu_threads=int(threads)
    )
    for ct in compute_types.split(",")
  }
  st = sentence_transformers.SentenceTransformer(st_dir, device="cpu")
  st.eval()

  def embed(texts):
    with torch.inference_mode():
      return st.encode(texts, convert_to_numpy=True)

  def transcribe(model, path):
    segments, _ = model.transcribe(path, beam_size=1, language="en")
    return " ".join(s.text.strip() for s in segments).strip()

  print(
    json.dumps(
      {
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "faster_whisper": faster_whisper.__version__,
        "ctranslate2": ctranslate2.__version__,
        "torch_threads": torch.get_num_threads(),
      }
    ),
    flush=True,
  )
  for line in sys.stdin:
    if not line.strip():
      break
    request = json.loads(line)
    if request["op"] == "embed":
      np.save(request["out"], embed(request["texts"]))
      print(json.dumps({}), flush=True)
      continue
    model = whisper[request["compute_type"]]
    start = time.perf_counter()
    transcripts = [transcribe(model, p) for p in request["paths"]]
    middle = time.perf_counter()
    embeddings = embed(transcripts)
    end = time.perf_counter()
    np.save(request["out"], embeddings)
    reply = {"transcripts": transcripts, "transcribe_s": middle - start, "embed_s": end - middle}
    print(json.dumps(reply), flush=True)


if __name__ == "__main__":
  main()
