"""A strict, single-machine emulation of what kubeedge/sedna v0.7.0 does for ONE LifelongLearningJob.

Why this exists: our workers (the container commands of ``manifests/``) only ever meet Sedna's global
manager (GM), local controller (LC) and the kubelet inside a cluster. This module re-implements, in
Python, the parts of that Go code a worker depends on -- the job state machine, the pod each stage
gets (env, mounts, restart policy), the sample files the LC writes, the LC's HTTP server and the
JSON round trips a worker report goes through -- so that a test can run the real workers through
train -> eval -> deploy -> round 2 and fail where a cluster would fail. Every emulated behaviour
cites the Go file and function it comes from (paths relative to github.com/kubeedge/sedna at tag
v0.7.0). The code is ours; nothing is copied from Sedna.

Deliberate deviations from a real cluster (each also noted where it happens):

* Container path prefix: GM mounts hostPath URLs under ``/home/data``; we cannot create that, so
  ``P = root / "home-data"`` plays its role (``DATA_PATH_PREFIX=P``), and ``P + <host path>``
  resolves to the host path through one symlink ``P + str(root) -> root``.
* Mount visibility is enforced by a Python audit hook (``sitecustomize`` first on PYTHONPATH), not
  by mount namespaces: it covers ``open``/``os.listdir``/``os.scandir`` and the ``os`` calls that
  write, so ``os.stat``/``os.path.exists`` still see unmounted paths, non-Python programs are not
  checked, and relative paths are resolved against the CWD (not a ``dir_fd``).
* emptyDir mountPaths (``/cache``, ``/tmp`` ...) become per-pod directories; only env values and
  command/args items that start with such a mountPath are rewritten (opening the literal path is
  refused, except ``/dev/shm``, which stays the host's).
* Time is collapsed: one :meth:`SednaCluster.tick` is one LC iteration (dataset re-read every tick
  instead of every 60 s, job loop every tick instead of every 10 s) plus GM syncs until nothing
  changes; the train trigger's timer window is still checked against the local clock.
* Train/eval pods run synchronously; the GM sees them Running for the time they run. Kubelet
  back-off is not emulated: a crashing container is restarted at once, ``max_restarts`` times.
* One LC process serves every node: ``LC_SERVER`` is ``http://127.0.0.1:<free port>`` instead of
  ``http://localhost:9100``; which node's LC "knows" the job is still tracked as GM's syncToEdge
  would, so a report from a pod on a node whose LC never got the job is dropped, as in Go.
* Users: when the test runs as root, each container runs as the uid/gid/groups and capabilities its
  securityContext gives it (through util-linux ``setpriv``). If that uid cannot reach the Python
  interpreter (here it lives under /root, mode 0700), the process also gets CAP_DAC_READ_SEARCH:
  reads bypass permission checks, writes are still checked. When not root, everything runs as the
  current user and ownership is not emulated (``cluster.emulates_users`` is False).
* The KB server is not started, storage-initializer downloads (s3/http URLs, indirect dataset
  indexes), volumes other than hostPath/emptyDir, sidecar containers, envFrom, configMapKeyRef and
  resourceFieldRef are not emulated: they raise :class:`EmulatorError` instead of being guessed.
* GM's env map is emitted sorted by name (Go's map order is random); secretKeyRef values that
  ``secrets`` does not hold are left unset (a kubelet would refuse to start a container whose
  non-optional secret is missing), with a warning on the pod.
"""

from __future__ import annotations

import copy
import gzip
import http.server
import json
import math
import os
import posixpath
import random
import re
import shutil
import signal
import stat
import struct
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# --------------------------------------------------------------------------------------------------
# Errors


class EmulatorError(Exception):
    """Something the emulation cannot do, or a cluster condition that stops the job."""


class JobStalled(EmulatorError):
    """The Go code would leave the job waiting forever (it only logs, or retries the same failure)."""


class SednaPitfall(EmulatorError):
    """The Go code would silently do the wrong thing (e.g. mount the wrong host directory)."""


class PodStartError(EmulatorError):
    """The kubelet would never start this pod (mount check, config error): it stays Pending."""


class PodCrashLoop(EmulatorError):
    """A container kept failing: a real cluster would restart it forever (CrashLoopBackOff)."""


class LostMessages(AssertionError):
    """At least one worker report did not become a job condition."""


class NotReached(EmulatorError):
    """``run_until``/``advance`` ran out of ticks."""


# --------------------------------------------------------------------------------------------------
# Go helpers: paths, names, numbers, JSON

_LC_ROOTFS = "/rootfs"  # cmd/sedna-lc/app/server.go: VolumeMountPrefix defaults to ROOTFS_MOUNT_DIR=/rootfs
_GO_RAND_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand: String
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_KB_SERVER_DEFAULT = "http://kb.sedna:9020"  # build/helm/sedna/values.yaml: gm.knowledgeBaseServer
_CONTAINER_DEFAULT_CAPS = frozenset(  # containerd's default capability set for a container
    {
        "chown",
        "dac_override",
        "fsetid",
        "fowner",
        "mknod",
        "net_raw",
        "setgid",
        "setuid",
        "setfcap",
        "setpcap",
        "net_bind_service",
        "sys_chroot",
        "kill",
        "audit_write",
    }
)
_LC_FEATURE_MANAGERS = frozenset(  # cmd/sedna-lc/app/server.go: the managers added with AddFeatureManager
    {
        "dataset",
        "model",
        "jointinferenceservice",
        "federatedlearningjob",
        "incrementallearningjob",
        "lifelonglearningjob",
    }
)
_LL_KIND = "lifelonglearningjob"  # pkg/localcontroller/managers/lifelonglearning: KindName


def _go_clean(path: str) -> str:
    """Go's path.Clean: like posixpath.normpath, but a leading "//" collapses to "/"."""
    cleaned = posixpath.normpath(path) if path else "."
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def _go_join(*elems: str) -> str:
    """Go's filepath.Join: join the non-empty elements with "/" and Clean the result."""
    kept = [e for e in elems if e]
    return _go_clean("/".join(kept)) if kept else ""


def _go_split(path: str) -> tuple[str, str]:
    """Go's filepath.Split: directory (with its trailing slash) and file name."""
    i = path.rfind("/")
    return path[: i + 1], path[i + 1 :]


def _add_prefix_path(prefix: str, path: str) -> str:
    """pkg/localcontroller/util/util.go: AddPrefixPath (filepath.Join, so the result is Cleaned)."""
    return _go_join(prefix, path)


def _trim_prefix_path(prefix: str, path: str) -> str:
    """pkg/localcontroller/util/util.go: TrimPrefixPath (strings.TrimPrefix)."""
    return path[len(prefix) :] if path.startswith(prefix) else path


def _go_url_scheme(url: str) -> str:
    """net/url.Parse's getScheme: the scheme of ``url`` ("" for a plain path)."""
    for i, ch in enumerate(url):
        if ch.isascii() and ch.isalpha():
            continue
        if ch.isascii() and (ch.isdigit() or ch in "+-.") and i > 0:
            continue
        if ch == ":" and i > 0:
            return url[:i].lower()
        return ""
    return ""


def _convert_k8s_valid_name(name: str) -> str:
    """pkg/globalmanager/runtime/common.go: ConvertK8SValidName (volume names from host paths)."""
    fixed: list[str] = []
    for ch in name.lower():
        if ("a" <= ch <= "z") or ("0" <= ch <= "9") or ch == "-":
            fixed.append(ch)
        elif fixed and fixed[-1] != "-":
            fixed.append("-")
    fixed = fixed[:63]
    if fixed and fixed[-1] == "-":
        fixed[-1] = "z"
    return "".join(fixed)


def _k8s_expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """k8s third_party/forked/golang/expansion: Expand ($(VAR) references, "$$" escapes "$")."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    value = lookup(name)
                    out.append(value if value is not None else f"$({name})")
                    i = end + 1
                    continue
                out.append("$(")
                i += 2
                continue
            out.append("$" + nxt)
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _f32(value: float) -> float:
    """Round a float64 to the nearest float32 (raises OverflowError when it does not fit)."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def _shortest_repr(value: float, bits: int) -> str:
    """Shortest decimal that reads back as the same float32/float64 (strconv's precision -1)."""
    if bits == 64:
        return repr(value)
    for digits in range(1, 10):
        candidate = f"{value:.{digits - 1}e}"
        if _f32(float(candidate)) == value:
            return candidate
    return f"{value:.8e}"


def _go_float(value: float, bits: int) -> str:
    """encoding/json floatEncoder: 'f' format, or 'e' outside [1e-6, 1e21), with "e-07" -> "e-7"."""
    if bits == 32:
        value = _f32(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"json: unsupported value: {value}")
    magnitude = abs(value)
    use_e = magnitude != 0 and (
        (bits == 64 and (magnitude < 1e-6 or magnitude >= 1e21))
        or (bits == 32 and (_f32(magnitude) < _f32(1e-6) or _f32(magnitude) >= _f32(1e21)))
    )
    number = Decimal(_shortest_repr(value, bits)).normalize()
    if not use_e:
        return format(number, "f")
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    text_digits = "".join(map(str, digits))
    exp10 = exponent + len(text_digits) - 1
    mantissa = text_digits[0] + ("." + text_digits[1:] if len(text_digits) > 1 else "")
    exp_text = f"{abs(exp10):02d}"
    if exp10 < 0 and exp_text.startswith("0"):
        exp_text = exp_text[1:]
    return f"{'-' if sign else ''}{mantissa}e{'-' if exp10 < 0 else '+'}{exp_text}"


_SURROGATES = re.compile("[\ud800-\udfff]")


def _go_string(text: str) -> str:
    """encoding/json string encoding: HTML-safe escapes, U+2028/2029 escaped, bad UTF-16 -> U+FFFD."""
    encoded = json.dumps(_SURROGATES.sub("\ufffd", text), ensure_ascii=False)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        encoded = encoded.replace(raw, escaped)
    return encoded


class _Num:
    """A JSON number kept as its literal text, because Go decides by the text (json.Number, int)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"_Num({self.text})"


class _Obj(list):
    """A JSON object as its (key, value) pairs in document order (Go handles duplicates in order)."""


class _GoJSONError(Exception):
    """A decode error worded like Go's encoding/json."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


_JSON_DECODER = json.JSONDecoder(
    object_pairs_hook=_Obj, parse_float=_Num, parse_int=_Num, parse_constant=_reject_constant
)
_JSON_WS = " \t\n\r"


def _go_parse(text: str, *, stream: bool) -> Any:
    """Parse JSON the way Go does: ``stream`` is json.Decoder.Decode (first value only, trailing
    data ignored, empty input -> "EOF"), otherwise json.Unmarshal (the whole input)."""
    start = len(text) - len(text.lstrip(_JSON_WS))
    if start == len(text):
        raise _GoJSONError("EOF" if stream else "unexpected end of JSON input")
    try:
        value, end = _JSON_DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip(_JSON_WS)):
            raise _GoJSONError("unexpected EOF" if stream else "unexpected end of JSON input") from None
        raise _GoJSONError(f"invalid character {text[exc.pos]!r} ({exc.msg})") from None
    except ValueError as exc:
        raise _GoJSONError(str(exc)) from None
    if not stream and text[end:].strip(_JSON_WS):
        rest = text[end:].lstrip(_JSON_WS)
        raise _GoJSONError(f"invalid character {rest[0]!r} after top-level value")
    return value


# Go types, as far as their JSON behaviour goes -------------------------------------------------


@dataclass(frozen=True)
class _Scalar:
    kind: str  # string | int | float32 | float64 | bool


@dataclass(frozen=True)
class _AnyT:
    """interface{}: ``use_number`` is a json.Decoder with UseNumber (the LC server), else float64."""

    use_number: bool


@dataclass(frozen=True)
class _SliceT:
    elem: Any
    go: str


@dataclass(frozen=True)
class _MapT:
    elem: Any
    go: str


@dataclass(frozen=True)
class _PtrT:
    elem: Any


@dataclass(frozen=True)
class _F:
    key: str
    type: Any
    omitempty: bool = False


@dataclass(frozen=True)
class _StructT:
    name: str
    fields: tuple[_F, ...]


_STRING = _Scalar("string")
_INT = _Scalar("int")
_FLOAT32 = _Scalar("float32")
_BOOL = _Scalar("bool")
_ANY_NUMBER = _AnyT(use_number=True)
_ANY = _AnyT(use_number=False)

# pkg/globalmanager/runtime/types.go: Model (and ModelMetric map[string]float32)
_MODEL = _StructT(
    "Model",
    (
        _F("format", _STRING),
        _F("url", _STRING),
        _F("device_soc_versions", _SliceT(_STRING, "[]string"), omitempty=True),
        _F("metrics", _MapT(_ANY, "map[string]interface {}"), omitempty=True),
        _F("history_metric", _FLOAT32, omitempty=True),
        _F(
            "current_metric",
            _MapT(_MapT(_FLOAT32, "runtime.ModelMetric"), "map[string]runtime.ModelMetric"),
            omitempty=True,
        ),
        _F("classes", _SliceT(_STRING, "[]string")),
        _F("number_of_labeled_unseen_sample", _INT, omitempty=True),
        _F("number_of_model", _INT, omitempty=True),
        _F("number_of_unseen_sample", _INT, omitempty=True),
    ),
)
_MODELS = _SliceT(_MODEL, "[]runtime.Model")
# pkg/globalmanager/controllers/lifelonglearning/upstream.go: ConditionData
_CONDITION_DATA = _StructT(
    "ConditionData",
    (
        _F(
            "input",
            _PtrT(
                _StructT(
                    "",
                    (
                        _F("model", _PtrT(_MODEL), omitempty=True),
                        _F("models", _MODELS, omitempty=True),
                        _F("dataURL", _STRING, omitempty=True),
                        _F("dataIndexURL", _STRING, omitempty=True),
                        _F("outputDir", _STRING, omitempty=True),
                    ),
                )
            ),
            omitempty=True,
        ),
        _F(
            "output",
            _PtrT(
                _StructT(
                    "", (_F("model", _PtrT(_MODEL), omitempty=True), _F("models", _MODELS, omitempty=True))
                )
            ),
            omitempty=True,
        ),
    ),
)
# upstream.go: updateFromEdge's jobStatus
_JOB_STATUS = _StructT("", (_F("phase", _STRING), _F("status", _STRING)))
# pkg/localcontroller/worker/worker.go: MessageContent
_RESULTS = _SliceT(_MapT(_ANY_NUMBER, "map[string]interface {}"), "[]map[string]interface {}")
_OWNER_INFO = _MapT(_ANY_NUMBER, "map[string]interface {}")
_MESSAGE_CONTENT = _StructT(
    "MessageContent",
    (
        _F("name", _STRING),
        _F("namespace", _STRING),
        _F("ownerName", _STRING),
        _F("ownerKind", _STRING),
        _F("ownerInfo", _OWNER_INFO),
        _F("kind", _STRING),
        _F("status", _STRING),
        _F("results", _RESULTS),
    ),
)
# pkg/localcontroller/gmclient/types.go: UpstreamMessage, Input, Output
_UPSTREAM_MESSAGE = _StructT(
    "UpstreamMessage",
    (
        _F("phase", _STRING),
        _F("status", _STRING),
        _F(
            "input",
            _PtrT(
                _StructT(
                    "Input",
                    (
                        _F("models", _MODELS, omitempty=True),
                        _F("dataURL", _STRING, omitempty=True),
                        _F("dataIndexURL", _STRING, omitempty=True),
                        _F("outputDir", _STRING, omitempty=True),
                    ),
                )
            ),
            omitempty=True,
        ),
        _F("output", _PtrT(_StructT("Output", (_F("models", _RESULTS), _F("ownerInfo", _OWNER_INFO))))),
    ),
)


def _go_type_name(t: Any) -> str:
    if isinstance(t, _Scalar):
        return t.kind
    if isinstance(t, _AnyT):
        return "interface {}"
    if isinstance(t, (_SliceT, _MapT)):
        return t.go
    if isinstance(t, _PtrT):
        return "*" + _go_type_name(t.elem)
    return t.name or "struct"


def _zero(t: Any) -> Any:
    if isinstance(t, _Scalar):
        return {"string": "", "int": 0, "float32": 0.0, "float64": 0.0, "bool": False}[t.kind]
    if isinstance(t, _StructT):
        return {f.key: _zero(f.type) for f in t.fields}
    return None


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, _Num):
        return "number"
    if isinstance(value, _Obj):
        return "object"
    return "array"


@dataclass
class _DecodeContext:
    struct: str = ""
    fields: tuple[str, ...] = ()


def _type_error(value_desc: str, t: Any, ctx: _DecodeContext, errors: list[str]) -> None:
    if ctx.struct or ctx.fields:
        where = f"Go struct field {ctx.struct}.{'.'.join(ctx.fields)}"
    else:
        where = "Go value"
    errors.append(f"json: cannot unmarshal {value_desc} into {where} of type {_go_type_name(t)}")


def _decode(value: Any, t: Any, ctx: _DecodeContext, errors: list[str]) -> Any:
    """encoding/json Unmarshal into Go type ``t``: JSON null leaves the zero value, a type mismatch
    is recorded (Go keeps going and returns the first such error), field names match exactly
    first, then case-insensitively, and a later duplicate key wins."""
    if value is None:
        return _zero(t)
    if isinstance(t, _PtrT):
        return _decode(value, t.elem, ctx, errors)
    if isinstance(t, _Scalar):
        return _decode_scalar(value, t, ctx, errors)
    if isinstance(t, _AnyT):
        return _decode_any(value, t, ctx, errors)
    if isinstance(t, _SliceT):
        if not isinstance(value, list) or isinstance(value, _Obj):
            _type_error(_json_kind(value), t, ctx, errors)
            return None
        return [_decode(item, t.elem, ctx, errors) for item in value]
    if isinstance(t, _MapT):
        if not isinstance(value, _Obj):
            _type_error(_json_kind(value), t, ctx, errors)
            return None
        return {key: _decode(item, t.elem, ctx, errors) for key, item in value}
    if not isinstance(value, _Obj):
        _type_error(_json_kind(value), t, ctx, errors)
        return _zero(t)
    result = _zero(t)
    exact = {f.key: f for f in t.fields}
    folded = {f.key.lower(): f for f in t.fields}
    for key, item in value:
        matched = exact.get(key) or folded.get(key.lower())
        if matched is None:
            continue
        # Go's UnmarshalTypeError names the struct holding the field and the field path from the top.
        inner = _DecodeContext(t.name or ctx.struct, (*ctx.fields, matched.key))
        result[matched.key] = _decode(item, matched.type, inner, errors)
    return result


def _decode_scalar(value: Any, t: _Scalar, ctx: _DecodeContext, errors: list[str]) -> Any:
    if t.kind == "string":
        if isinstance(value, str):
            return value
    elif t.kind == "bool":
        if isinstance(value, bool):
            return value
    elif isinstance(value, _Num):
        if t.kind == "int":
            if re.fullmatch(r"-?\d+", value.text) and -(2**63) <= int(value.text) < 2**63:
                return int(value.text)
        else:
            number = float(value.text)
            try:
                if not math.isinf(number):
                    return _f32(number) if t.kind == "float32" else number
            except OverflowError:
                pass
        _type_error(f"number {value.text}", t, ctx, errors)
        return _zero(t)
    _type_error(_json_kind(value), t, ctx, errors)
    return _zero(t)


def _decode_any(value: Any, t: _AnyT, ctx: _DecodeContext, errors: list[str]) -> Any:
    if isinstance(value, _Num):
        if t.use_number:
            return value
        number = float(value.text)
        if math.isinf(number):
            _type_error(f"number {value.text}", _Scalar("float64"), ctx, errors)
            return None
        return number
    if isinstance(value, _Obj):
        return {key: _decode_any(item, t, ctx, errors) for key, item in value}
    if isinstance(value, list):
        return [_decode_any(item, t, ctx, errors) for item in value]
    return value


def _is_empty(value: Any, t: Any) -> bool:
    """encoding/json omitempty: false, 0, "", nil pointer/interface, empty slice/map."""
    if isinstance(t, _StructT):
        return False
    if value is None:
        return True
    if isinstance(value, (list, dict, str)):
        return len(value) == 0
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value == 0
    return False


def _encode(value: Any, t: Any) -> str:
    """encoding/json Marshal of ``value`` as Go type ``t`` (struct field order, omitempty, sorted
    map keys, Go number formats)."""
    if isinstance(t, _PtrT):
        return "null" if value is None else _encode(value, t.elem)
    if isinstance(t, _Scalar):
        if t.kind == "string":
            return _go_string(value)
        if t.kind == "int":
            return str(int(value))
        if t.kind == "bool":
            return "true" if value else "false"
        return _go_float(float(value), 32 if t.kind == "float32" else 64)
    if isinstance(t, _AnyT):
        return _encode_any(value)
    if isinstance(t, _SliceT):
        return "null" if value is None else "[" + ",".join(_encode(item, t.elem) for item in value) + "]"
    if isinstance(t, _MapT):
        if value is None:
            return "null"
        return "{" + ",".join(f"{_go_string(k)}:{_encode(value[k], t.elem)}" for k in sorted(value)) + "}"
    parts = []
    for f in t.fields:
        item = value.get(f.key, _zero(f.type))
        if f.omitempty and _is_empty(item, f.type):
            continue
        parts.append(f"{_go_string(f.key)}:{_encode(item, f.type)}")
    return "{" + ",".join(parts) + "}"


def _encode_any(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _Num):
        return value.text or "0"
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, (int, float)):
        return _go_float(float(value), 64)
    if isinstance(value, list):
        return "[" + ",".join(_encode_any(item) for item in value) + "]"
    return "{" + ",".join(f"{_go_string(k)}:{_encode_any(value[k])}" for k in sorted(value)) + "}"


def _unmarshal(text: str, t: Any) -> tuple[Any, str | None]:
    """json.Unmarshal(text, &value): the decoded value and Go's error (None when it succeeded)."""
    try:
        parsed = _go_parse(text, stream=False)
    except _GoJSONError as exc:
        return _zero(t), str(exc)
    errors: list[str] = []
    value = _decode(parsed, t, _DecodeContext(), errors)
    return value, (errors[0] if errors else None)


# --------------------------------------------------------------------------------------------------
# The LC's train trigger


@dataclass
class _TrainTrigger:
    """pkg/localcontroller/trigger/trigger.go: an AndTrigger of the timer and the BinaryTrigger, as
    newTrigger (lifelonglearningjob.go) builds it from the job's LLTrigger."""

    operator: str
    metric: str
    threshold: float
    timer: tuple[str, str] | None

    @classmethod
    def from_spec(cls, trigger: dict[str, Any]) -> _TrainTrigger:
        condition = trigger.get("condition") or {}
        threshold = condition.get("threshold", 0)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise EmulatorError(f"trigger threshold {threshold!r}: the API server rejects a non-number")
        timer = trigger.get("timer")
        timer_range = (str(timer.get("start", "")), str(timer.get("end", ""))) if timer else None
        return cls(
            str(condition.get("operator", "")),
            str(condition.get("metric", "")),
            float(threshold),
            timer_range,
        )

    def fires(self, stats: dict[str, Any], now: datetime) -> bool:
        if self.timer is not None:
            # TimerRangeTrigger.Trigger: LLTimer has no "type", so the format is "15:04" and the
            # comparison is between strings.
            start, end = self.timer
            clock = now.strftime("%H:%M")
            inside = (start <= clock or clock <= end) if start > end else (start <= clock <= end)
            if not inside:
                return False
        return self._binary(stats)

    def _binary(self, stats: dict[str, Any]) -> bool:
        """BinaryTrigger.Trigger, including its metric[index] form."""
        left = self.metric.find("[")
        if left == -1:
            if self.metric not in stats:
                return False
            value = stats[self.metric]
        else:
            right = self.metric.rfind("]")
            top = stats.get(self.metric[:left].strip())
            try:
                index = int(self.metric[left + 1 : right])
            except ValueError:
                return False
            if not isinstance(top, (list, tuple)) or index >= len(top):
                return False
            value = top[index]
        try:
            real = float(value)
        except (TypeError, ValueError):
            return False
        equal = abs(real - self.threshold) < 1e-6
        op = self.operator
        if op in ("gt", ">"):
            return not equal and real > self.threshold
        if op in ("ge", ">="):
            return equal or real >= self.threshold
        if op in ("eq", "=", "=="):
            return equal
        if op in ("ne", "!="):
            return not equal
        if op in ("le", "<="):
            return equal or real <= self.threshold
        if op in ("lt", "<"):
            return not equal and real < self.threshold
        return False


# --------------------------------------------------------------------------------------------------
# Pods


@dataclass
class Mount:
    """A directory a container sees: ``container_path`` (as the process must spell it) backed by
    ``host_path``; ``source`` is gm (GM's storage injection), hostPath, emptyDir or rootfs."""

    container_path: str
    host_path: str
    read_only: bool
    source: str


@dataclass
class Pod:
    """One pod as GM created it (``spec``) and as the emulated kubelet ran it."""

    name: str
    stage: str  # Train | Eval | Deploy
    worker_type: str  # train | eval | inference (runtime.*PodType)
    spec: dict[str, Any]
    node_name: str
    worker_name: str
    dir: Path
    created_index: int
    phase: str = "Pending"  # Pending | Running | Succeeded | Failed
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    cwd: str = ""
    uid: int | None = None
    gid: int | None = None
    groups: list[int] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    deleted: bool = False
    sigkilled: bool = False
    warnings: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    launch: _Launch | None = field(default=None, repr=False)  # how to restart the main container

    @property
    def log_path(self) -> Path:
        return self.dir / "log"

    @property
    def container(self) -> dict[str, Any]:
        """The first (the only emulated) container of the pod spec."""
        return self.spec["spec"]["containers"][0]

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class WorkerMessage:
    """One HTTP request to the LC server and what became of it.

    ``outcome``: pending (queued for the LC's monitorWorker), accepted (a job condition was
    appended), rejected (HTTP error), dropped (LC ignored it) or gm error (GM's updateFromEdge
    failed, so the report is lost)."""

    worker: str
    body: str
    http_status: int
    response: str
    outcome: str
    reason: str = ""
    content: dict[str, Any] | None = field(default=None, repr=False)
    condition: dict[str, Any] | None = None
    received_at: float = field(default_factory=time.time)


@dataclass
class TickReport:
    """What one :meth:`SednaCluster.tick` changed."""

    conditions: list[dict[str, Any]]
    pods: list[Pod]
    messages: int
    lc_changed: bool

    @property
    def progress(self) -> bool:
        return bool(self.conditions or self.pods or self.messages or self.lc_changed)


@dataclass
class _MountURL:
    """pkg/globalmanager/runtime/storage_initializer_injector.go: MountURL (the fields GM sets)."""

    url: str
    download: bool
    indirect: bool = False


@dataclass
class _WorkerMount:
    """pkg/globalmanager/runtime/worker.go: WorkerMount."""

    urls: list[_MountURL]
    env_name: str
    name: str = ""


@dataclass
class _Launch:
    """Everything needed to (re)start one container process."""

    container_name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    uid: int | None
    gid: int | None
    groups: list[int]
    capabilities: list[str]
    no_new_privs: bool
    read_search_bypass: bool
    mounts: list[Mount]


@dataclass
class _LCJob:
    """pkg/localcontroller/managers/lifelonglearning/lifelonglearningjob.go: JobConfig + DataSamples
    (the parts a worker can observe)."""

    output_dir: str  # as the LC sees it: /rootfs/<outputDir>
    trigger: _TrainTrigger
    rounds: int = 0
    dataset_loaded: bool = False
    train_trigger_status: str = "ready"
    eval_trigger_status: str = "ready"
    deploy_trigger_status: str = "ready"
    train_data_url: str = ""
    eval_data_url: str = ""
    previous_numbers: int = 0
    train_samples: list[str] = field(default_factory=list)
    eval_version_samples: list[list[str]] = field(default_factory=list)
    eval_samples: list[str] = field(default_factory=list)

    @property
    def samples_output(self) -> dict[str, str]:
        base = self.output_dir.rstrip("/")
        return {"train": base + "/data/train", "eval": base + "/data/eval"}

    @property
    def train_output(self) -> str:
        return self.output_dir.rstrip("/") + "/train"

    @property
    def eval_output(self) -> str:
        return self.output_dir.rstrip("/") + "/eval"

    @property
    def deploy_model_url(self) -> str:
        return self.output_dir.rstrip("/") + "/deploy/index.pkl"


@dataclass
class _DataSource:
    """pkg/localcontroller/managers/dataset/dataset.go: DataSource."""

    samples: list[str]
    number: int
    header: str = ""


# The hook every emulated container gets (see the module docstring: "Mount visibility").
_SITECUSTOMIZE = '''\
"""Generated by tests/sedna_emulator.py: refuses file access outside this container's mounts,
because a real container would not see those paths."""
import os as _os
import sys as _sys

_CONFIG = {config}


def _install(config):
    pod = config["pod"]
    prefix = config["prefix"]
    root = config["root"]
    gm_mounts = sorted((tuple(m) for m in config["gm_mounts"]), key=lambda m: -len(m[0]))
    host_mounts = sorted((tuple(m) for m in config["host_mounts"]), key=lambda m: -len(m[0]))
    literal = tuple(config["literal"])
    readonly_rootfs = config["readonly_rootfs"]
    summary = config["summary"]
    write_flags = _os.O_WRONLY | _os.O_RDWR | _os.O_APPEND | _os.O_CREAT | _os.O_TRUNC
    fspath, fsdecode, getcwd = _os.fspath, _os.fsdecode, _os.getcwd
    normpath, realpath, join = _os.path.normpath, _os.path.realpath, _os.path.join

    def under(path, top):
        return path == top or path.startswith(top + "/")

    def deny(path, why):
        raise PermissionError(f"{{path}}: {{why}} in pod {{pod}} (mounts: {{summary}})")

    def check_mounts(path, mounts, write):
        for top, writable, label in mounts:
            if under(path, top):
                if write and not writable:
                    deny(path, f"write to {{label}}")
                return
        deny(path, "not mounted")

    def check(path, write):
        if path is None or isinstance(path, int):
            return
        try:
            path = fspath(path)
        except TypeError:
            return
        if isinstance(path, bytes):
            path = fsdecode(path)
        if not path.startswith("/"):
            path = join(getcwd(), path)
        path = normpath(path)
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        if under(path, prefix):
            check_mounts(path, gm_mounts, write)
            return
        if under(path, root):
            check_mounts(path, host_mounts, write)
            real = realpath(path)
            if real != path and under(real, root) and not under(real, prefix):
                check_mounts(real, host_mounts, write)
            return
        for top in literal:
            if under(path, top):
                deny(path, f"emptyDir mountPath {{top}} used literally (only env values and args that "
                           "start with it are rewritten)")
        real = realpath(path)
        if under(real, prefix):
            check_mounts(real, gm_mounts, write)
            return
        if under(real, root):
            check_mounts(real, host_mounts, write)
            return
        if write and readonly_rootfs and not path.startswith(("/dev/", "/proc/", "/sys/")):
            deny(path, "write to the read-only root filesystem (readOnlyRootFilesystem)")

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            write = bool(flags & write_flags) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            check(path, write)
        elif event in ("os.listdir", "os.scandir"):
            check(args[0] if args else None, False)
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.chmod", "os.chown", "os.utime"):
            if args[-1] in (None, -1):
                check(args[0], True)
        elif event == "os.truncate":
            check(args[0], True)
        elif event in ("os.rename", "os.link"):
            if args[2] in (None, -1) and args[3] in (None, -1):
                check(args[0], event == "os.rename")
                check(args[1], True)
        elif event == "os.symlink":
            if args[2] in (None, -1):
                check(args[1], True)

    _sys.addaudithook(hook)


_install(_CONFIG)
del _install
'''


# --------------------------------------------------------------------------------------------------
# The LC's HTTP server


class _LCRequestHandler(http.server.BaseHTTPRequestHandler):
    """pkg/localcontroller/server/server.go: the go-restful web service (one route)."""

    protocol_version = "HTTP/1.1"
    server: _LCServer

    def _handle(self) -> None:
        try:
            body = self._read_body()
            status, payload, content_type = self.server.cluster._lc_http_request(
                self.command, self.path, dict(self.headers.items()), body
            )
        except Exception as exc:  # noqa: BLE001 - the emulator must answer and record, not crash the thread
            status, payload, content_type = 500, f"emulator error: {exc!r}".encode(), "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = _handle  # noqa: N815 - http.server's names

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        """Silent: every request is recorded in ``cluster.messages`` instead."""


class _LCServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cluster: SednaCluster) -> None:
        super().__init__(("127.0.0.1", 0), _LCRequestHandler)
        self.cluster = cluster


# --------------------------------------------------------------------------------------------------
# The cluster


def _now_rfc3339() -> str:
    """metav1.Time's JSON form (RFC 3339, second precision, UTC)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _mkdir_p(path: Path, mode: int = 0o755) -> None:
    """Go's os.MkdirAll as a root process with umask 022 would run it: every directory it creates
    is 0755 (set explicitly, so the test's umask does not matter)."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        directory.mkdir()
        os.chmod(directory, mode)


def _can_execute(uid: int, gids: set[int], path: str, depth: int = 0) -> bool:
    """Whether ``uid`` could exec ``path`` (and its #! interpreter) by plain permission bits."""
    if uid == 0:
        return True
    real = os.path.realpath(path)

    def allowed(st: os.stat_result) -> bool:
        if st.st_uid == uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in gids:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)

    try:
        parts = Path(real).parents
        if not all(allowed(os.stat(p)) for p in parts) or not allowed(os.stat(real)):
            return False
        with open(real, "rb") as handle:
            head = handle.read(256)
    except OSError:
        return False
    if head.startswith(b"#!") and depth < 3:
        interpreter = head[2:].split(b"\n", 1)[0].strip().split()
        if interpreter:
            return _can_execute(uid, gids, os.fsdecode(interpreter[0]), depth + 1)
    return True


def _container_exit_code(returncode: int) -> int:
    """A container killed by signal N exits 128 + N, as the kubelet reports it (137 for SIGKILL)."""
    return 128 - returncode if returncode < 0 else returncode


def _rewrite_prefix(value: str, mapping: dict[str, str]) -> str:
    """Rewrite a value that starts with an emptyDir mountPath to that volume's private directory."""
    for top in sorted(mapping, key=len, reverse=True):
        bare = top.rstrip("/") or "/"
        if value == bare or value.startswith(bare + "/"):
            return mapping[top] + value[len(bare) :]
    return value


class SednaCluster:
    """GM + LC + kubelet of kubeedge/sedna v0.7.0 for one LifelongLearningJob with local storage.

    ``root`` holds everything the emulation writes (host paths of the objects must be under it) and
    must be traversable by the pods' uid: pytest's ``tmp_path`` is 0700, so create it with
    ``tempfile.mkdtemp()`` and ``chmod 0o755``. Keep the host data in a subdirectory (e.g.
    ``root/data``): ``root/home-data`` and ``root/pods`` belong to the emulator.

    ``job``/``dataset`` are the rendered objects (``yaml.safe_load`` of ``kubectl kustomize``).
    ``kb_server`` is GM's knowledgeBaseServer (None: the Helm default). ``extra_env`` plays the
    image's ENV (e.g. PATH with the venv's bin first): the lowest layer of every container's
    environment, overridden by the pod spec's env as in a container. ``image_user`` is the
    image's USER (uid, gid), used when no securityContext sets runAsUser.

    ``run_as_root_uid_from_template=False`` runs every container as the test's own user even when
    it is root. ``secrets`` holds the Kubernetes secrets (name -> key -> value) that secretKeyRef
    env and credentialName may name. A container that keeps failing is restarted ``max_restarts``
    times before :class:`PodCrashLoop`; a train/eval container running longer than
    ``pod_timeout_s`` is killed (:class:`EmulatorError`). ``seed`` makes the random pod and worker
    name suffixes reproducible. The LC server starts at once; call :meth:`close` (or use ``with``).
    """

    def __init__(
        self,
        root: Path,
        job: dict[str, Any],
        dataset: dict[str, Any],
        kb_server: str | None,
        extra_env: dict[str, str] | None = None,
        run_as_root_uid_from_template: bool = True,
        *,
        secrets: dict[str, dict[str, str]] | None = None,
        max_restarts: int = 2,
        image_user: tuple[int, int] = (0, 0),
        pod_timeout_s: float = 3600.0,
        seed: int | None = None,
    ) -> None:
        self.root = Path(os.path.realpath(root))
        self.job = copy.deepcopy(job)
        self.dataset = copy.deepcopy(dataset)
        self.kb_server = kb_server or _KB_SERVER_DEFAULT
        self.extra_env = dict(extra_env or {})
        self.secrets = copy.deepcopy(secrets or {})
        self.max_restarts = max_restarts
        self.image_user = image_user
        self.pod_timeout_s = pod_timeout_s
        self._rand = random.Random(seed)
        self._run_as_template_users = run_as_root_uid_from_template
        self._setpriv = shutil.which("setpriv")

        self.conditions: list[dict[str, Any]] = []  # the job's status.conditions (GM's view)
        self.job_annotations: dict[str, str] = dict((self.job.get("metadata") or {}).get("annotations") or {})
        self.pods: list[Pod] = []
        self.messages: list[WorkerMessage] = []
        self.lc_log: list[str] = []  # what LC/GM would log (klog) that matters to a worker
        self.warnings: list[str] = []
        self._lc_conditions: list[dict[str, Any]] = []  # the dataset node LC's copy (syncToEdge)
        self._lc_nodes_with_job: set[str] = set()
        self._lc_job: _LCJob | None = None
        self._data_source: _DataSource | None = None
        self._pods_by_worker: dict[str, Pod] = {}
        self._queue: list[WorkerMessage] = []
        self._lock = threading.Lock()
        self._message_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.ticks = 0

        self._validate_objects()
        self.prefix = self.root / "home-data"
        self._make_prefix()
        (self.root / "pods").mkdir(exist_ok=True)
        os.chmod(self.root / "pods", 0o755)

        self._server = _LCServer(self)
        self.lc_server_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, name="sedna-lc", daemon=True
        )
        self._server_thread.start()
        try:
            # The job is created: GM's first sync appends Train/Waiting, whose syncToEdge hands the
            # job to the dataset node's LC (initJob).
            self._gm_sync()
        except BaseException:
            self.close()
            raise

    # ---- public API ------------------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        return (self.job.get("metadata") or {}).get("namespace") or "default"

    @property
    def job_name(self) -> str:
        return self.job["metadata"]["name"]

    @property
    def output_dir(self) -> str:
        """The job's spec.outputDir (a host path)."""
        return self.job["spec"]["outputDir"]

    @property
    def emulates_users(self) -> bool:
        """True when containers run as their securityContext's uid (the test runs as root)."""
        return os.geteuid() == 0 and self._run_as_template_users

    @property
    def latest_condition(self) -> dict[str, Any] | None:
        return self.conditions[-1] if self.conditions else None

    @property
    def rounds(self) -> int:
        """The LC's round counter (the <round> of data/train/<round> and train/<round>)."""
        return self._lc_job.rounds if self._lc_job else 0

    @property
    def lc_samples(self) -> dict[str, Any]:
        """The LC's in-memory sample lists (handleData), for assertions."""
        job = self._lc_job
        if job is None:
            return {}
        return {
            "previous_numbers": job.previous_numbers,
            "train_samples": list(job.train_samples),
            "eval_version_samples": [list(v) for v in job.eval_version_samples],
            "eval_samples": list(job.eval_samples),
        }

    def container_path(self, host_path: str | Path) -> str:
        """The path a GM-mounted host path has inside a worker (``P + host_path``)."""
        return _go_join(str(self.prefix), str(host_path))

    def tick(self) -> TickReport:
        """One LC iteration (dataset re-read, handleData, the task of the latest stage) and GM syncs
        until nothing changes, starting the pods GM creates; worker reports are delivered first."""
        self._require_open()
        before = len(self.conditions)
        lc_before = self._lc_fingerprint()
        self._kubelet_check_background_pods()
        delivered = self._deliver_worker_messages()
        self._gm_sync()
        self._lc_iteration()
        self._gm_sync()
        pods = self._kubelet_run_pending()
        self.ticks += 1
        return TickReport(self.conditions[before:], pods, delivered, self._lc_fingerprint() != lc_before)

    def run_until(self, predicate: Callable[[SednaCluster], bool], max_ticks: int = 50) -> int:
        """Tick until ``predicate(cluster)`` holds; returns the ticks it took."""
        for used in range(max_ticks + 1):
            if predicate(self):
                return used
            if used < max_ticks:
                self.tick()
        raise NotReached(f"predicate not reached after {max_ticks} ticks\n{self.describe()}")

    def advance(self, max_ticks: int = 50) -> list[Pod]:
        """Tick until a pod was run (returns the pods started) or the job waits for something
        (a tick that changed nothing: returns [])."""
        for _ in range(max_ticks):
            report = self.tick()
            if report.pods:
                return report.pods
            if not report.progress:
                return []
        raise NotReached(f"the job kept changing for {max_ticks} ticks\n{self.describe()}")

    def run_pod(self, stage: str) -> Pod:
        """Create the pod of ``stage`` (Train | Eval | Deploy) as GM would from the current
        conditions and run it as the kubelet would: train/eval to completion, an inference pod in
        the background. ``tick`` does this itself when GM creates a pod."""
        self._require_open()
        pod = self._gm_create_pod(stage)
        self._kubelet_run(pod)
        return pod

    def stop_pod(self, pod: Pod, grace_s: float = 10) -> float:
        """Delete a running pod: SIGTERM, wait up to ``grace_s``, then SIGKILL (``pod.sigkilled``
        says it had to). Returns the seconds it took."""
        started = time.monotonic()
        self._terminate(pod, grace_s)
        return time.monotonic() - started

    def assert_no_lost_messages(self) -> None:
        """Raise :class:`LostMessages` unless every report sent to the LC became a job condition
        (pending reports are delivered first, as the LC would have done by now)."""
        self._deliver_worker_messages()
        lost = [m for m in self.messages if m.outcome != "accepted"]
        if lost:
            lines = [
                f"{m.outcome}: {m.reason} (worker {m.worker}, HTTP {m.http_status}): {m.body[:300]}"
                for m in lost
            ]
            raise LostMessages("worker reports lost:\n" + "\n".join(lines))

    def describe(self) -> str:
        """A readable dump of the state, for failure messages."""
        lines = [f"job {self.namespace}/{self.job_name}, LC rounds={self.rounds}, ticks={self.ticks}"]
        lines.append("conditions:")
        for cond in self.conditions:
            lines.append(f"  {cond['stage']}/{cond['type']} {cond['message']} {cond['data']}")
        if self._lc_job:
            job = self._lc_job
            lines.append(
                f"LC: train_samples={len(job.train_samples)} eval_samples={len(job.eval_samples)} "
                f"previous={job.previous_numbers} triggers={job.train_trigger_status}/"
                f"{job.eval_trigger_status}/{job.deploy_trigger_status}"
            )
        lines.append("pods:")
        for pod in self.pods:
            lines.append(
                f"  {pod.name} {pod.phase}{' (deleted)' if pod.deleted else ''} restarts={pod.restarts} "
                f"exit={pod.exit_codes} log={pod.log_path}"
            )
        lines.append("messages:")
        for msg in self.messages:
            lines.append(f"  {msg.worker}: HTTP {msg.http_status} {msg.outcome} {msg.reason}")
        lines.append("LC/GM log:")
        lines.extend(f"  {entry}" for entry in self.lc_log[-20:])
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def close(self) -> None:
        """Kill every container still running and stop the LC server (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for pod in self.pods:
            self._kill_group(pod)
        for thread in self._threads:
            thread.join(timeout=5)
        self._server.shutdown()
        self._server.server_close()
        self._server_thread.join(timeout=5)

    def __enter__(self) -> SednaCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- validation and layout -------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise EmulatorError("the cluster is closed")

    def _host_path_in_root(self, path: str, what: str) -> str:
        if _go_url_scheme(path):
            raise EmulatorError(f"{what} {path!r}: only local (hostPath) storage is emulated")
        if not path.startswith("/"):
            raise EmulatorError(f"{what} {path!r} is not an absolute host path")
        cleaned = _go_clean(path)
        if not (cleaned == str(self.root) or cleaned.startswith(str(self.root) + "/")):
            raise EmulatorError(f"{what} {path!r} is not under the emulator root {self.root}")
        for own in ("home-data", "pods"):
            mine = str(self.root / own)
            if cleaned == mine or cleaned.startswith(mine + "/"):
                raise EmulatorError(f"{what} {path!r} is inside the emulator's own {mine}")
        return cleaned

    def _validate_objects(self) -> None:
        if self.job.get("kind") != "LifelongLearningJob" or self.dataset.get("kind") != "Dataset":
            raise EmulatorError("job must be a LifelongLearningJob and dataset a Dataset")
        dataset_ns = (self.dataset.get("metadata") or {}).get("namespace") or "default"
        spec = self.job["spec"]
        if dataset_ns != self.namespace or spec["dataset"]["name"] != self.dataset["metadata"]["name"]:
            raise JobStalled(
                "the job's spec.dataset.name must name this Dataset in the job's namespace: the LC's "
                "loadDataset would wait forever (lifelonglearningjob.go: loadDataset)"
            )
        if not self.dataset["spec"].get("nodeName"):
            raise JobStalled(
                "the Dataset has no spec.nodeName: GM's syncToEdge (downstream.go) never sends the job "
                "to any LC, so it never starts"
            )
        self._host_path_in_root(spec["outputDir"], "spec.outputDir")
        self._host_path_in_root(self.dataset["spec"]["url"], "Dataset spec.url")
        if str(self.dataset["spec"].get("format", "")).lower() not in ("txt", "csv"):
            raise JobStalled(
                f"dataset format {self.dataset['spec'].get('format')!r} is invalid: "
                "dataset.go: validFormat fails on every read"
            )
        _TrainTrigger.from_spec(spec["trainSpec"].get("trigger") or {})
        if self.emulates_users:
            for ancestor in (self.root, *self.root.parents):
                if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                    raise EmulatorError(
                        f"{ancestor} is not traversable by other users (mode "
                        f"{oct(os.stat(ancestor).st_mode & 0o777)}): pods run as their template's uid, "
                        "so root must be e.g. tempfile.mkdtemp() + chmod 0o755 (pytest's tmp_path is 0700)"
                    )
            for entry in filter(os.path.isdir, self.extra_env.get("PATH", "").split(":")):
                for ancestor in (Path(entry), *Path(entry).parents):
                    if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                        raise EmulatorError(
                            f"{entry}, on the image's PATH, is in {ancestor}, which other users cannot "
                            f"traverse (mode {oct(os.stat(ancestor).st_mode & 0o777)}): pods run as their "
                            "template's uid and could not run it; keep the project's checkout (its venv "
                            "plays the image) out of a private directory such as mktemp -d's"
                        )

    def _make_prefix(self) -> None:
        """``P + str(root)`` is a symlink to root, so ``P + <host path>`` names the host path."""
        link = Path(str(self.prefix) + str(self.root))
        _mkdir_p(link.parent)
        if not link.is_symlink():
            link.symlink_to(self.root, target_is_directory=True)

    @property
    def _ds_node(self) -> str:
        return self.dataset["spec"]["nodeName"]

    def _rand5(self) -> str:
        return "".join(self._rand.choice(_GO_RAND_ALPHABET) for _ in range(5))

    def _log(self, source: str, message: str) -> None:
        self.lc_log.append(f"{source}: {message}")

    # ---- GM: status conditions and syncToEdge ----------------------------------------------------

    def _append_condition(self, stage: str, ctype: str, data: str = "", message: str = "") -> dict[str, Any]:
        """lifelonglearningjob.go: NewJobCondition / upstream.go: appendStatusCondition."""
        now = _now_rfc3339()
        cond = {
            "type": ctype,
            "status": "True",
            "stage": stage,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
            "reason": "",
            "message": message,
            "data": data,
        }
        self.conditions.append(cond)
        self._sync_to_edge()
        return cond

    def _sync_to_edge(self) -> None:
        """pkg/globalmanager/controllers/lifelonglearning/downstream.go: syncToEdge, run on every job
        update: which node's LC gets (or loses) the job."""
        latest = self.conditions[-1]
        ctype, stage = latest["type"], latest["stage"]
        node_of = {s: self.job_annotations.get("sedna.io/" + s, "") for s in ("Train", "Eval", "Deploy")}
        node = node_of.get(stage, "")
        if ctype == "Waiting":
            self._lc_receive_job(self._ds_node)
        elif ctype == "Running":
            self._lc_receive_job(node)
        elif ctype in ("Completed", "Failed") and node not in (self._ds_node, node_of["Deploy"]):
            self._lc_nodes_with_job.discard(node)

    def _lc_receive_job(self, node: str) -> None:
        """LC Insert (lifelonglearningjob.go: Insert -> startJob -> initJob on the first one)."""
        self._lc_nodes_with_job.add(node)
        if node != self._ds_node:
            return
        self._lc_conditions = copy.deepcopy(self.conditions)
        if self._lc_job is None:
            self._lc_init_job()

    def _gm_sync(self) -> None:
        """GM's sync loop: every status update re-enqueues the job, so transitJobState runs until it
        changes nothing (it never loops: Completed/Failed lead to Waiting, which waits)."""
        for _ in range(20):
            if not self._transit_job_state():
                return
        raise EmulatorError("GM's state machine did not settle\n" + self.describe())

    def _specified_pod(self, stage: str) -> Pod | None:
        """lifelonglearningjob.go: getSpecifiedPods -- the newest pod of that type. (Go compares
        creation timestamps of one-second precision; the emulation uses creation order.)"""
        pod_type = {"Train": "train", "Eval": "eval", "Deploy": "inference", "inference": "inference"}[stage]
        candidates = [p for p in self.pods if p.worker_type == pod_type and not p.deleted]
        return max(candidates, key=lambda p: p.created_index) if candidates else None

    def _transit_job_state(self) -> bool:
        """pkg/globalmanager/controllers/lifelonglearning/lifelonglearningjob.go: transitJobState.
        Returns needUpdated. An error Go would retry forever raises :class:`JobStalled`."""
        latest = self.conditions[-1] if self.conditions else {"stage": "Train", "type": ""}
        pod = self._specified_pod(latest["stage"]) if self.conditions else None
        pod_status = pod.phase if pod is not None else "Unknown"
        stage, current = latest["stage"], latest["type"]
        new = current
        if current == "":
            new = "Waiting"
        elif current == "Ready":
            if stage == "Deploy":
                self._gm_restart_infer_pod()
                new = "Completed"
            else:
                if pod_status not in ("Pending", "Running"):
                    self._gm_create_pod(stage)
                new = "Starting"
        elif current in ("Starting", "Running"):
            if pod_status == "Running":
                assert pod is not None
                # setWorkerNodeNameOfJob: the annotation syncToEdge routes Running/Completed by
                self.job_annotations["sedna.io/" + stage] = pod.node_name
                new = "Running"
            elif pod_status == "Succeeded":
                new = "Completed"
            elif pod_status == "Failed":
                new = "Failed"
        elif current == "Completed":
            stage = {"Train": "Eval", "Eval": "Deploy", "Deploy": "Train"}.get(stage, "Train")  # getNextStage
            new = "Waiting"
        elif current == "Failed":
            stage = "Train"
            new = "Waiting"
        if new != current:
            self._append_condition(stage, new)
            return True
        return False

    def _gm_has_completed_initial_training(self) -> bool:
        """lifelonglearningjob.go: hasCompletedInitialTraining."""
        return any(c["stage"] == "Train" and c["type"] == "Completed" for c in self.conditions)

    def _gm_cloud_kb_index(self) -> str:
        """lifelonglearningjob.go: getCloudKBIndex -- the first model URL of the newest Train/Completed
        whose data parses and has output models (as reported: a host path, no prefix)."""
        for cond in reversed(self.conditions):
            if cond["stage"] == "Train" and cond["type"] == "Completed":
                data, err = _unmarshal(cond["data"], _CONDITION_DATA)
                if err is not None or data["output"] is None or not data["output"]["models"]:
                    continue
                return data["output"]["models"][0]["url"]
        return ""

    def _gm_get_secret(self, name: str, owner: str) -> None:
        """lifelonglearningjob.go: getSecret (only its existence matters for hostPath URLs)."""
        if name and name not in self.secrets:
            raise JobStalled(
                f"GM createPod: failed to get the secret {name} for {owner}: not found (GM retries the "
                "sync forever)"
            )

    def _gm_restart_infer_pod(self) -> None:
        """lifelonglearningjob.go: restartInferPod -- delete the inference pod (its containers get
        SIGTERM and the template's grace period, while the new pod already starts) and create one."""
        old = self._specified_pod("inference")
        if old is not None:
            grace = float(old.spec["spec"].get("terminationGracePeriodSeconds", 30))
            old.deleted = True
            thread = threading.Thread(target=self._terminate, args=(old, grace), daemon=True)
            thread.start()
            self._threads.append(thread)
        self._gm_create_pod("Deploy")

    def _gm_create_pod(self, stage: str) -> Pod:
        """lifelonglearningjob.go: createPod / createInferPod, then runtime.CreatePodWithTemplate."""
        spec = self.job["spec"]
        job_secret = spec.get("credentialName", "")
        env: dict[str, str]
        mounts: list[_WorkerMount]
        if stage == "Deploy":
            template = spec["deploySpec"]["template"]
            worker_type, restart_policy = "inference", ""
            self._gm_get_secret(job_secret, f"lifelonglearning job {self.job_name}")
            infer_model_url = spec["outputDir"].rstrip("/") + "/deploy/index.pkl"
            mounts = [_WorkerMount([_MountURL(infer_model_url, download=False)], "MODEL_URLS", "models")]
            env = {
                "NAMESPACE": self.namespace,
                "JOB_NAME": self.job_name,
                "WORKER_NAME": "inferworker-" + self._rand5(),
                "LC_SERVER": self.lc_server_url,
                "OUTPUT_URL": spec["outputDir"],
            }
        else:
            template = spec["trainSpec" if stage == "Train" else "evalSpec"]["template"]
            worker_type, restart_policy = stage.lower(), "OnFailure"
            self._gm_get_secret(
                self.dataset["spec"].get("credentialName", ""), f"dataset {self.dataset['metadata']['name']}"
            )
            self._gm_get_secret(job_secret, f"lifelonglearning job {self.job_name}")
            data, _ = _unmarshal(self.conditions[-1]["data"], _CONDITION_DATA)  # Go ignores this error
            cond_input = data["input"]
            if cond_input is None:
                raise JobStalled(
                    f"GM createPod({stage}): empty input from condData {self.conditions[-1]['data']!r} "
                    "(the Ready condition carries no input; GM retries the sync forever)"
                )
            data_url = cond_input["dataURL"]
            if cond_input["model"] is not None:  # ConditionData.GetInputModelURLs
                model_urls = [cond_input["model"]["url"]]
            else:
                model_urls = [m["url"] for m in cond_input["models"] or []]
            dataset_url = self.dataset["spec"]["url"]
            original = cond_input["dataIndexURL"] or dataset_url
            indirect = dataset_url != original
            env = {
                "NAMESPACE": self.namespace,
                "JOB_NAME": self.job_name,
                "WORKER_NAME": f"{worker_type}-worker-" + self._rand5(),
                "LC_SERVER": self.lc_server_url,
                "KB_SERVER": self.kb_server,
            }
            if stage == "Train":
                completed = self._gm_has_completed_initial_training()
                env["HAS_COMPLETED_INITIAL_TRAINING"] = "true" if completed else "false"
                if completed:
                    env["CLOUD_KB_INDEX"] = self._gm_cloud_kb_index()
                mounts = [
                    _WorkerMount([_MountURL(cond_input["outputDir"], download=False)], "OUTPUT_URL"),
                    _WorkerMount([_MountURL(data_url, download=True)], "TRAIN_DATASET_URL"),
                    _WorkerMount(
                        [_MountURL(original, download=True, indirect=indirect)], "ORIGINAL_DATASET_URL"
                    ),
                ]
            else:
                mounts = [
                    _WorkerMount([_MountURL(u, download=True) for u in model_urls], "MODEL_URLS", "models"),
                    _WorkerMount([_MountURL(cond_input["outputDir"], download=False)], "OUTPUT_URL"),
                    _WorkerMount([_MountURL(data_url, download=True)], "TEST_DATASET_URL", "datasets"),
                    _WorkerMount(
                        [_MountURL(original, download=True, indirect=indirect)],
                        "ORIGINAL_DATASET_URL",
                        "origin-dataset",
                    ),
                ]
        volumes, volume_mounts = self._gm_prepare_storage(mounts, env)
        pod_obj = self._gm_pod_from_template(
            template, worker_type, env, volumes, volume_mounts, restart_policy
        )
        self._api_validate(pod_obj)
        name = pod_obj["metadata"]["name"]
        pod_dir = self.root / "pods" / name
        pod_dir.mkdir()
        os.chmod(pod_dir, 0o755)
        pod = Pod(
            name=name,
            stage=stage,
            worker_type=worker_type,
            spec=pod_obj,
            node_name=pod_obj["spec"]["nodeName"],
            worker_name=env["WORKER_NAME"],
            dir=pod_dir,
            created_index=len(self.pods),
        )
        self.pods.append(pod)
        with self._lock:
            self._pods_by_worker[pod.worker_name] = pod
        self._log("GM", f"pod {name} is created for stage {stage}")
        return pod

    def _gm_parse_mount_url(self, mount_url: _MountURL) -> tuple[str, str, str] | None:
        """storage_initializer_injector.go: MountURL.Parse (parseDownloadPath, parseHostPath) for a
        file URL: (hostPath = its parent dir, container path = /home/data + URL, mountPath = the
        container path's parent). None when the URL is not a host path (its env keeps the URL)."""
        url = mount_url.url
        scheme = _go_url_scheme(url)
        if scheme:
            if mount_url.download and scheme in ("s3", "http", "https"):
                raise EmulatorError(
                    f"{url}: GM would add the storage-initializer to download it: not emulated"
                )
            return None
        if "?" in url or "#" in url or "%" in url:
            raise EmulatorError(f"{url}: Go's url.Parse would cut or decode it; not emulated")
        if mount_url.indirect:
            raise EmulatorError(
                f"{url}: an indirect dataset index needs the storage-initializer: not emulated"
            )
        host_path, _ = _go_split(url)
        container_path = _go_join(str(self.prefix), url)
        mount_path, _ = _go_split(container_path)
        return host_path, container_path, mount_path

    def _gm_prepare_storage(
        self, mounts: list[_WorkerMount], env: dict[str, str]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """storage_initializer_injector.go: PrepareStorage (env = container paths joined with ";")
        and PrepareHostPath (one hostPath volume of type Directory per distinct volume name, one
        volumeMount per URL)."""
        volumes: list[dict[str, Any]] = []
        volume_mounts: list[dict[str, Any]] = []
        seen: set[str] = set()
        for mount in mounts:
            env_paths = []
            for mount_url in mount.urls:
                parsed = self._gm_parse_mount_url(mount_url)
                if parsed is None:
                    env_paths.append(mount_url.url)
                    continue
                host_path, container_path, mount_path = parsed
                env_paths.append(container_path)
                if not host_path:
                    continue
                name = _convert_k8s_valid_name(host_path) or "sedna-default-volume-name"
                if name not in seen:
                    seen.add(name)
                    volumes.append({"name": name, "hostPath": {"path": host_path, "type": "Directory"}})
                volume_mounts.append({"name": name, "mountPath": mount_path})
            if mount.env_name:
                env[mount.env_name] = ";".join(env_paths)
        return volumes, volume_mounts

    def _gm_pod_from_template(
        self,
        template: dict[str, Any],
        worker_type: str,
        env: dict[str, str],
        volumes: list[dict[str, Any]],
        volume_mounts: list[dict[str, Any]],
        restart_policy: str,
    ) -> dict[str, Any]:
        """utils/pod_helper.go: GetPodFromTemplate, then worker.go: injectWorkerParam (storage first:
        volumes, volumeMounts and DATA_PATH_PREFIX appended to every container; then GM's env,
        appended after the template's env so that GM's values win; labels; hostNetwork; the
        restart policy only if the template sets none; dnsPolicy)."""
        meta = template.get("metadata") or {}
        pod_spec = copy.deepcopy(template.get("spec") or {})
        kind_prefix = "lifelonglearningjob.sedna.io/"
        job_meta = self.job["metadata"]
        job_uid = job_meta.get("uid") or str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"{self.namespace}/{self.job_name}")
        )
        labels = dict(meta.get("labels") or {})
        labels.update(
            {
                kind_prefix + "name": self.job_name,
                kind_prefix + "uid": job_uid,
                kind_prefix + "worker-type": worker_type,
            }
        )
        generate_name = f"{self.job_name}-{worker_type}-"
        pod_obj: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": generate_name + self._rand5(),  # the API server completes generateName
                "generateName": generate_name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "sedna.io/v1alpha1",
                        "kind": "LifelongLearningJob",
                        "name": self.job_name,
                        "uid": job_uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": pod_spec,
        }
        containers = pod_spec.get("containers") or []
        if volume_mounts:
            pod_spec["volumes"] = list(pod_spec.get("volumes") or []) + volumes
        for container in containers:
            if volume_mounts:
                container["volumeMounts"] = list(container.get("volumeMounts") or []) + copy.deepcopy(
                    volume_mounts
                )
                container["env"] = list(container.get("env") or []) + [
                    {"name": "DATA_PATH_PREFIX", "value": str(self.prefix)}  # deviation: P, not /home/data
                ]
            # createEnvVars ranges over a Go map (random order); the emulation sorts by name.
            container["env"] = list(container.get("env") or []) + [
                {"name": k, "value": v} for k, v in sorted(env.items())
            ]
        pod_spec["hostNetwork"] = True
        if not pod_spec.get("restartPolicy"):
            pod_spec["restartPolicy"] = restart_policy or "Always"  # "" is defaulted by the API server
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
        pod_spec.setdefault("terminationGracePeriodSeconds", 30)
        pod_spec.setdefault("nodeName", self._ds_node)  # the scheduler's choice on a one-node cluster
        return pod_obj

    def _api_validate(self, pod_obj: dict[str, Any]) -> None:
        """The API server's pod validation that GM's injected volumes can break: GM would retry the
        failing Create forever."""
        pod_spec = pod_obj["spec"]
        if not pod_spec.get("containers"):
            raise JobStalled("the template has no containers: the API server rejects the pod")
        names = [v["name"] for v in pod_spec.get("volumes") or []]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise JobStalled(
                f"the API server rejects pod {pod_obj['metadata']['name']}: duplicate volume names {duplicates}"
            )
        for container in [*(pod_spec.get("initContainers") or []), *pod_spec["containers"]]:
            paths = [m["mountPath"] for m in container.get("volumeMounts") or []]
            duplicated = {p for p in paths if paths.count(p) > 1}
            if duplicated:
                raise JobStalled(
                    f"the API server rejects pod {pod_obj['metadata']['name']}: container {container.get('name')} "
                    f"mounts {duplicated} twice (GM adds one volumeMount per URL, e.g. two models in one "
                    "directory); GM retries forever"
                )
        for volume in pod_spec.get("volumes") or []:
            host = (volume.get("hostPath") or {}).get("path")
            if host is not None and ".." in host.split("/"):
                raise JobStalled(f"the API server rejects hostPath {host!r} (contains '..')")

    # ---- GM upstream: what the LC sends --------------------------------------------------------

    def _gm_update_from_edge(self, content: str) -> tuple[dict[str, Any] | None, str | None]:
        """pkg/globalmanager/controllers/lifelonglearning/upstream.go: updateFromEdge. The condition
        data is ConditionData unmarshalled and marshalled again (unknown fields and, by omitempty,
        empty model lists disappear). Returns (the appended condition, Go's error)."""
        status, err = _unmarshal(content, _JOB_STATUS)
        if err is not None:
            return None, err
        cond_data, err = _unmarshal(content, _CONDITION_DATA)
        if err is not None:
            return None, err
        stage = {"train": "Train", "eval": "Eval", "deploy": "Deploy"}.get(status["phase"].lower())
        if stage is None:
            return None, f"invalid condition stage: {status['phase']}"
        ctype = {"ready": "Ready", "completed": "Completed", "failed": "Failed", "waiting": "Waiting"}.get(
            status["status"].lower()
        )
        if ctype is None:
            return None, f"invalid condition type: {status['status']}"
        cond = self._append_condition(stage, ctype, _encode(cond_data, _CONDITION_DATA), "reported by lc")
        return cond, None

    def _lc_write_message(self, message: dict[str, Any] | None) -> dict[str, Any] | None:
        """gmclient/websocket.go: WriteMessage (json.Marshal of the payload, a nil one is "null")
        followed by GM's upstream handler."""
        content = "null" if message is None else _encode(message, _UPSTREAM_MESSAGE)
        cond, err = self._gm_update_from_edge(content)
        if err is not None:
            self._log("GM", f"failed to handle the LC's message {content}: {err}")
        return cond

    # ---- LC: the job ----------------------------------------------------------------------------

    def _lc_init_job(self) -> None:
        """lifelonglearningjob.go: initJob (trigger, output dir, deploy model URL; the LC's database
        is fresh, so updateJobFromDB restores nothing)."""
        spec = self.job["spec"]
        output_dir = _add_prefix_path(_LC_ROOTFS, spec["outputDir"])
        self._lc_job = _LCJob(
            output_dir=output_dir, trigger=_TrainTrigger.from_spec(spec["trainSpec"].get("trigger") or {})
        )
        self._lc_create_output_dir()

    def _lc_host(self, lc_path: str) -> Path:
        """A path inside the LC container (host / mounted at /rootfs) as a host path."""
        if lc_path == _LC_ROOTFS or lc_path.startswith(_LC_ROOTFS + "/"):
            return Path(lc_path[len(_LC_ROOTFS) :] or "/")
        raise EmulatorError(f"the LC would use {lc_path!r} inside its own container, not on the host")

    def _lc_create_folder(self, lc_path: str) -> None:
        """pkg/localcontroller/util/util.go: CreateFolder (MkdirAll 0777 & umask 022, as root)."""
        host = self._lc_host(lc_path)
        if not host.is_dir():
            _mkdir_p(host)

    def _lc_create_output_dir(self) -> None:
        """lifelonglearningjob.go: createOutputDir -- outputDir and data/train, data/eval, train,
        eval under it (root-owned 0755: a non-root worker cannot create train/<round> there)."""
        assert self._lc_job is not None
        self._lc_create_folder(self._lc_job.output_dir)
        for sub in ("data/train", "data/eval", "train", "eval"):
            self._lc_create_folder(posixpath.join(self._lc_job.output_dir, sub))

    def _lc_fingerprint(self) -> tuple[Any, ...]:
        job = self._lc_job
        if job is None:
            return ()
        return (
            job.dataset_loaded,
            job.rounds,
            job.previous_numbers,
            len(job.train_samples),
            len(job.eval_samples),
            job.train_trigger_status,
            job.eval_trigger_status,
            job.deploy_trigger_status,
            self._data_source.number if self._data_source else None,
        )

    def _lc_iteration(self) -> None:
        """One pass of the dataset monitor, handleData and startJob's ticker (lifelonglearningjob.go)."""
        self._lc_monitor_data_source()
        if self._lc_job is None:
            return
        self._lc_handle_data()
        stage = self._lc_conditions[-1]["stage"] if self._lc_conditions else ""
        if stage == "Train":
            self._lc_train_task()
        elif stage == "Eval":
            self._lc_eval_task()
        elif stage == "Deploy":
            self._lc_deploy_task()
        else:
            self._log("LC", f"invalid phase: {stage}")

    def _lc_monitor_data_source(self) -> None:
        """pkg/localcontroller/managers/dataset/dataset.go: monitorDataSources (every 60 s in Go,
        every tick here); a failed read keeps the previous DataSource."""
        url = self._lc_host(_add_prefix_path(_LC_ROOTFS, self.dataset["spec"]["url"]))
        try:
            samples = self._lc_get_samples(url)
        except OSError as exc:
            self._log("LC", f"dataset get samples from {url} failed, error: {exc}")
            return
        fmt = str(self.dataset["spec"].get("format", "")).lower()
        if fmt == "csv":
            if not samples:
                self._log("LC", f"file {url} is empty")
                return
            self._data_source = _DataSource(samples[1:], len(samples) - 1, samples[0])
        else:
            self._data_source = _DataSource(samples, len(samples))

    def _lc_get_samples(self, path: Path) -> list[str]:
        """dataset.go: GetSamples -- every line (blank ones too, "\\r\\n" trimmed), read with
        bufio.Scanner, which stops silently at a line over 64 KiB (its error is not checked)."""
        if not path.exists():
            raise FileNotFoundError(f"url({path}) does not exist")
        if path.is_dir():
            raise IsADirectoryError(f"url({path}) is not a file, not vaild")
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        ends_with_newline = raw.endswith(b"\n")
        if ends_with_newline or not raw:
            lines = lines[:-1]
        samples = []
        for i, line in enumerate(lines):
            last_without_newline = i == len(lines) - 1 and not ends_with_newline
            if len(line) > (65536 if last_without_newline else 65535):
                warning = (
                    f"{path}: line {i + 1} is over 64 KiB; Go's bufio.Scanner stops there and GetSamples "
                    "ignores the error, so the LC sees only the lines before it"
                )
                if warning not in self.warnings:
                    self.warnings.append(warning)
                break
            if line.endswith(b"\r"):
                line = line[:-1]
            samples.append(line.decode("utf-8", "surrogateescape"))
        return samples

    def _lc_handle_data(self) -> None:
        """lifelonglearningjob.go: handleData -- of the lines added since last time, the first
        int(trainProb * new) go to train, the rest become a new eval "version", and every version
        so far is appended to EvalSamples again (so eval lines repeat)."""
        job = self._lc_job
        assert job is not None
        if not job.dataset_loaded or self._data_source is None:
            return
        current, previous = self._data_source.number, job.previous_numbers
        if current <= previous:
            return
        samples = self._data_source.samples
        train_num = int(float(self.job["spec"]["dataset"].get("trainProb", 0)) * (current - previous))
        job.train_samples.extend(samples[previous : previous + train_num])
        job.eval_version_samples.append(list(samples[previous + train_num :]))
        for version in job.eval_version_samples:
            job.eval_samples.extend(version)
        job.previous_numbers = current

    def _lc_load_dataset(self) -> bool:
        """lifelonglearningjob.go: loadDataset + the DataSource check of trainTask/evalTask."""
        job = self._lc_job
        assert job is not None
        job.dataset_loaded = True
        if self._data_source is None:
            self._log(
                "LC", "failed to load dataset, and waiting it (no DataSource: the dataset file is unreadable)"
            )
            return False
        return True

    def _lc_train_task(self) -> None:
        """lifelonglearningjob.go: trainTask + triggerTrainTask. Note initTriggerStatus runs on every
        tick while the LC's view is Train/Waiting (it also re-arms the eval and deploy triggers)."""
        job = self._lc_job
        assert job is not None
        if self._lc_conditions[-1]["type"] != "Waiting" or not self._lc_load_dataset():
            return
        job.train_trigger_status = job.eval_trigger_status = job.deploy_trigger_status = "ready"
        if not job.trigger.fires({"num_of_samples": len(job.train_samples)}, datetime.now()):
            return
        job.rounds += 1
        try:
            job.train_data_url = self._lc_write_samples(
                job.train_samples, job.samples_output["train"], job.rounds
            )
        except OSError as exc:
            job.rounds -= 1
            # Go returns (nil, false, err) and trainTask drops the error: it retries every tick.
            raise JobStalled(f"LC triggerTrainTask: write samples failed: {exc} (retried forever)") from exc
        output_dir = "/".join([job.train_output, str(job.rounds)])
        message = {
            "phase": "Train",
            "status": "Ready",
            "input": self._lc_input(None, job.train_data_url, output_dir),
            "output": None,
        }
        self._lc_write_message(message)
        job.train_samples = []  # forwardSamples(Train)
        job.train_trigger_status = "completed"
        self._log("LC", f"train round {job.rounds} triggered")

    def _lc_input(
        self, models: list[dict[str, Any]] | None, data_url: str, output_dir: str
    ) -> dict[str, Any]:
        """gmclient.Input with local-storage paths trimmed of the LC's /rootfs prefix."""
        return {
            "models": models,
            "dataURL": _trim_prefix_path(_LC_ROOTFS, data_url),
            "dataIndexURL": "",  # createFile returns no index file for local storage
            "outputDir": _trim_prefix_path(_LC_ROOTFS, output_dir),
        }

    def _lc_models_from_conditions(self, stage: str, ctype: str) -> list[dict[str, Any]] | None:
        """lifelonglearningjob.go: getModelsFromJobConditions(..., "output") -- the output models of
        the newest matching condition whose data parses and has an output (None if none; note
        an output with no models returns None at once, it does not look further back)."""
        for cond in reversed(self._lc_conditions):
            if cond["stage"] == stage and cond["type"] == ctype:
                data, err = _unmarshal(cond["data"], _CONDITION_DATA)
                if err is not None or data["output"] is None:
                    continue
                return data["output"]["models"]
        return None

    def _lc_eval_task(self) -> None:
        """lifelonglearningjob.go: evalTask + triggerEvalTask."""
        job = self._lc_job
        assert job is not None
        if self._lc_conditions[-1]["type"] != "Waiting" or not self._lc_load_dataset():
            return
        if job.eval_trigger_status != "ready":
            return
        models = self._lc_models_from_conditions("Train", "Completed")  # getJobStageModel(Eval)
        if models is None:
            # triggerEvalTask logs "model is nil" and returns (nil, nil); evalTask then writes the
            # nil payload ("null"), GM fails with "invalid condition stage", and the trigger is spent.
            self._log("LC", f"job {self.job_name} stage Eval model is nil")
            self._lc_write_message(None)
            self._lc_forward_eval_samples()
            job.eval_trigger_status = "completed"
            raise JobStalled(
                "LC triggerEvalTask: the newest Train/Completed condition has no output models "
                '("model is nil"): LC sends GM a null message, which GM rejects, and the job waits at '
                "Eval/Waiting forever. The train worker must report status completed with results "
                "[{format, url, ...}] before it exits.\n" + self.describe()
            )
        try:
            job.eval_data_url = self._lc_write_samples(
                job.eval_samples, job.samples_output["eval"], job.rounds
            )
        except OSError as exc:
            raise JobStalled(f"LC triggerEvalTask: write samples failed: {exc} (retried forever)") from exc
        output_dir = "/".join([job.eval_output, str(job.rounds)])
        message = {
            "phase": "Eval",
            "status": "Ready",
            "input": self._lc_input(models, job.eval_data_url, output_dir),
            "output": None,
        }
        self._lc_write_message(message)
        self._lc_forward_eval_samples()
        job.eval_trigger_status = "completed"

    def _lc_forward_eval_samples(self) -> None:
        """lifelonglearningjob.go: forwardSamples(Eval) -- drops only the oldest eval version, and
        only beyond EvalSamplesCapacity (5); EvalSamples itself is never emptied."""
        job = self._lc_job
        assert job is not None
        if len(job.eval_version_samples) > 5:
            job.eval_version_samples = job.eval_version_samples[1:]

    def _lc_deploy_task(self) -> None:
        """lifelonglearningjob.go: deployTask + updateDeployModelFile -- copy the first output model
        of the newest Eval/Completed to <outputDir>/deploy/index.pkl and report Deploy/Ready; with
        no model, report Deploy/Completed (nothing is deployed)."""
        job = self._lc_job
        assert job is not None
        if job.deploy_trigger_status != "ready":
            return
        models = self._lc_models_from_conditions("Eval", "Completed")  # getJobStageModel(Deploy)
        if models is not None:
            self._lc_copy_deploy_model(models[0]["url"])
            message = {
                "phase": "Deploy",
                "status": "Ready",
                "input": {
                    "models": [{**_zero(_MODEL), "format": models[0]["format"], "url": models[0]["url"]}],
                    "dataURL": "",
                    "dataIndexURL": "",
                    "outputDir": "",
                },
                "output": None,
            }
        else:
            self._log("LC", f"job {self.job_name} isn't need to deploy model")
            message = {"phase": "Deploy", "status": "Completed", "input": None, "output": None}
        self._lc_write_message(message)
        job.deploy_trigger_status = "completed"

    def _lc_copy_deploy_model(self, trained_model: str) -> None:
        """lifelonglearningjob.go: updateDeployModelFile -> storage.go: CopyFile -> localCopy ->
        util.go: CopyFile. The source must exist; the deploy dir is created; the copy's own errors
        are ignored, and the destination is opened without O_TRUNC (a shorter model leaves the old
        file's tail behind)."""
        job = self._lc_job
        assert job is not None
        src = self._lc_host(_add_prefix_path(_LC_ROOTFS, trained_model))
        dst = self._lc_host(job.deploy_model_url)
        if not os.path.exists(src):
            raise JobStalled(
                f"LC updateDeployModelFile: url({src}) does not exists: the eval worker reported model url "
                f"{trained_model!r}, which must be a host path (DATA_PATH_PREFIX stripped). deployTask "
                "retries this every tick and never deploys.\n" + self.describe()
            )
        if not dst.parent.is_dir():
            _mkdir_p(dst.parent)
        try:
            with open(src, "rb") as source:
                payload = source.read()
        except OSError as exc:
            self._log("LC", f"open file {src} failed: {exc} (error ignored, Deploy/Ready is still sent)")
            return
        try:
            old_size = dst.stat().st_size if dst.exists() else 0
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
        except OSError as exc:
            self._log("LC", f"copy to {dst} failed: {exc} (error ignored, Deploy/Ready is still sent)")
            return
        if old_size > len(payload):
            self.warnings.append(
                f"{dst}: the new model ({len(payload)} bytes) is shorter than the old one ({old_size} bytes); "
                "Go's CopyFile does not truncate, so the old tail remains after it"
            )

    def _lc_write_samples(self, samples: list[str], directory: str, rounds: int) -> str:
        """lifelonglearningjob.go: writeSamples + createFile + writeByLine for local storage:
        <dir>/<round>/data.txt (or data.csv with the header line), root-owned, 0644."""
        job = self._lc_job
        assert job is not None
        sub_dir = "/".join([directory, str(rounds)])
        fmt = str(self.dataset["spec"].get("format", ""))
        if fmt.lower() == "txt":
            file_url = _go_join(sub_dir, "data.txt")
        elif fmt.lower() == "csv":
            file_url = "/".join([sub_dir, "data.csv"])
        else:
            file_url = ""
        self._lc_create_folder(sub_dir)
        host = self._lc_host(file_url)
        lines = ([self._data_source.header] if fmt == "csv" and self._data_source else []) + samples
        with open(host, "wb") as handle:
            handle.write(b"".join(line.encode("utf-8", "surrogateescape") + b"\n" for line in lines))
        os.chmod(host, 0o644)
        return file_url

    # ---- LC: worker messages ---------------------------------------------------------------------

    def _lc_http_request(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, str]:
        """pkg/localcontroller/server/server.go: the route POST /sedna/workers/{worker-name}/info
        (go-restful routing, content type, ReadEntity) and messageHandler."""
        path = unquote(urlsplit(raw_path).path)
        match = re.fullmatch(r"/sedna/workers/([^/]+)/info", path)
        text = body.decode("utf-8", "replace")
        header = {k.lower(): v for k, v in headers.items()}
        worker = match.group(1) if match else ""
        if not match:
            return self._record(
                worker, text, 404, b"404 page not found", "rejected", f"no route for {method} {path}"
            )
        if method != "POST":
            return self._record(
                worker, text, 405, b"405: Method Not Allowed", "rejected", f"{method} is not POST"
            )
        content_type = header.get("content-type", "")
        mime = content_type.split(";")[0].strip()
        if mime not in ("application/json", "application/xml"):
            return self._record(
                worker,
                text,
                415,
                b"415: Unsupported Media Type",
                "rejected",
                f"Content-Type {content_type!r}",
            )
        if "xml" in mime and "json" not in content_type:
            return self._record(worker, text, 400, b"XML bodies are not emulated", "rejected", "XML body")
        encoding = header.get("content-encoding", "")
        try:
            if encoding == "gzip":
                text = gzip.decompress(body).decode("utf-8", "replace")
            elif encoding == "deflate":
                text = zlib.decompress(body).decode("utf-8", "replace")
        except (OSError, zlib.error) as exc:
            return self._reply_400(
                worker, text, f"read worker(name={worker}) message body failed, error: {exc}"
            )
        error: str | None = None
        content = _zero(_MESSAGE_CONTENT)
        try:
            parsed = _go_parse(text, stream=True)  # go-restful: json.Decoder with UseNumber
            errors: list[str] = []
            content = _decode(parsed, _MESSAGE_CONTENT, _DecodeContext(), errors)
            error = errors[0] if errors else None
        except _GoJSONError as exc:
            error = str(exc)
        if content["name"] != worker:
            return self._reply_400(
                worker,
                text,
                f"worker name(name={worker}) in the api is different from that(name={content['name']}) in the "
                "message body",
            )
        if error is not None:
            return self._reply_400(
                worker, text, f"read worker(name={worker}) message body failed, error: {error}"
            )
        owner_kind = content["ownerKind"]
        if owner_kind != _LL_KIND:
            reason = (
                f"ownerKind {owner_kind!r} has no feature manager in the LC"
                if owner_kind not in _LC_FEATURE_MANAGERS
                else f"ownerKind {owner_kind!r} goes to the LC's {owner_kind} manager, which has no such job"
            )
            return self._record(worker, text, 200, self._response_body(200, "OK"), "dropped", reason)
        return self._record(worker, text, 200, self._response_body(200, "OK"), "pending", "", content)

    @staticmethod
    def _response_body(status: int, message: str) -> bytes:
        """server.go: reply -- ResponseMessage{Status, Message} as go-restful writes JSON (indented)."""
        return f'{{\n "Status": {status},\n "Message": {_go_string(message)}\n}}'.encode()

    def _reply_400(self, worker: str, text: str, message: str) -> tuple[int, bytes, str]:
        return self._record(worker, text, 400, self._response_body(400, message), "rejected", message)

    def _record(
        self,
        worker: str,
        text: str,
        status: int,
        payload: bytes,
        outcome: str,
        reason: str,
        content: dict[str, Any] | None = None,
    ) -> tuple[int, bytes, str]:
        message = WorkerMessage(worker, text, status, payload.decode(), outcome, reason, content)
        with self._lock:
            self.messages.append(message)
            if outcome == "pending":
                self._queue.append(message)
        self._message_event.set()
        content_type = "application/json" if payload.startswith(b"{") else "text/plain; charset=utf-8"
        return status, payload, content_type

    def _deliver_worker_messages(self) -> int:
        """lifelonglearningjob.go: monitorWorker -- the job is looked up by namespace/ownerKind/
        ownerName in the LC of the node the worker runs on; its results and ownerInfo become an
        UpstreamMessage output for GM's updateFromEdge."""
        with self._lock:
            queued, self._queue = self._queue, []
            self._message_event.clear()
        for message in queued:
            content = message.content
            assert content is not None
            pod = self._pods_by_worker.get(message.worker)
            node = pod.node_name if pod is not None else self._ds_node
            key = f"{content['namespace']}/{content['ownerKind']}/{content['ownerName']}"
            if key != f"{self.namespace}/{_LL_KIND}/{self.job_name}":
                message.outcome, message.reason = "dropped", f"the LC has no job {key}"
                continue
            if node not in self._lc_nodes_with_job:
                message.outcome = "dropped"
                message.reason = (
                    f"the LC on node {node!r} does not hold the job (GM's syncToEdge never sent it there)"
                )
                continue
            upstream = {
                "phase": content["kind"],
                "status": content["status"],
                "input": None,
                "output": {"models": content["results"], "ownerInfo": content["ownerInfo"]},
            }
            cond, err = self._gm_update_from_edge(_encode(upstream, _UPSTREAM_MESSAGE))
            if err is not None:
                message.outcome, message.reason = "gm error", err
                self._log("GM", f"failed to handle worker {message.worker}'s report: {err}")
            else:
                message.outcome, message.condition = "accepted", cond
        return len(queued)

    # ---- kubelet ---------------------------------------------------------------------------------

    def _kubelet_run_pending(self) -> list[Pod]:
        started: list[Pod] = []
        for _ in range(10):
            pending = [p for p in self.pods if p.phase == "Pending" and not p.deleted]
            if not pending:
                break
            for pod in pending:
                started.append(pod)
                self._kubelet_run(pod)
        return started

    def _kubelet_run(self, pod: Pod) -> None:
        """Start the pod; GM sees it Running; a train/eval pod then runs to completion (restarted
        per its restartPolicy), its reports are delivered and GM sees the final phase."""
        launch = self._kubelet_start(pod)
        self._gm_sync()
        if launch is None or pod.worker_type == "inference":
            return
        self._kubelet_wait(pod, launch)
        self._deliver_worker_messages()
        self._gm_sync()

    def _kubelet_start(self, pod: Pod) -> _Launch | None:
        """Volumes, init containers in order (each must exit 0), then the first container."""
        pod_spec = pod.spec["spec"]
        if len(pod_spec["containers"]) > 1:
            raise EmulatorError(f"pod {pod.name}: only the first container is emulated (no sidecars)")
        volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
        for volume in volumes.values():
            self._kubelet_setup_volume(pod, volume)
        with open(pod.log_path, "ab"):
            pass
        os.chmod(pod.log_path, 0o644)
        for init in pod_spec.get("initContainers") or []:
            launch = self._kubelet_prepare(pod, init, volumes)
            attempts = 0
            while True:
                code = self._wait_process(pod, self._spawn(pod, launch), launch)
                if code == 0:
                    break
                pod.exit_codes.append(code)
                if pod_spec["restartPolicy"] == "Never":
                    pod.phase = "Failed"
                    return None
                if attempts >= self.max_restarts:
                    self._crash_loop(pod, f"init container {init.get('name')} exited {code}")
                attempts += 1
                pod.restarts += 1
        launch = self._kubelet_prepare(pod, pod_spec["containers"][0], volumes)
        pod.env, pod.argv, pod.cwd = launch.env, launch.argv, launch.cwd
        pod.uid, pod.gid, pod.groups = launch.uid, launch.gid, launch.groups
        pod.capabilities, pod.mounts = launch.capabilities, launch.mounts
        pod.process = self._spawn(pod, launch)
        pod.launch = launch
        pod.phase = "Running"
        return launch

    def _kubelet_setup_volume(self, pod: Pod, volume: dict[str, Any]) -> None:
        """The kubelet's hostPath type checks (DirectoryOrCreate is created 0755 by root) and
        emptyDir set-up (0777, group fsGroup with setgid when the pod has an fsGroup)."""
        name = volume["name"]
        if "hostPath" in volume:
            path = volume["hostPath"]["path"]
            host = Path(self._host_path_in_root(path, f"pod {pod.name} hostPath volume {name}"))
            kind = volume["hostPath"].get("type") or ""
            problem = ""
            if kind == "DirectoryOrCreate":
                if not host.exists():
                    _mkdir_p(host)
                elif not host.is_dir():
                    problem = "is not a directory"
            elif kind == "Directory":
                problem = "" if host.is_dir() else "is not a directory"
            elif kind == "FileOrCreate":
                if not host.exists():
                    _mkdir_p(host.parent)
                    host.touch()
                    os.chmod(host, 0o644)
                elif not host.is_file():
                    problem = "is not a file"
            elif kind == "File":
                problem = "" if host.is_file() else "is not a file"
            elif kind in ("Socket", "CharDevice", "BlockDevice"):
                checks = {"Socket": stat.S_ISSOCK, "CharDevice": stat.S_ISCHR, "BlockDevice": stat.S_ISBLK}
                problem = "" if host.exists() and checks[kind](host.stat().st_mode) else f"is not a {kind}"
            elif not host.exists():
                problem = "does not exist (the container runtime cannot bind-mount it)"
            if problem:
                raise PodStartError(
                    f"pod {pod.name}: MountVolume.SetUp failed for volume {name}: hostPath type check failed: "
                    f"{path} {problem}; the pod stays ContainerCreating\n{self.describe()}"
                )
        elif "emptyDir" in volume:
            directory = pod.dir / "volumes" / name
            _mkdir_p(directory, 0o777)
            fs_group = (pod.spec["spec"].get("securityContext") or {}).get("fsGroup")
            if fs_group is not None and self.emulates_users:
                os.chown(directory, 0, int(fs_group))
                os.chmod(directory, 0o2777)
            else:
                os.chmod(directory, 0o777)
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise EmulatorError(f"pod {pod.name}: volume {name} of type {kinds} is not emulated")

    def _kubelet_prepare(self, pod: Pod, container: dict[str, Any], volumes: dict[str, Any]) -> _Launch:
        """Mounts, identity, env (kubelet order, $(VAR) expansion, emptyDir paths rewritten), argv
        and the generated sitecustomize of one container."""
        name = container.get("name", "container")
        container_dir = pod.dir / "containers" / name
        home, rootfs_tmp, site = container_dir / "home", container_dir / "tmp", container_dir / "site"
        mounts: list[Mount] = []
        empty_dirs: dict[str, str] = {}
        for vm in container.get("volumeMounts") or []:
            if "subPath" in vm or "subPathExpr" in vm:
                raise EmulatorError(f"pod {pod.name}: volumeMount subPath is not emulated")
            volume = volumes.get(vm["name"])
            if volume is None:
                raise JobStalled(
                    f"the API server rejects pod {pod.name}: volumeMount {vm['name']} has no volume"
                )
            mount_path = vm["mountPath"]
            read_only = bool(vm.get("readOnly", False))
            if "hostPath" in volume:
                host = _go_clean(volume["hostPath"]["path"])
                prefix = str(self.prefix)
                if mount_path == prefix or mount_path.startswith(prefix + "/"):
                    container_path = _go_clean(mount_path)
                    expected = container_path[len(prefix) :] or "/"
                    if expected != host:
                        raise SednaPitfall(
                            f"pod {pod.name}: GM mounts host {host} at {container_path} because two host "
                            "paths give the same volume name (runtime/common.go: ConvertK8SValidName keeps "
                            "63 characters); the worker would see the wrong directory"
                        )
                    mounts.append(Mount(container_path, host, read_only, "gm"))
                else:
                    if _go_clean(mount_path) != host:
                        raise EmulatorError(
                            f"pod {pod.name}, container {name}: hostPath volume {vm['name']} ({host}) is mounted at "
                            f"{mount_path}; the emulator needs every template hostPath mounted at its own path"
                        )
                    mounts.append(Mount(host, host, read_only, "hostPath"))
            else:
                directory = str(pod.dir / "volumes" / vm["name"])
                empty_dirs[mount_path] = directory
                mounts.append(Mount(mount_path, directory, read_only, "emptyDir"))
        uid, gid, groups, caps, no_new_privs = self._identity(pod, container)
        readonly_rootfs = bool((container.get("securityContext") or {}).get("readOnlyRootFilesystem", False))
        for directory, mode in ((container_dir, 0o755), (home, 0o755), (rootfs_tmp, 0o1777), (site, 0o755)):
            _mkdir_p(directory)
            os.chmod(directory, mode)
        if uid is not None and self.emulates_users:
            os.chown(home, uid, gid if gid is not None else -1)
        mounts.append(Mount(str(home), str(home), readonly_rootfs, "rootfs"))
        mounts.append(Mount(str(rootfs_tmp), str(rootfs_tmp), readonly_rootfs, "rootfs"))

        pod_env = self._kubelet_env(pod, container)
        env = {k: _rewrite_prefix(v, empty_dirs) for k, v in self.extra_env.items()}
        env.update({k: _rewrite_prefix(v, empty_dirs) for k, v in pod_env.items()})
        env.setdefault("PATH", _DEFAULT_PATH)
        env.setdefault("HOME", str(home))
        if "TMPDIR" not in env:
            env["TMPDIR"] = empty_dirs.get("/tmp") or str(rootfs_tmp)
        env["HOSTNAME"] = pod.node_name  # hostNetwork: the node's hostname
        env["PYTHONPATH"] = str(site) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"

        def lookup(var: str) -> str | None:
            return env.get(var)

        command = container.get("command")
        if not command:
            raise EmulatorError(
                f"pod {pod.name}, container {name}: no command; the image's ENTRYPOINT is not emulated"
            )
        argv = [
            _rewrite_prefix(_k8s_expand(a, lookup), empty_dirs)
            for a in [*command, *(container.get("args") or [])]
        ]
        if "/" not in argv[0]:
            resolved = shutil.which(argv[0], path=env["PATH"])
            if resolved is None:
                # An image ENV PATH entry under an emptyDir mountPath is hidden in the pod, as in
                # a container; here that is the tests' venv standing in for the image's software.
                hidden = [
                    d
                    for d in self.extra_env.get("PATH", "").split(":")
                    if d and _rewrite_prefix(d, empty_dirs) != d
                ]
                why = (
                    f"; the image's PATH entries {hidden} lie under an emptyDir mountPath, which hides them "
                    "in the pod (the tests' venv plays the image: keep the project's checkout out of /tmp)"
                    if hidden
                    else ""
                )
                raise PodStartError(
                    f"pod {pod.name}: exec {argv[0]!r}: executable file not found in $PATH ({env['PATH']}){why}"
                )
            argv[0] = resolved
        working_dir = container.get("workingDir")
        cwd = str(home)
        if working_dir:
            cwd = _rewrite_prefix(working_dir, empty_dirs)
            if cwd == working_dir and not any(
                m.source in ("hostPath", "gm")
                and (cwd == m.container_path or cwd.startswith(m.container_path + "/"))
                for m in mounts
            ):
                raise EmulatorError(f"pod {pod.name}: workingDir {working_dir} is in the image; not emulated")

        bypass = False
        if uid not in (None, 0) and not _can_execute(uid, {gid or 0, *groups}, argv[0]):
            bypass = True
            pod.warnings.append(
                f"container {name}: uid {uid} cannot reach {os.path.realpath(argv[0])} (or its interpreter); it gets "
                "CAP_DAC_READ_SEARCH, so reads bypass permission checks (writes are still checked)"
            )
        self._write_sitecustomize(pod, site, mounts, empty_dirs, readonly_rootfs)
        return _Launch(name, argv, env, cwd, uid, gid, groups, caps, no_new_privs, bypass, mounts)

    def _identity(
        self, pod: Pod, container: dict[str, Any]
    ) -> tuple[int | None, int | None, list[int], list[str], bool]:
        """The uid/gid/groups and capabilities of a container: container securityContext, else the
        pod's, else the image's USER; runAsNonRoot with uid 0 is CreateContainerConfigError."""
        pod_sc = pod.spec["spec"].get("securityContext") or {}
        sc = container.get("securityContext") or {}
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        uid = int(uid) if uid is not None else self.image_user[0]
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
        gid = int(gid) if gid is not None else (self.image_user[1] if uid == self.image_user[0] else 0)
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root and uid == 0:
            raise PodStartError(
                f"pod {pod.name}, container {container.get('name')}: CreateContainerConfigError: container's runAsUser "
                "breaks non-root policy (runAsNonRoot is true, from the pod's securityContext unless the container "
                "overrides it)"
            )
        groups = sorted(
            {int(g) for g in pod_sc.get("supplementalGroups") or []}
            | ({int(pod_sc["fsGroup"])} if pod_sc.get("fsGroup") is not None else set())
        )
        if sc.get("privileged"):
            caps = {"all"}
        else:
            caps = set(_CONTAINER_DEFAULT_CAPS)
            wanted = sc.get("capabilities") or {}
            add = {c.lower().removeprefix("cap_") for c in wanted.get("add") or []}
            drop = {c.lower().removeprefix("cap_") for c in wanted.get("drop") or []}
            caps |= add
            caps = set(add) if "all" in drop else caps - drop
        no_new_privs = sc.get("allowPrivilegeEscalation") is False
        if not self.emulates_users:
            return None, None, [], sorted(caps), no_new_privs
        return uid, gid, groups, sorted(caps), no_new_privs

    def _kubelet_env(self, pod: Pod, container: dict[str, Any]) -> dict[str, str]:
        """kubelet makeEnvironmentVariables: env in order, a later duplicate wins, $(VAR) expands to
        variables defined before it, valueFrom fieldRef/secretKeyRef resolved."""
        if container.get("envFrom"):
            raise EmulatorError(f"pod {pod.name}: envFrom is not emulated")
        env: dict[str, str] = {}
        meta = pod.spec["metadata"]
        for item in container.get("env") or []:
            name = item["name"]
            source = item.get("valueFrom")
            if source is None:
                env[name] = _k8s_expand(item.get("value", ""), env.get)
                continue
            if "fieldRef" in source:
                env[name] = self._field_ref(pod, meta, source["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                value = (self.secrets.get(ref["name"]) or {}).get(ref["key"])
                if value is None:
                    pod.warnings.append(
                        f"env {name}: secret {ref['name']} key {ref['key']} not given: left unset (a kubelet would "
                        "fail with CreateContainerConfigError unless optional: true)"
                    )
                    continue
                env[name] = value
            else:
                raise EmulatorError(f"pod {pod.name}: env {name} valueFrom {sorted(source)} is not emulated")
        return env

    @staticmethod
    def _field_ref(pod: Pod, meta: dict[str, Any], field_path: str) -> str:
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": str(uuid.uuid5(uuid.NAMESPACE_URL, meta["name"])),
            "spec.nodeName": pod.node_name,
            "spec.serviceAccountName": pod.spec["spec"].get("serviceAccountName", "default"),
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
            "status.podIP": "127.0.0.1",  # hostNetwork
            "status.podIPs": "127.0.0.1",
        }
        if field_path in simple:
            return simple[field_path]
        found = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", field_path)
        if found:
            return str((meta.get(found.group(1)) or {}).get(found.group(2), ""))
        raise EmulatorError(f"pod {pod.name}: fieldRef {field_path} is not emulated")

    def _write_sitecustomize(
        self, pod: Pod, site: Path, mounts: list[Mount], empty_dirs: dict[str, str], readonly_rootfs: bool
    ) -> None:
        def entry(path: str, mount: Mount) -> list[Any]:
            label = (
                "the read-only root filesystem (readOnlyRootFilesystem)"
                if mount.source == "rootfs"
                else f"read-only mount {mount.container_path}"
            )
            return [path.rstrip("/") or "/", not mount.read_only, label]

        gm = [entry(m.container_path, m) for m in mounts if m.source == "gm"]
        host = [entry(m.host_path, m) for m in mounts if m.source != "gm"]
        host.append([str(site), False, "the emulator's sitecustomize"])
        summary = ", ".join(
            f"{m.container_path}{' (ro)' if m.read_only else ''}"
            for m in mounts
            if m.source in ("gm", "hostPath", "emptyDir")
        )
        config = {
            "pod": pod.name,
            "prefix": str(self.prefix),
            "root": str(self.root),
            "gm_mounts": gm,
            "host_mounts": host,
            "literal": sorted(p.rstrip("/") for p in empty_dirs if p.rstrip("/") != "/dev/shm"),
            "readonly_rootfs": readonly_rootfs,
            "summary": summary or "none",
        }
        target = site / "sitecustomize.py"
        target.write_text(_SITECUSTOMIZE.format(config=repr(config)))
        os.chmod(target, 0o644)

    def _spawn(self, pod: Pod, launch: _Launch) -> subprocess.Popen[bytes]:
        """Start one container process as its uid/gid/groups with its capabilities (setpriv)."""
        argv = list(launch.argv)
        kwargs: dict[str, Any] = {}
        if launch.uid is not None:
            if self._setpriv:
                caps = set(launch.capabilities) if launch.uid == 0 else set()
                if launch.read_search_bypass:
                    caps.add("dac_read_search")
                options = [f"--reuid={launch.uid}", f"--regid={launch.gid}"]
                options.append(
                    f"--groups={','.join(map(str, launch.groups))}" if launch.groups else "--clear-groups"
                )
                bounding = "-all" if "all" not in caps else "+all"
                bounding += "".join(f",+{c}" for c in sorted(caps - {"all"}))
                options.append(f"--bounding-set={bounding}")
                if launch.read_search_bypass:
                    options += ["--inh-caps=-all,+dac_read_search", "--ambient-caps=-all,+dac_read_search"]
                else:
                    options.append("--inh-caps=-all")
                if launch.no_new_privs:
                    options.append("--no-new-privs")
                argv = [self._setpriv, *options, "--", *argv]
            else:
                if launch.read_search_bypass:
                    raise PodStartError(
                        f"pod {pod.name}: uid {launch.uid} cannot run {argv[0]} and setpriv is missing"
                    )
                pod.warnings.append("setpriv not found: capabilities are not emulated")
                kwargs.update(user=launch.uid, group=launch.gid, extra_groups=launch.groups)
        with open(pod.log_path, "ab") as log:
            shown = [a if len(a) <= 120 else a[:117] + "..." for a in launch.argv]
            log.write(f"[emulator] start container {launch.container_name}: {shown}\n".encode())
            log.flush()
            return subprocess.Popen(
                argv,
                env=launch.env,
                cwd=launch.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,
            )

    def _wait_process(self, pod: Pod, process: subprocess.Popen[bytes], launch: _Launch) -> int:
        """Wait for a container to exit, delivering worker reports to GM while it runs (the LC
        forwards them at once) and enforcing ``pod_timeout_s``."""
        deadline = time.monotonic() + self.pod_timeout_s
        while True:
            code = process.poll()
            if code is not None:
                code = _container_exit_code(code)
                break
            if time.monotonic() > deadline:
                self._kill_group(pod, process)
                raise EmulatorError(
                    f"pod {pod.name}: container {launch.container_name} ran longer than {self.pod_timeout_s} s\n"
                    + pod.log_tail()
                )
            if self._queue:
                self._deliver_worker_messages()
                self._gm_sync()
            self._message_event.wait(0.05)
        self._kill_group(pod, process)  # container teardown: nothing it started survives
        with open(pod.log_path, "ab") as log:
            log.write(f"[emulator] container {launch.container_name} exited with code {code}\n".encode())
        return code

    def _kubelet_wait(self, pod: Pod, launch: _Launch) -> None:
        """Run the main container to the end, restarting it per restartPolicy (OnFailure: after a
        non-zero exit; Always: after any exit, so a train/eval pod never completes)."""
        policy = pod.spec["spec"]["restartPolicy"]
        assert pod.process is not None
        while True:
            code = self._wait_process(pod, pod.process, launch)
            pod.exit_codes.append(code)
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if not restart:
                pod.phase = "Succeeded" if code == 0 else "Failed"
                return
            if pod.restarts >= self.max_restarts:
                pod.phase = "Running"
                self._crash_loop(pod, f"container exited {code} (restartPolicy {policy})")
            pod.restarts += 1
            self._deliver_worker_messages()
            self._gm_sync()
            pod.process = self._spawn(pod, launch)

    def _kubelet_check_background_pods(self) -> None:
        """An inference pod that exited is restarted per its restartPolicy (Always by default)."""
        for pod in self.pods:
            if pod.deleted or pod.worker_type != "inference" or pod.phase != "Running" or pod.process is None:
                continue
            code = pod.process.poll()
            if code is None:
                continue
            code = _container_exit_code(code)
            self._kill_group(pod)
            pod.exit_codes.append(code)
            policy = pod.spec["spec"]["restartPolicy"]
            if not (policy == "Always" or (policy == "OnFailure" and code != 0)):
                pod.phase = "Succeeded" if code == 0 else "Failed"
                continue
            if pod.restarts >= self.max_restarts:
                self._crash_loop(pod, f"inference container exited {code} (restartPolicy {policy})")
            pod.restarts += 1
            assert pod.launch is not None
            pod.process = self._spawn(pod, pod.launch)

    def _crash_loop(self, pod: Pod, why: str) -> None:
        self._kill_group(pod)
        raise PodCrashLoop(
            f"pod {pod.name}: {why} after {pod.restarts} restart(s), exit codes {pod.exit_codes}; a real cluster "
            f"would restart it forever (CrashLoopBackOff). Log tail ({pod.log_path}):\n{pod.log_tail()}"
        )

    def _kill_group(self, pod: Pod, process: subprocess.Popen[bytes] | None = None) -> None:
        process = process or pod.process
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def _terminate(self, pod: Pod, grace_s: float) -> None:
        """Pod deletion: SIGTERM to the container's main process, SIGKILL after the grace period."""
        process = pod.process
        pod.deleted = True
        if process is None or process.poll() is not None:
            self._kill_group(pod)
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pod.sigkilled = True
            self._kill_group(pod)
            process.wait()
            note = f"pod {pod.name} ignored SIGTERM for {grace_s} s and was SIGKILLed"
            self.warnings.append(note)
            with open(pod.log_path, "ab") as log:
                log.write(f"[emulator] {note}\n".encode())
        self._kill_group(pod)
        code = _container_exit_code(process.returncode)
        pod.exit_codes.append(code)
        pod.phase = "Succeeded" if code == 0 else "Failed"
