"""The student's train step against the hardware limit, and where its time goes.

Model FLOPs utilisation (MFU) is the step's FLOPs (XLA's cost analysis of the
compiled step) over its median wall time; the ratio divides it by the FLOP/s
of a large jitted float32 matmul measured in the same process, alternating
with the step, so both see the same machine load. 1.0 would mean the step runs
as fast as the best matmul this CPU does.

The breakdown is by ablation, not from a profile: each part of the step is
jitted alone, forward and backward (with dropout, as in training), on the
shapes it sees inside the step, and timed in the same rounds as the whole step;
a part that repeats per block counts once per block. What the parts do not
cover (block norms, residual adds, the pooling and CTC heads, metrics, and
anything XLA fuses across the parts' borders) is `other`, the step minus the
parts; fusion across borders can make it negative.

Two configs: the demo's (`configs/demo.py`, at its middle bucket length) and a
larger one, `configs/tpu_multitask.py:runlocal` scaled up as far as a 2-core
CPU allows in seconds per step (`large_config`).
"""

from collections.abc import Callable
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bench import _common
from configs import demo
from configs import tpu_multitask
from stalign import losses
from stalign import train_optimizer

LARGE_FRAMES = 1200  # 12 s: LibriSpeech's mean utterance is 12.3 s.


def large_config() -> ml_collections.ConfigDict:
  """The TPU multitask config's local variant, widened and deepened to ~10M parameters.

  Float32 compute, blocks unrolled, no remat: CPUs have no fast bfloat16
  matmul, and scanning or rematerialising changes compile time and memory (see
  `compile_time` and `memory`), not the model's FLOPs; unrolled, XLA's cost
  analysis counts every block. Batch 8 of 12 s (a v5e chip's share of the TPU
  config's global batch) keeps a step to seconds here.
  """
  c = tpu_multitask.get_config("runlocal")
  c.model.dim, c.model.depth, c.model.heads, c.model.conv_kernel = 256, 6, 4, 31
  c.model.scan_blocks = c.model.remat = False
  c.train.compute_dtype = "float32"
  c.input.batch_size = 8
  return c


def default_configs() -> list[tuple[str, ml_collections.ConfigDict, int]]:
  """(name, config, frames per utterance) of each config measured by `make bench`."""
  config = demo.get_config()
  return [("demo", config, _common.median_bucket(config)), ("large", large_config(), LARGE_FRAMES)]


def _fwd_bwd(modules, call: Callable, x: jax.Array, key: jax.Array) -> Callable[[], Any]:
  """A blocking call of `call(modules, x, rngs)` forward and backward (grads of params and x)."""
  graphdef, state = nnx.split(modules)

  def loss(state, x, key):
    return jnp.sum(call(nnx.merge(graphdef, state), x, nnx.Rngs(dropout=key)))

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  return lambda: jax.block_until_ready(fn(state, x, key))


def _loss_part(
  config: ml_collections.ConfigDict, batch: dict, outputs: dict, **weights: float
) -> Callable[[], Any]:
  """`losses.compute_losses` with only the named loss weights on, forward and backward."""
  loss_config = config.loss.copy_and_resolve_references()
  loss_config.distill = "cosine" if weights.get("distill_weight") else "none"
  for key in ("distill_weight", "contrastive_weight", "ctc_weight"):
    loss_config[key] = weights.get(key, 0.0)
  mean = jnp.zeros(batch["teacher"].shape[1], jnp.float32)

  floats = {k: v for k, v in outputs.items() if jnp.issubdtype(v.dtype, jnp.floating)}
  masks = {k: v for k, v in outputs.items() if k not in floats}

  def loss(floats, log_temperature):
    return losses.compute_losses({**floats, **masks}, batch, mean, loss_config, log_temperature)[0]

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  log_t = jnp.log(jnp.float32(config.loss.temperature))
  return lambda: jax.block_until_ready(fn(floats, log_t))


def parts(
  config: ml_collections.ConfigDict, frames: int, graphdef: nnx.GraphDef, state: dict, batch: dict
) -> dict[str, tuple[Callable[[], Any], int]]:
  """{part: (blocking call, times it runs per step)} on the step's own shapes."""
  m = config.model
  rows = batch["features"].shape[0]
  length = frames // m.subsample
  model = nnx.merge(graphdef, state["params"])
  block = model.blocks[0]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((rows, length, m.dim), np.float32))
  stacked = jnp.asarray(
    rng.standard_normal((rows, length, m.subsample * config.features.num_mels), np.float32)
  )
  mask = jnp.ones((rows, length), bool)
  key = jax.random.key(1)
  vocab = model.vocab_size
  logits = jnp.asarray(rng.standard_normal((rows, length * m.ctc_upsample, vocab), np.float32))
  ctc_outputs = {"ctc_logits": logits, "ctc_mask": jnp.repeat(mask, m.ctc_upsample, axis=1)}
  embedding = {"embedding": jnp.asarray(rng.standard_normal(batch["teacher"].shape, np.float32))}
  tx = train_optimizer.make_optimizer(config, train_optimizer.make_schedule(config))

  @jax.jit
  def update(params, opt_state):  # The params stand in for their gradients.
    updates, opt_state = tx.update(params, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return {
    "front end": (
      _fwd_bwd(
        (model.input_norm, model.frontend, model.dropout),
        lambda mods, x, r: mods[2](mods[1](mods[0](x)), rngs=r),
        stacked,
        key,
      ),
      1,
    ),
    "attention": (_fwd_bwd(block.attn, lambda a, x, r: a(x, mask, r), x, key), m.depth),
    "conv module": (_fwd_bwd(block.conv, lambda c, x, r: c(x, mask, r), x, key), m.depth),
    "feed-forward": (_fwd_bwd(block.ff1, lambda f, x, r: f(x, r), x, key), 2 * m.depth),
    "CTC loss": (_loss_part(config, batch, ctc_outputs, ctc_weight=1.0), 1),
    "distill + contrastive": (
      _loss_part(config, batch, embedding, distill_weight=1.0, contrastive_weight=1.0),
      1,
    ),
    "optimizer": (
      lambda: jax.block_until_ready(update(state["params"], state["opt_state"])),
      1,
    ),
  }


def measure(
  config: ml_collections.ConfigDict, frames: int, repeats: int, breakdown: bool = True
) -> dict[str, Any]:
  """MFU of one config's step against the matmul peak, and (optionally) its breakdown."""
  step = _common.TrainStep(config)
  rows = config.input.batch_size
  compiled = step.compile(frames)
  flops = _common.compiled_flops(compiled)
  local = _common.synthetic_batch(config, frames, rows)
  batch = step.device_batch(local)
  holder = {"state": step.init()}
  # Its own copy: the step donates (and so deletes) the state it is given.
  part_state = jax.tree.map(jnp.copy, holder["state"])

  def run_step():
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready(metrics)

  run_step()
  peak = _common.MatmulPeak()
  fns = {"step": run_step, "matmul": peak}
  part_calls = parts(config, frames, step.graphdef, part_state, local) if breakdown else {}
  for name, (call, _) in part_calls.items():
    call()  # Compiles.
    fns[name] = call
  seconds = _common.alternate(fns, repeats)
  step_s = _common.median(seconds["step"])
  peak_flops = peak.flops_per_s(seconds["matmul"])
  out = {
    "batch": rows,
    "frames": frames,
    "audio_seconds_per_batch": rows * frames * config.features.hop_ms / 1000,
    "model": {k: config.model[k] for k in ("dim", "depth", "heads", "conv_kernel", "dropout")},
    "compute_dtype": config.train.compute_dtype,
    "num_params": int(step.num_params),
    "step_flops": flops,
    "step_seconds": seconds["step"],
    "step_median_s": step_s,
    "achieved_flops_per_s": flops / step_s,
    "matmul_n": peak.n,
    "matmul_seconds": seconds["matmul"],
    "matmul_peak_flops_per_s": peak_flops,
    "mfu_over_matmul_peak": flops / step_s / peak_flops,
  }
  if breakdown:
    table = {}
    for name, (_, count) in part_calls.items():
      part_s = _common.median(seconds[name]) * count
      table[name] = {"per_step_s": part_s, "count": count, "share": part_s / step_s}
    other = step_s - sum(p["per_step_s"] for p in table.values())
    table["other"] = {"per_step_s": other, "count": 1, "share": other / step_s}
    out["breakdown"] = table
    out["breakdown_method"] = (
      "ablation: each part jitted alone (forward + backward, dropout on) on the step's shapes, "
      "timed in the same rounds as the step; other = step - parts"
    )
  return out


def run(
  configs: list[tuple[str, ml_collections.ConfigDict, int]] | None = None,
  repeats: int = 5,
  breakdown: bool = True,
) -> dict[str, Any]:
  """Per config: MFU of the train step over the matmul peak, and the step's time by part."""
  out = {"configs": {}, "ratios": []}
  for name, config, frames in configs or default_configs():
    result = measure(config, frames, repeats, breakdown)
    out["configs"][name] = result
    top = ""
    if breakdown:
      biggest = max(result["breakdown"].items(), key=lambda kv: kv[1]["per_step_s"])
      top = f"; largest part: {biggest[0]} ({biggest[1]['share']:.0%} of the step)"
    out["ratios"].append(
      _common.ratio(
        f"MFU / matmul peak ({name})",
        result["mfu_over_matmul_peak"],
        ("step GFLOP/s", result["achieved_flops_per_s"] / 1e9),
        (f"f32 matmul {result['matmul_n']}^2 GFLOP/s", result["matmul_peak_flops_per_s"] / 1e9),
        "small matrices (width "
        f"{result['model']['dim']}) and memory-bound elementwise work (dropout RNG, norms, "
        f"CTC){top}",
      )
    )
  return out
