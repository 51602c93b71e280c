"""The teaching notebooks run from top to bottom without an error, in well under ten minutes together.

Every notebook in notebooks/ is executed headless with nbclient (kernel "python3"), in memory: the
committed copies, with their saved outputs, are not touched.  Every notebook ends with exercises whose
solutions are scripts in notebooks/solutions/, run here too.  The notebooks study the model named by
$TINYALBERT_WEIGHTS, else the bundled small model (notebooks/nbsetup.py); when neither exists yet,
the test builds a stand-in of the bundled model's shape with random weights, so the test never skips.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((NOTEBOOK_DIR / "solutions").glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT = 300            # seconds, for any one cell
TOTAL_BUDGET = 600            # seconds, for all notebooks together
durations: dict[str, float] = {}


def test_the_notebooks_are_there():
    numbers = [p.stem[:2] for p in NOTEBOOKS]
    # 00 to 06, and 07 (the paper in miniature) once it is there
    assert numbers in ([f"{n:02d}" for n in range(7)], [f"{n:02d}" for n in range(8)]), NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_ends_with_exercises_and_their_solutions_exist(path):
    nb = nbformat.read(path, as_version=4)
    exercises = [c.source for c in nb.cells if c.cell_type == "markdown" and "## Exercises" in c.source]
    assert exercises, f"{path.name} has no '## Exercises' section"
    solution = NOTEBOOK_DIR / "solutions" / f"{path.stem}.py"
    assert solution.exists(), f"{path.name}: its solutions belong in {solution.relative_to(ROOT)}"
    assert str(solution.relative_to(ROOT)) in exercises[-1], f"{path.name}: the exercises should name their solutions"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """The weights the notebooks will use: $TINYALBERT_WEIGHTS, the bundled model, or a random stand-in."""
    env = os.environ.get("TINYALBERT_WEIGHTS")
    if env:
        return Path(env)
    from tinyalbert.predict import BUNDLED_MODEL_NAME

    bundled = ROOT / "tinyalbert" / "data" / BUNDLED_MODEL_NAME
    if bundled.exists():
        return bundled
    from tinyalbert import AlbertConfig, init_params
    from tinyalbert.tokenizer import ALBERT_VOCAB, Tokenizer
    from tinyalbert.weights import save

    vocab = ROOT / "runs" / "mini" / "spiece.model"
    if not vocab.exists():
        vocab = ALBERT_VOCAB
    config = AlbertConfig(vocab_size=Tokenizer(vocab).vocab_size, embedding_size=128, hidden_size=256,
                          num_attention_heads=4, intermediate_size=1024, num_hidden_layers=6)
    path = tmp_path_factory.mktemp("weights") / "stand-in-mini.h5"
    save(path, config, init_params(config, seed=0, dtype=np.float32), spiece_model_bytes=vocab.read_bytes())
    return path


def run_notebook(path: Path, weights: Path, save: bool = False) -> float:
    """Execute one notebook headless with `weights` (in memory; save=True writes it back with its outputs)."""
    nb = nbformat.read(path, as_version=4)
    previous = os.environ.get("TINYALBERT_WEIGHTS")
    os.environ["TINYALBERT_WEIGHTS"] = str(weights)      # the kernel inherits this process's environment
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
    finally:
        if previous is None:
            os.environ.pop("TINYALBERT_WEIGHTS", None)
        else:
            os.environ["TINYALBERT_WEIGHTS"] = previous
    seconds = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    durations[path.name] = seconds
    if save:
        from tinyalbert.files import atomic_output

        with atomic_output(path) as tmp:
            nbformat.write(nb, tmp)
    return seconds


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_without_errors(path, weights):
    seconds = run_notebook(path, weights)    # nbclient raises CellExecutionError on the first failing cell
    print(f"{path.name}: {seconds:.0f} s")


@pytest.mark.slow
def test_all_notebooks_together_within_budget(weights):
    for path in NOTEBOOKS:                   # when run on its own (pytest -k), run the notebooks first
        if path.name not in durations:
            run_notebook(path, weights)
    total = sum(durations[p.name] for p in NOTEBOOKS)
    report = ", ".join(f"{p.stem[:2]} {durations[p.name]:.0f} s" for p in NOTEBOOKS)
    print(f"notebooks: {report}; total {total:.0f} s")
    assert total < TOTAL_BUDGET, f"the notebooks took {total:.0f} s together ({report}); the budget is {TOTAL_BUDGET} s"


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solution_runs(path, weights):
    """Each solution script runs to the end (its asserts are the checks), from notebooks/ as Jupyter would."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(path)], cwd=NOTEBOOK_DIR, capture_output=True, text=True,
                          timeout=CELL_TIMEOUT, env={**os.environ, "TINYALBERT_WEIGHTS": str(weights)})
    assert done.returncode == 0, f"{path.name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    print(f"{path.name}: {time.perf_counter() - start:.0f} s")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_executed_and_introduced(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), \
        f"{path.name} must open with a markdown cell: its title, what it teaches, what to read first"
    assert "Read first" in nb.cells[0].source, f"{path.name}: the first cell should say what to read first"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), f"{path.name} is not saved with its outputs (run it in place)"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} was saved with an error output"
    size = path.stat().st_size
    assert size < 2_000_000, f"{path.name} is {size:,} bytes; keep outputs small"
    printed = [o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for c in code for o in c.outputs]
    machine_paths = [line for text in printed for line in text.splitlines() if str(ROOT) in line]
    assert not machine_paths, \
        f"{path.name} prints a path of this machine: {machine_paths[0]!r}; print it relative to the repository"


if __name__ == "__main__":
    # python tests/test_notebooks.py [NN ...]: re-execute the notebooks (all, or those whose number is given)
    # in place with the bundled model, so that their committed outputs match the code.
    import sys

    from tinyalbert.predict import bundled_model_path

    for path in NOTEBOOKS:
        if len(sys.argv) == 1 or path.stem[:2] in sys.argv[1:]:
            print(f"{path.name}: {run_notebook(path, bundled_model_path(), save=True):.0f} s")
