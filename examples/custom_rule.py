"""Train CorInfoMax on the embedded digits dataset with a user-written plasticity rule.

    python examples/custom_rule.py [--epochs 5] [--out runs/local/digits_momentum] [--momentum 0.5]

The rule (EP with momentum and weight decay) lives in examples/momentum_rule.py; see
docs/plasticity.md for the protocol it follows. This script

1. reads models/corinfomax_digits.toml,
2. expands its ``[model] template = "corinfomax"`` into explicit [[population]] /
   [[projection]] tables (the template itself always attaches ``ep_contrastive``),
3. replaces the ``ep_contrastive`` rule of every feedforward/feedback projection by
   ``momentum_rule:MomentumEP``, keeping each projection's learning rate (scaled by
   1 - momentum, so that the long-run step size stays that of the published model),
4. trains with ``Trainer.from_model_text(text).fit(run_dir, epochs=...)``, writing the run directory
   (model.toml with the expanded model, run.h5 with weights and the rules' velocities,
   metrics.csv).

Because the model file names the rule by import path, the run can be continued from the
command line: ``PYTHONPATH=examples neurosim resume runs/local/digits_momentum --epochs 10``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))          # so that "momentum_rule:MomentumEP" can be imported

from neurosim.graph import parse_model_text  # noqa: E402
from neurosim.models import TEMPLATES  # noqa: E402
from neurosim.training import Trainer  # noqa: E402

MODEL = HERE.parent / "models" / "corinfomax_digits.toml"


def toml_value(value) -> str:
    """A Python value as TOML (scalars, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)           # JSON string escapes are valid TOML
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def toml_document(data: dict) -> str:
    """Top-level tables as [name], lists of tables as [[name]]."""
    out = []
    for name, table in data.items():
        blocks = table if isinstance(table, list) else [table]
        for block in blocks:
            out.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            out += [f"{k} = {toml_value(v)}" for k, v in block.items()]
            out.append("")
    return "\n".join(out)


def model_text_with_rule(model_file, make_rule) -> str:
    """The model file's text with its template expanded and every ``ep_contrastive`` rule
    replaced by ``make_rule(old_rule_table)`` (a new rule table)."""
    data = parse_model_text(Path(model_file).read_text(encoding="utf-8"), str(model_file))
    params = dict(data.pop("model"))
    graph = TEMPLATES[params.pop("template")](**params)
    for projection in graph["projection"]:
        projection["rules"] = [make_rule(rule) if rule["type"] == "ep_contrastive" else rule
                               for rule in projection.get("rules", [])]
    return toml_document({**graph, **data})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="runs/local/digits_momentum")
    parser.add_argument("--momentum", type=float, default=0.5)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--force", action="store_true", help="start over if --out exists")
    args = parser.parse_args(argv)

    def momentum_rule(old: dict) -> dict:
        return {"type": "momentum_rule:MomentumEP", "lr": old["lr"] * (1 - args.momentum),
                "momentum": args.momentum, "weight_decay": args.weight_decay}

    text = model_text_with_rule(MODEL, momentum_rule)
    out = Path(args.out)
    if (out / "run.h5").exists():
        if not args.force:
            sys.exit(f"{out} already holds a run; pass --force to start over or continue it "
                     f"with `PYTHONPATH={HERE} neurosim resume {out} --epochs N`.")
        shutil.rmtree(out)
    trainer = Trainer.from_model_text(text, where=f"{MODEL} (ep_contrastive -> MomentumEP)",
                                      progress=False)
    for projection in trainer.network.projections:
        if projection.rules:
            print(f"{projection.name}: {', '.join(map(repr, projection.rules))}")
    trainer.fit(out, epochs=args.epochs)
    print(f"run saved in {out}; velocity of ff1 after training: "
          f"|v| = {float(trainer.network.projection('ff1').rules[0].velocity.norm()):.4g}")


if __name__ == "__main__":
    main()
