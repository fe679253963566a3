import pytest

from tiny_models import tiny_training_passage


@pytest.fixture
def corpus(tmp_path):
    """(train file, held-out file): the tiny passage ten times, and once."""
    passage = tiny_training_passage()
    (tmp_path / "a.txt").write_text((passage + "\n") * 10)
    (tmp_path / "b.txt").write_text(passage)
    return (str(tmp_path / "a.txt"), str(tmp_path / "b.txt"))
