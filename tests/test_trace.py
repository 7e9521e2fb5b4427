"""The trace on tiny modules: it records, edits one CFG half at chosen steps, and cleans up."""

import pytest
import torch

from ldmprobe.backbones import Backbone
from ldmprobe.backbones.trace import Point, Trace

LAYOUT = Backbone().cfg_layout  # [uncond, cond] for a batch of two, cond alone for one


class Joint(torch.nn.Module):
    """Like a joint-attention block: returns (image tokens, text tokens)."""

    def __init__(self):
        super().__init__()
        self.image = torch.nn.Linear(3, 3)
        self.text = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.image(x), self.text(x)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first = torch.nn.Linear(3, 3)
        self.joint = Joint()
        self.last = torch.nn.Linear(3, 3)

    def forward(self, x):
        image, text = self.joint(self.first(x))
        return self.last(image + text)


def tokens(batch=2):
    return torch.randn(batch, 4, 3, generator=torch.Generator().manual_seed(1))


def test_records_each_call_and_half_by_the_layout():
    model, x = Tiny(), tokens()
    seen = []
    record = lambda layer, half, step, values: seen.append((layer, half, step, values))  # noqa: E731
    with (
        Trace(model, [Point("first", "first")], halves=("cond", "uncond"), layout=LAYOUT,
              record=record) as trace,
        torch.no_grad(),
    ):  # fmt: skip
        model(x)
        model(x)
    assert trace.calls == 2
    assert [(layer, half, step) for layer, half, step, _ in seen] == [
        ("first", "cond", 0), ("first", "uncond", 0), ("first", "cond", 1), ("first", "uncond", 1),
    ]  # fmt: skip
    expected = model.first(x)
    assert torch.equal(seen[0][3], expected[1]) and torch.equal(seen[1][3], expected[0])
    # Hooks are gone after the block: nothing more is recorded.
    model(x)
    assert len(seen) == 4 and not model.first._forward_hooks and not model._forward_pre_hooks


def test_edit_replaces_one_half_at_one_step_only():
    model, x = Tiny(), tokens()
    with torch.no_grad():
        clean = model(x)

    def zero_at_step_1(layer, half, step, values):
        return torch.zeros_like(values) if step == 1 else None

    point = Point("first", "first")
    with (
        Trace(model, [point], halves=("cond",), layout=LAYOUT, edit=zero_at_step_1),
        torch.no_grad(),
    ):
        step0, step1 = model(x), model(x)
    assert torch.equal(step0, clean)  # no edit at step 0: the output is untouched
    assert torch.equal(step1[0], clean[0])  # the unconditional half is kept
    assert not torch.allclose(step1[1], clean[1])  # the conditional half changed...
    with torch.no_grad():
        expected = model.last(sum(model.joint(torch.zeros(4, 3))))
    assert torch.allclose(step1[1], expected)  # ...to what zeros at `first` give


def test_edit_through_a_point_that_reads_one_stream_of_a_tuple():
    model, x = Tiny(), tokens()
    image_stream = Point(
        "joint", "joint", read=lambda out: out[0], write=lambda out, new: (new, *out[1:])
    )
    recorded = []
    with (
        Trace(model, [image_stream], halves=("cond",), layout=LAYOUT,
              edit=lambda *_: torch.ones(4, 3),
              record=lambda layer, half, step, values: recorded.append(values)),
        torch.no_grad(),
    ):  # fmt: skip
        edited = model(x)
    assert torch.equal(recorded[0], torch.ones(4, 3))  # record sees the edited row
    with torch.no_grad():
        image, text = model.joint(model.first(x))
        assert torch.allclose(edited[1], model.last(torch.ones(4, 3) + text[1]))
        assert torch.allclose(edited[0], model.last(image[0] + text[0]))


def test_a_half_the_batch_does_not_hold_is_an_error():
    model = Tiny()
    trace = Trace(model, [Point("first", "first")], halves=("uncond",), layout=LAYOUT, record=print)
    with trace, torch.no_grad(), pytest.raises(ValueError, match=r"\['uncond'\].*\['cond'\]"):
        model(tokens(batch=1))  # a batch of one (no CFG) holds the conditional half only


def test_unknown_module_is_named_and_nothing_stays_hooked():
    model = Tiny()
    points = [Point("a", "first"), Point("b", "nothing")]
    trace = Trace(model, points, halves=("cond",), layout=LAYOUT, record=print)
    with pytest.raises(KeyError, match="nothing"):
        trace.__enter__()
    assert not model.first._forward_hooks and not model._forward_pre_hooks


def test_on_call_sees_inputs_and_output_of_each_step():
    model, x = Tiny(), tokens()
    calls = []
    on_call = lambda step, args, kwargs, out: calls.append((step, out))  # noqa: E731
    with Trace(model, [], on_call=on_call), torch.no_grad():
        out = model(x)
    assert len(calls) == 1 and calls[0][0] == 0 and torch.equal(calls[0][1], out)
