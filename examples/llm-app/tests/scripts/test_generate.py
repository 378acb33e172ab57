"""Heavy because it lies under tests/scripts/: runs a generation end to end."""


def test_generate_tokens(provider):
    text = provider.complete("Once upon a time", max_tokens=8)
    assert len(text) > 0
