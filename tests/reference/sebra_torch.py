"""Independent PyTorch reference for the bias lab's models and losses (tests/sebra_model.rs).

Written from ../shared/METHODS.md (Sebra) and the authors' loss code, not from the Rust code:
- the CNN: three Conv2d(3x3, padding 1) -> ReLU -> MaxPool2d(2) with W, 2W, 4W channels,
  global average pooling to the feature vector, Linear head; the MLP: Linear(3*S*S, 8W) ->
  ReLU -> Linear(8W, 8W) -> ReLU -> features, Linear head;
- ERM: F.cross_entropy (mean); Stage 1: (F.cross_entropy(reduction="none") *
  softmax(logits)[y].detach() ** beta_inv).mean(); a weighted CE with given per-sample
  weights (the oracle); Stage 2: the batch contrastive loss (nn.CosineSimilarity, exp(s/tau),
  -log(e_pos / (sum e_neg + sum e_pos)), mean) on the anchors' features against the
  positives' and negatives' features without gradient, + w * CE(head(positives' features)),
  anchors and positives passed through the backbone together.

Usage: sebra_torch.py --weights W.safetensors --batch B.safetensors --out G.safetensors
         --model cnn|mlp --width W --classes K --image S --beta-inv .. --tau .. --ce-weight ..
B holds `anchors`, `positives`, `negatives` (N,3,S,S), `labels` and `pos_labels` (N,) int64
and `weights` (N,). G holds, for each loss L in erm, up, weighted, contrastive, the gradient
of every parameter as `L.<name>`, and the losses in the metadata (JSON, key "losses").
"""

import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


class Net(nn.Module):
    def __init__(self, model, width, classes, image):
        super().__init__()
        self.model = model
        if model == "cnn":
            chans = [3, width, 2 * width, 4 * width]
            for i in range(3):
                setattr(self, f"conv{i + 1}", nn.Conv2d(chans[i], chans[i + 1], 3, padding=1))
            dim = 4 * width
        else:
            h = 8 * width
            self.fc1 = nn.Linear(3 * image * image, h)
            self.fc2 = nn.Linear(h, h)
            dim = h
        self.head = nn.Linear(dim, classes)

    def features(self, x):
        if self.model == "cnn":
            for i in range(3):
                x = F.max_pool2d(F.relu(getattr(self, f"conv{i + 1}")(x)), 2)
            return x.mean(dim=(2, 3))
        x = x.flatten(1)
        return F.relu(self.fc2(F.relu(self.fc1(x))))


def contrastive(anchor, pos, neg, tau):
    sim = nn.CosineSimilarity(dim=1)
    exp_neg = torch.exp(sim(anchor, neg) / tau)
    exp_pos = torch.exp(sim(anchor, pos) / tau)
    log_probs = torch.log(exp_pos) - torch.log(exp_neg.sum(0, keepdim=True) + exp_pos.sum(0, keepdim=True))
    return (-log_probs).mean()


def main():
    ap = argparse.ArgumentParser()
    for name in ["--weights", "--batch", "--out", "--model"]:
        ap.add_argument(name, required=True)
    for name in ["--width", "--classes", "--image"]:
        ap.add_argument(name, type=int, required=True)
    for name in ["--beta-inv", "--tau", "--ce-weight"]:
        ap.add_argument(name, type=float, required=True)
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    torch.set_num_threads(1)

    net = Net(a.model, a.width, a.classes, a.image).to(dtype)
    w = load_file(a.weights)
    net.load_state_dict({k: v.to(dtype) for k, v in w.items()})
    b = load_file(a.batch)
    x, y = b["anchors"].to(dtype), b["labels"]
    xp, xn, yp = b["positives"].to(dtype), b["negatives"].to(dtype), b["pos_labels"]
    sw = b["weights"].to(dtype)

    def up(logits):
        p = F.softmax(logits, dim=1).gather(1, y[:, None])[:, 0].detach()
        return (F.cross_entropy(logits, y, reduction="none") * p ** a.beta_inv).mean()

    def stage2():
        with torch.no_grad():
            fp = net.features(xp)
            fn = net.features(xn)
        n = x.shape[0]
        f = net.features(torch.cat((x, xp)))
        return contrastive(f[:n], fp, fn, a.tau) + a.ce_weight * F.cross_entropy(net.head(f[n:]), yp)

    losses = {
        "erm": lambda: F.cross_entropy(net.head(net.features(x)), y),
        "up": lambda: up(net.head(net.features(x))),
        "weighted": lambda: (F.cross_entropy(net.head(net.features(x)), y, reduction="none") * sw).mean(),
        "contrastive": stage2,
    }
    out, values = {}, {}
    for name, fn in losses.items():
        net.zero_grad()
        loss = fn()
        loss.backward()
        values[name] = loss.item()
        for pname, p in net.named_parameters():
            out[f"{name}.{pname}"] = p.grad.detach().to(torch.float32).contiguous()
    save_file(out, a.out, metadata={"losses": json.dumps(values)})


if __name__ == "__main__":
    main()
