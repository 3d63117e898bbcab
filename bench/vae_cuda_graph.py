"""Does capturing the VAE's training step in a CUDA graph pay? The reference step eager against the same step
replayed from a CUDA graph, one hw epoch (100 steps of 100 images) each, same process, same data and draws.

The captured step is the reference step itself (the ELBO from the modules' forward, autograd, Adam with
``capturable=True``); per step only the batch and its eps are copied into the graph's input buffers (eps drawn
eagerly from the same generator, so both loops see the same numbers). Prints seconds per epoch (medians), the
ratio, and the largest weight difference after one epoch from the same start (float rounding only).

    python bench/vae_cuda_graph.py --data-dir ../shared/data/mnist --repeat 5
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from mnistgen.config import DataConfig
from mnistgen.data.protocols import load_protocol
from mnistgen.data.sources import load_raw
from mnistgen.losses import vae_elbo
from mnistgen.models.vae import VAE

BATCH = 100


def eager_epoch(model, optimizer, images, eps):
    sums = torch.zeros(len(images) // BATCH, device=images.device)
    for step in range(len(sums)):
        elbo = vae_elbo(model, images[step * BATCH:(step + 1) * BATCH], eps[step])
        optimizer.zero_grad(set_to_none=True)
        (-elbo.mean()).backward()
        optimizer.step()
        sums[step] = elbo.detach().sum()
    return sums


class GraphStep:
    """The reference step captured once; ``step(x, eps)`` copies the inputs in and replays it."""

    def __init__(self, model, optimizer, x, eps):
        self.model, self.optimizer = model, optimizer
        self.x, self.eps = x.clone(), eps.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (allocations, cuBLAS handles)
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.elbo_sum = self._step()

    def _step(self):
        elbo = vae_elbo(self.model, self.x, self.eps)
        self.optimizer.zero_grad(set_to_none=True)
        (-elbo.mean()).backward()
        self.optimizer.step()
        return elbo.detach().sum()

    def step(self, x, eps):
        self.x.copy_(x)
        self.eps.copy_(eps)
        self.graph.replay()
        return self.elbo_sum.clone()


def graph_epoch(stepper, images, eps):
    sums = torch.zeros(len(images) // BATCH, device=images.device)
    for step in range(len(sums)):
        sums[step] = stepper.step(images[step * BATCH:(step + 1) * BATCH], eps[step])
    return sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNISTGEN_DATA_DIR"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda")
    images = load_protocol("hw", load_raw(DataConfig(data_dir=args.data_dir, offline=True))).train_images.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    eps = torch.randn(len(images) // BATCH, BATCH, 2, device=device, generator=generator)
    torch.manual_seed(1)
    start = VAE().to(device)
    eager_model, graph_model = copy.deepcopy(start), copy.deepcopy(start)
    eager_opt = torch.optim.Adam(eager_model.parameters(), lr=1e-3, fused=True)
    # equality first: one epoch each from the same start (the graph's warm-up steps run on a copy)
    warm = copy.deepcopy(graph_model)
    warm_opt = torch.optim.Adam(warm.parameters(), lr=1e-3, fused=True, capturable=True)
    stepper = GraphStep(warm, warm_opt, images[:BATCH], eps[0])
    with torch.no_grad():
        for target, source in zip(warm.parameters(), graph_model.parameters(), strict=True):
            target.copy_(source)
        for state in warm_opt.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                state[key].zero_()
            state["step"].zero_()
    eager_sums = eager_epoch(eager_model, eager_opt, images, eps)
    graph_sums = graph_epoch(stepper, images, eps)
    difference = max((a - b).abs().max().item() for a, b in zip(eager_model.parameters(), warm.parameters(),
                                                                strict=True))
    print(f"after one epoch from the same start: largest weight difference {difference:.2e}, ELBO sums "
          f"{eager_sums.sum().item():.3f} (eager) vs {graph_sums.sum().item():.3f} (graph)")
    timings = {"eager": [], "graph": []}
    for _ in range(args.repeat):
        for name in ("eager", "graph"):
            torch.cuda.synchronize()
            began = time.perf_counter()
            if name == "eager":
                eager_epoch(eager_model, eager_opt, images, eps)
            else:
                graph_epoch(stepper, images, eps)
            torch.cuda.synchronize()
            timings[name].append(time.perf_counter() - began)
    eager, graph = statistics.median(timings["eager"]), statistics.median(timings["graph"])
    print(f"{torch.cuda.get_device_name()}: s per hw epoch (100 steps), median of {args.repeat}: eager {eager:.4f}, "
          f"CUDA graph {graph:.4f}: {eager / graph:.2f}x; 200 epochs of steps: {200 * eager:.1f} s vs "
          f"{200 * graph:.1f} s")


if __name__ == "__main__":
    main()
