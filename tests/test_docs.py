"""Every document the code and the README point to exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"docs/[\w.-]+\.md")


def test_every_cited_document_exists():
    sources = [*ROOT.joinpath("torchsystem_trainer").rglob("*.py"), ROOT / "README.md", *ROOT.joinpath("docs").glob("*.md")]
    cited = {
        (match, source.relative_to(ROOT).as_posix())
        for source in sources
        for match in REFERENCE.findall(source.read_text(encoding="utf-8"))
    }
    assert cited, "the pattern finds the references (the README cites docs/resuming.md)"
    missing = sorted(f"{document} (cited in {source})" for document, source in cited if not (ROOT / document).is_file())
    assert missing == []
