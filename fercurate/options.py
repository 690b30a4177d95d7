"""The allowed values of fercurate's options, defined once for the library, the CLI and recipes.

The option models (:class:`~fercurate.audit.run.AuditOptions`, :class:`~fercurate.train.loop.TrainConfig`,
the export's options) type their fields with the ``Literal`` aliases below and validate the free-form
ones (devices, balance targets) with the parsers below (which raise
:class:`~fercurate.errors.OptionError`, a ``ValueError``, so pydantic reports them too), so a bad value is refused where the option is
defined, with the same words whether it came from the command line, a recipe or Python.
:func:`option_error` turns pydantic's ``ValidationError`` into an :class:`~fercurate.errors.OptionError`
a person can read.

Invariant: this module imports neither pydantic nor anything heavy, so the command line can build
its help texts from it while ``fercurate --help`` stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from fercurate.errors import OptionError

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound="BaseModel")
NoiseModel = Literal["auto", "cnn", "hog-mlp", "hog-logreg"]
ModelName = Literal["vgg", "mobilenet_v2", "tiny"]
Optimizer = Literal["adamw", "sgd"]
Schedule = Literal["onecycle", "cosine"]
#: Which faces the benchmark trains and tests on (``both``: every training set twice).
Faces = Literal["aligned", "original", "both"]
DEVICES = ("auto", "cpu", "cuda")
_DEVICE = re.compile(r"(auto|cpu|cuda|gpu)(:\d+)?")
_COUNT_TARGET = re.compile(r"(uniform|cap):(\d+)")
#: The canonical emotions a proportional balance target may name (schema's order; kept here, not
#: imported, so that this module stays light; tests check it equals ``schema.CANONICAL_LABELS``).
BALANCE_LABELS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
BALANCE_HELP = "uniform, uniform:N, cap:N, or label=share,... (e.g. anger=1,disgust=1)"


def choices(kind: Any) -> str:
    """The values a ``Literal`` (or a tuple) allows, as help text: ``a, b or c``."""
    values = [str(value) for value in (get_args(kind) or kind)]
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


def parse_device(value: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``gpu`` (``gpu:N``) is accepted as an alias of ``cuda``."""
    text = str(value).strip().lower()
    match = _DEVICE.fullmatch(text)
    if match is None or match.group(2) and match.group(1) in ("auto", "cpu"):
        raise OptionError(f"unknown device {value!r}: use {choices(DEVICES)} (or cuda:N; gpu means cuda)")
    return text.replace("gpu", "cuda", 1)


def parse_balance(value: str | Mapping[str, float]) -> str | dict[str, float]:
    """A balance target as the splitter takes it: ``uniform``, ``uniform:N`` / ``cap:N`` (N >= 0),
    or a mapping of canonical labels to non-negative shares, given as a mapping or as the text
    ``label=share,...``. One parser for ``export --balance``, ``train --balance`` and recipes."""
    if isinstance(value, Mapping):
        shares = dict(value)
    else:
        text = str(value).strip()
        if text == "uniform":
            return text
        if _COUNT_TARGET.fullmatch(text):
            return text
        if "=" not in text:
            raise OptionError(f"unknown balance target {text!r}: use {BALANCE_HELP}")
        shares = {}
        for item in text.split(","):
            label, _, share = item.partition("=")
            try:
                shares[label.strip()] = float(share)
            except ValueError:
                raise OptionError(f"balance target {text!r}: {item.strip()!r} is not label=number") from None
    unknown = sorted(set(shares) - set(BALANCE_LABELS))
    if unknown:
        raise OptionError(f"balance target names {', '.join(map(repr, unknown))}, not an emotion: "
                         f"use {', '.join(BALANCE_LABELS)}")
    if any(not share >= 0 or share == float("inf") for share in shares.values()) or not any(shares.values()):
        raise OptionError("balance shares must be finite, non-negative and not all zero")
    return {label: float(share) for label, share in shares.items()}


def option_error(error: ValidationError, what: str = "option") -> OptionError:
    """One readable line per problem in a pydantic ``ValidationError``: which option, what is wrong,
    what was given (the advice a validator wrote is kept; pydantic's URLs and prefixes are not)."""
    problems = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or what
        message = str(problem["msg"]).removeprefix("Value error, ")
        given = repr(problem.get("input"))
        problems.append(f"{where}: {message}" + (f" (got {given})" if len(given) <= 60 and problem["loc"] else ""))
    return OptionError(f"invalid {what}: " + "; ".join(problems))


def validated(model: type[Model], what: str | None = None, /, **values: Any) -> Model:
    """``model(**values)``, with a validation failure raised as :class:`OptionError` (see :func:`option_error`)."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as error:
        raise option_error(error, what or "option") from None
