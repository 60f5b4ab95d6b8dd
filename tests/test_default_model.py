"""The shipped default model (MiniLM encoder + frozen SmolLM2-135M decoder) and its training
recipe. Needs the offline model packages (installed by the README's test command)."""
from __future__ import annotations

import json
import random
import re

import numpy as np
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


def test_answers_stop_at_the_end_of_their_line(model):
    """With ``first_line`` the decoder stops once its answer's line ends: the same text as
    the full run up to that line break, not the run-on after it (here the template's
    default question, echoed)."""
    z = model.encode(["The pass key is 86556. Remember it."]).detach()
    prefix = "The pass key is"
    full = model.complete_passages(prefix, z, max_new_tokens=24)
    line = model.complete_passages(prefix, z, max_new_tokens=24, first_line=True)
    assert "\n" in full.strip() and "86556" in line, (full, line)
    assert full.startswith(line) and line.endswith("\n") and "\n" not in line.strip()
    full, line = (model.complete([prefix], z, max_new_tokens=24, first_line=f)[0]
                  for f in (False, True))
    assert "\n" in full.strip() and full.startswith(line) and "\n" not in line.strip()


@pytest.mark.parametrize("first_line", [False, True])
def test_prompt_lookup_gives_the_tokens_of_one_step_at_a_time(model, first_line):
    """With prefix_snap the decoder drafts from its input ids (prompt_lookup_tokens) and
    checks several tokens a pass: the same text as one token a pass, for latents and for
    slot ids, several passages, an answer copied from a passage (the key, then its line's
    run-on) and one that is not; a first_line answer still ends at its line break. The
    same for each passage decoded as a row of one batch (complete_each_passage)."""
    texts = ["The pass key is 86556. Remember it.", "The grass is green and the sky is blue.",
             "Der Zug nach Berlin fährt um 17:42 Uhr von Gleis 9."]
    z = model.encode(texts).detach()
    ids = model.slot_ids(z)
    asks = [("The pass key is", z, None), ("The train leaves from", ids, "Where from?"),
            ("The colour of the sky is", z[1:2], None)]
    before = model.prompt_lookup_tokens
    try:
        for prefix, readouts, question in asks:
            got = []
            for tokens in (before, 0):
                model.prompt_lookup_tokens = tokens
                got.append(model.complete_passages(prefix, readouts, question=question,
                                                   max_new_tokens=20, first_line=first_line))
            assert got[0] == got[1], (prefix, got)
            if first_line:
                assert "\n" not in got[0].strip(), got
            # each passage a row of one batch, every row drafting from its own input
            each = []
            for tokens in (before, 0):
                model.prompt_lookup_tokens = tokens
                each.append(model.complete_each_passage(prefix, readouts, question=question,
                                                        max_new_tokens=20))
            assert each[0] == each[1] and len(each[0]) == len(readouts), (prefix, each)
    finally:
        model.prompt_lookup_tokens = before
    assert before > 0


def two_passage_answers(model):
    """A call that answers two slot-id passages, one by ``complete_passages`` (a first line)
    and one by ``complete_each_passage``, with whatever decoder the model answers on now."""
    texts = ["The pass key is 86556. Remember it.",
             "Der Zug nach Berlin fährt um 17:42 Uhr von Gleis 9."]
    ids = model.slot_ids(model.encode(texts).detach())

    def answers():
        return (model.complete_passages("The pass key is", ids[:1], max_new_tokens=8,
                                        first_line=True),
                model.complete_each_passage("The train leaves from platform", ids[1:],
                                            max_new_tokens=8))
    return answers


def test_bf16_answers_copy_the_same_answers_and_leave_the_float_decoder(model):
    """bf16_answers: answers from a bfloat16 copy of the decoder, by prompt lookup on slot ids
    and by the batched passages path; the float decoder, the model's state and training
    stay float32, and turning it off gives the float decoder back."""
    answers = two_passage_answers(model)
    keys = set(model.state_dict())
    want = answers()
    try:
        model.bf16_answers(True)
        assert model.answers_in_bf16
        assert model._answer_decoder().dtype == torch.bfloat16
        got = answers()
        assert got == want, (got, want)
        assert "86556" in got[0] and "9" in got[1][0], got
        assert model.decoder.dtype == torch.float32 and set(model.state_dict()) == keys
        model.train()
        assert model._answer_decoder() is model.decoder     # training never sees the copy
        model.eval()
    finally:
        model.bf16_answers(False)
        model.eval()
    assert not model.answers_in_bf16 and model._answer_decoder() is model.decoder


def test_int8_answers_give_the_answers_and_leave_the_float_decoder(model):
    """int8_answers: answers from a copy of the decoder whose linears (the tied head too) are
    Int8Linear; the values asked for are still answered, the float decoder, the model's
    state and training stay float32, and turning it off gives the float decoder back."""
    from larimar_ext.int8_linear import Int8Linear
    answers = two_passage_answers(model)
    keys = set(model.state_dict())
    try:
        model.int8_answers(True)
        assert model.answers_in_int8 and not model.answers_in_bf16
        copy_ = model._answer_decoder()
        assert isinstance(copy_.lm_head, Int8Linear) and copy_ is not model.decoder
        # the input embeddings stay float32: the decoder's input is the float one's
        assert copy_.get_input_embeddings().weight.dtype == torch.float32
        got = answers()
        assert "86556" in got[0] and "9" in got[1][0], got
        assert model.decoder.dtype == torch.float32 and set(model.state_dict()) == keys
        assert isinstance(model.decoder.lm_head, torch.nn.Linear)
        model.train()
        assert model._answer_decoder() is model.decoder     # training never sees the copy
        model.eval()
        model.bf16_answers(True)           # answers have one precision: the last one chosen
        assert model.answers_in_bf16 and not model.answers_in_int8
        model.int8_answers(True)
        assert model.answers_in_int8 and not model.answers_in_bf16
    finally:
        model.int8_answers(False)
        model.bf16_answers(False)
        model.eval()
    assert not model.answers_in_int8 and model._answer_decoder() is model.decoder


def test_the_innermost_answer_precision_wins(model):
    """precision blocks over the two answer copies: the innermost block that turns one on
    wins, False turns its copy off for the block, None follows the blocks around it, and
    one block cannot turn on both (refused naming both, nothing changed)."""
    from references import raises_arg

    def kind():
        return ("bf16" if model.answers_in_bf16 else "int8" if model.answers_in_int8
                else "float32")
    try:
        model.bf16_answers(True)
        with model.precision(int8_answers=True):
            assert kind() == "int8"
            with model.precision(bf16_answers=True):
                assert kind() == "bf16"
            with model.precision(int8_answers=False):
                assert kind() == "bf16"        # the model-wide bf16 choice is still on
            with model.precision(bf16_answers=None, int8_answers=None):
                assert kind() == "int8"
        assert kind() == "bf16"
        with model.precision(bf16_answers=False):
            assert kind() == "float32"
        with raises_arg(ValueError, "int8_answers"):
            with model.precision(bf16_answers=True, int8_answers=True):
                pass
        assert kind() == "bf16"
    finally:
        model.bf16_answers(False)
        model.int8_answers(False)
    assert kind() == "float32"


def test_a_shared_cache_keeps_one_encoder_s_encodings(model):
    """A cache shared with an int8 memory is refused by a float one (at construction when
    its choice is fixed, at ingest when it follows the model), which is left empty; another
    int8 memory reuses it. A memory's own cache follows a model-wide switch without error."""
    from larimar_ext.longcontext.memory import EncodingCache, LongContextMemory
    from references import raises_arg
    text = "The pass key is 86556. Remember it. The grass is green and the sky is blue."
    cache = EncodingCache(keep_values=True)
    first = LongContextMemory(model, int8_values=True, cache=cache)
    first.ingest(text)
    assert cache.encoder == "int8"
    with raises_arg(ValueError, "cache"):
        LongContextMemory(model, int8_values=False, cache=cache)
    follows = LongContextMemory(model, cache=cache)   # model-wide: float
    with raises_arg(ValueError, "cache"):
        follows.ingest(text)
    assert len(follows) == 0 and follows.totals.new_segments == 0
    again = LongContextMemory(model, int8_values=True, cache=cache)
    st = again.ingest(text + " One more sentence.")
    assert st.encoded_values == 1 and len(again) == len(first) + 1
    np.testing.assert_array_equal(again.readout_of("Remember it."),
                                  first.readout_of("Remember it."))
    own = LongContextMemory(model)
    own.ingest(text)
    try:
        model.int8_values(True)
        assert own.ingest("Another sentence here.").new_segments == 1
    finally:
        model.int8_values(False)


def test_a_memory_s_int8_and_bf16_choices_are_its_own(model, monkeypatch):
    """Two memories on one model: the one made with int8_values / bf16_answers encodes and
    answers with the copies, one made after it with False uses the float modules, one
    made with None follows the model-wide choice, and the model-wide choices stay off."""
    from larimar_ext.longcontext.memory import LongContextMemory
    seen = []                      # (what ran, whether it ran on the copy)
    for name, flag in (("encode_with_keys", "values_in_int8"),
                       ("complete_passages", "answers_in_bf16")):
        real = getattr(model, name)

        def spy(*a, _real=real, _name=name, _flag=flag, **kw):
            seen.append((_name, getattr(model, _flag)))
            return _real(*a, **kw)
        monkeypatch.setattr(model, name, spy)
    text = "The pass key is 86556. Remember it. The grass is green and the sky is blue."
    try:
        fast = LongContextMemory(model, int8_values=True, bf16_answers=True)
        plain = LongContextMemory(model, int8_values=False, bf16_answers=False)
        follows = LongContextMemory(model)
        assert not model.values_in_int8 and not model.answers_in_bf16
        got = {}
        for label, mem in (("fast", fast), ("plain", plain), ("follows", follows)):
            seen.clear()
            mem.ingest(text)
            answer = mem.ask("The pass key is", max_new_tokens=8)
            got[label] = (set(seen), answer)
        assert got["fast"][0] == {("encode_with_keys", True), ("complete_passages", True)}
        assert got["plain"][0] == {("encode_with_keys", False), ("complete_passages", False)}
        assert got["follows"][0] == got["plain"][0]
        assert "86556" in got["fast"][1] and "86556" in got["plain"][1], got
        seen.clear()
        int8 = LongContextMemory(model, int8_answers=True)
        int8.ingest(text)
        assert "86556" in int8.ask("The pass key is", max_new_tokens=8)
        assert not model.answers_in_int8                   # the model-wide choice stays off
        with pytest.raises(ValueError, match="bf16_answers, int8_answers"):
            LongContextMemory(model, bf16_answers=True, int8_answers=True)
        model.int8_values(True)    # None follows the model-wide choice; False still wins
        seen.clear()
        LongContextMemory(model).ingest(text + " Another sentence.")
        LongContextMemory(model, int8_values=False).ingest(text + " One more sentence.")
        assert [s for s in seen if s[0] == "encode_with_keys"] == [
            ("encode_with_keys", True), ("encode_with_keys", False)]
    finally:
        model.int8_values(False)
        model.bf16_answers(False)
    assert not model.values_in_int8 and not model.answers_in_bf16


def test_a_needle_stated_both_ways_gets_one_answer(model):
    """The passkey needle says its key twice, the second time the other way round ("N is
    the pass key."): both passages are read, and the answer is the key once."""
    from larimar_ext.longcontext import tasks
    from larimar_ext.longcontext.memory import LongContextMemory
    ctx = tasks.passkey_context(1000, 50, tokenizer=model.tokenizer, key="86556")
    mem = LongContextMemory(model)
    mem.ingest(ctx.text)
    a = mem.ask_trace(ctx.answer_prefix, ctx.question, max_new_tokens=len(ctx.answer) + 4)
    assert a.found and len(a.passages) == 2, a
    assert a.answer.strip(" .") == "86556" and len(a.answers) == 1, a


def test_first_line_reads_only_the_new_ids(model):
    """generate() given the prompt as ids checks prompt + new ids: the criterion skips the
    prompt's columns, so a prompt's own line break does not end the answer."""
    from larimar_ext.model.larimar import _FirstLine
    tok = model.tokenizer
    prompt = tok("Question?\nThe pass key is", add_special_tokens=False)["input_ids"]
    done = _FirstLine(tok, start=len(prompt))
    for new, stop in ((" 86556", False), (" 86556.\n", True)):
        ids = torch.tensor([prompt + tok(new, add_special_tokens=False)["input_ids"]])
        assert done(ids, None).tolist() == [stop]
        assert _FirstLine(tok)(ids, None).tolist() == [True]   # the prompt's line counts


def test_token_values_answer_as_latents_do_in_a_fraction_of_the_bytes(model, tmp_path):
    """The recall memory's default values are slot ids: the same passages, the same
    answers and the same decoder input as with the latents, in 1/56 of the value bytes,
    and they survive save and load."""
    from larimar_ext.longcontext import tasks
    from larimar_ext.longcontext.memory import LongContextMemory
    ctx = tasks.passkey_context(1000, 50, tokenizer=model.tokenizer, key="40719")
    text = ctx.text + " The best thing to do in San Francisco is eat a sandwich and sit in " \
                      "Dolores Park on a sunny day."
    mems = {v: LongContextMemory(model, values=v) for v in ("latent", "tokens")}
    assert LongContextMemory(model).values == "tokens"
    for mem in mems.values():
        mem.ingest(text)
    lat, tok = mems["latent"], mems["tokens"]
    assert tok.store.value_dim == model.prefix.num_slots
    assert lat.store.nbytes - tok.store.nbytes == len(tok) * 4 * (model.code_size
                                                                   - model.prefix.num_slots)
    for seg in list(tok.segments.stored())[:8]:
        assert torch.equal(model.slot_ids(torch.as_tensor(lat.readout_of(seg))[None])[0],
                           torch.as_tensor(tok.readout_of(seg)).long())
    questions = [(ctx.answer_prefix, ctx.question),
                 ("The best thing to do in San Francisco is",
                  "What is the best thing to do in San Francisco?")]
    want = [lat.ask_trace(p, q, max_new_tokens=12) for p, q in questions]
    got = [tok.ask_trace(p, q, max_new_tokens=12) for p, q in questions]
    assert [a.answers for a in got] == [a.answers for a in want]
    assert [a.passages for a in got] == [a.passages for a in want]
    assert "40719" in got[0].answer and "Dolores Park" in got[1].answer
    tok.save(tmp_path / "m")
    back = LongContextMemory.load(tmp_path / "m", model)
    assert back.values == "tokens" and back.ask(*questions[0], max_new_tokens=12) == got[0].answer
    lat.save(tmp_path / "l")
    assert LongContextMemory.load(tmp_path / "l", model).values == "latent"
    with pytest.raises(ValueError, match="values"):
        LongContextMemory(model, mode="paper", values="tokens")
    with pytest.raises(ValueError, match="values"):
        LongContextMemory(model, values="bytes")


def test_slot_ids_do_not_depend_on_their_hints(model):
    """The snap's hints (the aligned decoder tokens, or any ids) start the kernel's search
    at a row's score; the ids are the nearest rows all the same."""
    texts = ["The passkey is 40719. Remember it.", "Слоты: 日本語 and ünïcödé, 3.14159!",
             "the the the the of of a a a 0 0 0 1 1 1"]
    segments = model.aligner(texts)
    z = model.encode(segments)
    want = model.slot_ids(z)
    vocab = model.decoder.get_input_embeddings().num_embeddings
    wrong = torch.randint(0, vocab, segments.target_ids.shape,
                          generator=torch.Generator().manual_seed(0))
    for hints in (segments.target_ids, wrong, torch.zeros_like(wrong)):
        assert torch.equal(model.slot_ids(z, hints=hints), want)
    with pytest.raises(ValueError, match="hints"):
        model.slot_ids(z, hints=segments.target_ids[:, :3])
    with pytest.raises(ValueError, match="hints"):
        model.slot_ids(z, hints=torch.full_like(wrong, vocab))


def test_the_snap_of_a_freshly_loaded_model_uses_its_projected_screen():
    """The decoder's table is the checkpoint's memory map, not yet read when the snap's view
    of it is made; the view asks where its keys are after reading them all, so it does not
    take the table for keys on disk and its hinted searches go through the projected
    screen (before, a fresh process never used it: 1.7x the snap's time)."""
    from larimar_ext.longcontext import LongContextMemory
    fresh = LarimarModel.from_pretrained()
    LongContextMemory(fresh).ingest("The passkey is 40719. Remember it. The grass is green. "
                                    "The sky is blue. The sun is yellow. Here we go again.")
    view = fresh.prefix.__dict__["_table"][1]
    assert view.keys_may_be_mapped is False
    assert view.projected_dims > 0 and view.projected_answers > 0


def test_the_pooler_and_prefix_compute_live_slots_only_and_zero_the_dead(model):
    texts = ["The passkey is 40719. Remember it.", "Short.", "Слоты: 日本語 and ünïcödé!"]
    segments = model.aligner(texts)
    z = model.encode(segments)
    slots = z.reshape(len(texts), model.prefix.num_slots, -1)
    live = segments.live
    assert not live.all() and live.any()
    assert torch.equal(slots[~live], torch.zeros_like(slots[~live]))
    assert torch.equal(model.prefix.live(z), live)
    with torch.no_grad():
        torch.testing.assert_close(model.prefix.soft(z, live), model.prefix.soft(z)[live])
        ids = model.prefix.nearest_ids(model.prefix.soft(z)[live],
                                       model.decoder.get_input_embeddings().weight)
    assert torch.equal(model.slot_ids(z)[live], ids)
    assert bool((model.slot_ids(z)[~live] == -1).all())


def test_int8_keys_find_what_float_keys_find_in_a_quarter_of_the_bytes(model, tmp_path):
    """The recall memory's default keys are int8 codes: the same rows, passages and
    answers as float keys on these questions, a key in 408 bytes instead of 1,540, and
    the codes survive save and load."""
    from larimar_ext.longcontext import tasks
    from larimar_ext.longcontext.memory import LongContextMemory
    ctx = tasks.passkey_context(1500, 40, tokenizer=model.tokenizer, key="52810")
    text = ctx.text + " One of the special magic numbers for lazy-otter is: 7731904. " \
                      "One of the special magic numbers for lazy-heron is: 2093318."
    mems = {k: LongContextMemory(model, keys=k) for k in ("float", "int8")}
    assert LongContextMemory(model).keys == "int8"
    assert LongContextMemory(model, mode="paper").keys == "float"
    for mem in mems.values():
        mem.ingest(text)
    flt, int8 = mems["float"], mems["int8"]
    assert int8.store.key_codes == "int8-only" and flt.store.key_codes is None
    assert flt.store.nbytes - int8.store.nbytes == len(flt) * (384 * 4 - 384 - 20) - \
        (-len(flt) % 16) * 384   # codes come in tiles of 16 rows
    questions = [(ctx.answer_prefix, ctx.question),
                 ("One of the special magic numbers for lazy-heron is:",
                  "What is the special magic number for lazy-heron?")]
    want = [flt.ask_trace(p, q, max_new_tokens=12) for p, q in questions]
    got = [int8.ask_trace(p, q, max_new_tokens=12) for p, q in questions]
    assert [[s.row for s in a.sources] for a in got] == [[s.row for s in a.sources] for a in want]
    assert [(a.answers, a.passages) for a in got] == [(a.answers, a.passages) for a in want]
    assert "52810" in got[0].answer and "2093318" in got[1].answer
    int8.save(tmp_path / "m")
    back = LongContextMemory.load(tmp_path / "m", model)
    assert back.keys == "int8"
    np.testing.assert_array_equal(back.store.keys, int8.store.keys)
    assert back.ask(*questions[1], max_new_tokens=12) == got[1].answer
