"""sentence-transformers timing server, run by teacher_throughput.py in a torch interpreter.

It lives in its own process so torch never enters stalign's venv, and it stays
up between repetitions so the parent can interleave it with the Flax teacher:
both then see the same machine load. It imports nothing from stalign.

Protocol: argv = model_dir sentences.json threads max_tokens batch_size
embeddings.npy. After loading and one untimed warm-up pass (whose embeddings
go to embeddings.npy) it prints its versions; then every "run" line on stdin gets
one line back, the seconds one `encode` of all sentences took.
"""

import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402


def main():
  model_dir, sentences_path, threads, max_tokens, batch_size, out_path = sys.argv[1:]
  torch.set_num_threads(int(threads))
  with open(sentences_path) as f:
    sentences = json.load(f)
  model = sentence_transformers.SentenceTransformer(model_dir, device="cpu")
  model.max_seq_length = int(max_tokens)
  model.eval()

  def encode():
    with torch.inference_mode():
      return model.encode(sentences, batch_size=int(batch_size), convert_to_numpy=True)

  np.save(out_path, encode())
  print(
    f"torch={torch.__version__} st={sentence_transformers.__version__} "
    f"threads={torch.get_num_threads()}",
    flush=True,
  )
  for line in sys.stdin:
    if line.strip() != "run":
      break
    start = time.perf_counter()
    encode()
    print(time.perf_counter() - start, flush=True)


if __name__ == "__main__":
  main()
