"""The shipped default model (MiniLM encoder + frozen SmolLM2-135M decoder) and its training
recipe. Needs the offline model packages (installed by the README's test command)."""
from __future__ import annotations

import json
import random
import re

import pytest
import torch

pytest.importorskip("transformers")
from larimar_ext.model import offline  # noqa: E402

try:
    offline.minilm_path(), offline.smollm2_gguf_path()
except (ModuleNotFoundError, FileNotFoundError) as exc:  # pragma: no cover - CI installs them
    pytest.skip(f"offline model packages missing: {exc}", allow_module_level=True)

from larimar_ext.model import LarimarModel  # noqa: E402
from larimar_ext.model.pretrained import default_model_dir  # noqa: E402
from larimar_ext.training.evaluate import number_sentences  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return LarimarModel.from_pretrained()


def test_shipped_weights_are_small_and_load_offline(model, monkeypatch):
    weights = default_model_dir() / "model.safetensors"
    assert weights.stat().st_size <= 30 * 2**20
    cfg = json.loads((default_model_dir() / "config.json").read_text())
    assert cfg["training"]["steps"] > 0
    # the decoder and the encoder are frozen: nothing of theirs is in the file
    from safetensors import safe_open
    with safe_open(str(weights), "pt") as fh:
        assert not [k for k in fh.keys() if k.startswith("decoder.")]


def test_episode_of_16_reads_back_its_numbers(model):
    """An episode of 16 held-out sentences (3-5 digit numbers) written to the host memory:
    every readout's slots decode to its own sentence's number."""
    pairs = [p for d in (3, 4, 5) for p in number_sentences(d, 6, seed=7)][:16]
    texts = [s for s, _ in pairs]
    model.write(texts)
    readouts = model.read(texts)
    decoded = [model.tokenizer.decode(ids) for ids in model.slot_tokens(readouts)]
    right = sum(re.search(r"\d+", d) is not None and re.search(r"\d+", d).group(0) == n
                for d, (_, n) in zip(decoded, pairs))
    assert right >= 15, list(zip(decoded, texts))


def test_decoder_answers_from_a_readout(model):
    rng = random.Random(3)
    keys = [str(rng.randrange(10 ** (d - 1), 10 ** d)) for d in (3, 4, 5) for _ in range(2)]
    texts = [f"The locker code is {k}." for k in keys]
    model.write(texts)
    readouts = model.read(texts)
    answers = model.complete(["The locker code is"] * len(keys), readouts, max_new_tokens=8,
                             questions="What is the locker code?")
    got = [re.findall(r"\d+", a)[:1] for a in answers]
    assert sum(g == [k] for g, k in zip(got, keys)) >= 5, list(zip(keys, answers))
    # a readout of another segment gives another answer: the decoder reads z, not a prior
    swapped = model.complete(["The locker code is"], readouts[1:2], max_new_tokens=8,
                             questions="What is the locker code?")
    assert re.findall(r"\d+", swapped[0])[:1] != [keys[0]]


def test_save_and_load_round_trip(model, tmp_path):
    path = model.save_pretrained(tmp_path / "copy", extra={"note": "copy"})
    again = LarimarModel.from_pretrained(path)
    a = dict(model.named_parameters())
    for name, p in again.named_parameters():
        assert torch.equal(p.detach(), a[name].detach()), name
    assert json.loads((path / "config.json").read_text())["note"] == "copy"
    # a weights file that does not match its config is refused
    from safetensors.torch import load_file, save_file
    state = load_file(str(path / "model.safetensors"))
    state["prior"] = state["prior"][:3]
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match="does not match"):
        LarimarModel.from_pretrained(path)


def test_train_command_trains_resumes_and_saves(tmp_path):
    from larimar_ext.cli import main
    out = tmp_path / "run"
    common = ["train", "--out", str(out), "--episodes", "1", "--episode-size", "4",
              "--eval-every", "2", "--save-every", "1", "--limit-files", "20", "--eval-size", "16",
              "--sources", "python", "--threads", "2", "--warmup", "1"]
    assert main(common + ["--steps", "2"]) == 0
    assert main(common + ["--steps", "3"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]                  # the second run resumed at step 2
    evals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert "eval_token_acc" in evals[1]
    model = LarimarModel.from_pretrained(out / "model")
    assert json.loads((out / "model" / "config.json").read_text())["training"]["steps"] == 3
    assert model.code_size == 32 * (32 + 192)   # slots x (context part + token code)


def test_int8_values_read_back_the_same_tokens(model):
    """Values from the int8 encoder (faster ingest) decode to the same tokens; keys are
    untouched (encode_keys keeps the float encoder)."""
    texts = [s for d in (3, 4, 5) for s, _ in number_sentences(d, 4, seed=11)] + [
        ("The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park "
         "on a sunny day.")]
    want = model.slot_tokens(model.encode(texts).detach())
    keys = model.encode_keys(texts)
    try:
        model.int8_values(True)
        z8 = model.encode(texts).detach()
        assert model.slot_tokens(z8) == want
        assert torch.equal(model.encode_keys(texts), keys)
    finally:
        model.int8_values(False)
    assert "_int8_encoder" not in model.__dict__


def test_recall_answers_every_value_withholds_another_entity_and_reads_korean(model):
    """The recall pipeline end to end with the trained model, on the passkey filler: a key
    with three values gets all three (one passage each); the door whose key is not in the
    context is "not found" although the red door's sentence matches it word for word but
    one; a Korean needle the decoder cannot continue is answered from its passage."""
    from larimar_ext.longcontext import tasks
    from larimar_ext.longcontext.memory import NOT_FOUND, LongContextMemory
    values = ["4821", "77310", "905"]
    filler = [tasks.FILLER] * 6
    needles = [f"One of the special magic numbers for amber-lake is: {v}." for v in values]
    needles += ["The pass key for the red door is 61524.",
                "서울에서 가장 좋은 일은 한강 공원에서 치킨을 먹는 것입니다."]
    text = " ".join(x for pair in zip(filler, needles) for x in pair)
    mem = LongContextMemory(model)
    mem.ingest(text)
    a = mem.ask_trace("The special magic numbers for amber-lake mentioned in the provided "
                      "text are", "What are all the special magic numbers for amber-lake?",
                      max_new_tokens=40)
    assert a.found and len(a.passages) == 3 and all(v in a.answer for v in values), a
    red = mem.ask_trace("The pass key for the red door is", "What is the pass key for the "
                        "red door?")
    assert red.found and "61524" in red.answer and red.swapped is None
    orange = mem.ask_trace("The pass key for the orange door is", "What is the pass key for "
                           "the orange door?")
    assert not orange.found and orange.answer == NOT_FOUND
    assert orange.swapped == ("orange", "red")
    kr = mem.ask_trace("서울에서 가장 좋은 일은", "서울에서 가장 좋은 일은 무엇입니까?")
    assert kr.found and "치킨" in kr.answer, kr
