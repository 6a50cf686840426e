"""Did a change alter what the default pipeline makes? A short default pipeline on the real data (one epoch of each
stage, 16 samples, an evaluation of 1,000), then the SHA-256 of every file it wrote that holds weights, tokens or
pictures, and the evaluation's figures; two fingerprints compared file by file.

    python -m bench.fingerprint --out /tmp/before --repo /path/to/a/checkout/of/the/old/commit
    python -m bench.fingerprint --out /tmp/after
    python -m bench.fingerprint --compare /tmp/before /tmp/after

The commands run from --repo (default: this checkout) with this Python, at OMP_NUM_THREADS=2: compare fingerprints
made on one machine only (see docs/reproducibility.md). training_state.safetensors is compared by its
tensors, since its metadata also records things that are not results (the thread count).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PIPELINE = [
    ("pipelines.fit_tokenizer", "--epochs", "1", "--output-root", "{out}/runs", "--run-name", "t"),
    ("pipelines.fit_prior", "--epochs", "1", "--tokenizer", "{out}/runs/tokenizer/t", "--output-root", "{out}/runs",
     "--run-name", "p"),
    ("pipelines.sample", "--prior", "{out}/runs/prior/p", "--n", "16", "--out", "{out}/samples"),
    ("pipelines.evaluate", "--prior", "{out}/runs/prior/p", "--n-samples", "1000", "--out", "{out}/eval",
     "--output-root", "{out}/runs"),
]
FILES = ["runs/tokenizer/t/model.safetensors", "runs/tokenizer/t/maps/*.npy", "runs/tokenizer/t/reconstructions.png",
         "runs/prior/p/model*.safetensors", "samples/grid.png", "samples/tokens/*.npy", "samples/images/*.png"]


def fingerprint(out, repo):
    out = Path(out).resolve()
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    with open(out / "log.txt", "w") as log:
        for module, *args in PIPELINE:
            command = [sys.executable, "-m", module, *(a.format(out=out) for a in args)]
            subprocess.run(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    hashes = {str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
              for pattern in FILES for path in sorted(out.glob(pattern))}
    hashes["runs/prior/p/training_state.safetensors (tensors)"] = tensors_sha256(
        out / "runs" / "prior" / "p" / "training_state.safetensors")
    figures = json.loads((out / "eval" / "report.json").read_text())["figures"]
    result = {"repo": str(repo), "commit": commit_of(repo), "files": hashes, "figures": figures}
    (out / "fingerprint.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def tensors_sha256(path):
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(path).items()):
        digest.update(name.encode() + tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def commit_of(repo):
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    return result.stdout.strip() or None


def compare(a, b):
    """The differences of two fingerprints, one line each; none means the same outputs."""
    first, second = (json.loads((Path(p) / "fingerprint.json").read_text()) for p in (a, b))
    lines = [f"{name}: {first['files'].get(name)} != {second['files'].get(name)}"
             for name in sorted(first["files"].keys() | second["files"].keys())
             if first["files"].get(name) != second["files"].get(name)]
    lines += [f"figure {name}: {first['figures'].get(name)} != {second['figures'].get(name)}"
              for name in sorted(first["figures"].keys() | second["figures"].keys())
              if first["figures"].get(name) != second["figures"].get(name)]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="a new folder for the pipeline's runs and fingerprint.json")
    parser.add_argument("--repo", default=str(REPO), help="the checkout whose commands run (default: this one)")
    parser.add_argument("--compare", nargs=2, metavar="DIR", help="two --out folders to compare")
    args = parser.parse_args()
    if args.compare:
        differences = compare(*args.compare)
        print("\n".join(differences) if differences else
              f"identical: {len(json.loads((Path(args.compare[0]) / 'fingerprint.json').read_text())['files'])} "
              "files and every figure")
        return 1 if differences else 0
    Path(args.out).mkdir(parents=True)
    result = fingerprint(args.out, Path(args.repo).resolve())
    print(f"{len(result['files'])} files hashed, commit {result['commit']} -> {Path(args.out) / 'fingerprint.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
