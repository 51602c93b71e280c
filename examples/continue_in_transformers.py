"""Continue training a tinyalbert model in transformers, then read the result back with tinyalbert.

    python examples/continue_in_transformers.py [--steps 10] [--work-dir DIR]

1. export the bundled model to a transformers folder      (tinyalbert.export)
2. run a few masked-language-model steps with `Trainer`  (the step that scales out: see docs/scaling.md)
3. save the trained model and convert it back            (tinyalbert.convert)
4. load it in tinyalbert and fill in a mask

It runs on CPU in seconds on a small MLM dataset: the first lines of the TinyStories sample committed in
tinyalbert/data/corpus.  Needs the test extras (torch, transformers) and accelerate, which Trainer uses.
The Trainer here trains AlbertForMaskedLM, so the exported pooler and sentence-order head are left out
(transformers lists them as unused weights) and the converted-back model has no SOP head.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import tinyalbert

TEXT = Path(tinyalbert.__file__).resolve().parent / "data" / "corpus" / "tinystories" / "tinystories_000.txt"


def training_texts(count: int) -> list[str]:
    """The first `count` non-empty lines of the committed TinyStories sample."""
    texts = []
    with open(TEXT, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(line.strip())
            if len(texts) == count:
                break
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="Trainer steps (default 10)")
    parser.add_argument("--work-dir", default=None, help="where to write the folders (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="continue-in-transformers-"))
    work.mkdir(parents=True, exist_ok=True)

    # 1. tinyalbert -> transformers
    exported = work / "exported"
    tinyalbert.export(tinyalbert.bundled_model_path(), exported, overwrite=True, progress=False)

    # 2. a few Trainer steps.  On many GPUs the same script runs under `accelerate launch` or `deepspeed`.
    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(exported, use_fast=False)   # the slow one: tinyalbert's ids exactly
    model = AutoModelForMaskedLM.from_pretrained(exported)
    dataset = [tokenizer(text, truncation=True, max_length=64) for text in training_texts(64)]
    training_args = TrainingArguments(output_dir=str(work / "trainer"), max_steps=args.steps,
                                      per_device_train_batch_size=8, learning_rate=5e-4, warmup_steps=0,
                                      logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                                      seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15))
    result = trainer.train()
    print(f"trained {result.global_step} steps in transformers, mean loss {result.training_loss:.3f}")
    continued = work / "continued"
    trainer.save_model(str(continued))        # config.json, model.safetensors, and the tokenizer's spiece.model

    # 3. transformers -> tinyalbert
    back = work / "continued.h5"
    tinyalbert.convert(continued, back, progress=False)

    # 4. read it with tinyalbert
    albert = tinyalbert.load(back)
    best = tinyalbert.fill_mask(albert, "The man went to the [MASK] to buy some milk.", top_k=3)
    print("loaded back in tinyalbert:", back, "| top 3:", [option["token_str"] for option in best])


if __name__ == "__main__":
    main()
