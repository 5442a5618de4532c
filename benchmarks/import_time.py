"""Import time of ``torchsystem_trainer`` over ``torch``, and which heavy modules that import loads.

Every measurement is a fresh ``python -c`` process (nothing cached in ``sys.modules``; the ``.pyc`` files are
warm, after one discarded run of each kind). Three kinds of process, interleaved ``runs`` times:

* ``torch``: the time of ``import torch``;
* ``package``: the time of ``import torchsystem_trainer`` alone (which imports torch);
* ``increment``: ``import torch``, then the time of ``import torchsystem_trainer`` after it.

The overhead is ``median(package) - median(torch)`` (the issue's definition; budget 0.15 s), and the median
``increment`` measures the same thing within one process, with less noise. With Lightning installed, the same
is reported for ``import lightning.pytorch``.

The ``increment`` processes also list the top-level packages that ``import torchsystem_trainer`` adds to
``sys.modules`` beyond torch's, flagging the known heavy ones (TensorBoard, tqdm, rich, torchmetrics,
lightning-utilities, scipy...), and one ``python -X importtime`` run names the slowest imports below it.

Run::

    python -m benchmarks.import_time [--runs 10] [--trainer-path DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["BUDGET_S", "HEAVY", "format_report", "measure"]

BUDGET_S = 0.15
REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "tensorboard",
    "torch.utils.tensorboard",
    "tqdm",
    "rich",
    "torchmetrics",
    "lightning_utilities",
    "lightning",
    "pytorch_lightning",
    "scipy",
    "PIL",
    "matplotlib",
    "pandas",
    "sklearn",
    "yaml",
    "numpy",
)

_SNIPPETS = {
    "torch": "t0 = time.perf_counter(); import torch; dt = time.perf_counter() - t0",
    "package": "t0 = time.perf_counter(); import {module}; dt = time.perf_counter() - t0",
    "increment": (
        "import torch; before = set(sys.modules); t0 = time.perf_counter(); import {module}; "
        "dt = time.perf_counter() - t0; added = sorted(set(sys.modules) - before)"
    ),
}


def _program(kind: str, module: str, trainer_path: Path | None) -> str:
    lines = ["import json, sys, time"]
    if trainer_path is not None:
        lines.append(f"sys.path.insert(0, {str(trainer_path.resolve())!r})")
    lines.append("added = []")
    lines.append(_SNIPPETS[kind].format(module=module))
    lines.append("print(json.dumps({'dt': dt, 'added': added}))")
    return "\n".join(lines)


def _run(kind: str, module: str, trainer_path: Path | None) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-c", _program(kind, module, trainer_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"importing {module} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _slowest_imports(module: str, trainer_path: Path | None, count: int = 8) -> list[tuple[str, float]]:
    """The slowest imports (cumulative seconds) that ``import module`` triggers after ``import torch``."""
    prelude = "" if trainer_path is None else f"import sys; sys.path.insert(0, {str(trainer_path.resolve())!r}); "
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"{prelude}import torch; import {module}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    rows: list[tuple[int, int, str]] = []
    for line in completed.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append((int(match.group(1)), len(match.group(2)), match.group(3)))
    torch_done = max((i for i, row in enumerate(rows) if row[2] == "torch" and row[1] == 1), default=-1)
    below = [row for row in rows[torch_done + 1 :] if not row[2].startswith(module.split(".")[0])]
    below.sort(key=lambda row: (-row[0], row[1]))  # slowest first; a parent before its equally slow child
    kept: list[tuple[str, float]] = []
    for micros, _, name in below:  # skip the submodules of an import already listed
        if not any(name.startswith(parent + ".") for parent, _ in kept):
            kept.append((name, micros / 1e6))
    return kept[:count]


def measure(runs: int = 10, trainer_path: Path | None = None, lightning: bool = True) -> dict[str, Any]:
    """Measure the import overheads (see the module docstring).

    Args:
        runs: fresh processes of each kind (the medians are over these).
        trainer_path: import ``torchsystem_trainer`` from this folder instead of the repository's.
        lightning: also measure ``import lightning.pytorch`` when it is installed.

    Returns:
        A dict of medians (seconds), the heavy modules loaded and the slowest imports.
    """
    modules = ["torchsystem_trainer"]
    if lightning and _run_ok("import lightning.pytorch"):
        modules.append("lightning.pytorch")
    samples: dict[str, list[float]] = {"torch": []}
    added: dict[str, list[str]] = {}
    for module in modules:
        samples[f"{module}:package"], samples[f"{module}:increment"] = [], []
        _run("package", module, trainer_path)  # warm the .pyc files; discarded
    for _ in range(runs):
        samples["torch"].append(_run("torch", "torch", trainer_path)["dt"])
        for module in modules:
            samples[f"{module}:package"].append(_run("package", module, trainer_path)["dt"])
            result = _run("increment", module, trainer_path)
            samples[f"{module}:increment"].append(result["dt"])
            added[module] = result["added"]
    medians = {key: statistics.median(values) for key, values in samples.items()}
    report: dict[str, Any] = {"runs": runs, "medians_s": medians, "modules": {}}
    for module in modules:
        loaded = added[module]
        tops = sorted({name.split(".")[0] for name in loaded})
        heavy = [name for name in HEAVY if name in loaded]
        report["modules"][module] = {
            "overhead_s": medians[f"{module}:package"] - medians["torch"],
            "increment_s": medians[f"{module}:increment"],
            "new_modules": len(loaded),
            "new_top_level": tops,
            "heavy": heavy,
            "slowest": _slowest_imports(module, trainer_path) if module == "torchsystem_trainer" else [],
        }
    return report


def _run_ok(statement: str) -> bool:
    completed = subprocess.run([sys.executable, "-c", statement], capture_output=True, check=False)
    return completed.returncode == 0


def format_report(report: dict[str, Any]) -> str:
    """The report as text: one block per measured module, with the budget verdict for ours."""
    medians = report["medians_s"]
    lines = [f"Import time (fresh processes, median of {report['runs']}): import torch = {medians['torch']:.3f} s"]
    for module, info in report["modules"].items():
        lines.append(
            f"  import {module}: {medians[module + ':package']:.3f} s; minus torch = {info['overhead_s']:+.3f} s; "
            f"after torch in the same process = {info['increment_s']:.3f} s; {info['new_modules']} new modules"
        )
        if module == "torchsystem_trainer":
            verdict = "PASS" if info["overhead_s"] <= BUDGET_S else "FAIL"
            lines.append(f"    budget <= {BUDGET_S} s over torch: {verdict}")
            lines.append(f"    heavy modules loaded: {', '.join(info['heavy']) or 'none'}")
            lines.append(f"    new top-level packages: {', '.join(info['new_top_level'])}")
            if info["slowest"]:
                slowest = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in info["slowest"])
                lines.append(f"    slowest imports below it (cumulative, -X importtime): {slowest}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.import_time", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--trainer-path", type=Path, default=None)
    parser.add_argument("--no-lightning", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    report = measure(args.runs, args.trainer_path, lightning=not args.no_lightning)
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
