"""Sphinx extension: the table of stage names of the built-in backbones.

The table is computed when the build starts, from :func:`sktransfer.get_backbone` with random
initialisation (``weights=None``: nothing is downloaded), so it always shows the stage names
that ``freeze_depth`` counts in the installed version. It is written to
``generated/backbone_stages.rst.inc`` and included by the user guide.
"""

from pathlib import Path

BACKBONES = [
    "efficientnet_lite0",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "resnet18",
    "convnext_tiny",
    "vit_b_16",
]

OUTPUT = Path("generated") / "backbone_stages.rst.inc"


def backbone_rows(names=BACKBONES):
    """One row per backbone: name, stage names, feature size, number of parameters."""
    import torch

    from sktransfer import get_backbone

    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name in names:
            bb = get_backbone(name, weights=None)
            n_params = sum(p.numel() for s in bb.stages.values() for p in s.parameters())
            rows.append(
                {
                    "name": name,
                    "stages": bb.stage_names,
                    "num_features": bb.num_features,
                    "params": n_params,
                }
            )
    return rows


def render(rows):
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 22 54 12 12",
        "",
        "   * - ``backbone``",
        "     - stages, input first",
        "     - features",
        "     - parameters",
    ]
    for row in rows:
        stages = ", ".join(f"``{s}``" for s in row["stages"])
        lines += [
            f"   * - ``{row['name']}``",
            f"     - {stages} ({len(row['stages'])})",
            f"     - {row['num_features']}",
            f"     - {row['params'] / 1e6:.1f} M",
        ]
    return "\n".join(lines) + "\n"


def write_table(app):
    target = Path(app.srcdir) / OUTPUT
    text = render(backbone_rows())
    if target.is_file() and target.read_text() == text:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def setup(app):
    app.connect("builder-inited", write_table)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
