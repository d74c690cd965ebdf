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
