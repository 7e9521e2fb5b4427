"""One trace over named modules: it records their outputs, or replaces them (edit).

In the spirit of baukit's ``TraceDict(model, names, edit_output=fn)``: nothing model-specific
lives here. The caller names the modules; a backbone adapter (``ldmprobe.backbones``) says which
modules a family probes, how its CFG batch is laid out and how to read the image tokens of a
module's output. Generation's capture, the permuted-U-Net replay, the VAE control and layer
discovery all use this class, and an intervention uses ``edit``.

Record every call's conditional half at two layers::

    points = [backbone.point(layer.name, layer.module_path) for layer in layers]
    with Trace(denoiser, points, halves=("cond",), layout=backbone.cfg_layout,
               record=lambda layer, half, step, tokens: keep(layer, step, tokens)):
        pipe(prompt, ...)

Edit the conditional half of one layer at step 3 (the other half and steps stay as they are)::

    def edit(layer, half, step, tokens):       # tokens: [tokens, channels] of that row
        return tokens * 0 if step == 3 else None   # None leaves the output alone

    with Trace(denoiser, points, halves=("cond",), layout=backbone.cfg_layout, edit=edit):
        pipe(prompt, ...)

* A *step* is one call of ``root``: a forward pre-hook counts them from 0 (``trace.step``), so
  schedulers that repeat a timestep cannot shift it, and the VAE's steps are its decoder calls.
* ``halves`` names the CFG rows to hand over; ``layout(batch)`` maps each half the batch holds
  to its row. A half the batch does not hold raises ``ValueError`` naming the halves it has.
* ``record(layer, half, step, tokens)`` gets each chosen row, detached: [tokens, channels].
* ``edit(layer, half, step, tokens)`` returns that row's replacement, or None to leave it; the
  module's output is rebuilt with the point's ``write`` (a joint-attention block keeps its
  text stream). Record sees the edited row when both are given.
* ``on_call(step, args, kwargs, output)`` sees every call of ``root``: its inputs and output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


def _whole(output):
    return output


def _replaced(_output, tokens):
    return tokens


@dataclass(frozen=True)
class Point:
    """One traced module: the layer's short name and the dotted path of the module whose output
    is read. ``read(output)`` gives the image tokens [batch, tokens, channels]; ``write(output,
    tokens)`` returns the output with them replaced. Both default to the output itself."""

    layer: str
    module: str
    read: Callable[[Any], Any] = _whole
    write: Callable[[Any, Any], Any] = _replaced


class Trace:
    """Context manager over ``points`` (modules under ``root``); see the module docstring."""

    def __init__(
        self,
        root,
        points: Iterable[Point],
        *,
        halves: Iterable[str] = (),
        layout: Callable[[int], Mapping[str, int]] | None = None,
        record: Callable | None = None,
        edit: Callable | None = None,
        on_call: Callable | None = None,
    ):
        self.root = root
        self.points = list(points)
        self.halves = tuple(halves)
        if self.points and (record or edit) and (not self.halves or layout is None):
            raise ValueError("a trace that records or edits needs its halves and CFG layout")
        self.layout = layout
        self.record = record
        self.edit = edit
        self.on_call = on_call
        self.step = -1
        self._handles: list = []

    @property
    def calls(self) -> int:
        return self.step + 1

    def __enter__(self) -> Trace:
        modules = dict(self.root.named_modules())
        missing = [point.module for point in self.points if point.module not in modules]
        if missing:
            raise KeyError(f"no module(s) {missing} under {type(self.root).__name__}")
        try:
            self._handles.append(self.root.register_forward_pre_hook(self._count))
            if self.on_call is not None:
                self._handles.append(
                    self.root.register_forward_hook(self._called, with_kwargs=True)
                )
            for point in self.points:
                hook = self._hook(point)
                self._handles.append(modules[point.module].register_forward_hook(hook))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _count(self, _module, _args) -> None:
        self.step += 1

    def _called(self, _module, args, kwargs, output) -> None:
        self.on_call(self.step, args, kwargs, output)

    def rows(self, batch: int) -> dict[str, int]:
        """Row of each chosen half in a batch of ``batch``, by the CFG layout."""
        layout = self.layout(batch)
        absent = [half for half in self.halves if half not in layout]
        if absent:
            raise ValueError(
                f"CFG half {absent} is not in this batch of {batch}: it holds {sorted(layout)}"
            )
        return {half: layout[half] for half in self.halves}

    def _hook(self, point: Point):
        def hook(_module, _inputs, output):
            tokens = point.read(output)
            rows = self.rows(tokens.shape[0])
            edited = None
            for half, row in rows.items():
                values = tokens[row].detach()
                if self.edit is not None:
                    replacement = self.edit(point.layer, half, self.step, values)
                    if replacement is not None:
                        if edited is None:
                            edited = tokens.clone()
                        edited[row] = replacement
                        values = edited[row].detach()
                if self.record is not None:
                    self.record(point.layer, half, self.step, values)
            return None if edited is None else point.write(output, edited)

        return hook
