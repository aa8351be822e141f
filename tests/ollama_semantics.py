"""How Ollama turns a Modelfile and a chat request into a prompt, re-implemented for the parity test.

Ported from Ollama's source (github.com/ollama/ollama):
- ``parse_modelfile``: parser/parser.go ``ParseFile`` (commands, ``\"\"\"`` quoting; runes that Go's
  ``strconv.IsPrint`` rejects are dropped outside the whitespace that separates/quotes values).
- ``request_messages``: server/routes.go ``ChatHandler``: the Modelfile's SYSTEM becomes a leading
  system message when the request does not start with one.
- ``collate``: template/template.go: System = all system messages joined by a blank line;
  consecutive messages of one role are merged.
- ``render_go_template``: the subset of Go's text/template that chat templates use: text,
  ``{{- ``/`` -}}`` trimming, ``if``/``else if``/``else``/``end``, ``range $i, $x := pipeline``,
  ``$var := pipeline``, fields (``.Role``, ``$.Messages``), string/number literals, parentheses and
  the functions ``eq ne and or not len slice``. Anything else raises, so the test cannot pass by
  silently ignoring a construct.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------- Modelfile parsing (parser.go)


def _is_print(ch: str) -> bool:
    """Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """The (command, argument) pairs of a Modelfile, as Ollama's ParseFile reads them
    (PARAMETER commands come back as (parameter name, value))."""
    commands: list[tuple[str, str]] = []
    state, buf, name = "nil", "", ""
    for ch in text:
        space, newline = ch in " \t", ch in "\r\n"
        keep = True  # parseRuneForState hands back the rune, or 0 (nothing to write)
        if state == "nil":
            nxt, keep = ("comment", False) if ch == "#" else ("nil", False) if space or newline else ("name", True)
        elif state == "name":
            if ch.isascii() and ch.isalpha():
                nxt = "name"
            elif space:
                nxt, keep = "value", False
            else:
                raise ValueError(f"invalid command near {buf!r}")
        elif state == "parameter":
            if ch.isascii() and (ch.isalnum() or ch == "_"):
                nxt = "parameter"
            elif space:
                nxt, keep = "value", False
            else:
                raise ValueError("bad parameter name")
        elif state == "value":
            nxt = "nil" if space or newline else "value"
        else:  # comment
            nxt, keep = ("nil" if newline else "comment"), False
        if nxt != state:
            if state == "name":
                lowered = buf.lower()
                if lowered not in ("from", "license", "template", "system", "adapter", "parameter", "message", "requires", "renderer", "parser", "draft"):
                    raise ValueError(f"invalid command {buf!r}")
                nxt, name = ("parameter", "") if lowered == "parameter" else ("value", "model" if lowered == "from" else lowered)
            elif state == "parameter":
                name = buf
            elif state == "value":
                value, ok = _unquote(buf.strip())
                if not ok or space:
                    buf += ch
                    continue
                commands.append((name, value))
            buf = ""
            state = nxt
        if keep and _is_print(ch):
            buf += ch
    if state == "value":
        value, ok = _unquote(buf.strip())
        if not ok:
            raise ValueError("unterminated value")
        commands.append((name, value))
    elif state not in ("nil", "comment"):
        raise ValueError("unexpected end of Modelfile")
    return commands


# ---------------------------------------------------------------- request handling (routes.go, template.go)


def request_messages(messages: list[dict], modelfile_system: str) -> list[dict]:
    """The messages Ollama's chat handler renders: SYSTEM first unless the request starts with one."""
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0]["role"] != "system" and modelfile_system:
        msgs.insert(0, {"role": "system", "content": modelfile_system})
    return msgs


def collate(messages: list[dict]) -> tuple[str, list[dict]]:
    system = [m["content"] for m in messages if m["role"] == "system"]
    collated: list[dict] = []
    for m in messages:
        if collated and collated[-1]["Role"] == m["role"]:
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"]})
    return "\n\n".join(system), collated


def ollama_prompt(template: str, modelfile_system: str, messages: list[dict]) -> str:
    """The prompt Ollama builds for a chat request to a model made from this Modelfile."""
    system, collated = collate(request_messages(messages, modelfile_system))
    return render_go_template(template, {"System": system, "Messages": collated, "Tools": None, "Response": ""})


# ---------------------------------------------------------------- Go text/template subset

_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(:=|\(|\)|,|"(?:[^"\\]|\\.)*"|-?\d+|\$[A-Za-z0-9_]*(?:\.[A-Za-z_]\w*)*|(?:\.[A-Za-z_]\w*)+|\.|[A-Za-z_]\w*)')
_WS = " \t\r\n"


@dataclass
class _Text:
    text: str


@dataclass
class _Action:
    tokens: list[str]


@dataclass
class _Assign:
    name: str
    tokens: list[str]


@dataclass
class _If:
    branches: list[tuple[list[str], list]] = field(default_factory=list)
    otherwise: list | None = None


@dataclass
class _Range:
    names: list[str]
    tokens: list[str]
    body: list = field(default_factory=list)


def _lex(expr: str) -> list[str]:
    tokens, pos, expr = [], 0, expr.strip()
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if not match or match.end() == pos:
            raise ValueError(f"unsupported template syntax: {expr[pos:]!r}")
        tokens.append(match.group(1))
        pos = match.end()
        while pos < len(expr) and expr[pos] in _WS:
            pos += 1
    return tokens


def _parse(template: str) -> list:
    pieces: list = []
    pos = 0
    for match in _ACTION.finditer(template):
        pieces.append(["text", template[pos:match.start()]])
        pieces.append(["action", match.group(2), bool(match.group(1)), bool(match.group(3))])
        pos = match.end()
    pieces.append(["text", template[pos:]])
    for i, piece in enumerate(pieces):  # trim markers eat the whitespace next to them
        if piece[0] == "action":
            if piece[2]:
                pieces[i - 1][1] = pieces[i - 1][1].rstrip(_WS)
            if piece[3]:
                pieces[i + 1][1] = pieces[i + 1][1].lstrip(_WS)

    root: list = []
    stack: list[tuple[Any, list]] = [(None, root)]
    for piece in pieces:
        body = stack[-1][1]
        if piece[0] == "text":
            if piece[1]:
                body.append(_Text(piece[1]))
            continue
        tokens = _lex(piece[1])
        if not tokens:
            raise ValueError("empty action")
        head = tokens[0]
        if head == "if":
            node = _If(branches=[(tokens[1:], [])])
            body.append(node)
            stack.append((node, node.branches[0][1]))
        elif head == "else":
            node = stack[-1][0]
            if not isinstance(node, _If):
                raise ValueError("else outside if")
            stack.pop()
            if tokens[1:2] == ["if"]:
                node.branches.append((tokens[2:], []))
                stack.append((node, node.branches[-1][1]))
            else:
                node.otherwise = []
                stack.append((node, node.otherwise))
        elif head == "end":
            if len(stack) == 1:
                raise ValueError("unexpected end")
            stack.pop()
        elif head == "range":
            if ":=" not in tokens:
                raise ValueError("range without variables is not in the subset")
            cut = tokens.index(":=")
            names = [t for t in tokens[1:cut] if t != ","]
            node = _Range(names, tokens[cut + 1:])
            body.append(node)
            stack.append((node, node.body))
        elif len(tokens) > 2 and tokens[1] == ":=" and head.startswith("$"):
            body.append(_Assign(head, tokens[2:]))
        elif head in ("with", "define", "template", "block", "break", "continue"):
            raise ValueError(f"{head} is not in the subset")
        else:
            body.append(_Action(tokens))
    if len(stack) != 1:
        raise ValueError("missing end")
    return root


def _truth(value: Any) -> bool:
    return bool(value) if value is not None else False


def _field(value: Any, names: list[str]) -> Any:
    for name in names:
        if isinstance(value, dict):
            value = value.get(name)  # missingkey=zero
        else:
            raise ValueError(f"cannot read field {name} of {type(value).__name__}")
    return value


class _Scope:
    def __init__(self, root: Any) -> None:
        self.frames: list[dict] = [{"$": root}]

    def get(self, name: str) -> Any:
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise ValueError(f"undefined variable {name}")


_FUNCS = {
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "not": lambda a: not _truth(a),
    "len": lambda a: len(a),
    "slice": lambda a, *ix: a[ix[0]:ix[1]] if len(ix) == 2 else a[ix[0]:] if ix else a,
}


def _eval(tokens: list[str], dot: Any, scope: _Scope) -> Any:
    value, rest = _command(tokens, dot, scope)
    if rest:
        raise ValueError(f"pipelines are not in the subset: {rest}")
    return value


def _command(tokens: list[str], dot: Any, scope: _Scope) -> tuple[Any, list[str]]:
    """Evaluate one command (a function call or a single operand) up to ')' or the end."""
    head = tokens[0]
    if head in _FUNCS or head in ("and", "or"):
        args, rest = [], tokens[1:]
        while rest and rest[0] != ")":
            arg, rest = _operand(rest, dot, scope)
            args.append(arg)
        if head == "and":
            result = args[-1]
            for arg in args:
                if not _truth(arg):
                    result = arg
                    break
            return result, rest
        if head == "or":
            return next((a for a in args if _truth(a)), args[-1]), rest
        return _FUNCS[head](*args), rest
    if re.fullmatch(r"[A-Za-z_]\w*", head):
        raise ValueError(f"function {head} is not in the subset")
    return _operand(tokens, dot, scope)


def _operand(tokens: list[str], dot: Any, scope: _Scope) -> tuple[Any, list[str]]:
    head, rest = tokens[0], tokens[1:]
    if head == "(":
        value, rest = _command(rest, dot, scope)
        if not rest or rest[0] != ")":
            raise ValueError("missing )")
        return value, rest[1:]
    if head.startswith('"'):
        return bytes(head[1:-1], "utf-8").decode("unicode_escape"), rest
    if re.fullmatch(r"-?\d+", head):
        return int(head), rest
    if head == ".":
        return dot, rest
    if head.startswith("$"):
        name, *names = head.split(".")
        return _field(scope.get(name), names), rest
    if head.startswith("."):
        return _field(dot, head.split(".")[1:]), rest
    raise ValueError(f"unsupported operand {head!r}")


def _exec(nodes: list, dot: Any, scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.text)
        elif isinstance(node, _Action):
            value = _eval(node.tokens, dot, scope)
            out.append("" if value is None else str(value).lower() if isinstance(value, bool) else str(value))
        elif isinstance(node, _Assign):
            scope.frames[-1][node.name] = _eval(node.tokens, dot, scope)
        elif isinstance(node, _If):
            chosen = next((body for cond, body in node.branches if _truth(_eval(cond, dot, scope))), node.otherwise)
            if chosen is not None:
                scope.frames.append({})
                _exec(chosen, dot, scope, out)
                scope.frames.pop()
        elif isinstance(node, _Range):
            items = _eval(node.tokens, dot, scope) or []
            for index, item in enumerate(items):
                frame = dict(zip(node.names, (index, item))) if len(node.names) == 2 else {node.names[0]: item}
                scope.frames.append(frame)
                _exec(node.body, item, scope, out)
                scope.frames.pop()


def render_go_template(template: str, data: dict) -> str:
    """Render ``template`` with ``data`` as the root (``.`` and ``$``)."""
    out: list[str] = []
    _exec(_parse(template), data, _Scope(data), out)
    return "".join(out)
