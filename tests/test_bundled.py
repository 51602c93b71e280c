"""The bundled model: shipped inside the package, used by predict when no weights are named."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import tinyalbert
from tinyalbert.predict import BUNDLED_MODEL_NAME, default_weights_path, fill_mask
from tinyalbert.weights import load

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_COPY = ROOT / "tinyalbert" / "data" / BUNDLED_MODEL_NAME


def test_bundled_model_loads_with_its_vocabulary():
    for path in (PACKAGE_COPY, ROOT / "weights" / BUNDLED_MODEL_NAME):
        model = load(path)
        assert model.tokenizer is not None and model.has_sop_head
        assert model.tokenizer.vocab_size == model.config.vocab_size
        assert os.path.getsize(path) < 10_000_000, "the bundled model should stay a few MB"


def test_bundled_model_is_the_default(monkeypatch):
    monkeypatch.delenv("TINYALBERT_WEIGHTS", raising=False)
    monkeypatch.chdir(ROOT.parent)       # no weights/albert-xxlarge-v2.h5 here
    if not (ROOT / "weights" / "albert-xxlarge-v2.h5").exists():
        assert default_weights_path() == Path(tinyalbert.__file__).resolve().parent / "data" / BUNDLED_MODEL_NAME


def test_bundled_model_fills_a_mask():
    model = load(PACKAGE_COPY)
    top = fill_mask(model, "Once upon a [MASK], there was a little girl.", top_k=5)
    assert len(top) == 5 and all(o["sequence"].startswith("once upon a") for o in top)
    scores = [o["score"] for o in top]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6


def top_answers(text: str, k: int) -> list[str]:
    """The bundled model's k most likely pieces for the [MASK] of `text`."""
    return [o["token_str"] for o in fill_mask(load(PACKAGE_COPY), text, top_k=k)]


def test_bundled_model_uses_context():
    """The model card's claim that the model left the bag-of-words plateau: the opening of every
    TinyStories tale, a door that is opened, the united states; a model that only knows word
    frequencies answers all three with "the", "," or "."."""
    assert top_answers("Once upon a [MASK], there was a little girl.", 1) == ["time"]
    assert "door" in top_answers("He opened the [MASK] and walked into the room.", 3)
    assert "states" in top_answers("The president of the united [MASK] gave a speech.", 2)


def test_bundled_model_answers_the_headline_sentence():
    """README's first command: the first answer is a place, not a copy of a word of the sentence (the
    small-MLM failure the model card describes), and the store is among the first three."""
    sentence = "The man went to the [MASK] to buy some milk."
    answers = top_answers(sentence, 3)
    assert answers[0] not in sentence.lower().split()
    assert "store" in answers


def test_predict_cli_from_another_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TINYALBERT_WEIGHTS"}
    r = subprocess.run([sys.executable, "-m", "tinyalbert.predict", "The man went to the [MASK] to buy some milk."],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") >= 5


def test_wheel_contains_the_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("tinyalbert-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert f"tinyalbert/data/{BUNDLED_MODEL_NAME}" in names
        info = z.getinfo(f"tinyalbert/data/{BUNDLED_MODEL_NAME}")
        assert info.file_size == PACKAGE_COPY.stat().st_size
