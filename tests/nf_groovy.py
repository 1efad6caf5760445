"""Just enough Groovy to check the Nextflow code from Python (Nextflow itself is not installable here).

- `nf_processes(path)`: the processes of a .nf file, split in sections (directives, input, output,
  script, stub).
- `NfProcess.render(...)`: the script (or stub) exactly as Nextflow would write `.command.sh`: the
  `def` lines are evaluated (ternaries, elvis, `!= null`, Groovy truth), the GString is interpolated
  (`${...}`, `$name.attr`, `\\$`, `\\\\`) and its indentation is stripped.
- `nf_functions(path)`: the top-level functions of a .nf file (and those it includes), callable.
- `config_params(...)`, `profile_params(...)`, `profile_ext_args(...)`: the params and `ext.args` of
  nextflow.config / conf/*.config; `config_tree(text)`: every setting of a config as nested dicts.
- `nf_test_spec(path)`: what an nf-test file declares (its kind, settings such as `script` and
  `process`, and its tests with their own settings such as `options "-stub"`).
- Expressions are evaluated by tests/nf_expr.py; in a task script, staged paths are escaped as
  Nextflow escapes them (`escape_path`).

Deliberately narrow: anything outside this small subset raises `NfSyntaxError`, so a change in the
.nf code that these tests cannot follow fails loudly instead of passing silently.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from nf_expr import (  # noqa: E402  (re-exported: the tests import them from here)
    NfPath,
    NfPathList,
    NfSyntaxError,
    evaluate,
    gstr,
    lookup,
    parse_function,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Lexing: strings and comments
# --------------------------------------------------------------------------------------------

_SLASHY_BEFORE = set("(,=~!&|?:[{")


def _string_end(text: str, i: int) -> int:
    """Index just past the string literal starting at text[i] (', ", ''', \"\"\" or /slashy/)."""
    for quote in ('"""', "'''"):
        if text.startswith(quote, i):
            j = i + 3
            while True:
                k = text.find(quote, j)
                if k < 0:
                    raise NfSyntaxError(f"unterminated {quote} string at offset {i}")
                # an escaped quote (odd number of backslashes before it) does not close the string
                n = 0
                while text[k - 1 - n] == "\\":
                    n += 1
                if n % 2 == 0:
                    return k + 3
                j = k + 1
    quote = text[i]
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == quote:
            return j + 1
        if c == "\n" and quote != "/":
            break
        j += 1
    raise NfSyntaxError(f"unterminated {quote} string at offset {i}")


def _scan(text: str):
    """Yield (kind, start, end) for 'code', 'string' and 'comment' runs of a Groovy text."""
    i, start, n = 0, 0, len(text)
    prev = ""  # last non-blank code character, to tell a slashy string from a division
    while i < n:
        c = text[i]
        if text.startswith("//", i) or text.startswith("/*", i):
            if start < i:
                yield "code", start, i
            end = text.find("\n", i) if text[i + 1] == "/" else text.find("*/", i + 2) + 2
            end = n if end < 0 or end == 1 else end
            yield "comment", i, end
            i = start = end
            continue
        if c in "'\"" or (c == "/" and prev in _SLASHY_BEFORE):
            if start < i:
                yield "code", start, i
            end = _string_end(text, i)
            yield "string", i, end
            i = start = end
            prev = "s"
            continue
        if not c.isspace():
            prev = c
        i += 1
    if start < n:
        yield "code", start, n


def strip_comments(text: str) -> str:
    """The text with comments blanked out (strings kept; newlines kept, so line numbers hold)."""
    out = []
    for kind, a, b in _scan(text):
        chunk = text[a:b]
        out.append(re.sub(r"[^\n]", " ", chunk) if kind == "comment" else chunk)
    return "".join(out)


def _code_mask(text: str) -> list[bool]:
    mask = [False] * len(text)
    for kind, a, b in _scan(text):
        if kind == "code":
            mask[a:b] = [True] * (b - a)
    return mask


def block_after(text: str, open_index: int) -> tuple[str, int]:
    """Content of the {...} block whose '{' is at text[open_index]; returns (content, end)."""
    if text[open_index] != "{":
        raise NfSyntaxError(f"expected '{{' at offset {open_index}")
    mask = _code_mask(text)
    depth = 0
    for k in range(open_index, len(text)):
        if not mask[k]:
            continue
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : k], k + 1
    raise NfSyntaxError("unbalanced braces")


def named_blocks(text: str, name_pattern: str = r"[\w.]+|withName:\s*'[^']+'|withLabel:\s*'[^']+'"):
    """Top-level `name { ... }` blocks of a (comment-free) text: [(name, content)]."""
    mask = _code_mask(text)
    blocks, i = [], 0
    rx = re.compile(rf"({name_pattern})\s*\{{")
    while True:
        m = rx.search(text, i)
        if not m:
            return blocks
        brace = m.end() - 1
        if not mask[brace]:
            i = m.end()
            continue
        content, end = block_after(text, brace)
        blocks.append((m.group(1), content))
        i = end


# --------------------------------------------------------------------------------------------
# Values and expressions
# --------------------------------------------------------------------------------------------


_ESCAPES = {"\\": "\\", "$": "$", '"': '"', "'": "'", "n": "\n", "t": "\t"}


def unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "\n":  # line continuation inside a Groovy string
                i += 2
                continue
            if nxt not in _ESCAPES:
                raise NfSyntaxError(f"unsupported escape \\{nxt}")
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


# Nextflow (Escape.path) backslash-escapes these characters of a staged path (TaskPath, or a list
# of them) interpolated in a task script's GString; not '$'.
_PATH_SPECIALS = set("'\" ()\\!&|<>`:;")


def escape_path(value: str) -> str:
    return "".join("\\" + c if c in _PATH_SPECIALS else c for c in value)


def _gstr_in(value, env: dict) -> str:
    """A value rendered in a GString; in a task script, staged paths are escaped as Nextflow does."""
    if env.get(ESCAPE_PATHS):
        if isinstance(value, NfPathList):
            return " ".join(escape_path(str(v)) for v in value)
        if isinstance(value, NfPath):
            return escape_path(str(value))
    return gstr(value)


ESCAPE_PATHS = "__escape_paths__"  # set in the environment of a process's script and stub sections


def interpolate(text: str, env: dict) -> str:
    """Render the body of a double-quoted (or triple-double-quoted) Groovy string."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            j = i + 2
            out.append(unescape(text[i:j]))
            i = j
            continue
        if c == "$":
            if text.startswith("${", i):
                depth, j = 0, i + 1
                while j < len(text):
                    if text[j] in "'\"":
                        j = _string_end(text, j)
                        continue
                    if text[j] == "{":
                        depth += 1
                    elif text[j] == "}":
                        depth -= 1
                        if depth == 0:
                            break
                    j += 1
                out.append(_gstr_in(evaluate(text[i + 2 : j], env), env))
                i = j + 1
                continue
            m = re.compile(r"\$([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)").match(text, i)
            if not m:
                raise NfSyntaxError(f"bare '$' in a GString: {text[i:i + 20]!r} (escape it as \\$)")
            out.append(_gstr_in(lookup(m.group(1), env), env))
            i = m.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


def strip_indent(text: str) -> str:
    """Nextflow strips the common indentation of a task script (and a first empty line)."""
    if text.startswith("\n"):
        text = text[1:]
    return textwrap.dedent(text)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------

_SECTION = re.compile(r"^[ \t]*(input|output|script|stub|when|exec|shell):[ \t]*$", re.MULTILINE)


@dataclass
class NfProcess:
    name: str
    path: Path
    sections: dict[str, str] = field(default_factory=dict)

    # ---- declarations
    def inputs(self) -> list[tuple[str, str]]:
        """[('val', 'meta'), ('path', 'zarr'), ...] in declaration order."""
        found = re.finditer(r"\b(val|path)\(\s*(\w+)", self.sections.get("input", ""))
        return [(m.group(1), m.group(2)) for m in found]

    def output_patterns(self) -> list[str]:
        return re.findall(r"\bpath\(\s*'([^']+)'", self.sections.get("output", ""))

    def outputs(self) -> list[dict]:
        """The output declarations, parsed: [{'items': [(kind, argument source)], 'emit': name, 'topic': name}],
        e.g. `tuple val(meta), path('*.json'), emit: pairs` -> items [('val', 'meta'), ('path', "'*.json'")]."""
        result = []
        for line in self.sections.get("output", "").splitlines():
            if not line.strip():
                continue
            options = dict(re.findall(r"\b(emit|topic|optional):\s*(\w+)", line))
            body = re.split(r",\s*\b(?:emit|topic|optional):", line)[0].strip()
            body = re.sub(r"^tuple\s+", "", body)
            items = [(m.group(1), (m.group(2) or "").strip())
                     for m in re.finditer(r"\b(val|path|eval|env|stdout)\b(?:\(((?:[^()]|\([^()]*\))*)\))?", body)]
            result.append({"items": items, "emit": options.get("emit"), "topic": options.get("topic")})
        return result

    def eval_outputs(self) -> list[str]:
        """Commands of the `eval('...')` outputs (Nextflow runs them after the script, in the task folder)."""
        return re.findall(r"\beval\(\s*'([^']+)'\s*\)", self.sections.get("output", ""))

    def functions(self) -> dict:
        """The functions this module includes (`include { a; b } from '../file'`)."""
        return nf_functions(self.path)

    def directives(self) -> str:
        return self.sections.get("directives", "")

    def directive_map(self) -> dict[str, list[str]]:
        """The directives, parsed: {name: [argument source, ...]} in declaration order
        (`label 'a'` twice gives ['\'a\'', ...]; `accelerator { use_gpu ? 1 : null }` gives the closure)."""
        text = self.directives()
        mask = _code_mask(text)
        found: dict[str, list[str]] = {}
        i = 0
        while i < len(text):
            if text[i].isspace():
                i += 1
                continue
            m = re.compile(r"(\w+)[ \t]+").match(text, i)
            if not m or not mask[i]:
                raise NfSyntaxError(f"{self.name}: unsupported directive {text[i:i + 40].strip()!r}")
            end = _statement_end(text, m.end())
            found.setdefault(m.group(1), []).append(text[m.end() : end].strip())
            i = end
        return found

    # ---- script
    def script_parts(self, section: str = "script") -> tuple[list[tuple[str, str]], str]:
        """(`def` statements as (name, expression), body of the triple-quoted GString)."""
        text = self.sections[section]
        start = text.find('"""')
        if start < 0:
            raise NfSyntaxError(f"{self.name}: {section}: no triple-quoted script")
        end = _string_end(text, start)
        if text[end:].strip():
            raise NfSyntaxError(f"{self.name}: {section}: code after the script string")
        defs = []
        for line in text[:start].splitlines():
            if not line.strip():
                continue
            m = re.fullmatch(r"\s*def\s+(\w+)\s*=\s*(.+?)\s*", line)
            if not m:
                raise NfSyntaxError(f"{self.name}: {section}: unsupported statement {line.strip()!r}")
            defs.append((m.group(1), m.group(2)))
        return defs, text[start + 3 : end - 3]

    def script_text(self, section: str = "script") -> str:
        """The raw script section (defs and GString), for static checks."""
        return self.sections[section]

    def bin_scripts(self, section: str = "script") -> set[str]:
        return set(re.findall(r"\b(linum_motor_\w+\.py)\b", self.sections.get(section, "")))

    def render(self, env: dict, section: str = "script") -> str:
        """The task script Nextflow would run, for the variables in env."""
        env = {**self.functions(), **env, ESCAPE_PATHS: True}
        defs, body = self.script_parts(section)
        for name, expr in defs:
            env[name] = evaluate(expr, env)
        return strip_indent(interpolate(body, env))


def nf_functions(path: str | Path) -> dict:
    """{name: callable} of the top-level functions of a .nf file and of those it includes."""
    path = Path(path)
    text = strip_comments(path.read_text())
    env: dict = {}
    for names, source in re.findall(r"^include\s*\{([^}]*)\}\s*from\s*'([^']+)'", text, re.MULTILINE):
        if source.startswith("plugin/"):
            continue
        target = (path.parent / source).with_suffix(".nf")
        if not target.is_file():
            target = path.parent / source / "main.nf"
        included = nf_functions(target)
        for name in (n.strip() for n in names.split(";")):
            if name in included:
                env[name] = included[name]
    for m in re.finditer(r"^def\s+(\w+)\s*\(([^)]*)\)\s*\{", text, re.MULTILINE):
        body, _ = block_after(text, m.end() - 1)
        env[m.group(1)] = parse_function(m.group(1), m.group(2), body, env)
    return env


def nf_processes(path: str | Path) -> list[NfProcess]:
    path = Path(path)
    text = strip_comments(path.read_text())
    procs = []
    for m in re.finditer(r"^process\s+(\w+)\s*\{", text, re.MULTILINE):
        body, _ = block_after(text, m.end() - 1)
        mask = _code_mask(body)
        cuts = [s for s in _SECTION.finditer(body) if mask[s.start(1)]]
        sections = {"directives": body[: cuts[0].start()] if cuts else body}
        for k, s in enumerate(cuts):
            stop = cuts[k + 1].start() if k + 1 < len(cuts) else len(body)
            sections[s.group(1)] = body[s.end() : stop]
        procs.append(NfProcess(m.group(1), path, sections))
    return procs


# --------------------------------------------------------------------------------------------
# Config: params, profiles, ext.args
# --------------------------------------------------------------------------------------------


def _literal(text: str):
    text = text.strip().rstrip(",")
    if text == "null":
        return None
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d+", text):
        return float(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return unescape(text[1:-1])
    raise NfSyntaxError(f"not a simple literal: {text!r}")


def _assignments(block: str, prefix: str = "") -> dict:
    values = {}
    for line in block.splitlines():
        m = re.fullmatch(rf"\s*{re.escape(prefix)}(\w+)\s*=\s*(.+?)\s*", line)
        if m:
            values[m.group(1)] = _literal(m.group(2))
        elif line.strip():
            raise NfSyntaxError(f"unsupported line in a params block: {line.strip()!r}")
    return values


def _config_text(path: Path) -> str:
    return strip_comments(path.read_text())


def _params_of(text: str) -> dict:
    values = {}
    for name, content in named_blocks(text):
        if name == "params":
            values.update(_assignments(content))
    for m in re.finditer(r"^\s*params\.(\w+)\s*=\s*(.+?)\s*$", text, re.MULTILINE):
        values[m.group(1)] = _literal(m.group(2))
    return values


def config_params(config: str | Path = REPO / "nextflow.config") -> dict:
    """Default params: the top-level `params { }` block of nextflow.config."""
    text = _config_text(Path(config))
    blocks = [c for n, c in named_blocks(text) if n == "params"]
    if len(blocks) != 1:
        raise NfSyntaxError("nextflow.config needs exactly one top-level params block")
    return _assignments(blocks[0])


def profiles(config: str | Path = REPO / "nextflow.config") -> dict[str, str]:
    """{profile name: its config text, with any includeConfig inlined}."""
    config = Path(config)
    text = _config_text(config)
    found = [c for n, c in named_blocks(text) if n == "profiles"]
    if len(found) != 1:
        raise NfSyntaxError("nextflow.config needs exactly one profiles block")
    result = {}
    for name, content in named_blocks(found[0]):
        for inc in re.findall(r"includeConfig\s+'([^']+)'", content):
            content += "\n" + _config_text(config.parent / inc)
        result[name] = content
    return result


def profile_params(*names: str, config: str | Path = REPO / "nextflow.config") -> dict:
    """Params as Nextflow resolves them for `-profile a,b`: defaults, then each profile in turn."""
    values = config_params(config)
    table = profiles(config)
    for name in names:
        values.update(_params_of(table[name]))
    return values


def config_ext_args(text: str) -> dict[str, str]:
    """{process name: Groovy expression of its ext.args} from the `withName: 'X' { ext.args = ... }`
    blocks of a config text: a string literal, or a closure's body (evaluated per task)."""
    text = strip_comments(text)
    out = {}
    for m in re.finditer(r"withName:\s*'(\w+)'\s*\{", text):
        content, _ = block_after(text, m.end() - 1)
        a = re.search(r"ext\.args\s*=\s*", content)
        if not a:
            continue
        start = a.end()
        if content[start] == "{":
            out[m.group(1)], _ = block_after(content, start)
        else:
            out[m.group(1)] = content[start:].splitlines()[0].strip()
    return out


def top_level_configs(config: str | Path = REPO / "nextflow.config") -> list[Path]:
    """nextflow.config and the files it includes with a literal `includeConfig '...'` at top level."""
    config = Path(config)
    text = _config_text(config)
    nested = "".join(c for n, c in named_blocks(text) if n == "profiles")
    top = text.replace(nested, "") if nested else text
    return [config, *(config.parent / inc for inc in re.findall(r"^includeConfig\s+'([^']+)'", top, re.MULTILINE))]


def profile_ext_args(*names: str, config: str | Path = REPO / "nextflow.config") -> dict[str, str]:
    """{process name: ext.args expression} as Nextflow resolves them for `-profile a,b`."""
    table = profiles(config)
    out = {}
    for path in top_level_configs(config):
        out.update(config_ext_args(path.read_text()))
    for name in names:
        out.update(config_ext_args(table[name]))
    return out


def ext_args_value(expr: str | None, env: dict):
    """The value of an ext.args expression for a task's variables (params, task, meta)."""
    return None if expr is None else evaluate(expr, env)


# --------------------------------------------------------------------------------------------
# Config files as a tree of settings
# --------------------------------------------------------------------------------------------


def _statement_end(text: str, start: int) -> int:
    """End of the expression starting at text[start]: the end of its line, past balanced brackets."""
    mask = _code_mask(text)
    depth, k = 0, start
    while k < len(text):
        c = text[k]
        if mask[k]:
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif c == "\n" and depth == 0:
                return k
        k += 1
    return k


_BLOCK = re.compile(r"\s*(?:(withName|withLabel)\s*:\s*'([^']+)'|([\w.]+))\s*\{")
_ASSIGN = re.compile(r"\s*([\w.]+)\s*=\s*")
_INCLUDE = re.compile(r"\s*includeConfig\s+")
_APPLY = re.compile(r"\s*(\w+)\s+('[^'\n]*')[ \t]*(?=\n|$)")


def config_tree(text: str) -> dict:
    """The settings of a config text as nested dicts: blocks and `a.b = ...` paths become keys,
    selectors become 'withLabel:NAME' / 'withName:NAME', values are the Groovy expression source
    (evaluate them with `evaluate`); `includeConfig` expressions are listed under '@include', and
    calls like `id 'x'` under '@id'."""
    text = strip_comments(text)
    tree: dict = {}
    i = 0
    while i < len(text):
        if not text[i:].strip():
            break
        if m := _BLOCK.match(text, i):
            key = f"{m.group(1)}:{m.group(2)}" if m.group(1) else m.group(3)
            content, end = block_after(text, m.end() - 1)
            node = tree
            for part in key.split(".") if not m.group(1) else [key]:
                node = node.setdefault(part, {})
            _merge(node, config_tree(content))
            i = end
        elif m := _INCLUDE.match(text, i):
            end = _statement_end(text, m.end())
            tree.setdefault("@include", []).append(text[m.end() : end].strip())
            i = end
        elif m := _APPLY.match(text, i):  # plugins { id 'nf-schema@2.7.3' }
            tree.setdefault(f"@{m.group(1)}", []).append(_literal(m.group(2)))
            i = m.end()
        elif m := _ASSIGN.match(text, i):
            end = _statement_end(text, m.end())
            *parents, leaf = m.group(1).split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = text[m.end() : end].strip()
            i = end
        else:
            raise NfSyntaxError(f"unsupported config statement: {text[i:i + 40].strip()!r}")
    return tree


def _merge(into: dict, other: dict) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif key == "@include" and key in into:
            into[key] = [*into[key], *value]
        else:
            into[key] = value


def closure_body(expr: str) -> str:
    """The body of a `{ ... }` closure expression (the expression itself when it is not a closure)."""
    expr = expr.strip()
    if expr.startswith("{"):
        body, end = block_after(expr, 0)
        if expr[end:].strip():
            raise NfSyntaxError(f"code after a closure: {expr!r}")
        return body
    return expr


# --------------------------------------------------------------------------------------------
# nf-test files (a Groovy DSL)
# --------------------------------------------------------------------------------------------


@dataclass
class NfTestCase:
    """One `test("name") { ... }` of an nf-test file: its name (a GString's source when it interpolates),
    the settings written directly in its block (`options "-stub"`) and the expressions of the `assert`
    statements of its `then` block (one line each)."""

    name: str
    settings: dict[str, str]
    assertions: list[str] = field(default_factory=list)


@dataclass
class NfTestSpec:
    """An nf-test file: `kind` (nextflow_process, nextflow_pipeline, nextflow_function, nextflow_workflow),
    the settings of its top level (`name`, `script`, `process`, `function`, `config`, `profile`) and its tests
    (wherever they are declared: a loop over a table declares one per row)."""

    path: Path
    kind: str
    settings: dict[str, str]
    tests: list[NfTestCase]

    def target(self) -> Path:
        """The .nf file the `script` setting names, resolved from the nf-test file's folder."""
        return (self.path.parent / self.settings["script"]).resolve()


_NF_TEST_KINDS = r"nextflow_(?:process|pipeline|function|workflow)"
_SETTING = re.compile(r"[ \t]*(\w+)[ \t]+('[^'\n]*'|\"[^\"\n]*\")[ \t]*$", re.MULTILINE)
_TEST = re.compile(r"\btest\(\s*('[^'\n]*'|\"[^\"\n]*\")\s*\)\s*\{")


def _settings_at_top(block: str) -> dict[str, str]:
    """`word 'literal'` statements of a block's own level (not of the blocks nested in it)."""
    mask = _code_mask(block)
    depth, depths = 0, []
    for k, c in enumerate(block):
        depths.append(depth)
        if mask[k] and c == "{":
            depth += 1
        elif mask[k] and c == "}":
            depth -= 1
    return {m.group(1): m.group(2)[1:-1] for m in _SETTING.finditer(block)
            if mask[m.start(1)] and depths[m.start(1)] == 0}


def nf_test_spec(path: str | Path) -> NfTestSpec:
    """The declarations of an nf-test file (see :class:`NfTestSpec`)."""
    path = Path(path)
    text = strip_comments(path.read_text())
    found = named_blocks(text, _NF_TEST_KINDS)
    if len(found) != 1:
        raise NfSyntaxError(f"{path}: expected one {_NF_TEST_KINDS} block, found {len(found)}")
    kind, body = found[0]
    mask = _code_mask(body)
    tests = []
    for m in _TEST.finditer(body):
        if not mask[m.start()]:
            continue
        block, _ = block_after(body, m.end() - 1)
        then = "".join(content for name, content in named_blocks(block, r"when|then|setup|cleanup") if name == "then")
        assertions = re.findall(r"^\s*assert\s+(.+?)\s*$", then, re.MULTILINE)
        tests.append(NfTestCase(m.group(1)[1:-1], _settings_at_top(block), assertions))
    return NfTestSpec(path, kind, _settings_at_top(body), tests)
