"""Answer checks against the read passages (larimar_ext.longcontext.grounding): pure text
functions, no model."""
from __future__ import annotations

from larimar_ext.longcontext.grounding import continuation, snap_codes, support, swapped_term

UUID_NEEDLE = ("One of the special magic uuids for 8b60c511-b816-4aeb-ac6a-7c8576876c62 is: "
               "d2c7bffb-6118-433b-882c-cd1e6c93a791.")


def test_snap_codes_repairs_a_copy_slip_and_leaves_the_rest():
    # a dropped first character, a changed last one: each one edit from the passage's code
    assert snap_codes(": 2c7bffb-6118-433b-882c-cd1e6c93a791.", [UUID_NEEDLE]) \
        == ": d2c7bffb-6118-433b-882c-cd1e6c93a791."
    assert snap_codes("d2c7bffb-6118-433b-882c-cd1e6c93a790", [UUID_NEEDLE]) \
        == "d2c7bffb-6118-433b-882c-cd1e6c93a791"
    assert snap_codes("It is 4374755.", ["The number is 4374754."]) == "It is 4374754."
    # two edits in seven digits, short codes and plain words are not snapped
    assert snap_codes("2149597", ["2140397"]) == "2149597"
    assert snap_codes("It is 12.", ["It is 13."]) == "It is 12."
    assert snap_codes("a sandwich", ["a sandwiches 1234"]) == "a sandwich"
    assert snap_codes("1234", []) == "1234"


def test_support_counts_passage_terms_not_echoes_of_the_question():
    passage = "The pass key for the red door is 86556."
    assert support("86556.", [passage], "What is the pass key?") == 1.0
    # an echo of the question is no support, nor is an invented answer
    assert support("The pass key", [passage], "What is the pass key?") == 0.0
    assert support("visit the Golden Gate Bridge", [passage], "What to do?") == 0.2
    assert support("", [passage], "x") == 0.0
    # Korean: the decoder's copy of the question's word shares one bigram with the passage
    kr = "서울에서 가장 좋은 일은 한강 공원에서 치킨을 먹는 것입니다."
    assert support("무엇입니다.", [kr], "서울에서 가장 좋은 일은 무엇입니까?") < 0.5
    assert support("한강 공원에서 치킨을 먹는 것", [kr],
                   "서울에서 가장 좋은 일은 무엇입니까?") >= 0.5


def test_continuation_reads_on_after_the_prefix():
    assert continuation("The pass key for the red door is", "the pass key for the  RED door "
                        "is 1234.") == "1234."
    # several keys asked, one held: read on after the last shared word
    assert continuation("The special magic numbers for a-b, bloody-reciprocity, and c-d are",
                        "One of the special magic numbers for bloody-reciprocity is: 11562.") \
        == "is: 11562."
    assert continuation("서울에서 가장 좋은 일은",
                        "서울에서 가장 좋은 일은 한강 공원입니다.") == "한강 공원입니다."
    # unspaced script: the longest end of the prefix the passage holds
    assert continuation("北京最好的事情是",
                        "他说北京最好的事情是在颐和园划船。") == "在颐和园划船。"
    assert continuation("仓库的密码", "今天下雨。") is None
    assert continuation("I recommend that you", "The best thing to do is eat.") is None
    assert continuation("The pass key is", "The pass key is") is None
    # only punctuation after the prefix's words: the fact is stated the other way round
    assert continuation("The pass key is", "86556 is the pass key.") == "86556"
    assert continuation("The pass key is", "The pass key is.") is None
    assert continuation("", "anything") is None


def test_swapped_term_tells_another_entity_from_a_rephrased_question():
    vocab = {"the", "pass", "key", "for", "red", "door", "is", "best", "thing", "to", "do",
             "in", "san", "francisco", "one", "of", "special", "magic", "numbers",
             "faint-water", "top", "activity"}
    known = vocab.__contains__
    assert swapped_term("The pass key for the orange door is",
                        "The pass key for the red door is 86556.", known) == ("orange", "red")
    assert swapped_term("The best thing to do in Tokyo is",
                        "The best thing to do in San Francisco is eat.", known) \
        == ("tokyo", "san francisco")
    ruler = "One of the special magic numbers for faint-water is: 1234."
    assert swapped_term("The special magic number for quiet-harbor mentioned in the provided "
                        "text is", ruler, known)[0] == "quiet-harbor"
    # the asked key is there: "number"/"numbers" are one word, "mentioned in the provided
    # text" has no counterpart (a deletion, not a swap), what follows is the answer
    for prefix in ("The special magic number for faint-water mentioned in the provided text is",
                   "The special magic numbers for faint-water mentioned in the provided text are",
                   "The special magic numbers for a-b, faint-water and c-d mentioned in the "
                   "provided text are"):
        assert swapped_term(prefix, ruler, known) is None, prefix
    # a word the memory holds is a rephrasing, not another entity; so is a common word the
    # memory does not hold, put for several
    assert swapped_term("The top activity in San Francisco is",
                        "The best thing to do in San Francisco is eat.", known) is None
    assert swapped_term("The top activity in San Francisco is",
                        "The best thing to do in San Francisco is eat.",
                        lambda w: known(w) and w != "activity") is None
    assert swapped_term("The answer is", "Nothing alike here.", known) is None
