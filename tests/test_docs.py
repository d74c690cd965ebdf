"""README.md and results/ are for researchers who cloned the repository: no absolute path of the machine that
wrote them, no words about the development environment."""
import re

import pytest

from conftest import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "results").glob("*.md")), *sorted((ROOT / "results").glob("*.json"))]
WORDS = re.compile(r"device tool|device time|\bsessions?\b|\bcarry\b|\.carry|gpu_programme", re.IGNORECASE)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_no_machine_paths_or_development_words(path):
    text = path.read_text()
    for absolute in (str(ROOT), str(ROOT.parent) + "/"):  # where this clone and its ../shared sit
        assert absolute not in text, f"{path.name} holds the absolute path {absolute}"
    found = WORDS.findall(text)
    assert not found, f"{path.name} speaks of the development environment: {sorted(set(found))}"


def table_after(text, heading):
    """The rows of the first Markdown table after the line `heading`."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    while not lines[start].startswith("|"):
        start += 1
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


@pytest.mark.parametrize("title", ["Image AUROC, K = 2", "Pixel AUROC, K = 2"])
def test_readme_results_are_the_results_files_tables(title):
    """The README's ResNet-18 tables are copied by hand at every rebuild: they must be the file's, cell for cell."""
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "results" / "mvtec-mini_resnet18.md").read_text()
    assert table_after(readme, f"**{title}**") == table_after(results, f"## {title}")
