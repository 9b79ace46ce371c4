"""Set-up files stay in step: pins that matter, the two README commands, CI calling the README's test command."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[<>=\[ ]", line, maxsplit=1)[0].lower()
            pins[name] = line
    return pins


def test_pins_that_matter():
    pins = _lock()
    assert pins["torch"] == "torch==2.13.0", "torch must be pinned exactly (an unpinned install pulls CUDA wheels)"
    assert "<3" in pins["pandas"] or pins["pandas"].startswith("pandas==2"), "stackstac 0.5.1 caps pandas<3"
    assert pins["python-dateutil"] == "python-dateutil<3", "dateutil 4 breaks botocore/s3fs"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject


def test_environment_yml_uses_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    assert "-r requirements.lock.txt" in pip_section


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    first = blocks[0].strip().splitlines()
    assert first == ["./scripts/demo.sh", "./scripts/test.sh"]
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    ci = [ln for ln in lines if ln and not ln.startswith(("#", "set ", "cd "))]
    assert ci == ["./scripts/test.sh"]
