"""``mnistgen explore RUN --out explorer.html``: the VAE's latent plane and live decoder in one page."""

from __future__ import annotations

import argparse

from ..config import DEVICES
from ..errors import UsageError
from ..runs import RunDir


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "explore", help="write an interactive page of the VAE's latent plane (decoder runs in the page)",
        description="Write one self-contained HTML page: the encoder means of the run's training images as a "
                    "scatter colored by class; moving the pointer over it shows the decoder's image for that "
                    "z, computed in the page from the embedded weights (no server, no network).")
    parser.add_argument("run", metavar="RUN", nargs="?", help="a VAE run folder, or a reproduction folder holding vae/")
    parser.add_argument("--pretrained", action="store_true",
                        help="instead of RUN, the VAE and GAN shipped with mnistgen (mnistgen pretrained list): "
                             "no data, no network, seconds")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="where to write the page (default: RUN/explorer.html; with --pretrained, "
                             "explorer.html here)")
    parser.add_argument("--gan", metavar="GAN_RUN", default=None,
                        help="a GAN run folder for the second panel (default: RUN/gan when RUN is a reproduction)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to encode the images (default: auto)")
    parser.set_defaults(func=run_explore)


def run_explore(args: argparse.Namespace) -> int:
    from ..explore import explorer_from_pretrained, explorer_from_run, write_explorer

    if args.pretrained == (args.run is not None):
        raise UsageError("give a run folder RUN or --pretrained (one of them)")
    if args.pretrained:
        data, out = explorer_from_pretrained(args.device, args.gan), "explorer.html"
    else:
        data, out = explorer_from_run(args.run, args.device, args.gan), RunDir(args.run).path / "explorer.html"
    print(write_explorer(data, args.out or out))
    return 0
