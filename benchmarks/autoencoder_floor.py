"""What an autoencoder's decoder lets a latent model reach: the FID of its reconstructions.

    python benchmarks/autoencoder_floor.py runs/vae-spatial [--n 1000]

Encodes n random training digits (the same seeded draw as the FID floor of ``genladder evaluate``), decodes
their codes (the posterior mean for a VAE), and scores the digits and their reconstructions against the test
set under the shipped primary judge: FID, precision and recall. A latent rung on this autoencoder samples
through the same decoder, so the reconstructions' figures say how much of its FID the first stage explains.
"""

from __future__ import annotations

import argparse

import torch

from genladder.data import to_unit
from genladder.evaluate.features import embed, load_feature_network
from genladder.evaluate.metrics import classifier_fid, precision_recall
from genladder.rungs import decode_image, encode_mean
from genladder.runs import load_data_split, load_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="an ae, vae or cvae run folder")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run = load_run(args.run_dir)
    train, test = load_data_split(run.config.data, "train"), load_data_split(run.config.data, "test")
    chosen = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(args.seed))[: args.n]
    digits, labels = to_unit(train.images[chosen]), train.labels[chosen]
    with torch.no_grad():
        codes = torch.cat([encode_mean(run.kind, run.model, digits[i : i + 500], labels[i : i + 500])
                           for i in range(0, len(digits), 500)])
        reconstructions = torch.cat([decode_image(run.kind, run.model, codes[i : i + 500], labels[i : i + 500])
                                     for i in range(0, len(codes), 500)])
    judge = load_feature_network()
    reference = embed(judge, to_unit(test.images)).features
    print(f"| {args.run_dir}, n = {args.n} | FID | precision | recall |\n|---|---|---|---|")
    for name, images in (("training digits (the floor)", digits), ("their reconstructions", reconstructions)):
        features = embed(judge, images).features
        precision, recall = precision_recall(features, reference)
        print(f"| {name} | {classifier_fid(features, reference):.1f} | {precision:.3f} | {recall:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
