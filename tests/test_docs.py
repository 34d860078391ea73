"""The docs point at real things: every test the reliability page names exists, every command in the
README's set-up block is one the CLI accepts, and every recipe the README names is registered."""

import re

from conftest import REPO


def test_every_test_named_by_the_reliability_page_exists():
    text = (REPO / "docs" / "RELIABILITY.md").read_text()
    named = re.findall(r"`?(test_\w+\.py)::(test_\w+)`?", text)
    assert len(named) >= 10
    for file, name in named:
        source = (REPO / "tests" / file).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"{file}::{name} is named in RELIABILITY.md but missing"


def test_readme_recipes_and_links_exist():
    from cifarlab.recipes import RECIPES

    readme = (REPO / "README.md").read_text()
    for name in re.findall(r"--recipe ([\w-]+)", readme):
        assert name in RECIPES, name
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (REPO / link).is_file(), link


def test_reading_runs_and_the_cli_import_no_torch():
    """`import cifarlab`, the CLI's parser and reading run folders (compare, experiments) stay light."""
    import subprocess
    import sys

    code = ("import sys, cifarlab, cifarlab.cli, cifarlab.compare, cifarlab.experiments, cifarlab.recipes; "
            "cifarlab.cli.build_parser(); print(sorted(m for m in ('torch', 'matplotlib', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_the_public_api_names_resolve_even_after_every_module_is_loaded():
    """`from cifarlab import train` must be the function even when the CLI or trainer were imported first
    (a submodule called `train` once shadowed it), and every name in __all__ must resolve."""
    import inspect

    import cifarlab
    import cifarlab.cli  # noqa: F401
    import cifarlab.trainer  # noqa: F401
    from cifarlab import train

    assert inspect.isfunction(train) and "recipe" in inspect.signature(train).parameters
    for name in cifarlab.__all__:
        assert getattr(cifarlab, name) is not None, name
