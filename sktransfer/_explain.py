"""``sktransfer explain``: its parser and its command, registered by :mod:`sktransfer.cli`; the
work is done by :func:`sktransfer.inspection.save_explanations`."""

from __future__ import annotations

import functools


def add_parser(sub, formatter_class, add_common, load, image_files):
    """Add the ``explain`` subcommand to ``sub``, with the command line's shared options and
    its ways of loading a model (``load(args)``) and listing image files
    (``image_files(inputs, on_bad_image)``)."""
    explain = sub.add_parser(
        "explain",
        help="saliency maps of a saved model's predictions (overlay PNGs and a CSV)",
        description="Show where a saved model finds the evidence for its predictions: for "
        "each image, DIR/<name>.png shows the image with its saliency map overlaid and the "
        "prediction above; DIR/predictions.csv has the rows 'path,label,probability,overlay' "
        "('path,prediction,overlay' for a regressor). Needs pip install 'sktransfer[inspect]'.",
        formatter_class=formatter_class,
    )
    explain.add_argument("model", metavar="MODEL", help="a model saved by 'sktransfer fit'")
    explain.add_argument(
        "inputs", metavar="IMAGES", nargs="+",
        help="image files, or folders searched recursively for image files",
    )
    explain.add_argument(
        "--out", "-o", required=True, metavar="DIR",
        help="folder for the overlays and predictions.csv (created if needed)",
    )
    explain.add_argument(
        "--method", choices=["gradcam", "occlusion"], default="gradcam",
        help="Grad-CAM (one pass, coarse) or occlusion (no gradient, finer, slower)",
    )
    explain.add_argument(
        "--layer", metavar="STAGE",
        help="Grad-CAM: the stage whose feature map is weighed (default: the last "
        "convolutional stage; 'sktransfer backbones --stages NAME' lists them)",
    )
    add_common(explain)
    explain.set_defaults(handler=functools.partial(_explain, load=load, image_files=image_files))


def _explain(args, out, *, load, image_files):
    from .inspection import save_explanations

    model, files = load(args), image_files(args.inputs, args.on_bad_image)
    path = save_explanations(model, files, args.out, method=args.method, layer=args.layer)
    print(f"{len(files)} overlays and their predictions written to {path}", file=out)
    return 0
