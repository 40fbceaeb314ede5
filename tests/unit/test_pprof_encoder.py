"""The profile.proto builder, Go-style names and the legacy text layout, without a server."""

import gzip
import os
import py_compile
import sys

from labotel.profile import pprof, symbols, text


def where_am_i(builder=None):
    frame = sys._getframe()
    return builder.frame_stack(frame) if builder else frame


class Outer:
    def method(self):
        def inner():
            return sys._getframe()
        return inner()


def test_profile_round_trips_with_interned_strings_and_one_symbolized_mapping():
    builder = pprof.ProfileBuilder([("samples", "count"), ("cpu", "nanoseconds")],
                                   ("cpu", "nanoseconds"), 10_000_000)
    stacks = [where_am_i(builder) for _ in range(2)]
    assert stacks[0] == stacks[1]  # interned: the same ids the second time
    stack = stacks[0]
    assert len(builder.locations) == len(set(stack))
    builder.add(stack, [1, 10], (("thread", "main"),))
    builder.add(stack, [2, 20], (("thread", "main"),))
    builder.add(stack, [5, 50], (("thread", "other"),))
    data = builder.encode()
    assert data[:2] == b"\x1f\x8b"
    profile = pprof.decode(data)
    strings = list(profile.string_table)
    assert strings[0] == "" and len(strings) == len(set(strings))
    assert [(strings[t.type], strings[t.unit]) for t in profile.sample_type] == [
        ("samples", "count"), ("cpu", "nanoseconds")]
    assert profile.period == 10_000_000 and strings[profile.period_type.type] == "cpu"
    (mapping,) = profile.mapping
    assert mapping.has_functions and mapping.has_filenames and mapping.has_line_numbers
    values = sorted(list(s.value) for s in profile.sample)
    assert values == [[3, 30], [5, 50]]  # aggregated per (stack, labels)
    leaf = profile.location[profile.sample[0].location_id[0] - 1]
    function = profile.function[leaf.line[0].function_id - 1]
    assert strings[function.name] == f"{__name__}.where_am_i"
    assert strings[function.filename] == __file__
    assert leaf.line[0].line == where_am_i.__code__.co_firstlineno + 2
    assert function.start_line == where_am_i.__code__.co_firstlineno


def test_encoding_is_protobufs_own_wire_format():
    builder = pprof.ProfileBuilder([("goroutine", "count")], ("goroutine", "count"), 1)
    builder.add((builder.line_location(__file__, 1, "f"),), [7])
    raw = gzip.decompress(builder.encode())
    assert pprof.decode(raw).SerializeToString() == raw


def test_delta_subtracts_earlier_samples_and_drops_zeros():
    builder = pprof.ProfileBuilder([("x", "count")], ("x", "count"), 1)
    a = (builder.line_location(__file__, 10),)
    b = (builder.line_location(__file__, 20),)
    builder.add(a, [3])
    builder.add(b, [2])
    before, builder.samples = builder.samples, {}
    builder.add(a, [3])
    builder.add(b, [5])
    builder.subtract(before)
    assert builder.samples == {(b, ()): [3]}


def test_names_follow_go_style_module_qualname():
    frame = Outer().method()
    assert symbols.code_name(frame.f_code) == f"{__name__}.Outer.method.<locals>.inner"
    line = Outer.method.__code__.co_firstlineno + 2
    assert symbols.line_function(__file__, line) == (
        f"{__name__}.Outer.method.<locals>.inner", line - 1)
    assert symbols.line_function(__file__, 1) == (f"{__name__}.<module>", 1)
    assert symbols.line_function("/no/such/file.py", 3) == ("?", 0)


def test_frozen_modules_are_named_from_their_shipped_source():
    import abc

    line = abc.ABCMeta.__subclasscheck__.__code__.co_firstlineno + 1
    if abc.ABCMeta.__subclasscheck__.__code__.co_filename.startswith("<frozen"):
        assert symbols.line_function("<frozen abc>", line)[0] == "abc.ABCMeta.__subclasscheck__"


def test_symbol_resolution_maps_pseudo_pcs_back_to_functions():
    code = where_am_i.__code__
    address = symbols.code_address(code)
    assert symbols.resolve(address + 4) == f"{__name__}.where_am_i"
    assert symbols.resolve(1) is None


def test_tabwrite_aligns_columns_per_block_with_tabs():
    lines = ["1 @ 0x1 0x2", "#\t0x1\tshort+0x1\tf.py:1", "#\t0x22\tmuch_longer_name+0x2\tg.py:2",
             "", "2 @ 0x3", "#\t0x3\tx+0x0\th.py:3", ""]
    out = text.tabwrite(lines).split("\n")
    assert out[1] == "#\t0x1\tshort+0x1\t\tf.py:1"
    assert out[2] == "#\t0x22\tmuch_longer_name+0x2\tg.py:2"
    assert out[5] == "#\t0x3\tx+0x0\th.py:3"  # a new block after the blank line


def write_module(path, source: str, mtime: int) -> None:
    path.write_text(source)
    os.utime(path, (mtime, mtime))


def test_a_current_pyc_is_read_instead_of_compiling_and_a_stale_one_is_not(tmp_path):
    """Names for file:line frames come from the interpreter's .pyc while it matches the
    source (its header's mtime and size): compiling is what made the first heap profile
    of a process slow under tracemalloc. A .pyc of another source is never believed."""
    module = tmp_path / "orders.py"
    write_module(module, "def from_the_pyc():\n    return 1\n", 1_700_000_000)
    py_compile.compile(str(module), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    # the same size and mtime, other names: only a .pyc read can say from_the_pyc
    write_module(module, "def from_source1():\n    return 1\n", 1_700_000_000)
    assert symbols.line_function(str(module), 2) == ("from_the_pyc", 1)
    write_module(module, "class Later:\n    def from_the_source(self):\n        return 1\n",
                 1_700_000_100)
    assert symbols.line_function(str(module), 3) == ("Later.from_the_source", 2)
    assert symbols.line_function(str(module), 1) == ("Later", 1)


def test_names_from_code_objects_match_the_defs_around_each_line(tmp_path):
    """The innermost def or class around a line, as CPython qualifies it; a comprehension's
    or lambda's lines belong to the def they are in, also where they end the def."""
    module = tmp_path / "shop.py"
    write_module(module, (
        "import functools\n"                          # 1
        "class Cart:\n"                               # 2
        "    @functools.cache\n"                      # 3
        "    def total(self):\n"                      # 4
        "        def price(item):\n"                  # 5
        "            return item\n"                   # 6
        "        spent = sum(price(i) for i in [])\n"  # 7
        "        return [\n"                           # 8
        "            x\n"                              # 9
        "            for x in range(spent)\n"          # 10
        "        ]\n"                                  # 11
        "    size = 3\n"                               # 12
        "broken = (lambda: 0)\n"),                     # 13
        1_700_000_000)
    named = {line: symbols.line_function(str(module), line) for line in (2, 6, 7, 9, 10, 12, 13)}
    assert named == {2: ("Cart", 2), 6: ("Cart.total.<locals>.price", 5),
                     7: ("Cart.total", 3), 9: ("Cart.total", 3), 10: ("Cart.total", 3),
                     12: ("Cart", 2), 13: ("<module>", 1)}
    write_module(tmp_path / "bad.py", "def (:\n", 1_700_000_000)
    assert symbols.line_function(str(tmp_path / "bad.py"), 1) == ("?", 0)
