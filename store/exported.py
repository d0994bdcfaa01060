"""A trained model as one file that runs without this project: ONNX (onnxruntime, and every runtime that
reads ONNX) or torch.export's ExportedProgram (`.pt2`: torch.export.load, AOTInductor, ExecuTorch).

    exported = export(model, example, "onnx")           # in memory; ExportError (one line) if it cannot be
    with atomic_path(out) as tmp:                       # system/files.py: whole or not at all
        exported.save(tmp)
        worst = exported.check(tmp, model, batches, tolerance)   # read back from disk, run, compared

The batch dimension is exported dynamic, and the check runs the file read back from disk on batches of two
sizes against the eager model: a file that export.py leaves behind gives PyTorch's outputs on any batch
size, to within the tolerance. What the exporters warn of (deprecations, a tracer's "might be incorrect")
is not shown: the check is what vouches for the file.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._pytree import tree_flatten

from system.errors import UserError

ONNX, PROGRAM = "onnx", "exported_program"


class ExportError(UserError):
    """A model that cannot be exported to a format, or whose exported file does not give its outputs."""


@dataclass(frozen=True)
class Exported:
    format: str
    program: object  # an ExportedProgram, an ONNXProgram (dynamo), or the ONNX file's bytes (TorchScript)
    exporter: str  # which exporter made it: the log line says so
    fallback_reason: str | None = None  # why the dynamo ONNX exporter was not the one

    def save(self, path: Path) -> None:
        if self.format == PROGRAM:
            torch.export.save(self.program, path)
        elif isinstance(self.program, bytes):
            path.write_bytes(self.program)
        else:  # one file, weights inside: no side file that the atomic rename would leave behind
            self.program.save(path, external_data=False)

    def check(
        self, path: Path, model: torch.nn.Module, batches: list[torch.Tensor], tolerance: float
    ) -> float:
        """The largest absolute difference between the file's outputs (read back from `path`) and the
        model's own over `batches` (the first the one it was exported from); ExportError where it does not
        load or run, gives other shapes, or differs by more than `tolerance`."""
        what = "ONNX model" if self.format == ONNX else "ExportedProgram"
        try:
            run = _onnx_runner(path) if self.format == ONNX else _program_runner(path)
        except Exception as err:
            raise self._failed(f"the exported {what} does not load: {reason(err)}") from None
        worst, size = 0.0, len(batches[0])
        for x in batches:
            on = f"on a batch of {len(x)}" + (f" (exported from one of {size})" if len(x) != size else "")
            with torch.no_grad():
                expected = _tensors(model(x))
            try:
                got = [torch.as_tensor(g) for g in run(x)]
            except Exception as err:
                raise self._failed(f"the exported {what} does not run {on}: {reason(err)}") from None
            if len(got) != len(expected):
                raise self._failed(
                    f"the exported {what} gives {len(got)} outputs {on}, the model {len(expected)}"
                )
            for e, g in zip(expected, got, strict=True):
                if tuple(g.shape) != tuple(e.shape):
                    raise self._failed(
                        f"the exported {what} gives an output of shape {tuple(g.shape)} {on}, the model "
                        f"{tuple(e.shape)}"
                    )
                worst = max(worst, _largest_difference(e, g))
        if worst > tolerance:
            raise self._failed(
                f"the exported {what} differs from the model by up to {worst:.3g}, more than tolerance={tolerance:g}"
            )
        return worst

    def _failed(self, text: str) -> ExportError:
        """The check's one line, with why the exporter that made the file was the fallback."""
        if self.fallback_reason:
            text += f" (made by the {self.exporter} exporter: the dynamo exporter failed with {self.fallback_reason})"
        return ExportError(text)


def export(model: torch.nn.Module, example: torch.Tensor, format: str) -> Exported:
    """The model exported, in memory, with the batch dimension of `example` (its input) dynamic. ONNX: the
    dynamo exporter first, the TorchScript one where it fails. ExportError, one line with the exporter's
    reason, where no exporter can."""
    if format == PROGRAM:
        try:
            with _quiet():
                program = torch.export.export(model, (example,), dynamic_shapes=_batch_dynamic())
        except Exception as err:
            raise ExportError(f"the model cannot be exported by torch.export: {reason(err)}") from None
        return Exported(format, program, "torch.export")
    try:
        with _quiet():
            program = torch.onnx.export(
                model, (example,), dynamo=True, dynamic_shapes=_batch_dynamic(), input_names=["input"]
            )
        return Exported(format, program, "dynamo (torch.export)")
    except Exception as err:
        dynamo = reason(err)
    try:
        with _quiet():
            program = _torchscript_onnx(model, example)
    except Exception as err:
        raise ExportError(
            f"the model cannot be exported to ONNX: dynamo exporter: {dynamo}; TorchScript exporter: {reason(err)}"
        ) from None
    return Exported(format, program, "TorchScript", fallback_reason=dynamo)


def _torchscript_onnx(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The older exporter, which traces: every input and output named, with its first dimension dynamic."""
    with torch.no_grad():
        count = len(_tensors(model(example)))
    names = [f"output{i}" for i in range(count)]
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buffer,
        dynamo=False,
        input_names=["input"],
        output_names=names,
        dynamic_axes={name: {0: "batch"} for name in ["input", *names]},
    )
    return buffer.getvalue()


def _batch_dynamic():
    return ({0: torch.export.Dim("batch")},)


@contextlib.contextmanager
def _quiet():
    """The dynamo exporter prints its progress, torch.export the whole graph where it fails, and both
    exporters warn: only their errors are the user's."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        yield


def _onnx_runner(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # its errors come back as exceptions, told in one line: not logged too
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.detach().cpu().numpy()})


def _program_runner(path: Path):
    module = torch.export.load(path).module()

    def run(x):
        with torch.no_grad():
            return _tensors(module(x))

    return run


def _tensors(output) -> list[torch.Tensor]:
    """A model's output (a tensor, or lists, tuples and dicts of them) as its tensors, in the order that
    both exporters flatten it in."""
    return [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]


def _largest_difference(expected: torch.Tensor, got: torch.Tensor) -> float:
    """max |got - expected|; NaN where both are NaN counts as equal, NaN in one of them as infinite."""
    if not expected.numel():
        return 0.0
    e, g = expected.detach().cpu().double(), got.double()
    difference = (g - e).abs()
    difference[e.isnan() & g.isnan()] = 0.0
    return difference.nan_to_num(nan=float("inf")).max().item()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def reason(err: BaseException) -> str:
    """An exporter's reason, in one line: the first line of the error at the bottom of its causes (the
    exporters wrap the reason in pages of advice), with where it was raised when it says (`Caused by:`)."""
    seen = set()
    while err.__cause__ is not None and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__
    lines = [line.strip() for line in _ANSI.sub("", str(err)).splitlines() if line.strip()]
    first = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    where = next((line for line in lines[1:] if line.startswith("Caused by:")), None)
    return (f"{first} ({where})" if where else first)[:600]
