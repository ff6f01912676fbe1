import os

# Charts render headless in tests and CI.
os.environ.setdefault("MPLBACKEND", "Agg")


import pytest  # noqa: E402


@pytest.fixture
def figures():
    """Matplotlib figures a test made, closed after it."""
    import matplotlib.pyplot as plt

    made = []
    yield made
    for fig in made:
        plt.close(fig)
