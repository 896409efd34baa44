"""The documentation is true to the code: every `ctpm ...` command line in README.md and
docs/ uses flags its subcommand has, and the named checks of the verifiers are the ones the
docs' tables list."""
import argparse
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _logical_lines(text):
    """Lines with shell continuations (`\\` at the end) joined."""
    out, pending = [], ""
    for line in text.split("\n"):
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    return out


def _subcommand(words):
    """The argparse parser of `ctpm WORDS...` and how many words named it ([] if none)."""
    from ctpm import cli
    node, used = cli._parser(words[0]), []
    for word in words:
        subs = [a for a in node._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        node = subs[0].choices[word]
        used.append(word)
    return node, used


def _command_lines():
    """(file:line, [subcommand words], the rest of the line) of every `ctpm SUB ...`."""
    from ctpm.host import cli as host_cli
    found = []
    for path in DOCS:
        for number, line in enumerate(_logical_lines(path.read_text()), 1):
            for m in re.finditer(r"(?:^|[`\s(|])ctpm ([a-z][a-z-]*(?: [a-z][a-z-]*)?)([^`#]*)",
                                 line):
                words, rest = m.group(1).split(), m.group(2)
                if words[0] in ("swtpm", "swtpm-setup", "swtpm-shim"):
                    continue                # swtpm's own option syntax (swtpm_compat)
                if words[0] == "host":
                    parser = host_cli.parser()
                    sub = [a for a in parser._actions
                           if isinstance(a, argparse._SubParsersAction)][0]
                    if len(words) < 2 or words[1] not in sub.choices:
                        continue
                    node, used = sub.choices[words[1]], words[:2]
                else:
                    node, used = _subcommand(words)
                    if not used:
                        continue            # prose ("ctpm serves ..."), not a command
                tail = " ".join(words[len(used):]) + " " + rest
                found.append((f"{path.name}:{number}", node, used, tail))
    return found


def test_documented_command_lines_use_existing_flags():
    lines = _command_lines()
    assert len(lines) > 100                 # the extraction found the docs' commands
    wrong = []
    for where, node, used, tail in lines:
        flags = {o for a in node._actions for o in a.option_strings}
        unknown = sorted({f for f in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", tail)
                          if f not in flags})
        if unknown:
            wrong.append(f"{where}: ctpm {' '.join(used)}: {unknown}")
    assert not wrong, wrong


def _backticked(path):
    return set(re.findall(r"`([a-z_]+)`", (ROOT / path).read_text()))


def test_snp_checks_table_is_the_code_in_order():
    from ctpm.snp.verify import CHECKS
    text = (ROOT / "docs" / "snp.md").read_text()
    table = text[text.index("## Verification"):text.index("## `ctpm verify-report`")]
    names = [n for row in re.findall(r"(?m)^\| \d+ \| (.*?) \|", table)
             for n in re.findall(r"`(\w+)`", row)]
    assert names == list(CHECKS)
    readme = (ROOT / "README.md").read_text()
    assert f"{len(CHECKS)} named checks" in readme


@pytest.mark.parametrize("module, names, doc", [
    ("ctpm.modes.anchor", "ANCHOR_CHECKS", "docs/modes.md"),
    ("ctpm.attest.channelkey", "CHECKS", "docs/attestation.md"),
    ("ctpm.attest.akcert", "CHECKS", "docs/attestation.md"),
    ("ctpm.channel.authority", "CHECKS", "docs/channel.md"),
    ("ctpm.channel.authority", "REGISTER_CHECKS", "docs/verifier.md"),
    ("ctpm.channel.tee", "CHECKS", "docs/channel.md"),
])
def test_named_checks_are_documented(module, names, doc):
    import importlib
    checks = getattr(importlib.import_module(module), names)
    missing = [c for c in checks if not c.startswith("<") and c not in _backticked(doc)]
    assert not missing, missing


def test_channel_client_refusals_are_documented():
    """Every ChannelError name the TEE side raises is in docs/channel.md."""
    raised = set()
    for path in (ROOT / "ctpm" / "channel").glob("*.py"):
        raised |= set(re.findall(r'ChannelError\(\s*"([a-z_]+)"', path.read_text()))
    raised.add("tpm_rc")                    # TpmError's
    assert len(raised) > 10
    missing = sorted(raised - _backticked("docs/channel.md"))
    assert not missing, missing
