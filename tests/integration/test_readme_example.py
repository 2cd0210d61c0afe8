"""The README's Python example runs as written (offline, on a tiny fixture pair) and prints one line per sample."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_top_commands_are_first():
    lines = README.read_text().splitlines()
    block = lines[lines.index("```bash") + 1:lines.index("```bash") + 3]
    assert block[0].startswith("bash scripts/setup.sh && nlalab run --out runs/demo ")
    assert block[1].startswith("python3 -m pytest -q ")
    assert lines.index("```bash") < 5


def test_readme_python_example_runs():
    blocks = python_blocks(README.read_text())
    assert len(blocks) == 1, "the README has one Python example; this test executes it"
    out = io.StringIO()
    ns: dict = {"__name__": "readme_example"}
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], str(README), "exec"), ns)  # noqa: S102 - our own README
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 * 2  # 4 prompts x k=2
    assert all(re.fullmatch(r"vector \d sample \d: cos=[+-]\d\.\d{3} fve_nrm=[+-]\d+\.\d{3}", ln) for ln in lines)
    assert ns["acts"].shape[0] == 4 and ns["rec"].shape == (8, ns["acts"].shape[1])
