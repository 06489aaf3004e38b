"""Checkpoint save time of params replicated over 8 devices in one process (``strategy=dp``):
llmzoo's run-directory checkpoints against Orbax's default handler in the same process.

llmzoo writes a replicated array whole from one replica; Orbax's default splits the write into a
slice per replica ("replica-parallel"), each slice shape a separately compiled program. The
first save of a tree pays those compiles; later saves of the same shapes do not. Each row saves
the params of a preset (AdamW's two moments included, as training saves them) with both, the
first save timed alone and then the median of ``--rounds`` further saves, the two interleaved.
llmzoo's first save runs first, so the one-time setup of Orbax and TensorStore lands on it.

Usage:
    python benchmarks/checkpoint_save.py [--presets gpt2-tiny,llama-tiny,...] [--rounds 3]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec  # noqa: E402

from llmzoo import run_dir as ckpt  # noqa: E402
from llmzoo.models import registry  # noqa: E402
from llmzoo.params import init_params  # noqa: E402
from llmzoo.presets import get_model_preset  # noqa: E402


def replicated_params(preset: str):
    """A preset's params and two moment-like copies, replicated over the 8 devices."""
    cfg = get_model_preset(preset)
    specs = registry.get(cfg.kind).param_specs(cfg)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    on_all = NamedSharding(mesh, PartitionSpec())
    params = init_params(jax.random.key(0), specs, jax.tree.map(lambda _: on_all, specs))
    return params, {"mu": params, "nu": jax.tree.map(lambda x: x * x, params)}


def llmzoo_saver(root: str):
    mngr = ckpt.checkpoint_manager(os.path.join(root, "llmzoo"), async_save=False)
    return lambda step, params, opt: ckpt.save(mngr, step, params, opt)


def orbax_saver(root: str):
    """The reference: Orbax's default handler, as llmzoo used it before."""
    mngr = ocp.CheckpointManager(
        os.path.join(root, "orbax"),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, max_to_keep=2),
        item_names=("params", "opt_state"),
    )

    def save(step, params, opt):
        items = {"params": ocp.args.StandardSave(params), "opt_state": ocp.args.StandardSave(opt)}
        mngr.save(step, args=ocp.args.Composite(**items), force=True)

    return save


def timed(save, step, params, opt) -> float:
    t0 = time.perf_counter()
    save(step, params, opt)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="gpt2-tiny,llama-tiny,bert-tiny,t5-tiny,bart-tiny")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"jax {jax.__version__}, orbax {ocp.__version__}, {jax.device_count()} devices")
    print(f"{'preset':14s} {'MB':>7s}  {'first save':>21s}  {'later saves':>21s}")
    print(f"{'':14s} {'':>7s}  {'llmzoo':>10s} {'orbax':>10s}  {'llmzoo':>10s} {'orbax':>10s}")
    for preset in args.presets.split(","):
        params, opt = replicated_params(preset)
        mb = 3 * sum(x.nbytes for x in jax.tree.leaves(params)) / 1e6
        with tempfile.TemporaryDirectory() as root:
            savers = {"llmzoo": llmzoo_saver(root), "orbax": orbax_saver(root)}
            first = {name: timed(save, 0, params, opt) for name, save in savers.items()}
            later = {name: [] for name in savers}
            for step in range(1, args.rounds + 1):
                for name, save in savers.items():
                    later[name].append(timed(save, step, params, opt))
        med = {name: statistics.median(t) for name, t in later.items()}
        print(
            f"{preset:14s} {mb:7.1f}  {first['llmzoo']:9.2f}s {first['orbax']:9.2f}s "
            f" {med['llmzoo']:9.2f}s {med['orbax']:9.2f}s  first: orbax / llmzoo "
            f"{first['orbax'] / first['llmzoo']:.1f}x, later {med['orbax'] / med['llmzoo']:.1f}x"
        )


if __name__ == "__main__":
    main()
