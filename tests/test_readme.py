"""The README's two commands are the ones users and CI run."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def test_readme_opens_with_the_demo_and_the_test_command():
    demo, tests = readme_commands()
    assert demo.strip().endswith("crckd demo")
    assert "pytest" in tests


def test_ci_runs_the_readme_install_and_test_command():
    _, tests = readme_commands()
    ci = (REPO / ".ci" / "run").read_text()
    install, test = tests.strip().rsplit(" && ", 1)
    assert f"{install}\n" in ci
    assert f"\n{test}\n" in ci
