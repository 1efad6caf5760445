"""A small Groovy expression evaluator, for the Nextflow code's `def` lines, functions and closures.

It parses an expression into a tree first and evaluates it lazily (so `a ? b : c`, `?:`, `&&` and
`||` only evaluate the branch Groovy would). Supported: literals ('...', "GString", /slashy/,
numbers, null/true/false), lists `[a, b]`, closures `{ x -> expr }` / `{ expr }`, property access
(`a.b`, `a?.b`), indexing (`a[-1]`), maps `[k: v]`, calls of functions given in the environment and of the few
methods listed in `_METHODS`, and the operators `! - + .. == != < > <= >= in && || ?: ? : instanceof`.
Anything else raises `NfSyntaxError`, so code these tests cannot follow fails loudly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


class NfSyntaxError(ValueError):
    pass


class NfPath(str):
    """A staged input file: renders as its name; `.name` works as on a Nextflow path."""

    @property
    def name(self) -> str:
        return Path(self).name


class NfPathList(list):
    """A `path` input given a list: renders space-separated, as Nextflow's BlankSeparatedList."""

    def __str__(self) -> str:
        return " ".join(str(p) for p in self)


def gstr(value) -> str:
    """How a Groovy GString renders a value."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (dict, set)):
        raise NfSyntaxError(f"cannot render {value!r} in a script")
    if isinstance(value, list) and not isinstance(value, NfPathList):
        return "[" + ", ".join(gstr(v) for v in value) + "]"
    return str(value)


def truthy(value) -> bool:
    """Groovy truth."""
    if value is None or value is False:
        return False
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    if isinstance(value, (int, float)):
        return value != 0
    return True


# ------------------------------------------------------------------------------------ lexing

_OPS = ["..", "?.", "?:", "==", "!=", ">=", "<=", "&&", "||", "->", "!", "?", ":", "(", ")", "[", "]", "{", "}",
        ",", ".", "+", "-", ">", "<"]
_SLASHY_AFTER = {None, "(", "[", "{", ",", "?", ":", "?:", "==", "!=", "&&", "||", "!", "->", "="}
_NAME = re.compile(r"[A-Za-z_]\w*")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _quoted_end(text: str, i: int) -> int:
    quote, j = text[i], i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == quote:
            return j + 1
        j += 1
    raise NfSyntaxError(f"unterminated string in {text!r}")


def tokens(text: str) -> list[tuple[str, str]]:
    """[(kind, text)] with kind in str, gstr, regex, num, name, op."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
            continue
        prev = out[-1][1] if out and out[-1][0] == "op" else (None if not out else "value")
        if c in "'\"":
            end = _quoted_end(text, i)
            out.append(("str" if c == "'" else "gstr", text[i + 1 : end - 1]))
            i = end
        elif c == "/" and prev in _SLASHY_AFTER:
            end = _quoted_end(text, i)
            out.append(("regex", text[i + 1 : end - 1].replace("\\/", "/")))
            i = end
        elif m := _NUMBER.match(text, i):
            out.append(("num", m.group()))
            i = m.end()
        elif m := _NAME.match(text, i):
            out.append(("name", m.group()))
            i = m.end()
        else:
            op = next((o for o in _OPS if text.startswith(o, i)), None)
            if op is None:
                raise NfSyntaxError(f"unsupported Groovy at {text[i:i + 20]!r}")
            out.append(("op", op))
            i += len(op)
    return out


# ----------------------------------------------------------------------------------- parsing


class _Parser:
    """expr := or (('?' expr ':' expr) | ('?:' expr))? ; or := and ('||' and)* ;
    and := cmp ('&&' cmp)* ; cmp := add ('..' add | ('=='|'!='|'<'|'>'|'<='|'>='|'in'|'instanceof') add)? ;
    add := unary (('+'|'-') unary)* ; unary := ('!'|'-') unary | postfix ;
    postfix := primary ('.' name call? | '?.' name call? | '[' expr ']' | call)*"""

    def __init__(self, toks):
        self.t, self.i = toks, 0

    def peek(self, k=0):
        return self.t[self.i + k] if self.i + k < len(self.t) else (None, None)

    def accept(self, op):
        if self.peek() == ("op", op):
            self.i += 1
            return True
        return False

    def expect(self, op):
        if not self.accept(op):
            raise NfSyntaxError(f"expected {op!r}, got {self.peek()[1]!r}")

    def expr(self):
        cond = self.or_()
        if self.accept("?"):
            a = self.expr()
            self.expect(":")
            return ("if", cond, a, self.expr())
        if self.accept("?:"):
            return ("elvis", cond, self.expr())
        return cond

    def or_(self):
        node = self.and_()
        while self.accept("||"):
            node = ("or", node, self.and_())
        return node

    def and_(self):
        node = self.cmp()
        while self.accept("&&"):
            node = ("and", node, self.cmp())
        return node

    def cmp(self):
        node = self.add()
        if self.accept(".."):
            return ("range", node, self.add())
        kind, text = self.peek()
        if kind == "op" and text in ("==", "!=", "<", ">", "<=", ">="):
            self.i += 1
            return ("cmp", text, node, self.add())
        if (kind, text) == ("name", "in"):
            self.i += 1
            return ("in", node, self.add())
        if (kind, text) == ("name", "instanceof"):
            self.i += 1
            kind, type_name = self.peek()
            self.i += 1
            return ("instanceof", node, type_name)
        return node

    def add(self):
        node = self.unary()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.peek()[1]
            self.i += 1
            node = ("arith", op, node, self.unary())
        return node

    def unary(self):
        if self.accept("!"):
            return ("not", self.unary())
        if self.accept("-"):
            return ("neg", self.unary())
        return self.postfix()

    def args(self):
        items = []
        if not self.accept(")"):
            items.append(self.expr())
            while self.accept(","):
                items.append(self.expr())
            self.expect(")")
        if self.peek() == ("op", "{"):  # a trailing closure: list.collect { ... }
            items.append(self.primary())
        return items

    def postfix(self):
        node = self.primary()
        while True:
            if self.peek() in (("op", "."), ("op", "?.")):
                safe = self.peek()[1] == "?."
                self.i += 1
                kind, name = self.peek()
                if kind != "name":
                    raise NfSyntaxError(f"expected a name after '.', got {name!r}")
                self.i += 1
                if self.accept("("):
                    node = ("call", node, name, self.args(), safe)
                elif self.peek() == ("op", "{"):
                    node = ("call", node, name, [self.primary()], safe)
                else:
                    node = ("prop", node, name, safe)
            elif self.accept("["):
                index = self.expr()
                self.expect("]")
                node = ("index", node, index)
            else:
                return node

    def map_literal(self):
        entries = []
        while True:
            key = self.peek()[1]
            self.i += 1
            self.expect(":")
            entries.append((key, self.expr()))
            if not self.accept(","):
                break
        self.expect("]")
        return ("map", entries)

    def primary(self):
        kind, text = self.peek()
        self.i += 1
        if kind == "op" and text == "(":
            node = self.expr()
            self.expect(")")
            return node
        if kind == "op" and text == "[":
            if self.peek()[0] in ("name", "str") and self.peek(1) == ("op", ":"):
                return self.map_literal()
            items = []
            if not self.accept("]"):
                items.append(self.expr())
                while self.accept(","):
                    if self.peek() == ("op", "]"):
                        break
                    items.append(self.expr())
                self.expect("]")
            return ("list", items)
        if kind == "op" and text == "{":
            params = ["it"]
            if self.peek()[0] == "name" and self.peek(1) in (("op", "->"), ("op", ",")):
                params = [self.peek()[1]]
                self.i += 1
                while self.accept(","):
                    params.append(self.peek()[1])
                    self.i += 1
                self.expect("->")
            body = self.expr()
            self.expect("}")
            return ("closure", params, body)
        if kind in ("str", "gstr", "regex", "num"):
            return (kind, text)
        if kind == "name":
            if text in ("null", "true", "false"):
                return ("const", {"null": None, "true": True, "false": False}[text])
            if self.peek() == ("op", "("):
                self.i += 1
                return ("fcall", text, self.args())
            return ("name", text)
        raise NfSyntaxError(f"unexpected {text!r}")


def parse(text: str):
    parser = _Parser(tokens(text))
    node = parser.expr()
    if parser.i != len(parser.t):
        raise NfSyntaxError(f"trailing tokens in {text!r}: {parser.t[parser.i:]}")
    return node


# -------------------------------------------------------------------------------- evaluation


@dataclass
class Closure:
    params: list[str]
    body: tuple
    env: dict

    def __call__(self, *args):
        # Groovy: missing args are null
        return _eval(self.body, {**self.env, **dict(zip(self.params, args, strict=False))})


def _unescape_single(text: str) -> str:
    from nf_groovy import unescape  # noqa: PLC0415 (one owner of Groovy string escapes)

    return unescape(text)


def _string_method(value: str, name: str, args: list):
    if name == "toBoolean":
        return value.strip().lower() in ("true", "y", "1")
    if name == "toInteger":
        return int(value)
    if name == "isInteger":
        return re.fullmatch(r"-?\d+", value.strip()) is not None
    if name == "trim":
        return value.strip()
    if name == "toLowerCase":
        return value.lower()
    if name == "padLeft":
        return value.rjust(args[0], args[1] if len(args) > 1 else " ")
    if name == "replace":
        return value.replace(args[0], args[1])
    if name == "replaceFirst":
        return re.sub(args[0], args[1].replace("\\", "\\\\"), value, count=1)
    if name == "findAll" and isinstance(args[0], str):
        return [m.group(0) for m in re.finditer(args[0], value)]
    if name == "startsWith":
        return value.startswith(args[0])
    if name == "endsWith":
        return value.endswith(args[0])
    if name == "contains":
        return args[0] in value
    if name == "tokenize":
        return [t for t in re.split("[" + re.escape(args[0] if args else " \t\n\r\f") + "]", value) if t]
    raise NfSyntaxError(f"unsupported String method {name}()")


def _list_method(value: list, name: str, args: list):
    if name == "join":
        return (args[0] if args else "").join(gstr(v) for v in value)
    if name == "collect":
        return [args[0](v) for v in value]
    if name == "findAll":
        return [v for v in value if truthy(args[0](v))]
    if name == "find":
        return next((v for v in value if truthy(args[0](v))), None)
    if name == "unique":
        return list(dict.fromkeys(value))
    if name == "sort":
        return sorted(value)
    if name == "count":
        return value.count(args[0])
    if name == "contains":
        return args[0] in value
    if name == "isEmpty":
        return not value
    raise NfSyntaxError(f"unsupported List method {name}()")


def call_method(value, name: str, args: list):
    if name == "toString":
        return gstr(value)
    if name == "size" and isinstance(value, (str, list)):
        return len(value)
    if isinstance(value, NfPath) and name == "getName":
        return value.name
    if isinstance(value, list):
        return _list_method(value, name, args)
    if isinstance(value, str):
        return _string_method(value, name, args)
    if isinstance(value, int) and name == "toInteger":
        return value
    raise NfSyntaxError(f"unsupported method {name}() on {type(value).__name__}")


def get_property(value, name: str, dotted: str):
    if isinstance(value, dict):
        if name not in value:
            # Nextflow: a missing task.ext.* is null; a missing param is a bug in the pipeline
            if dotted.startswith("task.ext."):
                return None
            raise NfSyntaxError(f"{dotted!r}: no {name!r}")
        return value[name]
    if isinstance(value, NfPath) and name in ("name", "fileName"):
        return value.name
    raise NfSyntaxError(f"cannot read {name!r} of {dotted!r}")


def _dotted(node) -> str:
    if node[0] == "name":
        return node[1]
    if node[0] == "prop":
        return f"{_dotted(node[1])}.{node[2]}"
    return "<expr>"


def _compare(op: str, a, b) -> bool:
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if a is None or b is None:
        raise NfSyntaxError(f"cannot compare null with {op}")
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]


def _arith(op: str, a, b):
    if op == "+" and isinstance(a, str):
        return a + gstr(b)
    if op == "+" and isinstance(a, list):
        return [*a, *(b if isinstance(b, list) else [b])]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b if op == "+" else a - b
    raise NfSyntaxError(f"unsupported {type(a).__name__} {op} {type(b).__name__}")


def _eval(node, env: dict):  # noqa: C901, PLR0911, PLR0912 (one branch per node kind)
    kind = node[0]
    if kind == "const":
        return node[1]
    if kind == "str":
        return _unescape_single(node[1])
    if kind == "gstr":
        from nf_groovy import interpolate  # noqa: PLC0415 (GStrings live with the script renderer)

        return interpolate(node[1], env)
    if kind == "regex":
        return node[1]
    if kind == "num":
        return float(node[1]) if "." in node[1] else int(node[1])
    if kind == "name":
        if node[1] not in env:
            raise NfSyntaxError(f"unknown variable {node[1]!r}")
        return env[node[1]]
    if kind == "list":
        return [_eval(item, env) for item in node[1]]
    if kind == "map":
        return {key: _eval(value, env) for key, value in node[1]}
    if kind == "closure":
        return Closure(node[1], node[2], env)
    if kind == "if":
        return _eval(node[2], env) if truthy(_eval(node[1], env)) else _eval(node[3], env)
    if kind == "elvis":
        value = _eval(node[1], env)
        return value if truthy(value) else _eval(node[2], env)
    if kind == "or":
        return truthy(_eval(node[1], env)) or truthy(_eval(node[2], env))
    if kind == "and":
        return truthy(_eval(node[1], env)) and truthy(_eval(node[2], env))
    if kind == "not":
        return not truthy(_eval(node[1], env))
    if kind == "neg":
        return -_eval(node[1], env)
    if kind == "cmp":
        return _compare(node[1], _eval(node[2], env), _eval(node[3], env))
    if kind == "arith":
        return _arith(node[1], _eval(node[2], env), _eval(node[3], env))
    if kind == "range":
        return list(range(_eval(node[1], env), _eval(node[2], env) + 1))
    if kind == "in":
        return _eval(node[1], env) in _eval(node[2], env)
    if kind == "instanceof":
        if node[2] != "List":
            raise NfSyntaxError(f"unsupported instanceof {node[2]}")
        return isinstance(_eval(node[1], env), list)
    if kind == "index":
        value, index = _eval(node[1], env), _eval(node[2], env)
        if isinstance(value, dict):
            return value.get(index)
        return value[index]
    if kind == "prop":
        value = _eval(node[1], env)
        if value is None and node[3]:
            return None
        return get_property(value, node[2], _dotted(node))
    if kind == "call":
        value = _eval(node[1], env)
        if value is None and node[4]:
            return None
        return call_method(value, node[2], [_eval(a, env) for a in node[3]])
    if kind == "fcall":
        function = env.get(node[1])
        if not callable(function):
            raise NfSyntaxError(f"unknown function {node[1]}()")
        return function(*[_eval(a, env) for a in node[2]])
    raise NfSyntaxError(f"cannot evaluate {kind}")


def evaluate(expr: str, env: dict):
    """The value of a Groovy expression for the variables (and functions) in env."""
    return _eval(parse(expr), env)


def names_read(expr: str) -> set[str]:
    """The variables and properties an expression reads, dotted (`process.exitStatus == 3` ->
    {'process', 'process.exitStatus'})."""
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, tuple) and node and node[0] in ("name", "prop"):
            found.add(_dotted(node))
        for child in node if isinstance(node, (tuple, list)) else ():
            if isinstance(child, (tuple, list)):
                walk(child)

    walk(parse(expr))
    return found


def lookup(dotted: str, env: dict):
    """`params.overlap`, `task.ext.args`, `meta.id`, `zarr`, `transform.name` ..."""
    return evaluate(dotted, env)


# --------------------------------------------------------------------------------- functions


@dataclass
class Function:
    """A top-level `def name(a, b) { def x = ...; return ... }` of a .nf file. Its body is read when it
    is called: a function with other statements (if, error ...) can be defined but not called here."""

    name: str
    params: list[str]
    body: str
    env: dict

    def statements(self) -> list[tuple[str, str | None, str]]:
        """('def', name, expr) and ('return', None, expr), in order."""
        out = []
        for line in self.body.splitlines():
            if not line.strip():
                continue
            if m := re.fullmatch(r"\s*def\s+(\w+)\s*=\s*(.+?)\s*", line):
                out.append(("def", m.group(1), m.group(2)))
            elif m := re.fullmatch(r"\s*return\s+(.+?)\s*", line):
                out.append(("return", None, m.group(1)))
            else:
                raise NfSyntaxError(f"{self.name}(): unsupported statement {line.strip()!r}")
        return out

    def __call__(self, *args):
        local = {**self.env, **dict(zip(self.params, args, strict=True))}
        for kind, name, expr in self.statements():
            value = evaluate(expr, local)
            if kind == "return":
                return value
            local[name] = value
        return None


def parse_function(name: str, params: str, body: str, env: dict) -> Function:
    names = [p.strip().split()[-1] for p in params.split(",") if p.strip()]
    return Function(name, names, body, env)
