"""PyTorch eager baseline for benches/sebra.sh: the bias lab's CNN (the same module as
tests/reference/sebra_torch.py, which it imports) in float32 on the CPU, trained with
torch.optim.Adam and plain cross-entropy (ERM) on random images of the same shape, with the
same batch and number of threads. Prints the training images per second of STEPS steps after
WARMUP untimed ones, as JSON.

Usage: sebra_torch.py --width W --classes K --image S --batch B --steps STEPS
         [--warmup-steps 3] [--threads N] [--model cnn|mlp]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "reference"))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sebra_torch import Net  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    for name, default in [("--width", 16), ("--classes", 4), ("--image", 24), ("--batch", 64),
                          ("--steps", 60), ("--warmup-steps", 3), ("--threads", os.cpu_count())]:
        ap.add_argument(name, type=int, default=default)
    ap.add_argument("--model", default="cnn")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = Net(a.model, a.width, a.classes, a.image)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(a.steps + a.warmup_steps, a.batch, 3, a.image, a.image)
    y = torch.randint(0, a.classes, (a.steps + a.warmup_steps, a.batch))

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net.head(net.features(x[i])), y[i])
        loss.backward()
        opt.step()

    for i in range(a.warmup_steps):
        step(i)
    t0 = time.perf_counter()
    for i in range(a.warmup_steps, a.warmup_steps + a.steps):
        step(i)
    dt = time.perf_counter() - t0
    print(json.dumps({"images_per_s": a.steps * a.batch / dt, "seconds": dt,
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
