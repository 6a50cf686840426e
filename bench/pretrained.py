"""Regenerate the shipped generator (checkpoints/fashion-mnist/) from scratch, with its model card and figures.

    python -m bench.pretrained [--work checkpoints/pretrained-build] [--shipped checkpoints/fashion-mnist]

The steps, each in a process of its own, a finished one reused (delete its folder to redo it):
1. the README's `python -m pipelines.fit_tokenizer` (the defaults) into WORK/tokenizer/fashion-mnist, or the
   finished tokenizer run --tokenizer names (made by that same command);
2. the README's `python -m pipelines.fit_prior` (the defaults) on it, into WORK/prior/fashion-mnist;
3. the prior run exported to --shipped: configs, the weights it samples with, results with their SHA-256,
   metrics, the maps' meta.json (generation.pretrained.export_generator);
4. `python -m pipelines.evaluate` on the exported folder for each --seeds, into WORK/evaluations/seed<s>;
5. its model card (`python -m pipelines.card`), with the commands, commit, machine and seconds, and the first
   seed's samples picture beside it.
Nothing else should run meanwhile: the seconds go into the card.

With --reevaluate, steps 1-3 are skipped: the shipped folder is evaluated as it is (its weights untouched) and its
card rewritten, the training seconds read from the results the folder carries (for a new sampling default).
"""

import argparse
import json
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from bench.fingerprint import commit_of
from bench.steps import cpu_flags, run_step
from generation.pretrained import SHIPPED_GENERATOR, export_generator
from store.runs import TOKENIZER_COPY, read_json, write_json

RUN_NAME = "fashion-mnist"


def commit():
    """The repository's commit (bench.fingerprint.commit_of), marked when the work tree differs from it."""
    repo = Path(__file__).parent
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                             capture_output=True, text=True).stdout.strip()
    return (commit_of(repo) or "unknown") + (" (with uncommitted changes)" if changed else "")


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return (f"{cpu}, {torch.get_num_threads()} threads, bf16 flags: {cpu_flags()}, torch {torch.__version__}, "
            f"no GPU used" if not torch.cuda.is_available() else f"{torch.cuda.get_device_name()}")


def train_and_export(args, work, tokenizer_command, prior_command):
    """Steps 1-3: the tokenizer (or the one reused), the prior, the export to --shipped; (tokenizer, prior) runs."""
    root = ["--output-root", str(work)]
    tokenizer = args.tokenizer or work / "tokenizer" / RUN_NAME
    if args.tokenizer is None:
        run_step("tokenizer", [*tokenizer_command, *root, "--run-name", RUN_NAME], tokenizer / "results.json", {})
    elif not (tokenizer / "results.json").is_file():
        raise SystemExit(f"--tokenizer {tokenizer} is not a finished tokenizer run (no results.json)")
    prior = work / "prior" / RUN_NAME
    run_step("prior", [*prior_command, "--tokenizer", str(tokenizer), *root, "--run-name", RUN_NAME],
             prior / "results.json", {})
    export_generator(prior, args.shipped, overwrite=True)
    print(f"[export] {prior} -> {args.shipped}", flush=True)
    return tokenizer, prior


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.pretrained", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("checkpoints/pretrained-build"),
                        help="where the runs and evaluations are made (default: checkpoints/pretrained-build)")
    parser.add_argument("--shipped", type=Path, default=SHIPPED_GENERATOR,
                        help="the folder to (re)write (default: the repository's checkpoints/fashion-mnist)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="a finished run of `python -m pipelines.fit_tokenizer` (the defaults) to reuse instead "
                             "of step 1 (default: train one)")
    parser.add_argument("--tokenizer-flags", default="", help="extra flags for fit_tokenizer (tests: tiny runs)")
    parser.add_argument("--prior-flags", default="", help="extra flags for fit_prior (tests: tiny runs)")
    parser.add_argument("--evaluate-flags", default="", help="extra flags for evaluate (tests: few samples)")
    parser.add_argument("--seeds", default="0,1", help="sampling seeds, an evaluation each (default: 0,1)")
    parser.add_argument("--reevaluate", action="store_true",
                        help="evaluate the shipped folder as it is and rewrite its card: no training, no export")
    parser.add_argument("--notes", default="", help="more of how it was made, for the card (e.g. where the steps "
                                                    "reused were run)")
    args = parser.parse_args(argv)
    made_at = commit()  # before the export below replaces the shipped folder, a change of the work tree
    work, seconds = args.work, {}
    work.mkdir(parents=True, exist_ok=True)
    root = ["--output-root", str(work)]

    tokenizer_command = ["pipelines.fit_tokenizer", *args.tokenizer_flags.split()]
    prior_command = ["pipelines.fit_prior", *args.prior_flags.split()]
    if args.reevaluate:
        tokenizer, prior = args.shipped / TOKENIZER_COPY, args.shipped
    else:
        tokenizer, prior = train_and_export(args, work, tokenizer_command, prior_command)
    seconds["fit_tokenizer (training)"] = read_json(tokenizer / "results.json")["train_seconds_this_session"]
    seconds["fit_prior (training)"] = read_json(prior / "results.json")["train_seconds_this_session"]

    evaluations = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        out = work / "evaluations" / f"seed{seed}"
        run_step(f"evaluate seed {seed}", ["pipelines.evaluate", "--prior", str(args.shipped), "--seed", str(seed),
                                           *root, "--out", str(out), "--overwrite", *args.evaluate_flags.split()],
                 out / "report.json", {})
        evaluations.append(out)
        seconds[f"evaluate seed {seed}"] = read_json(out / "report.json")["seconds"]["total"]
    if (evaluations[0] / "samples.png").is_file():
        shutil.copyfile(evaluations[0] / "samples.png", args.shipped / "samples.png")

    commands = ["python -m " + " ".join(tokenizer_command), "python -m " + " ".join(prior_command),
                *(f"python -m pipelines.evaluate --prior checkpoints/{RUN_NAME} --seed {s} "
                  f"{args.evaluate_flags}".rstrip() for s in args.seeds.split(","))]
    provenance = {"commands": commands, "commit": made_at, "machine": machine(), "seconds": seconds,
                  "notes": "Regenerate this folder with `python -m bench.pretrained` (the steps above, the export, "
                           "the evaluations and this card)."
                           + (f" The tokenizer run was reused from {args.tokenizer}, made by the first command."
                              if args.tokenizer and not args.reevaluate else "")
                           + (f" {args.notes}" if args.notes else "")}
    write_json(work / "provenance.json", provenance)
    run_step("card", ["pipelines.card", str(args.shipped), *(a for e in evaluations for a in ("--evaluation", str(e))),
                      "--provenance", str(work / "provenance.json"), "--name", f"checkpoints/{RUN_NAME}",
                      "--overwrite"], None, {})
    sizes = {p.relative_to(args.shipped).as_posix(): p.stat().st_size for p in sorted(args.shipped.rglob("*"))
             if p.is_file()}
    print(json.dumps({"shipped": str(args.shipped), "bytes": sum(sizes.values()), "files": sizes,
                      "figures": [read_json(e / "report.json")["figures"] for e in evaluations]}, indent=1))


if __name__ == "__main__":
    main()
