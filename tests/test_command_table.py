"""The command table (ctpm/wire/commands.py) as the one place a command is declared."""
from collections import Counter

from ctpm.engine import handlers
from ctpm.wire.commands import COMMANDS


def test_every_command_has_its_own_part3_section():
    """The one-step way from a command to its Part 3 section: no section twice."""
    counts = Counter(c.spec for c in COMMANDS)
    assert {spec: n for spec, n in counts.items() if n > 1} == {}
    assert all(c.spec.startswith("Part 3 §") for c in COMMANDS)


def test_every_command_has_a_handler_in_its_chapter_module():
    """handlers.py maps each command to a function of an engine/commands/ module."""
    table = handlers.table()
    assert len(table) == len(COMMANDS)
    for _cdef, name in table.values():
        fn = handlers.function(name)
        assert callable(fn), name
        assert fn.__module__ == "ctpm.engine.commands." + name.split(".")[0], (name, fn)
