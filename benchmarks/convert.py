"""Hugging Face checkpoint conversion: wall time and peak host memory against the checkpoint size.

Writes a random float32 Llama checkpoint (about 1.1 GB by default; numpy + llmzoo's safetensors
writer, no torch), then, each in a fresh subprocess:

* ``reference``: ``safetensors.numpy.load_file`` (one plain copy of every tensor, no conversion);
* ``load``: ``llmzoo.hf.load`` (config + layout conversion + placement on the JAX device);
* ``save``: ``llmzoo.hf.save`` of the loaded params back to a Hugging Face directory
  (measured after the load, so its peak is the growth over the loaded params).

Peak memory is the growth of the process's resident set over its size just before the step
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``; a 2 ms sampler where that is not
permitted), printed as a ratio to the checkpoint's size. The goal is under 1.5x for load.

    python benchmarks/convert.py [--layers 18] [--dir /tmp/llmzoo_convert_bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_checkpoint(path: str, n_layers: int) -> int:
    """Writes a random Llama checkpoint (D=1024, F=2816, V=32000, GQA 16/8); returns its bytes."""
    from llmzoo.hf.safetensors_io import write_file

    d, f, v, n, k, h = 1024, 2816, 32000, 16, 8, 64
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": v,
        "hidden_size": d,
        "intermediate_size": f,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n,
        "num_key_value_heads": k,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": False,
    }
    shapes = {
        "model.embed_tokens.weight": (v, d),
        "model.norm.weight": (d,),
        "lm_head.weight": (v, d),
    }
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (n * h, d),
            p + "self_attn.k_proj.weight": (k * h, d),
            p + "self_attn.v_proj.weight": (k * h, d),
            p + "self_attn.o_proj.weight": (d, n * h),
            p + "post_attention_layernorm.weight": (d,),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        }
    rng = np.random.default_rng(0)

    def random(shape):
        return lambda: rng.standard_normal(shape, np.float32) * 0.02

    os.makedirs(path, exist_ok=True)
    write_file(
        os.path.join(path, "model.safetensors"),
        [(name, shape, np.dtype(np.float32), random(shape)) for name, shape in shapes.items()],
    )
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(config, fh)
    return os.path.getsize(os.path.join(path, "model.safetensors"))


# ---------------------------------------------------------------------------------------------
# Measurement inside the child process


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


class PeakMeter:
    """Peak RSS growth over a block: kernel high-water mark if resettable, else sampling."""

    def __enter__(self):
        self.start = _rss()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.kernel = _hwm() <= self.start + 4096 * 256
        except OSError:
            self.kernel = False
        self.sampled = self.start
        self._stop = threading.Event()
        if not self.kernel:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.sampled = max(self.sampled, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        if self.kernel:
            self.peak = _hwm()
        else:
            self._thread.join()
            self.peak = max(self.sampled, _rss())
        self.growth = self.peak - self.start


def child(step: str, path: str, out_dir: str) -> None:
    import jax

    import llmzoo.hf

    jax.numpy.zeros(1).block_until_ready()  # initialise the backend before measuring
    if step == "reference":
        from safetensors.numpy import load_file

        with PeakMeter() as m:
            tensors = load_file(os.path.join(path, "model.safetensors"))
        del tensors
    elif step == "load":
        with PeakMeter() as m:
            _, params = llmzoo.hf.load(path)
            jax.block_until_ready(params)
    else:
        cfg, params = llmzoo.hf.load(path)
        jax.block_until_ready(params)
        with PeakMeter() as m:
            llmzoo.hf.save(out_dir, cfg, params)
    print(json.dumps({"seconds": m.seconds, "growth": m.growth, "kernel_hwm": m.kernel}))


def run_child(step: str, path: str, out_dir: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", step, "--dir", path, "--out", out_dir],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{step} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=18, help="18 layers: about 1.11 GB float32")
    ap.add_argument("--dir", default=None, help="where to write the checkpoint (default: tmp)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.dir, args.out)
        return

    base = args.dir or tempfile.mkdtemp(prefix="llmzoo_convert_bench_")
    src, out = os.path.join(base, "hf"), os.path.join(base, "hf_saved")
    t0 = time.perf_counter()
    size = make_checkpoint(src, args.layers)
    print(f"checkpoint: {size / 1e9:.3f} GB float32 llama ({args.layers} layers), "
          f"written in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    try:
        rows = [(step, run_child(step, src, out)) for step in ("reference", "load", "save")]
        saved = sum(
            os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith("tensors")
        )
        print(f"{'step':<34}{'wall s':>8}{'GB/s':>7}{'peak host growth':>18}{'x ckpt':>8}")
        names = {
            "reference": "safetensors.numpy.load_file (ref)",
            "load": "llmzoo.hf.load",
            "save": "llmzoo.hf.save",
        }
        for step, r in rows:
            print(
                f"{names[step]:<34}{r['seconds']:>8.2f}{size / 1e9 / r['seconds']:>7.2f}"
                f"{r['growth'] / 1e9:>15.3f} GB{r['growth'] / size:>8.2f}"
            )
        method = "VmHWM" if all(r["kernel_hwm"] for _, r in rows) else "2 ms RSS sampling"
        print(f"peak measured with {method}; saved files: {saved / 1e9:.3f} GB")
        load_ratio = rows[1][1]["growth"] / size
        print(f"load peak / checkpoint size = {load_ratio:.2f}x (goal < 1.5x)")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
