"""Multiple-choice scoring against hand-computed log-likelihoods of a fixed bigram model."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from trainers.task_data import TaskError, TaskExample, TokenizedTask, load_task_jsonl, tokenize_task
from trainers.tasks import choice_log_likelihoods, evaluate_task, example_metrics

# A fixed bigram "language model" over 3 tokens: logits of the next token depend only on the
# current one. Row = current token, column = next token.
TABLE = torch.tensor([[0.0, math.log(3.0), 0.0],        # after 0: p = [1/5, 3/5, 1/5]
                      [math.log(2.0), 0.0, 0.0],        # after 1: p = [2/4, 1/4, 1/4]
                      [0.0, 0.0, math.log(8.0)]])       # after 2: p = [1/10, 1/10, 8/10]


class Bigram(torch.nn.Module):
    def forward(self, input_ids):
        return SimpleNamespace(logits=TABLE[input_ids])


def test_log_likelihoods_match_the_hand_computed_values():
    # prompt [0]; choice A = [1, 0]: p(1|0) p(0|1) = 3/5 * 2/4; choice B = [2, 2]: 1/5 * 8/10
    lls = choice_log_likelihoods(Bigram(), [0], [[1, 0], [2, 2]], torch.device("cpu"))
    assert lls == pytest.approx([math.log(3 / 5 * 2 / 4), math.log(1 / 5 * 8 / 10)], abs=1e-6)
    # A longer prompt only changes what the first choice token is conditioned on.
    lls = choice_log_likelihoods(Bigram(), [0, 2], [[2], [0, 1]], torch.device("cpu"))
    assert lls == pytest.approx([math.log(8 / 10), math.log(1 / 10 * 3 / 5)], abs=1e-6)


def test_example_metrics_literal_table():
    cases = [  # scores, answer -> accuracy, correct_prob, brier
        ([0.0, math.log(3.0)], 1, (1.0, 0.75, 2 * 0.25 ** 2)),
        ([0.0, math.log(3.0)], 0, (0.0, 0.25, 2 * 0.75 ** 2)),
        ([1.0, 1.0, 1.0, 1.0], 2, (0.0, 0.25, 0.75 ** 2 + 3 * 0.25 ** 2)),  # a tie is not a win unless first
        ([5.0, 1.0, 1.0], 0, None),
    ]
    for scores, answer, expected in cases:
        m = example_metrics(scores, answer)
        if expected is None:
            p = math.exp(5) / (math.exp(5) + 2 * math.e)
            expected = (1.0, p, (1 - p) ** 2 + 2 * ((1 - p) / 2) ** 2)
        assert (m["accuracy"], m["correct_prob"], m["brier"]) == pytest.approx(expected, abs=1e-9)


def test_length_normalisation_flips_the_winner():
    # prompt [2]; choice [0] scores log 0.1; choice [2, 2] scores log 0.64 in total, log 0.8 per token.
    # And choice [0] vs [2, 2, 2, 2, 0]: sums log 0.1 vs log(0.8^4 * 0.1) -> [0] wins by sum; per token
    # (log 0.1) vs (4 log 0.8 + log 0.1) / 5 = log 0.1 / 5 + ... -> the long choice wins.
    task = TokenizedTask(name="t", prompts=[[2]], choices=[[[0], [2, 2, 2, 2, 0]]], answers=[1], chance_accuracy=0.5)
    assert evaluate_task(Bigram(), task, torch.device("cpu"))["accuracy"] == 0.0
    assert evaluate_task(Bigram(), task, torch.device("cpu"), length_normalized=True)["accuracy"] == 1.0


def test_evaluate_task_averages_over_examples():
    # Example: prompt [0]; choices [1] (ll log 3/5) vs [2, 2] (ll log(1/5 * 8/10) = log 0.16).
    task = TokenizedTask(name="t", prompts=[[0], [0]], choices=[[[1], [2, 2]], [[1], [2, 2]]], answers=[0, 1],
                         chance_accuracy=0.5)
    m = evaluate_task(Bigram(), task, torch.device("cpu"))
    assert m["accuracy"] == pytest.approx(0.5)
    p0 = 0.6 / (0.6 + 0.16)
    assert m["correct_prob"] == pytest.approx((p0 + (1 - p0)) / 2)
    # Per token, choice [2, 2] scores log(0.16)/2 = log 0.4 < log 0.6: still choice 0 wins.
    m = evaluate_task(Bigram(), task, torch.device("cpu"), length_normalized=True)
    p0 = 0.6 / (0.6 + 0.4)
    assert m["accuracy"] == pytest.approx(0.5) and m["correct_prob"] == pytest.approx((p0 + (1 - p0)) / 2)


def test_task_file_errors_name_the_line_and_field(tmp_path):
    good = {"prompt": "a", "choices": [" b", " c"], "answer": 1}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "answer": 2}) + "\n")
    with pytest.raises(TaskError, match=r"t.jsonl:2: .*out of range"):
        load_task_jsonl(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(TaskError, match=r"t.jsonl:2: not valid JSON"):
        load_task_jsonl(path)
    path.write_text(json.dumps({**good, "extra": 1}) + "\n")
    with pytest.raises(TaskError, match=r"t.jsonl:1: extra"):
        load_task_jsonl(path)
    with pytest.raises(TaskError, match="does not exist"):
        load_task_jsonl(tmp_path / "missing.jsonl")
    path.write_text(json.dumps(good) + "\n")
    assert load_task_jsonl(path) == [TaskExample(**good)]


def test_tokenized_choices_are_the_continuation_of_the_prompt(toy_world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_world.tokenizer)
    ex = TaskExample(prompt="ba ku", choices=[" ti", " mo ra"], answer=0)
    t = tokenize_task("x", [ex], tok)
    for choice, ids in zip(ex.choices, t.choices[0]):
        assert tok.decode(t.prompts[0] + ids) == ex.prompt + choice
    assert t.chance_accuracy == 0.5


def test_batching_across_examples_matches_one_example_at_a_time(toy_world):
    """Right padding in a batch of examples of different lengths changes no score (real model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.tasks import batch_log_likelihoods
    from trainers.toy_tasks import toy_task_examples
    from trainers.toyworld import ToyWorldConfig

    tok = AutoTokenizer.from_pretrained(toy_world.tokenizer)
    model = AutoModelForCausalLM.from_pretrained(toy_world.model).eval()
    task = tokenize_task("nw", toy_task_examples(ToyWorldConfig(), "next_word", 6), tok)
    items = list(zip(task.prompts, task.choices))
    batched = batch_log_likelihoods(model, items, torch.device("cpu"))
    single = [choice_log_likelihoods(model, p, c, torch.device("cpu")) for p, c in items]
    assert len({len(p) for p in task.prompts}) > 1  # the batch really mixes lengths
    assert [x for row in batched for x in row] == pytest.approx([x for row in single for x in row], abs=1e-4)
