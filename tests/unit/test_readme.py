"""The README stays true: its configuration table is the one the code generates."""

import pathlib
import re

from labotel.config import markdown_table

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_configuration_table_matches_settings():
    text = README.read_text()
    match = re.search(r"<!-- config-table:start -->\n(.*?)\n<!-- config-table:end -->", text,
                      re.S)
    assert match, "README lost its configuration table markers"
    assert match.group(1).strip() == markdown_table().strip(), (
        "README configuration table is stale: regenerate with `uv run labotel config --markdown`")


def test_quick_start_is_the_two_commands():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "uv run labotel demo" in quick and "uv run pytest" in quick
