"""Write a run's model card (README.md in the Hugging Face model-card form), to share the run folder on the Hub.

    python -m pipelines.card checkpoints/prior/RUN --evaluation checkpoints/evaluations/A --evaluation .../B \
        --out shared/ --name you/my-generator
    hf upload you/my-generator shared/ .

A prior run folder is a whole generator (it carries its tokenizer): uploaded with its card, anyone samples from it
with `python -m pipelines.sample --prior you/my-generator`. The card is written from the run's own files and the
report.json of each evaluation named (one column per evaluation: name one per sampling seed).
"""

import json
from pathlib import Path

from generation.card import model_card
from pipelines import cli
from store.hub import run_folder
from generation.pretrained import export_generator
from store.runs import check_output_folder, output_lock, read_json, refuse_existing, write_text


def build_parser():
    parser = cli.ArgumentParser(prog="python -m pipelines.card",
                                description="Write the model card (README.md, Hugging Face form) of a prior or "
                                            "tokenizer run; with --out, first copy a prior run into that new folder "
                                            "with only what loading, sampling and evaluating read (no training "
                                            "state, no maps; results.json records the weights' SHA-256), and write "
                                            "the card there.")
    p = parser.add_argument
    p("run", metavar="RUN", help="the run folder (a prior run, carrying its tokenizer, or a tokenizer run)")
    p("--evaluation", metavar="DIR", action="append", default=[],
      help="a report folder of `python -m pipelines.evaluate` on this run (its report.json); repeat it, once per "
           "sampling seed, for a column each (default: none, the card then lists the runs' own results)")
    p("--provenance", metavar="FILE", default=None,
      help="a JSON file of how the run was made: commands (a list), commit, machine, seconds ({step: s}), notes")
    p("--name", default=None,
      help="how users will load it, shown in the card's usage lines, e.g. the Hub id you/my-generator "
           "(default: RUN as given)")
    p("--license", default="mit", help="the license of the weights, a Hub license id (default: mit)")
    cli.add_output_flags(parser, required=False)
    p("--card-file", metavar="FILE", default=None,
      help="where to write the card (default: README.md in RUN, or in --out)")
    cli.add_renamed_flag(parser, "--export", "--out")
    return parser


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    run_dir = run_folder(args.run)
    if args.out:
        check_output_folder(args.out, args.overwrite, inputs=[run_dir, *args.evaluation])
    card_file = Path(args.card_file) if args.card_file else Path(args.out or run_dir) / "README.md"
    if not args.out:
        refuse_existing(card_file, args.overwrite)
    reports = []
    for folder in args.evaluation:
        if not (Path(folder) / "report.json").is_file():
            raise ValueError(f"--evaluation {folder} holds no report.json: name a folder pipelines.evaluate wrote")
        reports.append(read_json(Path(folder) / "report.json"))
    provenance = read_json(args.provenance) if args.provenance else None
    if provenance is not None and not isinstance(provenance, dict):
        raise ValueError(f"--provenance {args.provenance} must hold a JSON object, not {json.dumps(provenance)[:40]}")
    name = args.name or args.out or args.run
    text = model_card(run_dir, reports, provenance, args.license, name)  # a bad report refused before any export
    with output_lock(args.out or card_file):  # a second writer of the same folder or card is refused here
        if args.out:
            run_dir = export_generator(run_dir, args.out, args.overwrite)
            text = model_card(run_dir, reports, provenance, args.license, name)
        write_text(card_file, text)
    print(f"model card -> {card_file}")


if __name__ == "__main__":
    cli.run(main, build_parser)
