"""The README's Python example runs as written (its own asserts compare drain with the three
classic recipes)."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def python_blocks():
    text = README.read_text()
    start = text.index("## Python")
    section = text[start : text.find("\n## ", start + 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_has_a_python_example():
    blocks = python_blocks()
    assert blocks, "the README's Python section has a ```python example"
    assert any("arraydrain.drain(loader)" in b for b in blocks)


def test_the_readme_python_example_runs(tmp_path):
    for code in python_blocks():
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert done.returncode == 0, f"README example failed:\n{done.stderr[-3000:]}"
